"""HSTU's relative attention bias: the learned tables of one layer, and the dense bias for inspection.

The semantics (``rab[i, j] = position_bias[...] + time_bias[bucket(t_next(i) - t_j)]``, paper
Eq. 2, with the targets' and ``t_next`` rules) and the index arithmetic live in
:mod:`recsys.ops.relative_bias_index`, shared with the attention op and its kernels; its names are
re-exported here.

Shape letters: B sequences, N padded length, M queries per sequence, L table length.
"""

from __future__ import annotations

import torch
from torch import nn

from recsys.ops.relative_bias_index import (  # noqa: F401  (re-exported)
    DEFAULT_NUM_TIME_BUCKETS,
    DEFAULT_TIME_BUCKET_BASE,
    combined_bias_table,
    effective_positions,
    gather_relative_bias,
    history_lengths,
    next_timestamps,
    num_position_entries,
    num_time_entries,
    relative_bias_index,
    time_buckets,
)


def relative_attention_bias(
    query_slots: torch.Tensor,
    lengths: torch.Tensor,
    num_targets: torch.Tensor | None = None,
    padded_timestamps: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
    time_bias: torch.Tensor | None = None,
    time_bucket_base: float = DEFAULT_TIME_BUCKET_BASE,
    num_slots: int | None = None,
    next_timestamp: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense bias ``[B, M, N]`` between the query slots and every key slot of a padded batch.

    Args:
        query_slots: ``[B, M]`` int64 index of each query in its padded sequence.
        lengths: ``[B]`` true sequence lengths.
        num_targets: ``[B]`` targets at the end of each sequence, or None.
        padded_timestamps: ``[B, N]`` int64; required when ``time_bias`` is given.
        position_bias: ``[2L - 1]`` table indexed by ``pos(j) - pos(i) + L - 1``; distances
            beyond ``L - 1`` use the end entries.
        time_bias: ``[num_buckets + 1]`` table indexed by :func:`time_buckets`.
        time_bucket_base: see :func:`time_buckets`.
        num_slots: N, needed when ``padded_timestamps`` is None.
        next_timestamp: ``[B]`` int64 ``t_next`` of each last history token (see :func:`next_timestamps`), or None.

    Returns:
        ``[B, M, N]`` bias in the tables' dtype (zeros when both tables are None). Padding slots
        get arbitrary finite values: the attention mask removes them.
    """
    n = padded_timestamps.size(1) if padded_timestamps is not None else num_slots
    if n is None:
        raise ValueError("relative_attention_bias needs padded_timestamps or num_slots")
    if position_bias is None and time_bias is None:
        return torch.zeros(*query_slots.shape, n, dtype=torch.float32, device=query_slots.device)
    if time_bias is not None and padded_timestamps is None:
        raise ValueError("time_bias needs padded_timestamps")
    index = relative_bias_index(
        query_slots, lengths, num_targets, padded_timestamps,
        num_position_entries(position_bias), num_time_entries(time_bias), time_bucket_base, n, next_timestamp,
    )  # [B, M, N]
    return gather_relative_bias(index, position_bias, time_bias)


def padded_relative_bias(
    lengths: torch.Tensor,
    num_slots: int,
    num_targets: torch.Tensor | None = None,
    padded_timestamps: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
    time_bias: torch.Tensor | None = None,
    time_bucket_base: float = DEFAULT_TIME_BUCKET_BASE,
    next_timestamp: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense bias ``[B, N, N]`` of a padded batch, every slot a query (see :func:`relative_attention_bias`)."""
    slots = torch.arange(num_slots, device=lengths.device).expand(lengths.numel(), num_slots)  # [B, N]
    return relative_attention_bias(
        slots, lengths, num_targets, padded_timestamps, position_bias, time_bias, time_bucket_base, num_slots,
        next_timestamp,
    )


class RelativeAttentionBias(nn.Module):
    """The learned position and time tables of one HSTU layer.

    Args:
        max_seq_len: L, the longest sequence (history plus targets) the layer will see.
        num_time_buckets: largest time bucket; the time table has ``num_time_buckets + 1`` rows.
        time_bucket_base: bucket width in natural-log units (see :func:`time_buckets`).
        use_position: learn the position table.
        use_time: learn the time table (the layer then needs timestamps).

    Example::

        rab = RelativeAttentionBias(max_seq_len=8)
        rab.op_kwargs()["position_bias"].shape  # torch.Size([15])
    """

    def __init__(
        self,
        max_seq_len: int,
        num_time_buckets: int = DEFAULT_NUM_TIME_BUCKETS,
        time_bucket_base: float = DEFAULT_TIME_BUCKET_BASE,
        use_position: bool = True,
        use_time: bool = True,
    ) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.num_time_buckets = num_time_buckets
        self.time_bucket_base = time_bucket_base
        self.position_weights = nn.Parameter(torch.empty(2 * max_seq_len - 1)) if use_position else None
        self.time_weights = nn.Parameter(torch.empty(num_time_buckets + 1)) if use_time else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02), as the reference initialises both tables."""
        for table in (self.position_weights, self.time_weights):
            if table is not None:
                nn.init.normal_(table, mean=0.0, std=0.02)

    def op_kwargs(self) -> dict:
        """The bias arguments of :func:`recsys.ops.hstu_attention.hstu_attention`."""
        return {
            "position_bias": self.position_weights,
            "time_bias": self.time_weights,
            "time_bucket_base": self.time_bucket_base,
        }

    def forward(
        self,
        lengths: torch.Tensor,
        num_slots: int,
        num_targets: torch.Tensor | None = None,
        padded_timestamps: torch.Tensor | None = None,
        next_timestamp: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, N, N]`` dense bias of a padded batch (for inspection and tests)."""
        return padded_relative_bias(
            lengths, num_slots, num_targets, padded_timestamps,
            self.position_weights, self.time_weights, self.time_bucket_base, next_timestamp,
        )
