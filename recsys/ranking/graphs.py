"""CUDA graphs of the request path's dense stage, one per bucketed shape.

:func:`recsys.ranking.rank.dense_stage` (TransAct V2 over the padded S_all, then the DLRM
interaction and heads) reads static shapes only: ``[N_b, ...]`` for the bucket's candidate
capacity N_b and the fixed S_all width L. So each bucket is captured once into a CUDA graph over
static input buffers; a later batch of that bucket copies its inputs into the buffers and replays
the graph (one launch instead of one per kernel). NN selection and the embedding lookups stay
eager (data-dependent shapes): the fused selection kernel comes later.

CUDA only; on another device :class:`DenseStageGraphs` raises a ConfigError.
"""

from __future__ import annotations

import torch
from torch import nn

from recsys.errors import ConfigError
from recsys.ranking.rank import RequestDenseInputs, dense_stage

WARMUP_STEPS = 3  # eager runs on a side stream before capture (lazy init, autotuning)


class DenseStageGraphs:
    """Captured dense stages of one model, keyed by input shapes (one per bucket).

    Args:
        model: the ``transact_v2`` ranker, in eval mode, on a CUDA device.

    Example::

        graphs = DenseStageGraphs(model)
        logits = rank_requests(model, requests, items, arena=arena, graphs=graphs)
    """

    def __init__(self, model: nn.Module):
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ConfigError(f"DenseStageGraphs captures CUDA graphs; the model is on {device}. "
                              "Run rank_requests without graphs on this device")
        self.model, self.device = model, device
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, inputs: RequestDenseInputs) -> torch.Tensor:
        """``[N_b, H]`` logits of ``inputs`` (a fresh tensor), replaying the bucket's graph."""
        tensors = inputs.tensors()
        key = tuple((name, tuple(t.shape), t.dtype) for name, t in tensors.items())
        if key not in self._graphs:
            self._graphs[key] = self._capture(tensors)
        graph, static, output = self._graphs[key]
        for name, tensor in tensors.items():
            static[name].copy_(tensor)
        graph.replay()
        return output.clone()

    @torch.no_grad()
    def _capture(self, tensors: dict[str, torch.Tensor]):
        static = {name: tensor.clone() for name, tensor in tensors.items()}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                dense_stage(self.model, RequestDenseInputs(**static))
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = dense_stage(self.model, RequestDenseInputs(**static))
        return graph, static, output
