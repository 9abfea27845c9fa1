"""Pure-PyTorch reference of jagged HSTU attention (the semantics every kernel must match).

For each sequence ``b`` of length ``n_b`` with ``h_b = n_b - num_targets[b]`` history tokens::

    A = SiLU(alpha * Q K^T + rab^{p,t}) * mask        # [n_b, n_b], paper Eq. 2
    O_i = (A V)_i / N_i                               # [n_b, Dv]

- ``mask[i, j]``: key ``j`` is a real token, ``j <= i`` when causal, two different targets
  never see each other (a target sees the history and itself), optionally only keys within
  ``max_attn_len`` positions, and optionally a contextual prefix of ``num_contextual`` tokens that
  every query sees (:func:`recsys.ops.hstu_attention_layout.attention_mask`).
- ``N_i`` per query: for ``normalization="length"`` the number of keys query ``i`` attends to
  (``sum_j mask[i, j]``, at least 1: ``i + 1`` for a causal history token, ``h_b + 1`` for a
  target); ``max_seq_len`` for ``"max_len"`` (what the reference code does). Both are causal: no
  output depends on a token it cannot see (in training, position ``i`` never learns how long its
  future is), history outputs do not depend on the targets appended after it, and a target's output
  does not depend on how many other targets share its pass, which M-FALCON's caching and
  micro-batching rely on.
- ``rab`` is gathered through :func:`recsys.ops.relative_bias_index.relative_bias_index`.

The computation pads to ``[B, n_max, H, D]``: through ``torch.ops.fbgemm.jagged_to_padded_dense``
/ ``dense_to_jagged`` for float32, through index arithmetic otherwise (fbgemm's CPU build lacks
float64, which the gradient checks need). Cost is ``O(B * n_max^2)`` memory.

Everything that depends on the sequences only (padding indices, mask, normalizer, bias indices)
lives in a :class:`recsys.ops.hstu_attention_layout.HSTUAttentionLayout`: an encoder builds it
once per pass and every layer reuses it; without one, each call builds its own.

Shape letters: T tokens (all sequences), B sequences, H heads, Dqk / Dv head dims, N padded
length, M padded queries per sequence.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from recsys.ops.relative_bias_index import (
    DEFAULT_TIME_BUCKET_BASE,
    gather_relative_bias,
    num_position_entries,
    num_time_entries,
)
from recsys.ops.hstu_attention_layout import (
    HSTUAttentionLayout,
    attention_mask,
    build_hstu_attention_layout,
    jagged_slots,
)

__all__ = ["attention_mask", "hstu_attention_reference", "jagged_slots", "jagged_to_padded", "padded_to_jagged"]


def jagged_to_padded(
    values: torch.Tensor, offsets: torch.Tensor, num_slots: int, padding_value=0, slots: torch.Tensor | None = None
) -> torch.Tensor:
    """``[T, *F]`` jagged rows -> ``[B, num_slots, *F]`` padded (differentiable).

    Args:
        values: ``[T, *F]``; every sequence at most ``num_slots`` long.
        offsets: ``[B + 1]`` int64.
        num_slots: N.
        padding_value: value of the padding slots.
        slots: ``[T]`` precomputed :func:`jagged_slots` (index path only).
    """
    num_seqs = offsets.numel() - 1
    if _use_fbgemm(values):
        flat = values.reshape(values.size(0), -1)  # [T, F]
        padded = torch.ops.fbgemm.jagged_to_padded_dense(flat, [offsets], [num_slots], float(padding_value))
        return padded.view(num_seqs, num_slots, *values.shape[1:])  # [B, N, *F]
    slots = jagged_slots(offsets, num_slots, values.size(0)) if slots is None else slots
    flat = values.new_full((num_seqs * num_slots, *values.shape[1:]), padding_value)
    flat = flat.index_copy(0, slots, values)
    return flat.view(num_seqs, num_slots, *values.shape[1:])


def padded_to_jagged(
    padded: torch.Tensor, offsets: torch.Tensor, slots: torch.Tensor | None = None, num_rows: int | None = None
) -> torch.Tensor:
    """``[B, N, *F]`` padded -> ``[T, *F]`` jagged rows (differentiable).

    Args:
        padded: ``[B, N, *F]``.
        offsets: ``[B + 1]`` int64.
        slots: ``[T]`` precomputed :func:`jagged_slots` (index path only).
        num_rows: T (``offsets[-1]``); given, no host sync.
    """
    num_seqs, num_slots = padded.shape[:2]
    if _use_fbgemm(padded):
        dense = padded.reshape(num_seqs, num_slots, -1)  # [B, N, F]
        values = torch.ops.fbgemm.dense_to_jagged(dense, [offsets], total_L=num_rows)[0]  # [T, F]
        return values.view(values.size(0), *padded.shape[2:])
    slots = jagged_slots(offsets, num_slots, num_rows) if slots is None else slots
    return padded.reshape(num_seqs * num_slots, *padded.shape[2:]).index_select(0, slots)


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
    normalization: str = "max_len",
    query_offsets: torch.Tensor | None = None,
    layout: HSTUAttentionLayout | None = None,
    next_timestamp: torch.Tensor | None = None,
    max_attn_len: int = 0,
    num_contextual: int = 0,
    deterministic: bool | None = None,
) -> torch.Tensor:
    """Jagged HSTU attention; arguments as :func:`recsys.ops.hstu_attention.hstu_attention`
    (``deterministic`` is accepted for the common signature and ignored).

    Returns:
        ``[Tq, H, Dv]``: one row per query (every token, or the last tokens named by
        ``query_offsets``).
    """
    if layout is None:
        layout = build_hstu_attention_layout(
            seq_offsets, max_seq_len, num_rows=k.size(0), num_queries=q.size(0), num_targets=num_targets,
            timestamps=timestamps, causal=causal, normalization=normalization, query_offsets=query_offsets,
            next_timestamp=next_timestamp, max_attn_len=max_attn_len, num_contextual=num_contextual,
        )
    num_queries, num_heads, _ = q.shape
    n, m = layout.num_slots, layout.num_query_slots
    if num_queries == 0 or n == 0:
        return q.new_zeros(num_queries, num_heads, v.size(2))

    padded_q = jagged_to_padded(q, layout.query_offsets, m, slots=layout.query_row_slots)  # [B, M, H, Dqk]
    padded_k = jagged_to_padded(k, seq_offsets, n, slots=layout.key_slots)  # [B, N, H, Dqk]
    padded_v = jagged_to_padded(v, seq_offsets, n, slots=layout.key_slots)  # [B, N, H, Dv]
    scale = alpha if alpha is not None else 1.0 / math.sqrt(q.size(2))

    scores = torch.einsum("bmhd,bnhd->bhmn", padded_q, padded_k) * scale  # [B, H, M, N]
    if position_bias is not None or time_bias is not None:
        index = layout.bias_index(num_position_entries(position_bias), num_time_entries(time_bias), time_bucket_base)
        bias = gather_relative_bias(index, position_bias, time_bias)  # [B, M, N]
        scores = scores + bias.unsqueeze(1).to(scores.dtype)
    weights = F.silu(scores) * layout.mask.unsqueeze(1)  # [B, H, M, N]
    out = torch.einsum("bhmn,bnhd->bmhd", weights, padded_v)  # [B, M, H, Dv]
    out = out / layout.normalizer.view(*layout.normalizer.shape, 1, 1).to(out.dtype)  # [B, M, H, Dv] / [B, M, 1, 1]
    return padded_to_jagged(out, layout.query_offsets, slots=layout.query_row_slots, num_rows=num_queries)  # [Tq, H, Dv]


def _use_fbgemm(values: torch.Tensor) -> bool:
    """fbgemm's jagged ops for float32 rows on CPU / CUDA; the index path otherwise (e.g. float64)."""
    return (
        values.dtype == torch.float32 and values.dim() >= 2 and values.device.type in ("cpu", "cuda") and _fbgemm_loaded()
    )


@functools.cache
def _fbgemm_loaded() -> bool:
    """Whether ``torch.ops.fbgemm``'s jagged ops are registered (importing fbgemm_gpu registers them)."""
    try:
        import fbgemm_gpu  # noqa: F401
    except (ImportError, OSError):
        return False
    return hasattr(torch.ops.fbgemm, "jagged_to_padded_dense") and hasattr(torch.ops.fbgemm, "dense_to_jagged")
