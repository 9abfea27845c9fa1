"""The planner's storage reservation: the dense estimate of a step, held back on every rank.

TorchRec's ``HeuristicalStorageReservation`` takes an explicit ``dense_tensor_estimate`` (bytes per
rank): we pass parameters + gradients + optimizer state + activations kept for backward
(:func:`~recsys.distributed.dense_estimate.estimate_dense`), so tables are placed only in what
the step leaves free. It also reserves the input KJTs and ``headroom`` of HBM, and TorchRec's stats
table shows the reservation. ``recsys plan`` and the training recipes plan with the same one.

Example::

    reservation = dense_reservation(estimate, headroom=0.15)
    EmbeddingShardingPlanner(topology=..., batch_size=B, storage_reservation=reservation)
"""

from __future__ import annotations

import warnings

from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation

from recsys.distributed.dense_estimate import DenseEstimate

DEFAULT_HEADROOM = 0.15  # TorchRec's default percentage


def dense_reservation(estimate: DenseEstimate, headroom: float = DEFAULT_HEADROOM,
                      fixed_bytes: float = 0.0) -> HeuristicalStorageReservation:
    """A reservation of ``estimate``'s peak (dense state + the largest phase of the step, see
    :attr:`~recsys.distributed.dense_estimate.DenseEstimate.peak_bytes`) plus ``fixed_bytes`` (the
    cuBLAS workspaces) on every rank, plus ``headroom`` of HBM."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchRec's notice on its own dense guess: we pass ours
        return HeuristicalStorageReservation(
            percentage=headroom, dense_tensor_estimate=max(int(estimate.peak_bytes + fixed_bytes), 1)
        )


def training_reservation(model, cfg, spec, device_type: str, log=None) -> HeuristicalStorageReservation:
    """The reservation of a training run: ``model`` (meta is fine) at ``cfg.train.batch_size`` per
    rank on ``device_type``, with the sequence lengths of the run's data (``log`` if already loaded)."""
    from recsys.distributed.dense_estimate import Workload, estimate_dense
    from recsys.distributed.plan_lengths import lifelong_rows, plan_lengths

    inner = getattr(model, "model", model)  # a RankingTask holds the zoo model
    lengths = plan_lengths(cfg, inner, log=log)
    work = Workload(cfg.train.batch_size, lengths, num_items=spec.num_items, fused_attention=device_type == "cuda",
                    accelerator=device_type == "cuda",
                    **lifelong_rows(cfg.data))
    from recsys.distributed.topology import TopologyConfig

    fixed = TopologyConfig(compute_device="cuda").fixed_bytes if device_type == "cuda" else 0.0
    return dense_reservation(estimate_dense(model, work, cfg.optim.dense.name), fixed_bytes=fixed)
