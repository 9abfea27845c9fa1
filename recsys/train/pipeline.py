"""Train steps: the plain loop and TorchRec's sparse-dist pipeline behind one ``progress(batches)``.

``step.progress(batches)`` takes the next batch(es) from an iterator of RankingBatches, runs
forward, backward and the optimizer on one batch and returns ``(loss, logits)``; it raises
``StopIteration`` once every batch taken from the iterator has been trained on.

- :class:`PlainStep`: ``batch.to(device)``, ``loss, logits = model(batch)``, backward, step.
- :class:`SparseDistStep`: TorchRec's ``TrainPipelineSparseDist``. While batch i trains, batch
  i+1's ids are already sent to the ranks that own their rows (``input_dist``) and batch i+2 is
  copied to the GPU, on separate CUDA streams. The order of updates is the plain loop's (the
  embedding lookup of batch i runs after the update of batch i-1), so both give the same losses.
  On CPU it runs too (no streams: nothing overlaps, so it gains nothing there).

The pipeline reads up to two batches ahead: ``in_flight`` counts the batches taken from the
iterator but not trained yet, so a checkpoint can store the position of the last trained batch.
It also replaces the forward of the sharded embedding modules; ``detach()`` puts the originals
back (call it before evaluating the model directly) and the next ``progress`` re-attaches.

TorchRec finds the inputs of the sharded modules by tracing the model's forward with torch.fx
down to them: a model whose forward cannot be traced (e.g. Python control flow on the batch)
cannot be pipelined. :func:`build_train_step` checks that up front.

Example::

    step, reason = build_train_step("auto", dmp, optimizer, ctx.device)
    batches = iter(loader)
    while True:
        try:
            loss, logits = step.progress(batches)
        except StopIteration:
            break
    step.detach()
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator, Tuple

import torch
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.types import ShardedModule

from recsys.errors import ConfigError

PIPELINES = ("auto", "sparse_dist", "none")
StepOutput = Tuple[torch.Tensor, torch.Tensor]  # (scalar loss, detached; [B, H] logits)
ForwardContext = Callable[[], ContextManager]  # e.g. bf16 autocast around the training forward


class PlainStep:
    """One batch at a time: copy to the device, forward, backward, optimizer step.

    Args:
        model: returns ``(loss, logits)`` for a batch (a ``RankingTask`` wrapped in DMP).
        optimizer: updates every parameter the fused optimizer does not.
        device: where the batches go.
        forward_context: a context the forward runs in (``StepOptions.autocast``); none by default.
    """

    name = "none"
    in_flight = 0

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 forward_context: ForwardContext = contextlib.nullcontext):
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.forward_context = forward_context

    def progress(self, batches: Iterator) -> StepOutput:
        batch = next(batches).to(self.device)
        with self.forward_context():
            loss, logits = self.model(batch)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits

    def detach(self) -> None:
        """Nothing to undo: the model's forward is its own."""


class SparseDistStep:
    """TorchRec's ``TrainPipelineSparseDist`` over a model returning ``(loss, logits)``.

    Args: as :class:`PlainStep`.
    """

    name = "sparse_dist"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 forward_context: ForwardContext = contextlib.nullcontext):
        self.model = model
        self.forward_context = forward_context
        self.pipeline = TrainPipelineSparseDist(model, optimizer, device, custom_model_fwd=self._forward)

    def _forward(self, batch) -> Tuple[torch.Tensor, StepOutput]:
        with self.forward_context():
            loss, logits = self.model(batch)
        return loss, (loss.detach(), logits)  # the pipeline returns the second part

    def progress(self, batches: Iterator) -> StepOutput:
        return self.pipeline.progress(batches)

    @property
    def in_flight(self) -> int:
        """Batches taken from the iterator and not trained on yet (0, 1 or 2)."""
        return len(self.pipeline.batches)

    def detach(self) -> None:
        """Gives the sharded modules their own forward back (for evaluation or serving)."""
        self.pipeline.detach()


def _holds_sharded(module: nn.Module) -> bool:
    return any(isinstance(m, ShardedModule) for m in module.modules())


class _TracerToShardedModules(torch.fx.Tracer):
    """Traces like TorchRec's pipeline does: modules that hold no sharded module, and the
    sharded modules themselves, are leaves; only the modules around them are traced through."""

    proxy_buffer_attributes = False

    def __init__(self, root: nn.Module):
        super().__init__()
        self._traced = {id(m) for m in root.modules() if not isinstance(m, ShardedModule) and _holds_sharded(m)}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) not in self._traced


def fx_trace_error(model: nn.Module) -> str | None:
    """Why TorchRec's pipeline could not trace ``model`` (a DMP or a plain module), or None if it can."""
    root = getattr(model, "module", model)
    try:
        _TracerToShardedModules(root).trace(root)
    except Exception as error:  # any failure of symbolic tracing: control flow, iteration, ...
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{type(error).__name__}: {first_line}"
    return None


def build_train_step(
    pipeline: str, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
    forward_context: ForwardContext = contextlib.nullcontext,
) -> tuple[PlainStep | SparseDistStep, str]:
    """The train step of ``train.pipeline``, and a line saying which one runs and why.

    Args:
        pipeline: "sparse_dist", "none", or "auto" (sparse_dist on CUDA when the model's forward
            traces, the plain step otherwise).
        model: the DMP model returning ``(loss, logits)``.
        optimizer: its optimizer (``build_optimizer``).
        device: this rank's device.
        forward_context: a context the training forward runs in (e.g. ``StepOptions.autocast``).
    """
    if pipeline not in PIPELINES:
        raise ConfigError(f"train.pipeline must be one of {list(PIPELINES)}, got {pipeline!r}")
    if pipeline == "none" or (pipeline == "auto" and device.type != "cuda"):
        reason = "train.pipeline=none" if pipeline == "none" else "auto on CPU: no CUDA streams to overlap"
        return PlainStep(model, optimizer, device, forward_context), f"plain train step ({reason})"
    error = fx_trace_error(model)
    if error is None:
        return SparseDistStep(model, optimizer, device, forward_context), f"TrainPipelineSparseDist (train.pipeline={pipeline})"
    if pipeline == "sparse_dist":
        raise ConfigError(
            f"train.pipeline=sparse_dist needs a model whose forward torch.fx can trace down to its embedding "
            f"modules (TorchRec's pipeline finds their inputs that way), and tracing failed: {error}; "
            "set train.pipeline=none, or make the forward traceable (no Python control flow on the batch)"
        )
    return PlainStep(model, optimizer, device, forward_context), f"plain train step (the model's forward does not trace: {error})"
