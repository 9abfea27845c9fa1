"""Options of the train step shared by the recipes: lr schedule, gradient clipping, bf16 autocast
and ``torch.compile`` of the dense modules, each behind one config key.

- ``optim.schedule``: warmup + constant / linear / cosine decay of every learning rate, dense and
  sparse (``recsys.train.lr_schedule``); its state is saved in checkpoints and restored on resume.
- ``train.clip_grad_norm``: ``torch.nn.utils.clip_grad_norm_`` over the dense parameters (dense
  layers and data-parallel tables), run as a step pre-hook of the optimizer, so it also runs
  inside TorchRec's ``TrainPipelineSparseDist``. The sharded tables cannot be clipped: FBGEMM's
  fused optimizer updates them inside the backward, before any hook could see their gradients.
- ``train.autocast``: "bf16" runs the training forward under ``torch.autocast(device_type,
  torch.bfloat16)`` (CUDA and CPU alike; matmuls in bf16, FBGEMM's embedding lookups stay fp32);
  evaluation stays in fp32.
- ``train.compile``: ``nn.Module.compile()`` (in place: parameter names and checkpoints are
  unchanged) on the largest submodules that hold no embedding table; the sharded tables and the
  modules around them run eagerly (TorchRec's sharded modules do not trace).

Example::

    options = StepOptions.setup(cfg, dmp, optimizer, ctx.device, total_steps=len(loader) * cfg.train.epochs)
    with options.autocast():
        loss = dmp(batch)
    optimizer.zero_grad(); loss.backward(); optimizer.step(); options.after_step()
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, ContextManager, Iterable, List

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torchrec.distributed.types import ShardedModule
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from recsys.distributed.optimizers import dense_parameters
from recsys.train.lr_schedule import build_lr_schedule, restore_lr_schedule

if TYPE_CHECKING:
    from recsys.train.config import TrainConfig

_TABLE_MODULES = (ShardedModule, EmbeddingBagCollection, EmbeddingCollection)


def clip_dense_gradients(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], max_norm: float):
    """Clips the total gradient norm of ``params`` to ``max_norm`` before every ``optimizer.step()``.

    Returns the hook's handle (``handle.remove()`` turns it off).
    """
    params = list(params)

    def clip(_optimizer, _args, _kwargs) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    return optimizer.register_step_pre_hook(clip)


def compile_dense_modules(model: nn.Module) -> List[str]:
    """``compile()`` in place every largest submodule of ``model`` (a DMP or a plain module) that
    holds trainable parameters and no embedding table; returns their paths."""
    compiled: List[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if isinstance(child, _TABLE_MODULES):
                continue
            if any(isinstance(m, _TABLE_MODULES) for m in child.modules()):
                visit(child, f"{prefix}{name}.")
            elif any(p.requires_grad for p in child.parameters()):
                child.compile()
                compiled.append(f"{prefix}{name}")

    visit(getattr(model, "module", model), "")
    return compiled


class StepOptions:
    """The step options of one run, set up once after the model and optimizer exist."""

    def __init__(self, scheduler: LambdaLR | None, autocast_dtype: torch.dtype | None, device_type: str,
                 clipping: bool, compiled: List[str], fused_optimizer: torch.optim.Optimizer | None = None):
        self.scheduler = scheduler
        self.fused_optimizer = fused_optimizer
        self.autocast_dtype = autocast_dtype
        self.device_type = device_type
        self.clipping = clipping
        self.compiled = compiled

    @classmethod
    def setup(cls, cfg: "TrainConfig", model: nn.Module, optimizer: torch.optim.Optimizer,
              device: torch.device, total_steps: int) -> "StepOptions":
        schedule, train = cfg.optim.schedule, cfg.train
        scheduler = None if schedule.is_constant else build_lr_schedule(optimizer, schedule, total_steps)
        if train.clip_grad_norm > 0:
            clip_dense_gradients(optimizer, dense_parameters(model).values(), train.clip_grad_norm)
        compiled = compile_dense_modules(model) if train.compile else []
        dtype = torch.bfloat16 if train.autocast == "bf16" else None
        options = cls(scheduler, dtype, device.type, train.clip_grad_norm > 0, compiled,
                      fused_optimizer=getattr(model, "fused_optimizer", None))
        options._hand_lr_to_tables()
        return options

    def autocast(self) -> ContextManager:
        """The context of a training forward: bf16 autocast, or nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def after_step(self) -> None:
        """Call after every optimizer step: advances the lr schedule."""
        if self.scheduler is not None:
            self.scheduler.step()
            self._hand_lr_to_tables()

    def _hand_lr_to_tables(self) -> None:
        """FBGEMM's table kernels take the lr at the *forward* (the update inside the backward uses
        it), and TorchRec's fused optimizer hands ``param_groups[0]["lr"]`` over only in its
        ``zero_grad()`` / ``step()``, which the loop calls after the forward: hand the lr the
        scheduler just set over now, or the tables would lag one step behind the dense layers.
        The fused optimizer's ``zero_grad()`` does nothing else (its gradients never exist)."""
        if self.scheduler is not None and self.fused_optimizer is not None:
            self.fused_optimizer.zero_grad()

    def state_dict(self) -> dict:
        """Plain values for the checkpoint's ``extra``."""
        return {"lr_schedule": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: dict | None, step: int) -> None:
        """Restores the lr schedule; a checkpoint without one (saved before the schedule was
        configured) continues the schedule at the trainer's ``step``."""
        if self.scheduler is None:
            return
        saved = (state or {}).get("lr_schedule")
        restore_lr_schedule(self.scheduler, saved if saved is not None else {"last_epoch": step})
        self._hand_lr_to_tables()

    def describe(self) -> str:
        """One line for the run's summary."""
        parts = []
        if self.scheduler is not None:
            parts.append("lr schedule")
        if self.clipping:
            parts.append("dense gradient clipping")
        if self.autocast_dtype is not None:
            parts.append("bf16 autocast")
        if self.compiled:
            parts.append(f"torch.compile of {self.compiled}")
        return "step options: " + (", ".join(parts) if parts else "none")
