"""HSTU's relative attention bias: one learned scalar per relative position and per time bucket.

HSTU adds ``rab^{p,t}`` to every attention score before its SiLU (paper, Eq. 2)::

    rab[i, j] = position_bias[pos(j) - pos(i) + L - 1] + time_bias[bucket(t_next(i) - t_j)]

for query token ``i`` and key token ``j`` of one sequence, with ``L`` the largest sequence length
the tables are built for (``position_bias`` has ``2L - 1`` entries, ``time_bias`` has
``num_buckets + 1``).

Time buckets: ``bucket(dt) = floor(ln(max(|dt|, 1)) / base)`` clipped to ``[0, num_buckets]``,
with ``base = 0.301`` and ``num_buckets = 128`` by default. These are the reference code's values
(natural log divided by 0.301 ~ log10(2): buckets grow by a factor ``e^0.301 ~ 1.35``, not 2).
Timestamps are integers in any unit (seconds in the public data sets).

``t_next(i)`` is the timestamp of the token after query ``i``; it makes the bias describe "how
long before the next action did the user see item j". Targets (the last ``num_targets[b]``
tokens of sequence ``b``, see :mod:`recsys.ops.hstu_attention`) are handled so that history
never depends on them and a target never depends on another target:

- the last history token uses ``next_timestamp[b]`` when it is given: the time of the event that
  follows the sequence, i.e. the request time of the prediction made after it. Retrieval
  evaluation passes the held-out target's timestamp, so the query token gets the same bias it was
  trained with (in training its next token's time), as the reference does by writing the
  target's timestamp into the slot after the history;
- otherwise a history token whose next token is a target (or that ends the sequence) uses its own
  timestamp; the reference code uses the next padded slot's timestamp instead, which makes the
  last history token depend on the first target (or on the padding value);
- a target query uses its own timestamp;
- every target sits at position ``h_b`` (the history length of its sequence) for the position
  bias, so a candidate's bias does not depend on its rank among the candidates (the reference's
  attention mask clamps target positions the same way).

This file holds the index arithmetic that the attention op, its layout and its kernels share
(``recsys/ops`` and ``recsys/kernels`` never import ``recsys/modules``); the learned tables live in
:class:`recsys.modules.relative_bias.RelativeAttentionBias`.

Shape letters: B sequences, N padded length, M queries per sequence, L table length.
"""

from __future__ import annotations

import torch

DEFAULT_NUM_TIME_BUCKETS = 128
DEFAULT_TIME_BUCKET_BASE = 0.301


def time_buckets(dt: torch.Tensor, num_buckets: int, base: float = DEFAULT_TIME_BUCKET_BASE) -> torch.Tensor:
    """``floor(ln(max(|dt|, 1)) / base)`` clipped to ``[0, num_buckets]``, as int64.

    Args:
        dt: integer time differences, any shape.
        num_buckets: the largest bucket index (the table has ``num_buckets + 1`` rows).
        base: width of one bucket in natural-log units.
    """
    magnitude = dt.abs().clamp(min=1).to(torch.float64)
    return torch.floor(torch.log(magnitude) / base).to(torch.int64).clamp(0, num_buckets)


def history_lengths(lengths: torch.Tensor, num_targets: torch.Tensor | None) -> torch.Tensor:
    """``[B]`` number of non-target tokens per sequence (``lengths - num_targets``)."""
    if num_targets is None:
        return lengths
    return lengths - num_targets.to(lengths.dtype)


def effective_positions(lengths: torch.Tensor, num_targets: torch.Tensor | None, n: int) -> torch.Tensor:
    """``[B, n]`` position of each padded slot for the position bias: targets (and padding) sit at ``h_b``."""
    positions = torch.arange(n, device=lengths.device).expand(lengths.numel(), n)  # [B, n]
    return torch.minimum(positions, history_lengths(lengths, num_targets).view(-1, 1))


def next_timestamps(
    padded_timestamps: torch.Tensor,
    lengths: torch.Tensor,
    num_targets: torch.Tensor | None,
    next_timestamp: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, N]`` ``t_next`` of every slot: the next history token's timestamp; for the last
    history token ``next_timestamp[b]`` when given; else the slot's own timestamp.

    Args:
        padded_timestamps: ``[B, N]`` int64 timestamps, any value in padding.
        lengths: ``[B]`` sequence lengths.
        num_targets: ``[B]`` targets at the end of each sequence, or None.
        next_timestamp: ``[B]`` int64 time of the event after each sequence's history, or None.
    """
    n = padded_timestamps.size(1)
    shifted = torch.cat([padded_timestamps[:, 1:], padded_timestamps[:, -1:]], dim=1)  # [B, N]
    slots = torch.arange(n, device=padded_timestamps.device).view(1, n)
    history = history_lengths(lengths, num_targets).view(-1, 1)  # [B, 1]
    t_next = torch.where(slots + 1 < history, shifted, padded_timestamps)  # [B, N]
    if next_timestamp is not None:
        t_next = torch.where(slots + 1 == history, next_timestamp.view(-1, 1).to(t_next.dtype), t_next)
    return t_next


def num_position_entries(position_bias: torch.Tensor | None) -> int | None:
    """``2L - 1`` rows of a position table, None without one."""
    return None if position_bias is None else position_bias.numel()


def num_time_entries(time_bias: torch.Tensor | None) -> int | None:
    """``num_buckets + 1`` rows of a time table, None without one."""
    return None if time_bias is None else time_bias.numel()


def relative_bias_index(
    query_slots: torch.Tensor,
    lengths: torch.Tensor,
    num_targets: torch.Tensor | None,
    padded_timestamps: torch.Tensor | None,
    position_entries: int | None,
    time_entries: int | None,
    time_bucket_base: float,
    num_slots: int,
    next_timestamp: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, M, N]`` int64 index of each (query, key) pair into :func:`combined_bias_table`.

    The index depends on the sequences and on the table sizes only, not on the learned values,
    so an encoder computes it once and every layer gathers its own tables with it.

    Args:
        query_slots, lengths, num_targets, padded_timestamps, time_bucket_base: as
            :func:`relative_attention_bias`.
        position_entries: ``2L - 1``, or None without a position table.
        time_entries: ``num_buckets + 1``, or None without a time table (then
            ``padded_timestamps`` may be None).
        num_slots: N.
        next_timestamp: ``[B]`` ``t_next`` of each last history token, or None (see :func:`next_timestamps`).
    """
    index = None
    if position_entries is not None:
        index = _position_index(query_slots, lengths, num_targets, position_entries, num_slots)
    if time_entries is not None:
        buckets = _time_index(
            query_slots, lengths, num_targets, padded_timestamps, time_entries, time_bucket_base, next_timestamp
        )
        index = buckets if index is None else index * time_entries + buckets
    if index is None:
        raise ValueError("relative_bias_index needs a position table, a time table or both")
    return index


def combined_bias_table(position_bias: torch.Tensor | None, time_bias: torch.Tensor | None) -> torch.Tensor:
    """``[P * Tt]`` flat table ``position_bias[p] + time_bias[t]`` at ``p * Tt + t`` (one table alone as is)."""
    if position_bias is None:
        return time_bias
    if time_bias is None:
        return position_bias
    return (position_bias.unsqueeze(1) + time_bias.unsqueeze(0)).flatten()  # [P * Tt]


def gather_relative_bias(
    index: torch.Tensor, position_bias: torch.Tensor | None, time_bias: torch.Tensor | None
) -> torch.Tensor:
    """Bias ``[*S]`` of the pairs named by :func:`relative_bias_index`'s ``[*S]`` index: one gather.

    ``index_select`` rather than advanced indexing: its backward is an ``index_add`` into the
    small combined table, much cheaper than the sorting ``index_put`` of ``table[index]``.
    """
    table = combined_bias_table(position_bias, time_bias)
    return table.index_select(0, index.flatten()).view(index.shape)


def _position_index(query_slots, lengths, num_targets, position_entries, n) -> torch.Tensor:
    max_distance = (position_entries - 1) // 2  # L - 1
    positions = effective_positions(lengths, num_targets, n)  # [B, N]
    query_positions = positions.gather(1, query_slots)  # [B, M]
    distance = positions.unsqueeze(1) - query_positions.unsqueeze(2)  # [B, M, N]
    return distance.clamp(-max_distance, max_distance) + max_distance


def _time_index(query_slots, lengths, num_targets, padded_timestamps, time_entries, base, next_timestamp) -> torch.Tensor:
    query_times = next_timestamps(padded_timestamps, lengths, num_targets, next_timestamp).gather(1, query_slots)  # [B, M]
    dt = query_times.unsqueeze(2) - padded_timestamps.unsqueeze(1)  # [B, M, N]
    return time_buckets(dt, time_entries - 1, base)  # [B, M, N]
