"""Pure-PyTorch reference of jagged HSTU attention (the semantics every kernel must match).

For each sequence ``b`` of length ``n_b`` with ``h_b = n_b - num_targets[b]`` history tokens::

    A = SiLU(alpha * Q K^T + rab^{p,t}) * mask        # [n_b, n_b], paper Eq. 2
    O = A V / N_b                                     # [n_b, Dv]

- ``mask[i, j]``: key ``j`` is a real token, ``j <= i`` when causal, and two different targets
  never see each other (a target sees the history and itself).
- ``N_b = max(h_b, 1)`` for ``normalization="length"`` (the user's true history length; equals
  ``n_b`` without targets) or ``max_seq_len`` for ``"max_len"`` (what the reference code does).
  Excluding targets from ``N_b`` is deliberate: it keeps history outputs independent of the
  targets appended after it and a target's output independent of how many other targets share
  its pass, which M-FALCON's caching and micro-batching rely on.
- ``rab`` comes from :func:`recsys.modules.relative_bias.relative_attention_bias`.

The computation pads to ``[B, n_max, H, D]`` with plain index arithmetic rather than
``torch.ops.fbgemm.jagged_to_padded_dense``: fbgemm's CPU build lacks float64, which the
gradient checks need. Cost is ``O(B * n_max^2)`` memory: this is the reference, not the fast path.

Shape letters: T tokens (all sequences), B sequences, H heads, Dqk / Dv head dims, N padded
length, M padded queries per sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recsys.modules.relative_bias import DEFAULT_TIME_BUCKET_BASE, history_lengths, relative_attention_bias


def jagged_slots(offsets: torch.Tensor, num_slots: int) -> torch.Tensor:
    """``[T]`` flat index ``b * num_slots + position`` of every jagged row in a padded ``[B, num_slots]``."""
    lengths = offsets[1:] - offsets[:-1]
    total = int(offsets[-1])
    seq_ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths, output_size=total)
    local = torch.arange(total, device=offsets.device) - offsets[seq_ids]
    return seq_ids * num_slots + local


def jagged_to_padded(values: torch.Tensor, offsets: torch.Tensor, num_slots: int, padding_value=0) -> torch.Tensor:
    """``[T, *F]`` jagged rows -> ``[B, num_slots, *F]`` padded (differentiable)."""
    num_seqs = offsets.numel() - 1
    flat = values.new_full((num_seqs * num_slots, *values.shape[1:]), padding_value)
    flat = flat.index_copy(0, jagged_slots(offsets, num_slots), values)
    return flat.view(num_seqs, num_slots, *values.shape[1:])


def padded_to_jagged(padded: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``[B, N, *F]`` padded -> ``[T, *F]`` jagged rows (differentiable)."""
    num_seqs, num_slots = padded.shape[:2]
    return padded.reshape(num_seqs * num_slots, *padded.shape[2:])[jagged_slots(offsets, num_slots)]


def attention_mask(
    query_slots: torch.Tensor,
    query_lengths: torch.Tensor,
    lengths: torch.Tensor,
    num_targets: torch.Tensor | None,
    num_slots: int,
    causal: bool,
) -> torch.Tensor:
    """``[B, M, N]`` bool: which key slot each query slot attends to.

    Args:
        query_slots: ``[B, M]`` position of each query in its sequence.
        query_lengths: ``[B]`` real queries per sequence (rows beyond are padding).
        lengths: ``[B]`` sequence lengths.
        num_targets: ``[B]`` targets at the end of each sequence, or None.
        num_slots: N.
        causal: keys after the query are hidden.
    """
    keys = torch.arange(num_slots, device=lengths.device).view(1, 1, -1)  # [1, 1, N]
    queries = query_slots.unsqueeze(2)  # [B, M, 1]
    rows = torch.arange(query_slots.size(1), device=lengths.device).view(1, -1, 1)  # [1, M, 1]
    mask = (keys < lengths.view(-1, 1, 1)) & (rows < query_lengths.view(-1, 1, 1))  # [B, M, N]
    if causal:
        mask = mask & (keys <= queries)
    if num_targets is not None:
        first_target = history_lengths(lengths, num_targets).view(-1, 1, 1)
        between_targets = (keys >= first_target) & (queries >= first_target) & (keys != queries)
        mask = mask & ~between_targets
    return mask


def hstu_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float | None = None,
    timestamps: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
    time_bias: torch.Tensor | None = None,
    time_bucket_base: float = DEFAULT_TIME_BUCKET_BASE,
    num_targets: torch.Tensor | None = None,
    causal: bool = True,
    normalization: str = "length",
    query_offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Jagged HSTU attention; arguments as :func:`recsys.ops.hstu_attention.hstu_attention`.

    Returns:
        ``[Tq, H, Dv]``: one row per query (every token, or the last tokens named by
        ``query_offsets``).
    """
    num_queries, num_heads, _ = q.shape
    lengths = seq_offsets[1:] - seq_offsets[:-1]  # [B]
    query_offsets = seq_offsets if query_offsets is None else query_offsets
    query_lengths = query_offsets[1:] - query_offsets[:-1]  # [B]
    n = int(lengths.max()) if lengths.numel() else 0
    m = int(query_lengths.max()) if query_lengths.numel() else 0
    if num_queries == 0 or n == 0:
        return q.new_zeros(num_queries, num_heads, v.size(2))

    query_slots = (lengths - query_lengths).view(-1, 1) + torch.arange(m, device=q.device)  # [B, M]
    query_slots = query_slots.clamp(max=n - 1)  # padding rows point at a real slot
    padded_q = jagged_to_padded(q, query_offsets, m)  # [B, M, H, Dqk]
    padded_k = jagged_to_padded(k, seq_offsets, n)  # [B, N, H, Dqk]
    padded_v = jagged_to_padded(v, seq_offsets, n)  # [B, N, H, Dv]
    scale = alpha if alpha is not None else 1.0 / math.sqrt(q.size(2))

    scores = torch.einsum("bmhd,bnhd->bhmn", padded_q, padded_k) * scale  # [B, H, M, N]
    if position_bias is not None or time_bias is not None:
        padded_timestamps = None if timestamps is None else jagged_to_padded(timestamps, seq_offsets, n)  # [B, N]
        bias = relative_attention_bias(
            query_slots, lengths, num_targets, padded_timestamps, position_bias, time_bias, time_bucket_base, n
        )  # [B, M, N]
        scores = scores + bias.unsqueeze(1).to(scores.dtype)
    mask = attention_mask(query_slots, query_lengths, lengths, num_targets, n, causal)  # [B, M, N]
    weights = F.silu(scores) * mask.unsqueeze(1)  # [B, H, M, N]
    out = torch.einsum("bhmn,bnhd->bmhd", weights, padded_v)  # [B, M, H, Dv]
    out = out / _normalizer(lengths, num_targets, max_seq_len, normalization).view(-1, 1, 1, 1).to(out.dtype)
    return padded_to_jagged(out, query_offsets)  # [Tq, H, Dv]


def _normalizer(lengths, num_targets, max_seq_len: int, normalization: str) -> torch.Tensor:
    """``[B]`` divisor N_b of each sequence's attention output."""
    if normalization == "max_len":
        return torch.full_like(lengths, max_seq_len)
    return history_lengths(lengths, num_targets).clamp(min=1)
