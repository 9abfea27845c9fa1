"""The ops one training step dispatches: the host-side work that bounds a small model's step.

Eager PyTorch pays host time for every aten op it dispatches (Python, the dispatcher, autograd's
bookkeeping, the kernel launch), whatever the op's size: a small model's step is host-bound.
:func:`step_ops` counts them by running the model's real training step (forward, backward and a
multi-tensor Adam update of the dense parameters) on CPU at a tiny batch under
:class:`~recsys.distributed.step_trace.StepTrace`. The count does not depend on the batch or on
table sizes; it grows linearly with the longest sequence for models that loop over time steps
(MIMN, a GRU run step by step), so it is traced at two short lengths and extrapolated to the
plan's longest one.

Example::

    step_ops("mimn", {"embedding_dim": 64}, max_length=50)   # about 23k ops
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch

PROBE_BATCH = 4
PROBE_LENGTHS = (6, 12)


def traced_ops(name: str, max_len: int, overrides: Mapping[str, Any], batch_size: int = PROBE_BATCH) -> tuple:
    """(ops of one traced training step of zoo model ``name``, the batch's longest sequence)."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    from recsys.distributed.probe_workloads import probe_case
    from recsys.distributed.step_trace import StepTrace

    cache = str(Path(tempfile.gettempdir()) / "recsys-probe-lifelong")
    case = probe_case(name, batch_size, max_len, cache_dir=cache, **_on_cpu(overrides))
    tables = {id(p) for m in case.model.modules() if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))
              for p in m.parameters()}
    for p in case.model.parameters():
        p.requires_grad_(id(p) not in tables)  # the tables' update is the planner's (fused in the backward)
    optimizer = torch.optim.Adam([p for p in case.model.parameters() if id(p) not in tables], lr=1e-4, foreach=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        case.step().backward()
        optimizer.step()

    step()  # Adam's state exists from the second step on
    with StepTrace() as trace:
        step()
    return trace.ops, max(int(case.work.lengths.max), 1)


@lru_cache(maxsize=64)
def _step_ops(name: str, overrides_json: str, max_length: int, fused_rnn: bool) -> float:
    overrides = json.loads(overrides_json)
    (short_ops, short_len), (long_ops, long_len) = (traced_ops(name, n, overrides) for n in PROBE_LENGTHS)
    if fused_rnn and _has_rnn(name, overrides):  # cuDNN runs the whole nn.GRU as one op: no per-step ops
        return float(short_ops)
    if long_len <= short_len or max_length <= long_len:
        return float(long_ops)
    slope = (long_ops - short_ops) / (long_len - short_len)
    return float(long_ops + slope * (max_length - long_len))


def step_ops(name: str, overrides: Mapping[str, Any] | None = None, max_length: int = 0, fused_rnn: bool = False) -> float:
    """Aten ops one training step of zoo model ``name`` (config ``overrides``) dispatches with
    sequences up to ``max_length`` events (see the module docstring).

    ``fused_rnn``: the step runs on CUDA, where ``nn.GRU`` is one cuDNN op over all time steps
    (on CPU it dispatches ops per step): the count of the shortest probe is taken, not extrapolated.
    """
    overrides_json = json.dumps(dict(overrides or {}), sort_keys=True, default=str)
    return _step_ops(name, overrides_json, int(max_length), bool(fused_rnn))


def _on_cpu(overrides: Mapping[str, Any]) -> dict:
    """``overrides`` for the CPU probe: an HSTU attention kernel asked for by name that cannot run
    here ("triton" outside the interpreter) becomes "auto", the PyTorch reference. (On CUDA the fused
    kernel dispatches fewer ops per layer than the reference counted here.)"""
    from recsys.ops.triton_kernels import triton_interpret_requested

    overrides = dict(overrides)
    if overrides.get("attention_kernel") == "triton" and not triton_interpret_requested():
        overrides["attention_kernel"] = "auto"
    return overrides


def _has_rnn(name: str, overrides: Mapping[str, Any]) -> bool:
    from recsys.models import get_model

    model = get_model(name, device=torch.device("meta"), **dict(overrides))
    return any(isinstance(m, torch.nn.RNNBase) for m in model.modules())
