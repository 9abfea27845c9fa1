"""Jagged HSTU attention, forward, in one Triton kernel: no padding, no [B, H, N, N] scores in memory.

Same signature and result as :func:`recsys.ops.hstu_attention_reference.hstu_attention_reference`
(read it for the semantics)::

    O_i = sum_j SiLU(alpha q_i . k_j + rab_ij) * mask_ij * v_j / N_i        (paper Eq. 2)

One program computes ``BLOCK_M`` query rows of one (sequence, head) pair: it reads its queries
once, walks the sequence's keys and values in ``BLOCK_N`` tiles straight from the jagged
``[T, H, D]`` tensors (with causal attention it stops at the last key its rows may see), and
accumulates ``SiLU(S) V`` in float32. HSTU has no softmax, so there is no running maximum or
rescaling: each tile's contribution is final. The mask (real keys, causal, targets that do not see
each other) is computed in the kernel from the lengths; the relative bias is read through the
layout's ``[B, M, N]`` index into the combined position x time table, so the bias semantics are
exactly the reference's (:func:`recsys.ops.relative_bias_index.relative_bias_index`).

float32 inputs follow PyTorch's matmul setting: TF32 tensor cores when
``torch.backends.cuda.matmul.allow_tf32`` is on, exact IEEE products (and no speed-up over the
reference) when it is off, so ``"auto"`` only picks the kernel for float32 with TF32 allowed.

Forward only: the kernel has no backward. :func:`recsys.ops.hstu_attention.hstu_attention` picks
it under ``kernel="auto"`` on CUDA when no gradient is needed (evaluation, retrieval, M-FALCON
scoring); training runs the reference.

Shapes: T tokens, Tq query rows, B sequences, H heads, Dqk / Dv head dims, M / N padded query /
key slots of the layout.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from recsys.errors import ConfigError
from recsys.ops.relative_bias_index import (
    DEFAULT_TIME_BUCKET_BASE,
    combined_bias_table,
    num_position_entries,
    num_time_entries,
)
from recsys.ops.hstu_attention_layout import HSTUAttentionLayout, build_hstu_attention_layout


@triton.jit
def _hstu_attention_forward_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr,
    seq_offsets_ptr, query_offsets_ptr, num_targets_ptr, normalizer_ptr,
    bias_index_ptr, bias_table_ptr,
    alpha,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    num_heads, num_query_slots, num_slots, dim_qk, dim_v,
    CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pair = tl.program_id(0)  # (sequence, head)
    b = pair // num_heads
    h = pair % num_heads
    key_start = tl.load(seq_offsets_ptr + b)
    length = tl.load(seq_offsets_ptr + b + 1) - key_start
    query_start = tl.load(query_offsets_ptr + b)
    query_len = tl.load(query_offsets_ptr + b + 1) - query_start
    first_query = length - query_len  # position of the first query row in its sequence
    if HAS_TARGETS:
        first_target = length - tl.load(num_targets_ptr + b)

    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows of this program
    row_ok = rows < query_len
    positions = first_query + rows  # [BLOCK_M] positions of the queries in the sequence
    dqk = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + (query_start + rows)[:, None] * stride_qt + h * stride_qh + dqk[None, :],
                mask=row_ok[:, None] & (dqk[None, :] < dim_qk), other=0.0)  # [BLOCK_M, BLOCK_DQK]

    end = length
    if CAUSAL:  # keys after the last query row of the block are hidden from all its rows
        end = tl.minimum(length, first_query + tl.program_id(1) * BLOCK_M + BLOCK_M)
    end = tl.where(tl.program_id(1) * BLOCK_M < query_len, end, 0)  # blocks past the queries do nothing
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start in range(0, end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < length
        k_t = tl.load(k_ptr + (key_start + cols)[None, :] * stride_kt + h * stride_kh + dqk[:, None],
                      mask=col_ok[None, :] & (dqk[:, None] < dim_qk), other=0.0)  # [BLOCK_DQK, BLOCK_N]
        scores = tl.dot(q, k_t, input_precision=INPUT_PRECISION) * alpha  # [BLOCK_M, BLOCK_N] float32
        keep = row_ok[:, None] & col_ok[None, :]
        if HAS_BIAS:
            index = tl.load(bias_index_ptr + b.to(tl.int64) * num_query_slots * num_slots + rows[:, None] * num_slots
                            + cols[None, :],
                            mask=keep, other=0)
            scores += tl.load(bias_table_ptr + index, mask=keep, other=0.0)
        if CAUSAL:
            keep = keep & (cols[None, :] <= positions[:, None])
        if HAS_TARGETS:  # two different targets never see each other
            between = (cols[None, :] >= first_target) & (positions[:, None] >= first_target)
            keep = keep & ~(between & (cols[None, :] != positions[:, None]))
        weights = tl.where(keep, scores * tl.sigmoid(scores), 0.0)  # SiLU, masked
        v = tl.load(v_ptr + (key_start + cols)[:, None] * stride_vt + h * stride_vh + dv[None, :],
                    mask=col_ok[:, None] & (dv[None, :] < dim_v), other=0.0)  # [BLOCK_N, BLOCK_DV]
        acc += tl.dot(weights.to(v.dtype), v, input_precision=INPUT_PRECISION)

    norm = tl.load(normalizer_ptr + b.to(tl.int64) * num_query_slots + rows, mask=row_ok, other=1)  # [BLOCK_M]
    out = acc / norm.to(tl.float32)[:, None]
    tl.store(out_ptr + (query_start + rows)[:, None] * stride_ot + h * stride_oh + dv[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (dv[None, :] < dim_v))


def hstu_attention_triton(
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
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Jagged HSTU attention forward; arguments and result as the reference's.

    ``block_m`` / ``block_n``: query rows and keys per tile (powers of two >= 16; default by device).

    Returns:
        ``[Tq, H, Dv]`` in ``q``'s dtype (accumulated in float32).
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, position_bias, time_bias)):
        raise ConfigError(
            "hstu_attention: kernel='triton' is forward-only and an input requires a gradient; "
            "use kernel='pytorch' (or 'auto') for training, or call under torch.no_grad()"
        )
    if layout is None:
        layout = build_hstu_attention_layout(
            seq_offsets, max_seq_len, num_rows=k.size(0), num_queries=q.size(0), num_targets=num_targets,
            timestamps=timestamps, causal=causal, normalization=normalization, query_offsets=query_offsets,
            next_timestamp=next_timestamp,
        )
    num_queries, num_heads, dim_qk = q.shape
    dim_v = v.size(2)
    out = q.new_zeros(num_queries, num_heads, dim_v)
    num_seqs = layout.seq_offsets.numel() - 1
    if num_queries == 0 or layout.num_slots == 0 or num_heads == 0:
        return out
    q, k, v = (t if t.stride(2) == 1 else t.contiguous() for t in (q, k, v))
    has_bias = position_bias is not None or time_bias is not None
    if has_bias:
        index = layout.bias_index(num_position_entries(position_bias), num_time_entries(time_bias), time_bucket_base)
        table = combined_bias_table(position_bias, time_bias).float().contiguous()
    else:
        index = table = layout.normalizer  # unread placeholders
    block_m = block_m or (64 if q.is_cuda else 32)
    block_n = block_n or (64 if q.is_cuda else 32)
    grid = (num_seqs * num_heads, triton.cdiv(layout.num_query_slots, block_m))
    _hstu_attention_forward_kernel[grid](
        q, k, v, out,
        layout.seq_offsets, layout.query_offsets,
        layout.num_targets if layout.num_targets is not None else layout.normalizer, layout.normalizer,
        index, table,
        float(alpha if alpha is not None else 1.0 / math.sqrt(dim_qk)),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        num_heads, layout.num_query_slots, layout.num_slots, dim_qk, dim_v,
        CAUSAL=layout.causal, HAS_TARGETS=layout.num_targets is not None, HAS_BIAS=has_bias,
        BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_DQK=max(16, triton.next_power_of_2(dim_qk)), BLOCK_DV=max(16, triton.next_power_of_2(dim_v)),
        INPUT_PRECISION=_input_precision(q.dtype),
    )
    return out


def _input_precision(dtype: torch.dtype) -> str | None:
    """float32 tiles: TF32 when PyTorch's matmuls may use it (``torch.backends.cuda.matmul.allow_tf32``),
    else exact IEEE products (slow: no tensor cores); other dtypes: tensor cores as they are."""
    if dtype != torch.float32:
        return None
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
