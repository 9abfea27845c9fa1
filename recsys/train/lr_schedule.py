"""Learning-rate warmup and decay for both optimizers of a sharded model, as a torch ``LambdaLR``.

The factor that multiplies every configured learning rate at optimizer step ``t`` (0-based) of a
run of ``T`` steps, with ``W`` warmup steps and a floor ``r = min_lr_ratio``::

    warmup  (t < W):  (t + 1) / W                              linear ramp up to the full lr
    constant:         1
    linear:           1 - (1 - r) * p                          p = min(1, (t - W) / (T - W))
    cosine:           r + (1 - r) * (1 + cos(pi * p)) / 2      (SGDR, Loshchilov & Hutter 2017, eq. 5)

One schedule drives every param group of the ``CombinedOptimizer`` from ``build_optimizer``: the
dense optimizer's and the fused optimizer's of the sharded tables. TorchRec's fused optimizer
(``EmbeddingFusedOptimizer``) hands ``param_groups[0]["lr"]`` to the FBGEMM kernel on every
``zero_grad()`` / ``step()``, and the kernel takes it at the forward: after ``scheduler.step()``
call ``dmp.fused_optimizer.zero_grad()`` so the next forward uses the new lr
(``recsys.train.step_options.StepOptions`` does).

Checkpoints: ``scheduler.state_dict()`` holds plain numbers (``last_epoch`` = steps taken, the base
and last learning rates) and goes into the checkpoint's ``extra``; :func:`restore_lr_schedule`
continues from its step count and writes that step's learning rates into the optimizer's param
groups (the optimizer checkpoint does not store them).

Example::

    scheduler = build_lr_schedule(optimizer, LRScheduleConfig(warmup_steps=100, decay="cosine"), total_steps=10_000)
    for batch in loader:
        ...; optimizer.step(); scheduler.step(); dmp.fused_optimizer.zero_grad()
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

from recsys.errors import ConfigError

DECAYS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class LRScheduleConfig:
    """Warmup and decay of the learning rates (``optim.schedule``): dense and sparse alike.

    Args:
        warmup_steps (int): optimizer steps of linear warmup from ``lr / warmup_steps`` up to the
            configured lr (>= 0; 0 = no warmup).
        decay (str): after warmup, "constant" (keep the lr), "linear" or "cosine" (down to
            ``min_lr_ratio * lr`` at the run's last step, epochs x batches per epoch).
        min_lr_ratio (float): the final lr as a share of the configured one, in [0, 1].
    """

    warmup_steps: int = 0
    decay: Literal["constant", "linear", "cosine"] = "constant"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.schedule.warmup_steps={self.warmup_steps} must be >= 0; 0 turns warmup off")
        if self.decay not in DECAYS:
            raise ConfigError(f"optim.schedule.decay={self.decay!r} is not one of {list(DECAYS)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.schedule.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]; e.g. 0.1")

    @property
    def is_constant(self) -> bool:
        return self.warmup_steps == 0 and self.decay == "constant"


def lr_factor(step: int, total_steps: int, config: LRScheduleConfig) -> float:
    """The factor on the configured lr at optimizer step ``step`` (0-based) of ``total_steps``."""
    warmup = config.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if config.decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = config.min_lr_ratio
    if config.decay == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_schedule(optimizer: torch.optim.Optimizer, config: LRScheduleConfig, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` to every param group of ``optimizer``.

    Building it sets the lrs of step 0; call ``scheduler.step()`` after every ``optimizer.step()``.
    """
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, config))


def restore_lr_schedule(scheduler: LambdaLR, state: dict) -> None:
    """Continues ``scheduler`` from its saved ``state_dict()``: the step count comes from the
    checkpoint, the base lrs from this run's config (so a resume on another world size, whose fused
    optimizer may group the tables differently, works), and the optimizer's lrs are set to step
    ``last_epoch``'s."""
    steps = int(state["last_epoch"])
    scheduler.last_epoch = steps - 1
    scheduler.step()  # last_epoch = steps; sets every param group's lr and get_last_lr()
