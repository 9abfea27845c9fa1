"""Checks a recipe runs before training, so a run that cannot mean anything stops with a clear error.

- :func:`check_splits_not_empty`: a split with no rows would train on nothing or report NaN metrics.
- :func:`check_batch_memory`: a training step whose memory would not fit in what this process has
  is refused with the estimate, the memory available and the knobs to turn, instead of the OOM
  killer ending the process without a message. The step's memory is the dense estimate of
  :mod:`recsys.distributed.dense_estimate` (activations kept for backward + dense parameters,
  gradients and optimizer state) plus the batch's own input tensors.

Example::

    check_batch_memory(model_on_meta, cfg, spec, train_rows=len(rows), log=log)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from recsys.distributed.dense_estimate import F32, I64, Workload, estimate_dense
from recsys.distributed.dense_reservation import DEFAULT_HEADROOM
from recsys.distributed.sequence_lengths import LengthDistribution
from recsys.errors import ConfigError, DataError

GIB = 1 << 30
MEMORY_HEADROOM = DEFAULT_HEADROOM  # share of the available memory kept free (allocator, workers, spikes)


def check_splits_not_empty(rows: Mapping[str, int], fix: str) -> None:
    """Raises DataError naming every split of ``rows`` (split -> row count) that has no rows.

    Args:
        rows: e.g. ``{"train": 900, "valid": 0, "test": 50}``.
        fix: what the user can change (the config fields that size the splits).
    """
    empty = [split for split, count in rows.items() if count == 0]
    if empty:
        sizes = ", ".join(f"{split} {count}" for split, count in rows.items())
        raise DataError(f"the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} has no rows ({sizes}); "
                        f"its metrics would be NaN. {fix}")


# ------------------------------------------------------------------------------ available memory
def training_device() -> torch.device:
    """The device ``init_distributed()`` will give this process, known before the process group
    exists: ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _cpu_available_bytes() -> int:
    """The machine's available RAM: ``MemAvailable`` of /proc/meminfo, else free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_memory_bytes(device: torch.device) -> int:
    """Bytes this rank may still allocate on ``device``: the GPU's free memory, or on the CPU the
    machine's available RAM shared by the ``LOCAL_WORLD_SIZE`` ranks of this host."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return _cpu_available_bytes() // max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)


# ------------------------------------------------------------------------------ step memory
@dataclass(frozen=True)
class StepMemory:
    """Bytes one training step holds on one rank at ``batch_size`` rows."""

    batch_size: int
    activations: int
    dense: int  # parameters + gradients + optimizer state
    inputs: int  # the batch's own tensors

    @property
    def total(self) -> int:
        return self.activations + self.dense + self.inputs


def batch_input_bytes(spec, lengths: LengthDistribution, batch_size: int, retrieval: bool) -> int:
    """Bytes of one batch's tensors: B rows of ``lengths``'s typical batch.

    Ranking (:class:`~recsys.data.examples.RankingBatch`): per row one int64 id per sparse key,
    up to ``max_history`` per history key, the dense features ``[C + T]`` and labels / weights
    ``[A]`` each; per sequence token 4 int64 ids (item, actions, surface, timestamp) and its content
    embedding ``[C]``. Retrieval (:class:`~recsys.data.sequences.SequenceBatch`): per row 6 int64
    (lengths, offsets, user, targets), per token the item id, timestamp (int64) and actions (int32).
    """
    tokens = float(lengths.typical_batch(batch_size).sum())
    if retrieval:
        return int(I64 * 6 * batch_size + (2 * I64 + 4) * tokens)
    ids = 3 + len(spec.attribute_features) + spec.max_history * len(spec.history_features)
    per_row = I64 * ids + F32 * (spec.dense_dim + 2 * spec.num_actions)
    return int(per_row * batch_size + (4 * I64 + F32 * spec.content_dim) * tokens)


def step_memory(model: nn.Module, cfg, spec, lengths: LengthDistribution, batch_size: int,
                device_type: str) -> StepMemory:
    """The dense estimate of one step of ``model`` (meta is fine) at ``batch_size`` rows per rank."""
    from recsys.distributed.plan_lengths import lifelong_rows

    retrieval = type(model).__name__ == "SequentialRetrieval"
    work = Workload(batch_size, lengths, num_items=spec.num_items, fused_attention=device_type == "cuda",
                    **lifelong_rows(cfg.data))
    estimate = estimate_dense(model, work, cfg.optim.dense.name)
    return StepMemory(batch_size, estimate.activation_bytes, estimate.dense_bytes,
                      batch_input_bytes(spec, lengths, batch_size, retrieval))


def largest_fitting_batch(total_at: Callable[[int], int], budget: int, upper: int) -> int:
    """The largest B in ``1 .. upper`` with ``total_at(B) <= budget`` (0 if none); ``total_at``
    grows with B."""
    low, high = 0, upper
    while low < high:
        middle = (low + high + 1) // 2
        if total_at(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:,.2f} GiB"


def _sequence_knob(cfg) -> str:
    """The config field(s) that set the sequence lengths of a run's batches."""
    if cfg.data.lifelong.enabled:
        return "data.lifelong.lifelong_k / realtime_k / impression_k"
    return "data.max_sequence"


def check_batch_memory(model: nn.Module, cfg, spec, train_rows: int, log=None, device: torch.device | None = None,
                       headroom: float = MEMORY_HEADROOM) -> StepMemory:
    """Refuses a training step that would not fit in this rank's memory; returns its estimate.

    Args:
        model: the zoo model (built on the meta device; a ``RankingTask``'s inner model).
        cfg: the run's TrainConfig (``train.batch_size`` rows per rank, ``optim.dense.name``).
        spec: the data's FeatureSpec.
        train_rows: rows of the training split: no batch holds more.
        log: the run's events, whose users' histories give the sequence lengths (else sampled).
        device: where the step runs (default :func:`training_device`).
        headroom: share of the available memory not planned for.

    Raises:
        ConfigError: the estimate exceeds ``(1 - headroom)`` x the available memory; it names both
            in GiB, the largest ``train.batch_size`` that fits, ``data.max_sequence`` and more ranks.
    """
    from recsys.distributed.plan_lengths import plan_lengths

    device = device or training_device()
    lengths = plan_lengths(cfg, model, log=log)
    batch_size = max(min(cfg.train.batch_size, train_rows), 1)

    def total_at(b: int) -> int:
        return step_memory(model, cfg, spec, lengths, b, device.type).total

    memory = step_memory(model, cfg, spec, lengths, batch_size, device.type)
    available = available_memory_bytes(device)
    budget = int(available * (1 - headroom))
    if memory.total <= budget:
        return memory
    fits = largest_fitting_batch(total_at, budget, batch_size - 1)
    knob = _sequence_knob(cfg)
    batch_fix = (f"set train.batch_size={fits} (the largest that fits)" if fits
                 else f"even train.batch_size=1 does not fit: lower {knob}")
    raise ConfigError(
        f"one training step would need about {_gib(memory.total)} per rank (activations {_gib(memory.activations)} "
        f"for train.batch_size={batch_size} rows with sequences of up to {lengths.max} events "
        f"(data.max_sequence={cfg.data.max_sequence}); dense parameters, gradients and optimizer state "
        f"{_gib(memory.dense)}; batch inputs {_gib(memory.inputs)}) but only {_gib(available)} is available on "
        f"{device} ({_gib(budget)} after {headroom:.0%} headroom). To fix: {batch_fix}, lower {knob} "
        "(shorter sequences), or spread the global batch over more ranks (train.batch_size is per rank)."
    )
