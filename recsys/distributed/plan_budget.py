"""One rank's memory budget of a training step, the largest batch that fits, and why a plan cannot.

Per rank the step holds (bytes): the embedding shards the planner placed there, the dense model
(parameters, gradients, optimizer state: replicated), the activations kept for backward (grow with
the batch and the sequence lengths) and the input KJTs (TorchRec's reservation: 2 pipelined
batches x 10 copies of the ids). The planner gets the dense and activation bytes as its storage
reservation (``HeuristicalStorageReservation(dense_tensor_estimate=...)``), so it places tables
only in what is left of ``capacity x (1 - headroom)``.

Example::

    budget = MemoryBudget(capacity=80 * GB, headroom=0.15, dense=..., activations=..., inputs=..., tables=...)
    budget.fits, budget.free
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List

from recsys.distributed.topology import GB

MAX_BATCH = 1 << 22


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes per rank on the memory that trains (HBM on GPUs, DDR on CPUs).

    Args:
        capacity: the device's memory per rank.
        headroom: fraction of ``capacity`` kept free (allocator fragmentation, workspaces, CUDA context).
        dense: parameters + gradients + optimizer state of the dense (non-table) layers.
        activations: activations saved for backward at the planned batch.
        inputs: the input KJTs' reservation.
        tables: the largest per-rank total of embedding shards (0 before planning).
        transient: what the step's peak holds beyond dense state and saved activations (the
            backward's gradient buffers, the optimizer's temporaries:
            :attr:`~recsys.distributed.dense_estimate.DenseEstimate.transient_bytes`).
        fixed: allocations of every step whatever the model (cuBLAS workspaces,
            :attr:`~recsys.distributed.topology.TopologyConfig.fixed_bytes`).
    """

    capacity: float
    headroom: float
    dense: float
    activations: float
    inputs: float
    tables: float = 0.0
    transient: float = 0.0
    fixed: float = 0.0

    @property
    def usable(self) -> float:
        return self.capacity * (1.0 - self.headroom)

    @property
    def used(self) -> float:
        return self.dense + self.activations + self.transient + self.fixed + self.inputs + self.tables

    @property
    def fits(self) -> bool:
        return self.used <= self.usable

    def as_gb(self) -> Dict[str, float]:
        return {name: getattr(self, name) / GB for name in ("capacity", "usable", "dense", "activations", "transient",
                                                             "fixed", "inputs", "tables", "used")}


def largest_batch(bytes_at: Callable[[int], float], usable: float) -> int:
    """The largest B in ``1 .. MAX_BATCH`` with ``bytes_at(B) <= usable`` (bytes grow with B); 0 if none."""
    if bytes_at(1) > usable:
        return 0
    low, high = 1, 2
    while high <= MAX_BATCH and bytes_at(high) <= usable:
        low, high = high, high * 2
    high = min(high, MAX_BATCH + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if bytes_at(middle) <= usable else (low, middle)
    return low


def does_not_fit_message(
    model: str, world_size: int, memory: str, batch_size: int, budget: MemoryBudget, parts: Dict[str, float],
    fitting_batch: int, max_length: int, mean_length: float, knobs: List[str],
) -> str:
    """The refusal: what each part needs per rank against the capacity, and the knobs that change it."""
    gb = budget.as_gb()
    biggest = sorted(parts.items(), key=lambda kv: -kv[1])[:3]
    lines = [
        f"{model} does not fit {world_size} ranks at train.batch_size={batch_size} per rank: it needs "
        f"{gb['used']:.1f} GB of {memory} per rank, {gb['usable']:.1f} GB are usable "
        f"({gb['capacity']:.0f} GB less {budget.headroom:.0%} headroom):",
        f"  activations kept for backward {gb['activations']:.1f} GB (sequences up to {max_length} tokens, "
        f"mean {mean_length:.0f}; largest parts: "
        + ", ".join(f"{name} {value / GB:.1f} GB" for name, value in biggest) + ")",
        f"  backward / optimizer transients at the step's peak {gb['transient']:.2f} GB",
        f"  dense parameters + gradients + optimizer state {gb['dense']:.2f} GB",
        f"  fixed allocations (cuBLAS workspaces) {gb['fixed']:.2f} GB",
        f"  input KJTs {gb['inputs']:.2f} GB",
        f"  embedding tables at least {gb['tables']:.2f} GB per rank (spread evenly), with optimizer state"
        if budget.tables else "  embedding tables: not placed (nothing is left for them)",
        "What would make it fit:",
    ]
    if fitting_batch >= 1:
        lines.append(f"  - train.batch_size={fitting_batch} (the largest batch per rank that fits)")
    else:
        lines.append("  - no batch size fits: even one row per rank exceeds the memory left")
    lines += [f"  - {knob}" for knob in knobs]
    return "\n".join(lines)
