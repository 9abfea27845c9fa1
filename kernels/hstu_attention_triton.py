"""Jagged HSTU attention in Triton, forward and backward, with the mask and relative bias in-kernel.

Same signature and result as :func:`recsys.ops.hstu_attention_reference.hstu_attention_reference`
(read it for the semantics)::

    O_i = sum_j SiLU(alpha q_i . k_j + rab_ij) * mask_ij * v_j / N_i        (paper Eq. 2)

No ``[B, N, N]`` tensor exists anywhere: every program derives the mask (real keys, causal,
targets that do not see each other, the ``max_attn_len`` window, the contextual prefix), the
normalizer and the relative bias of its tile from per-sequence scalars and per-token timestamps:

- position bias: ``position_bias[clamp(p(j) - p(i), -(P-1), P-1) + P - 1]`` with ``p(x) = min(x, h)``
  (targets share position ``h``), as :func:`recsys.ops.relative_bias_index.relative_bias_index`;
- time bias: ``time_bias[bucket(t_next(i) - t_j)]`` with ``bucket(dt) = floor(ln(max(|dt|, 1)) / base)``
  clipped to ``[0, num_buckets]`` and ``t_next`` as
  :func:`recsys.ops.relative_bias_index.next_timestamps` (the next history token's time; for the
  last history token ``next_timestamp[b]`` when given; else the token's own). The kernel takes an
  approximate bucket from a float32 ``log2`` nudged up by ``1e-4`` (so it is the true bucket or one
  above) and corrects it with one comparison against :func:`time_bucket_thresholds`, the smallest
  integer of each bucket under the model's own float64 function: the bucket is exact.

Kernels (tiles of ``BLOCK_M`` queries x ``BLOCK_N`` keys of one (sequence, head), ``tl.dot`` with
float32 accumulation):

- forward: one program per query tile walks the key tiles it can see (causal tiles past its last
  row, tiles before the window, are skipped; tiles that need no mask take a mask-free path) and
  writes ``O`` and ``1 / N_i`` per query row (the backward reads it: ``"length"`` normalization
  counts the visible keys in-kernel);
- backward ``dK, dV`` (and the bias-table gradients): one program per key tile walks the query
  tiles that can see it; ``dS = dP * SiLU'(S)`` with ``dP = dO V^T / N``;
- backward ``dQ``: one program per query tile walks its key tiles again (no atomics on dQ).

Bias-table gradients, in the dK / dV kernel: a tile within one time bucket adds its ``dS`` sum
once, a tile spanning a few (:data:`FEW_TIME_BUCKETS`) one sum per bucket; a tile of history pairs
without a mask adds to the position table along its diagonals (one sum per relative position,
:func:`_add_diagonals`; atomics mode only); the other tiles (the diagonal band, targets, tiles
spanning more buckets) ``tl.atomic_add`` every visible pair's ``dS``. All of it goes into one of
``NUM_COPIES`` copies of each table (copies spread the contention on the small tables; they are
summed afterwards). ``deterministic=True`` gives every dK / dV program its own partial table, filled
tile by tile in a fixed order (a loop over the index range each tile touches), sums the partials in
a fixed order and launches every kernel with fixed tiles (:data:`DETERMINISTIC_CONFIGS`, not
autotuned): bitwise reproducible, slower, and ``programs x table`` floats of memory (about 1 GB for
the position table at 8 x 16384 tokens and 4 heads).

SiLU: bfloat16 / float16 on CUDA take the sigmoid from one ``tanh.approx.f32`` (relative error about
``2^-11``, below those types' rounding); float32 and the interpreter use ``tl.sigmoid``. float32
inputs follow ``torch.backends.cuda.matmul.allow_tf32``: TF32 tensor cores when allowed, else
float32 accuracy from three TF32 products (``"tf32x3"``) on CUDA and exact products in the
interpreter (see :func:`_input_precision`).

Packaging: ``torch.ops.recsys.hstu_attention_fwd`` / ``hstu_attention_bwd`` are
``torch.library.custom_op`` with fake implementations (``torch.compile`` / ``torch.export`` trace
them) and the forward's autograd formula registered through ``register_autograd``.

Shape letters: T tokens, Tq query rows, B sequences, H heads, Dqk / Dv head dims, P - 1 the largest
relative position of the position table (``2P - 1`` rows), NB the largest time bucket.
"""

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from recsys.ops.relative_bias_index import DEFAULT_TIME_BUCKET_BASE, time_buckets

NUM_COPIES = 16  # copies of each bias-table gradient the atomics spread over
FEW_TIME_BUCKETS = tl.constexpr(4)  # tiles spanning at most this many time buckets: no per-pair log


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _sigmoid(x, FAST_SIGMOID: tl.constexpr):
    if FAST_SIGMOID:  # sigmoid(x) = 0.5 tanh(x / 2) + 0.5: one MUFU op instead of exp + reciprocal
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x * 0.5], dtype=tl.float32,
                                      is_pure=True, pack=1)
        return 0.5 * t + 0.5
    else:
        return tl.sigmoid(x)


@triton.jit
def _sequence(seq_offsets_ptr, query_offsets_ptr, num_targets_ptr, b, HAS_TARGETS: tl.constexpr):
    """Scalars of sequence b: key start row, length n, query start row, query count, position of
    the first query, history length h."""
    key_start = tl.load(seq_offsets_ptr + b)
    n = (tl.load(seq_offsets_ptr + b + 1) - key_start).to(tl.int32)
    query_start = tl.load(query_offsets_ptr + b)
    query_len = (tl.load(query_offsets_ptr + b + 1) - query_start).to(tl.int32)
    history = n
    if HAS_TARGETS:
        history = n - tl.load(num_targets_ptr + b).to(tl.int32)
    return key_start, n, query_start, query_len, n - query_len, history


@triton.jit
def _query_times(ts_ptr, next_ts_ptr, b, key_start, pos_q, row_ok, history,
                 HAS_TIME: tl.constexpr, HAS_NEXT_TS: tl.constexpr):
    """``[BLOCK_M]`` int64 t_next of each query (see relative_bias_index.next_timestamps) and its
    smallest and largest value over the real rows (zeros without a time bias)."""
    t_next = (pos_q * 0).to(tl.int64)
    if HAS_TIME:
        nxt = tl.where(pos_q + 1 < history, pos_q + 1, pos_q)
        t_next = tl.load(ts_ptr + key_start + nxt, mask=row_ok, other=0)
        if HAS_NEXT_TS:
            t_next = tl.where(pos_q + 1 == history, tl.load(next_ts_ptr + b), t_next)
    return t_next, _masked_min(t_next, row_ok), _masked_max(t_next, row_ok)


@triton.jit
def _key_times(ts_ptr, key_start, cols, col_ok, HAS_TIME: tl.constexpr):
    """``[BLOCK_N]`` int64 key timestamps and their extremes over the real keys (zeros without a time bias)."""
    t_key = (cols * 0).to(tl.int64)
    if HAS_TIME:
        t_key = tl.load(ts_ptr + key_start + cols, mask=col_ok, other=0)
    return t_key, _masked_min(t_key, col_ok), _masked_max(t_key, col_ok)


@triton.jit
def _masked_min(x, ok):
    return tl.min(tl.where(ok, x, 9223372036854775807), 0)


@triton.jit
def _masked_max(x, ok):
    return tl.max(tl.where(ok, x, -9223372036854775807), 0)


@triton.jit
def _q2(x, KEYS_ON_ROWS: tl.constexpr):
    """A per-query vector spread over the tile's query axis (columns when keys are on the rows)."""
    if KEYS_ON_ROWS:
        return x[None, :]
    else:
        return x[:, None]


@triton.jit
def _k2(x, KEYS_ON_ROWS: tl.constexpr):
    """A per-key vector spread over the tile's key axis."""
    if KEYS_ON_ROWS:
        return x[:, None]
    else:
        return x[None, :]


@triton.jit
def _tile_mask(pos_q, row_ok, cols, n, history, max_attn_len, num_contextual,
               CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr,
               HAS_CONTEXT: tl.constexpr, KEYS_ON_ROWS: tl.constexpr):
    """Bool tile: query at position pos_q sees key at position cols (``[BLOCK_M, BLOCK_N]``, or
    ``[BLOCK_N, BLOCK_M]`` with keys on the rows as the dK / dV kernel computes)."""
    q_pos = _q2(pos_q, KEYS_ON_ROWS)
    k_pos = _k2(cols, KEYS_ON_ROWS)
    real = _q2(row_ok, KEYS_ON_ROWS) & _k2(cols < n, KEYS_ON_ROWS)
    keep = real
    if CAUSAL:
        keep = keep & (k_pos <= q_pos)
    if HAS_TARGETS:  # two different targets never see each other
        keep = keep & ~((k_pos >= history) & (q_pos >= history) & (k_pos != q_pos))
    if HAS_WINDOW:  # targets count at position h
        dist = _q2(tl.minimum(pos_q, history), KEYS_ON_ROWS) - _k2(tl.minimum(cols, history), KEYS_ON_ROWS)
        if CAUSAL:
            keep = keep & (dist <= max_attn_len)
        else:
            keep = keep & (dist <= max_attn_len) & (dist >= -max_attn_len)
    if HAS_CONTEXT:  # the contextual prefix is visible to every query
        keep = keep | (real & (k_pos < num_contextual))
    return keep


@triton.jit
def _time_bucket(dt, thresholds_ptr, num_buckets, bucket_scale):
    """Exact ``bucket(dt)`` of int32 / int64 ``dt >= 1`` (any shape): float32 ``log2`` rounded to the
    bucket or the one above (``+ 1e-4``, far above float32's error), then one comparison with the
    bucket's first integer. Rounding through ``x + 1.5 * 2^23`` avoids the slow float-to-int conversion."""
    x = tl.log2(dt.to(tl.float32)) * bucket_scale + (1e-4 - 0.5)
    approx = (x + 12582912.0).to(tl.int32, bitcast=True) - 0x4B400000  # round(x) = floor(log + 1e-4)
    approx = tl.minimum(tl.maximum(approx, 0), num_buckets)
    first = tl.load(thresholds_ptr + approx)  # int64
    if dt.dtype == tl.int32:
        first = tl.minimum(first, 2147483647).to(tl.int32)
    return approx - (dt < first).to(tl.int32)


@triton.jit
def _few_buckets(gap, low_bucket, high_bucket, thresholds_ptr, time_bias_ptr):
    """Bucket and bias of gaps ``gap >= 1`` known to lie in buckets ``low_bucket..high_bucket`` (a
    few): one comparison per bucket edge with the bucket's first integer instead of a log and two
    gathers per pair (buckets grow with the gap, so the last edge reached names the bucket)."""
    index = tl.zeros(gap.shape, tl.int32) + low_bucket
    bias = tl.zeros(gap.shape, tl.float32) + tl.load(time_bias_ptr + low_bucket)
    for b in range(low_bucket + 1, high_bucket + 1):
        first = tl.load(thresholds_ptr + b)  # int64
        if gap.dtype == tl.int32:
            first = tl.minimum(first, 2147483647).to(tl.int32)
        reached = gap >= first
        index += reached.to(tl.int32)
        bias = tl.where(reached, tl.load(time_bias_ptr + b), bias)
    return index, bias


@triton.jit
def _gap_buckets(gap, low_bucket, high_bucket, thresholds_ptr, time_bias_ptr, num_buckets, bucket_scale,
                 FEW_BUCKETS: tl.constexpr):
    """``(bucket, time bias)`` of every pair's gap (``>= 1``) in buckets ``low_bucket..high_bucket``."""
    if high_bucket - low_bucket < FEW_BUCKETS:
        index, bias = _few_buckets(gap, low_bucket, high_bucket, thresholds_ptr, time_bias_ptr)
    else:
        index = _time_bucket(gap, thresholds_ptr, num_buckets, bucket_scale)
        bias = tl.load(time_bias_ptr + index)
    return index, bias


@triton.jit
def _tile_bias(s, pos_q, cols, history, t_next, t_next_lo, t_next_hi, t_key, t_key_lo, t_key_hi,
               pos_bias_ptr, time_bias_ptr, thresholds_ptr, max_distance, num_buckets, bucket_scale,
               HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, KEYS_ON_ROWS: tl.constexpr):
    """``s + rab`` of the tile (float32), the table indices it read (for the backward), and the tile's
    lowest and highest time bucket (-1, -1 without a time table).

    The tile's range of ``t_next(i) - t_j`` (from the query and key extremes, computed once per
    query or key tile by the caller) bounds its buckets with two scalar buckets. Far from the
    diagonal the gaps of a tile usually fall in one log bucket: the tile then skips the per-pair
    work (and, backward, adds one sum to the table); in a few buckets (:data:`FEW_TIME_BUCKETS`),
    one comparison per bucket edge replaces the per-pair log and gathers; otherwise each pair's
    bucket comes from its log. The gaps are taken in int32 when the tile's range allows (half the
    registers of int64), else in int64.

    The time bias is summed in its own tile and added to ``s`` after its branches; the position
    bias's gather goes straight into ``s`` after that, never through those branches. Added into
    one bias tile before the time branches (as this function once did), the gather took the
    branches' blocked layout, and Triton's pipeliner staged it in a column-major, unswizzled
    shared-memory buffer written and read along rows (32-way bank conflicts on every pair):
    with both tables the forward cost about twice position and time alone together. Here it is
    staged row-major and swizzled, read straight in the layout of ``s``, as with the position
    table alone (checked by the sm_90a compile test in tests/kernels/test_hstu_attention_triton.py).
    """
    pos_index = tl.zeros(s.shape, tl.int32)
    time_index = pos_index
    time_lo = history * 0 - 1  # int32 scalars, as the branches below assign
    time_hi = time_lo
    if HAS_TIME:
        lowest = t_next_lo - t_key_hi  # the tile's smallest and largest t_next(i) - t_j
        highest = t_next_hi - t_key_lo
        low_gap = tl.where((lowest > 0) | (highest < 0), tl.minimum(tl.abs(lowest), tl.abs(highest)), 1)
        high_gap = tl.maximum(tl.maximum(tl.abs(lowest), tl.abs(highest)), 1)
        time_lo = _time_bucket(low_gap, thresholds_ptr, num_buckets, bucket_scale)
        time_hi = _time_bucket(high_gap, thresholds_ptr, num_buckets, bucket_scale)
        time_bias = tl.zeros_like(s)
        if time_lo == time_hi:
            time_index = time_index + time_lo
            time_bias += tl.load(time_bias_ptr + time_lo)
        elif (highest < 1073741824) & (lowest > -1073741824):  # every gap within +-2^30: int32
            gap32 = (_q2((t_next - t_key_lo).to(tl.int32), KEYS_ON_ROWS)
                     - _k2((t_key - t_key_lo).to(tl.int32), KEYS_ON_ROWS))  # padding rows may wrap: masked later
            time_index, bias32 = _gap_buckets(tl.maximum(tl.abs(gap32), 1), time_lo, time_hi, thresholds_ptr,
                                              time_bias_ptr, num_buckets, bucket_scale, FEW_TIME_BUCKETS)
            time_bias += bias32
        else:
            gap64 = _q2(t_next, KEYS_ON_ROWS) - _k2(t_key, KEYS_ON_ROWS)  # (names differ: a branch's values must not)
            time_index, time_bias64 = _gap_buckets(tl.maximum(tl.abs(gap64), 1), time_lo, time_hi, thresholds_ptr,
                                                   time_bias_ptr, num_buckets, bucket_scale, FEW_TIME_BUCKETS)
            time_bias += time_bias64
        s += time_bias
    if HAS_POS:
        distance = _k2(tl.minimum(cols, history), KEYS_ON_ROWS) - _q2(tl.minimum(pos_q, history), KEYS_ON_ROWS)
        pos_index = tl.minimum(tl.maximum(distance, -max_distance), max_distance) + max_distance
        s += tl.load(pos_bias_ptr + pos_index)
    return s, pos_index, time_index, time_lo, time_hi


@triton.jit
def _load_rows(ptr, start, rows, ok, stride_t, head_offset, dims, dim):
    """``[len(rows), BLOCK_D]`` rows of a jagged [T, H, D] tensor (zeros outside)."""
    return tl.load(ptr + (start + rows)[:, None] * stride_t + head_offset + dims[None, :],
                   mask=ok[:, None] & (dims[None, :] < dim), other=0.0)


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _key_range(pos_first, pos_last, n, history, max_attn_len, num_contextual,
               CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr,
               HAS_CONTEXT: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key tiles of the queries at positions [pos_first, pos_last]: contextual-prefix tiles
    [0, prefix_end) and main tiles [lo, hi), of which [lo, full_end) every query sees whole."""
    hi = n
    if CAUSAL:  # no key after the last query
        hi = tl.minimum(n, pos_last + 1)
        if HAS_CONTEXT:
            hi = tl.maximum(hi, tl.minimum(n, num_contextual))
    lo = pos_first * 0
    if HAS_WINDOW:
        if CAUSAL:  # no key more than max_attn_len before the first query (targets count at h)
            lo = tl.maximum(tl.minimum(pos_first, history) - max_attn_len, 0) // BLOCK_N * BLOCK_N
    prefix_end = lo * 0
    if HAS_CONTEXT:
        prefix_end = tl.minimum(lo, tl.cdiv(num_contextual, BLOCK_N) * BLOCK_N)
    full_end = lo
    if not HAS_WINDOW:
        limit = n
        if HAS_TARGETS:
            limit = tl.minimum(limit, history)
        if CAUSAL:
            limit = tl.minimum(limit, pos_first + 1)
        full_end = tl.maximum(lo + (limit - lo) // BLOCK_N * BLOCK_N, lo)
    return prefix_end, lo, full_end, hi


@triton.jit
def _fwd_tile(acc, count, q, start, pos_q, row_ok, t_next, t_next_lo, t_next_hi, n, history, key_start,
              k_ptr, v_ptr, ts_ptr, pos_bias_ptr, time_bias_ptr, thresholds_ptr,
              alpha, stride_kt, stride_vt, k_head, v_head, dim_qk, dim_v,
              max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr,
              HAS_CONTEXT: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, LENGTH_NORM: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
              INPUT_PRECISION: tl.constexpr, FAST_SIGMOID: tl.constexpr):
    """acc += (SiLU(alpha Q K^T + rab) * mask) V over one key tile; count += visible keys per row."""
    cols = start + tl.arange(0, BLOCK_N)
    col_ok = cols < n
    k = _load_rows(k_ptr, key_start, cols, col_ok, stride_kt, k_head, tl.arange(0, BLOCK_DQK), dim_qk)
    s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * alpha  # [BLOCK_M, BLOCK_N] float32
    if HAS_POS or HAS_TIME:
        t_key, t_key_lo, t_key_hi = _key_times(ts_ptr, key_start, cols, col_ok, HAS_TIME)
        s, _, _, _, _ = _tile_bias(s, pos_q, cols, history, t_next, t_next_lo, t_next_hi, t_key, t_key_lo,
                                   t_key_hi, pos_bias_ptr, time_bias_ptr, thresholds_ptr, max_distance,
                                   num_buckets, bucket_scale, HAS_POS, HAS_TIME, False)
    p = s * _sigmoid(s, FAST_SIGMOID)  # SiLU
    if MASKED:
        keep = _tile_mask(pos_q, row_ok, cols, n, history, max_attn_len, num_contextual,
                          CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, False)
        p = tl.where(keep, p, 0.0)
        if LENGTH_NORM:
            count += tl.sum(keep.to(tl.int32), 1)
    elif LENGTH_NORM:
        count += BLOCK_N
    v = _load_rows(v_ptr, key_start, cols, col_ok, stride_vt, v_head, tl.arange(0, BLOCK_DV), dim_v)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
    return acc, count


@triton.jit
def _fwd_block(
    q_ptr, k_ptr, v_ptr, out_ptr, inv_norm_ptr, ts_ptr, next_ts_ptr, pos_bias_ptr, time_bias_ptr, thresholds_ptr,
    b, h, row0, key_start, n, query_start, query_len, first_query, history,
    alpha, max_len_norm, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    dim_qk, dim_v, max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
    CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr,
    HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, HAS_NEXT_TS: tl.constexpr, LENGTH_NORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, FAST_SIGMOID: tl.constexpr,
):
    """Output rows [row0, row0 + BLOCK_M) of one (sequence, head)."""
    rows = row0 + tl.arange(0, BLOCK_M)
    row_ok = rows < query_len
    pos_q = first_query + rows  # [BLOCK_M] positions of the queries in their sequence
    t_next, t_next_lo, t_next_hi = _query_times(ts_ptr, next_ts_ptr, b, key_start, pos_q, row_ok, history,
                                                HAS_TIME, HAS_NEXT_TS)
    q = _load_rows(q_ptr, query_start, rows, row_ok, stride_qt, h * stride_qh, tl.arange(0, BLOCK_DQK), dim_qk)
    pos_last = first_query + tl.minimum(row0 + BLOCK_M, query_len) - 1
    prefix_end, lo, full_end, hi = _key_range(first_query + row0, pos_last, n, history, max_attn_len, num_contextual,
                                              CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    count = tl.zeros([BLOCK_M], dtype=tl.int32)
    for start in range(0, prefix_end, BLOCK_N):  # the contextual prefix before a window
        acc, count = _fwd_tile(acc, count, q, start, pos_q, row_ok, t_next, t_next_lo, t_next_hi, n, history,
                               key_start,
                               k_ptr, v_ptr, ts_ptr, pos_bias_ptr, time_bias_ptr, thresholds_ptr,
                               alpha, stride_kt, stride_vt, h * stride_kh, h * stride_vh, dim_qk, dim_v,
                               max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
                               True, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, HAS_POS, HAS_TIME, LENGTH_NORM,
                               BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV, INPUT_PRECISION, FAST_SIGMOID)
    for start in range(lo, full_end, BLOCK_N):  # tiles every row sees whole: no mask
        acc, count = _fwd_tile(acc, count, q, start, pos_q, row_ok, t_next, t_next_lo, t_next_hi, n, history,
                               key_start,
                               k_ptr, v_ptr, ts_ptr, pos_bias_ptr, time_bias_ptr, thresholds_ptr,
                               alpha, stride_kt, stride_vt, h * stride_kh, h * stride_vh, dim_qk, dim_v,
                               max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
                               False, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, HAS_POS, HAS_TIME, LENGTH_NORM,
                               BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV, INPUT_PRECISION, FAST_SIGMOID)
    for start in range(full_end, hi, BLOCK_N):  # the diagonal, the sequence's end, targets, the window
        acc, count = _fwd_tile(acc, count, q, start, pos_q, row_ok, t_next, t_next_lo, t_next_hi, n, history,
                               key_start,
                               k_ptr, v_ptr, ts_ptr, pos_bias_ptr, time_bias_ptr, thresholds_ptr,
                               alpha, stride_kt, stride_vt, h * stride_kh, h * stride_vh, dim_qk, dim_v,
                               max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
                               True, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, HAS_POS, HAS_TIME, LENGTH_NORM,
                               BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV, INPUT_PRECISION, FAST_SIGMOID)
    if LENGTH_NORM:
        inv_norm = 1.0 / tl.maximum(count, 1).to(tl.float32)
    else:
        inv_norm = tl.zeros([BLOCK_M], dtype=tl.float32) + 1.0 / max_len_norm
    out = acc * inv_norm[:, None]
    dvs = tl.arange(0, BLOCK_DV)
    tl.store(out_ptr + (query_start + rows)[:, None] * stride_ot + h * stride_oh + dvs[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (dvs[None, :] < dim_v))
    tl.store(inv_norm_ptr + query_start + rows, inv_norm, mask=row_ok & ((rows * 0 + h) == 0))  # the same for every head


@triton.jit
def _hstu_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, inv_norm_ptr,
    seq_offsets_ptr, query_offsets_ptr, num_targets_ptr, ts_ptr, next_ts_ptr,
    pos_bias_ptr, time_bias_ptr, thresholds_ptr,
    alpha, max_len_norm,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    num_heads, dim_qk, dim_v, max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
    TUNE_LEN,  # autotune key: the length class (next power of two of max_seq_len)
    CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr,
    HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, HAS_NEXT_TS: tl.constexpr, LENGTH_NORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, FAST_SIGMOID: tl.constexpr,
):
    """Grid (B * H, query tiles of max_seq_len); tiles past a sequence's queries do nothing."""
    block = tl.num_programs(1) - 1 - tl.program_id(1)  # the last (longest) query tiles start first
    b = tl.program_id(0) // num_heads
    h = tl.program_id(0) % num_heads
    key_start, n, query_start, query_len, first_query, history = _sequence(
        seq_offsets_ptr, query_offsets_ptr, num_targets_ptr, b, HAS_TARGETS)
    row0 = block * BLOCK_M
    if row0 < query_len:
        _fwd_block(q_ptr, k_ptr, v_ptr, out_ptr, inv_norm_ptr, ts_ptr, next_ts_ptr, pos_bias_ptr, time_bias_ptr,
                   thresholds_ptr, b, h, row0, key_start, n, query_start, query_len, first_query, history,
                   alpha, max_len_norm, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                   stride_ot, stride_oh, dim_qk, dim_v, max_distance, num_buckets, bucket_scale, max_attn_len,
                   num_contextual, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, HAS_POS, HAS_TIME, HAS_NEXT_TS,
                   LENGTH_NORM, BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV, INPUT_PRECISION, FAST_SIGMOID)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _sum_by_index(grad_ptr, index, ds, lo, hi):
    """``grad[e] += sum(ds[index == e])`` for ``e`` in ``lo..hi``: one sum and one scalar addition
    per entry, in a fixed order (``ds`` is zero outside the kept pairs)."""
    for e in range(lo, hi + 1):
        part = tl.sum(tl.sum(tl.where(index == e, ds, 0.0), 1), 0)
        tl.atomic_add(grad_ptr + e, part, sem="relaxed")


@triton.jit
def _scatter_table_grad(grad_ptr, index, ds, keep, DETERMINISTIC: tl.constexpr):
    """Add ``ds`` of the kept pairs to ``grad[index]``: atomics, or (deterministic) a loop over the
    tile's index range adding each entry's sum into this program's own partial table (one thread's
    scalar atomics in program order: a fixed order)."""
    if DETERMINISTIC:
        lo = tl.min(tl.min(tl.where(keep, index, 2147483647), 1), 0)
        hi = tl.max(tl.max(tl.where(keep, index, -1), 1), 0)
        _sum_by_index(grad_ptr, index, tl.where(keep, ds, 0.0), lo, hi)
    else:
        tl.atomic_add(grad_ptr + index, ds, mask=keep, sem="relaxed")


@triton.jit
def _add_diagonals(grad_ptr, ds, base, table_size):
    """``grad[base + r - c] += ds[r, c]`` for a ``[R, C]`` tile (``R >= C``) whose table index runs
    along its diagonals: each diagonal summed first, ``R + C - 1`` additions instead of ``R * C``.

    Rolling column c up by c rows (``tl.gather``) lines the diagonals up as rows: row v then holds
    the pairs with ``r - c = v`` (no wrap) and ``r - c = v - R`` (wrapped)."""
    R: tl.constexpr = ds.shape[0]
    C: tl.constexpr = ds.shape[1]
    rolled_rows = tl.arange(0, R)[:, None] + tl.arange(0, C)[None, :]  # [R, C]
    rolled = tl.gather(ds, rolled_rows % R, 0)  # rolled[v, c] = ds[(v + c) % R, c]
    v = tl.arange(0, R)
    upper = tl.sum(tl.where(rolled_rows < R, rolled, 0.0), 1)  # diagonal r - c = v
    lower = tl.sum(tl.where(rolled_rows >= R, rolled, 0.0), 1)  # diagonal r - c = v - R
    tl.atomic_add(grad_ptr + base + v, upper, mask=(base + v >= 0) & (base + v < table_size), sem="relaxed")
    lower_index = base + v - R
    tl.atomic_add(grad_ptr + lower_index, lower, mask=(v > R - C) & (lower_index >= 0) & (lower_index < table_size),
                  sem="relaxed")


@triton.jit
def _position_grad(dpos_ptr, pos_index, ds, keep, pos_q, row_ok, cols, col_ok, history, max_distance,
                   MASKED: tl.constexpr, DETERMINISTIC: tl.constexpr, KEYS_ON_ROWS: tl.constexpr):
    """The position table's share of ``ds``: along the diagonals for a whole tile of history pairs
    within the table's reach (keys on the rows, atomics mode), pair by pair otherwise."""
    # (deterministic runs keep every addition on one thread, in program order: no diagonal path)
    if not MASKED and not DETERMINISTIC and KEYS_ON_ROWS and ds.shape[0] >= ds.shape[1]:
        q_first = tl.min(pos_q, 0)
        q_last = tl.max(tl.where(row_ok, pos_q, -1), 0)
        k_first = tl.min(cols, 0)
        k_last = tl.max(tl.where(col_ok, cols, -1), 0)
        if ((q_last < history) & (k_last < history) & (k_last - q_first <= max_distance)
                & (q_last - k_first <= max_distance)):
            _add_diagonals(dpos_ptr, ds, k_first - q_first + max_distance, 2 * max_distance + 1)
        else:
            _scatter_table_grad(dpos_ptr, pos_index, ds, keep, DETERMINISTIC)
    else:
        _scatter_table_grad(dpos_ptr, pos_index, ds, keep, DETERMINISTIC)


@triton.jit
def _bwd_tile(q, do, inv_norm, k, v, pos_q, row_ok, cols, col_ok, n, history,
              t_next, t_next_lo, t_next_hi, t_key, t_key_lo, t_key_hi,
              pos_bias_ptr, time_bias_ptr, thresholds_ptr, dpos_ptr, dtime_ptr,
              alpha, max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr,
              HAS_CONTEXT: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr,
              BIAS_GRAD: tl.constexpr, DETERMINISTIC: tl.constexpr, KEYS_ON_ROWS: tl.constexpr,
              INPUT_PRECISION: tl.constexpr, FAST_SIGMOID: tl.constexpr):
    """``P / N`` (for dV) and ``dS`` (for dQ, dK, the tables) of one tile, float32, ``[BLOCK_M, BLOCK_N]``
    or, with ``KEYS_ON_ROWS`` (the dK / dV kernel: ``dV += P^T dO`` straight from the registers),
    ``[BLOCK_N, BLOCK_M]``."""
    if KEYS_ON_ROWS:
        s = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION) * alpha
        dp = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)
    else:
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * alpha
        dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)
    if HAS_POS or HAS_TIME:
        s, pos_index, time_index, time_lo, time_hi = _tile_bias(
            s, pos_q, cols, history, t_next, t_next_lo, t_next_hi, t_key, t_key_lo, t_key_hi, pos_bias_ptr,
            time_bias_ptr, thresholds_ptr, max_distance, num_buckets, bucket_scale, HAS_POS, HAS_TIME, KEYS_ON_ROWS)
    sig = _sigmoid(s, FAST_SIGMOID)
    norm = _q2(inv_norm, KEYS_ON_ROWS)
    p = s * sig * norm  # SiLU(S) / N
    ds = dp * norm * sig * (1.0 + s * (1.0 - sig))  # dO V^T / N * SiLU'(S), SiLU' = sig (1 + S (1 - sig))
    if MASKED:
        keep = _tile_mask(pos_q, row_ok, cols, n, history, max_attn_len, num_contextual,
                          CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, KEYS_ON_ROWS)
    else:
        keep = _q2(row_ok, KEYS_ON_ROWS) & _k2(col_ok, KEYS_ON_ROWS)
    p = tl.where(keep, p, 0.0)
    ds = tl.where(keep, ds, 0.0)
    if BIAS_GRAD:
        if HAS_POS:
            _position_grad(dpos_ptr, pos_index, ds, keep, pos_q, row_ok, cols, col_ok, history, max_distance,
                           MASKED, DETERMINISTIC, KEYS_ON_ROWS)
        if HAS_TIME:
            if time_lo == time_hi:  # one bucket for the whole tile: one addition
                tl.atomic_add(dtime_ptr + time_lo, tl.sum(tl.sum(ds, 1), 0), sem="relaxed")
            elif time_hi - time_lo < FEW_TIME_BUCKETS:  # a few: one sum and one addition per bucket
                _sum_by_index(dtime_ptr, time_index, ds, time_lo, time_hi)
            else:
                _scatter_table_grad(dtime_ptr, time_index, ds, keep, DETERMINISTIC)
    return p, ds


@triton.jit
def _dkdv_step(dk, dv, k, v, t_key, t_key_lo, t_key_hi, start_m, cols, col_ok, n, history, key_start, b, h,
               query_start, query_len, first_query,
               q_ptr, do_ptr, inv_norm_ptr, ts_ptr, next_ts_ptr, pos_bias_ptr, time_bias_ptr, thresholds_ptr,
               dpos_ptr, dtime_ptr, alpha, stride_qt, stride_qh, stride_dot, stride_doh, dim_qk, dim_v,
               max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr,
               HAS_CONTEXT: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, HAS_NEXT_TS: tl.constexpr,
               BIAS_GRAD: tl.constexpr, DETERMINISTIC: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
               INPUT_PRECISION: tl.constexpr, FAST_SIGMOID: tl.constexpr):
    """dK += dS^T Q and dV += (P / N)^T dO over the query tile at row start_m."""
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < query_len
    pos_q = first_query + rows
    q = _load_rows(q_ptr, query_start, rows, row_ok, stride_qt, h * stride_qh, tl.arange(0, BLOCK_DQK), dim_qk)
    do = _load_rows(do_ptr, query_start, rows, row_ok, stride_dot, h * stride_doh, tl.arange(0, BLOCK_DV), dim_v)
    inv_norm = tl.load(inv_norm_ptr + query_start + rows, mask=row_ok, other=0.0)
    t_next, t_next_lo, t_next_hi = _query_times(ts_ptr, next_ts_ptr, b, key_start, pos_q, row_ok, history,
                                                HAS_TIME, HAS_NEXT_TS)
    p, ds = _bwd_tile(q, do, inv_norm, k, v, pos_q, row_ok, cols, col_ok, n, history,
                      t_next, t_next_lo, t_next_hi, t_key, t_key_lo, t_key_hi,
                      pos_bias_ptr, time_bias_ptr, thresholds_ptr, dpos_ptr, dtime_ptr,
                      alpha, max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
                      MASKED, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, HAS_POS, HAS_TIME,
                      BIAS_GRAD, DETERMINISTIC, True, INPUT_PRECISION, FAST_SIGMOID)  # [BLOCK_N, BLOCK_M]
    dv = tl.dot(p.to(do.dtype), do, dv, input_precision=INPUT_PRECISION)
    dk = tl.dot(ds.to(q.dtype), q, dk, input_precision=INPUT_PRECISION)
    return dk, dv


@triton.jit
def _query_range(start_n, n, history, query_len, first_query, max_attn_len, num_contextual,
                 CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 HAS_CONTEXT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query tiles that may see the key tile at start_n: rows [lo, mask_end) with the mask,
    [mask_end, hi) without (they see the whole tile)."""
    end = tl.cdiv(query_len, BLOCK_M) * BLOCK_M
    lo = end * 0
    contextual = start_n < num_contextual  # a contextual tile is seen by every query
    if CAUSAL:  # no query before the tile's first key
        lo = tl.maximum(start_n - first_query, 0) // BLOCK_M * BLOCK_M
        if HAS_CONTEXT:
            lo = tl.where(contextual, 0, lo)
    hi = end
    if HAS_WINDOW:
        if CAUSAL:
            if not HAS_TARGETS:  # no query more than max_attn_len after the tile's last key
                window_hi = tl.minimum(tl.cdiv(tl.maximum(start_n + BLOCK_N + max_attn_len - first_query, 0),
                                               BLOCK_M) * BLOCK_M, end)
                if HAS_CONTEXT:
                    window_hi = tl.where(contextual, end, window_hi)
                hi = window_hi
    mask_end = hi
    if not HAS_WINDOW:
        whole = start_n + BLOCK_N <= n
        if HAS_TARGETS:
            whole = whole & (start_n + BLOCK_N <= history)
        first_whole = lo
        if CAUSAL:  # rows at or after the tile's last key
            first_whole = tl.maximum(tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - first_query, 0), BLOCK_M) * BLOCK_M,
                                     lo)
        mask_end = tl.minimum(tl.where(whole, first_whole, hi), hi)
    return lo, mask_end, hi


@triton.jit
def _hstu_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, inv_norm_ptr, dk_ptr, dv_ptr, dpos_ptr, dtime_ptr,
    seq_offsets_ptr, query_offsets_ptr, num_targets_ptr, ts_ptr, next_ts_ptr,
    pos_bias_ptr, time_bias_ptr, thresholds_ptr,
    alpha,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    num_heads, dim_qk, dim_v, max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
    pos_grad_stride, time_grad_stride, num_copies,
    TUNE_LEN,
    CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr,
    HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, HAS_NEXT_TS: tl.constexpr, BIAS_GRAD: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, FAST_SIGMOID: tl.constexpr,
):
    """Grid (B * H, key tiles of max_seq_len): dK, dV of BLOCK_N keys, and their share of the table gradients."""
    pid_n = tl.program_id(1)
    b = tl.program_id(0) // num_heads
    h = tl.program_id(0) % num_heads
    key_start, n, query_start, query_len, first_query, history = _sequence(
        seq_offsets_ptr, query_offsets_ptr, num_targets_ptr, b, HAS_TARGETS)
    start_n = pid_n * BLOCK_N
    if start_n < n:
        program = tl.program_id(0).to(tl.int64) * tl.num_programs(1) + pid_n
        if DETERMINISTIC:  # this program's own partial tables
            dpos_ptr += program * pos_grad_stride
            dtime_ptr += program * time_grad_stride
        else:  # one of num_copies shared copies
            dpos_ptr += (program % num_copies) * pos_grad_stride
            dtime_ptr += (program % num_copies) * time_grad_stride
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < n
        dqk = tl.arange(0, BLOCK_DQK)
        dvs = tl.arange(0, BLOCK_DV)
        k = _load_rows(k_ptr, key_start, cols, col_ok, stride_kt, h * stride_kh, dqk, dim_qk)
        v = _load_rows(v_ptr, key_start, cols, col_ok, stride_vt, h * stride_vh, dvs, dim_v)
        t_key, t_key_lo, t_key_hi = _key_times(ts_ptr, key_start, cols, col_ok, HAS_TIME)
        lo, mask_end, hi = _query_range(start_n, n, history, query_len, first_query, max_attn_len, num_contextual,
                                        CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, BLOCK_M, BLOCK_N)
        dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
        for start_m in range(lo, mask_end, BLOCK_M):
            dk, dv = _dkdv_step(dk, dv, k, v, t_key, t_key_lo, t_key_hi, start_m, cols, col_ok, n, history,
                                key_start, b, h, query_start,
                                query_len, first_query, q_ptr, do_ptr, inv_norm_ptr, ts_ptr, next_ts_ptr,
                                pos_bias_ptr, time_bias_ptr, thresholds_ptr, dpos_ptr, dtime_ptr, alpha,
                                stride_qt, stride_qh, stride_dot, stride_doh, dim_qk, dim_v, max_distance,
                                num_buckets, bucket_scale, max_attn_len, num_contextual,
                                True, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, HAS_POS, HAS_TIME, HAS_NEXT_TS,
                                BIAS_GRAD, DETERMINISTIC, BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV, INPUT_PRECISION,
                                FAST_SIGMOID)
        for start_m in range(mask_end, hi, BLOCK_M):  # query tiles that see the whole key tile
            dk, dv = _dkdv_step(dk, dv, k, v, t_key, t_key_lo, t_key_hi, start_m, cols, col_ok, n, history,
                                key_start, b, h, query_start,
                                query_len, first_query, q_ptr, do_ptr, inv_norm_ptr, ts_ptr, next_ts_ptr,
                                pos_bias_ptr, time_bias_ptr, thresholds_ptr, dpos_ptr, dtime_ptr, alpha,
                                stride_qt, stride_qh, stride_dot, stride_doh, dim_qk, dim_v, max_distance,
                                num_buckets, bucket_scale, max_attn_len, num_contextual,
                                False, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, HAS_POS, HAS_TIME, HAS_NEXT_TS,
                                BIAS_GRAD, DETERMINISTIC, BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV, INPUT_PRECISION,
                                FAST_SIGMOID)
        dk = dk * alpha
        tl.store(dk_ptr + (key_start + cols)[:, None] * stride_dkt + h * stride_dkh + dqk[None, :],
                 dk.to(dk_ptr.dtype.element_ty), mask=col_ok[:, None] & (dqk[None, :] < dim_qk))
        tl.store(dv_ptr + (key_start + cols)[:, None] * stride_dvt + h * stride_dvh + dvs[None, :],
                 dv.to(dv_ptr.dtype.element_ty), mask=col_ok[:, None] & (dvs[None, :] < dim_v))


@triton.jit
def _dq_tile(dq, q, do, inv_norm, start, pos_q, row_ok, t_next, t_next_lo, t_next_hi, n, history, key_start, h,
             k_ptr, v_ptr, ts_ptr, pos_bias_ptr, time_bias_ptr, thresholds_ptr,
             alpha, stride_kt, stride_kh, stride_vt, stride_vh, dim_qk, dim_v,
             max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
             MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr,
             HAS_CONTEXT: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
             INPUT_PRECISION: tl.constexpr, FAST_SIGMOID: tl.constexpr):
    """dQ += dS K over the key tile at start."""
    cols = start + tl.arange(0, BLOCK_N)
    col_ok = cols < n
    k = _load_rows(k_ptr, key_start, cols, col_ok, stride_kt, h * stride_kh, tl.arange(0, BLOCK_DQK), dim_qk)
    v = _load_rows(v_ptr, key_start, cols, col_ok, stride_vt, h * stride_vh, tl.arange(0, BLOCK_DV), dim_v)
    t_key, t_key_lo, t_key_hi = _key_times(ts_ptr, key_start, cols, col_ok, HAS_TIME)
    _, ds = _bwd_tile(q, do, inv_norm, k, v, pos_q, row_ok, cols, col_ok, n, history,
                      t_next, t_next_lo, t_next_hi, t_key, t_key_lo, t_key_hi,
                      pos_bias_ptr, time_bias_ptr, thresholds_ptr, ts_ptr, ts_ptr,
                      alpha, max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
                      MASKED, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, HAS_POS, HAS_TIME,
                      False, False, False, INPUT_PRECISION, FAST_SIGMOID)
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=INPUT_PRECISION)


@triton.jit
def _dq_block(
    q_ptr, k_ptr, v_ptr, do_ptr, inv_norm_ptr, dq_ptr, ts_ptr, next_ts_ptr, pos_bias_ptr, time_bias_ptr,
    thresholds_ptr, b, h, start_m, key_start, n, query_start, query_len, first_query, history,
    alpha, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh, dim_qk, dim_v, max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
    CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr,
    HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, HAS_NEXT_TS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, FAST_SIGMOID: tl.constexpr,
):
    """dQ of query rows [start_m, start_m + BLOCK_M) of one (sequence, head)."""
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < query_len
    pos_q = first_query + rows
    dqk = tl.arange(0, BLOCK_DQK)
    q = _load_rows(q_ptr, query_start, rows, row_ok, stride_qt, h * stride_qh, dqk, dim_qk)
    do = _load_rows(do_ptr, query_start, rows, row_ok, stride_dot, h * stride_doh, tl.arange(0, BLOCK_DV), dim_v)
    inv_norm = tl.load(inv_norm_ptr + query_start + rows, mask=row_ok, other=0.0)
    t_next, t_next_lo, t_next_hi = _query_times(ts_ptr, next_ts_ptr, b, key_start, pos_q, row_ok, history,
                                                HAS_TIME, HAS_NEXT_TS)
    pos_last = first_query + tl.minimum(start_m + BLOCK_M, query_len) - 1
    prefix_end, lo, full_end, hi = _key_range(first_query + start_m, pos_last, n, history, max_attn_len,
                                              num_contextual, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    for start in range(0, prefix_end, BLOCK_N):
        dq = _dq_tile(dq, q, do, inv_norm, start, pos_q, row_ok, t_next, t_next_lo, t_next_hi, n, history,
                      key_start, h,
                      k_ptr, v_ptr, ts_ptr, pos_bias_ptr, time_bias_ptr, thresholds_ptr,
                      alpha, stride_kt, stride_kh, stride_vt, stride_vh, dim_qk, dim_v,
                      max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
                      True, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, HAS_POS, HAS_TIME,
                      BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV, INPUT_PRECISION, FAST_SIGMOID)
    for start in range(lo, full_end, BLOCK_N):
        dq = _dq_tile(dq, q, do, inv_norm, start, pos_q, row_ok, t_next, t_next_lo, t_next_hi, n, history,
                      key_start, h,
                      k_ptr, v_ptr, ts_ptr, pos_bias_ptr, time_bias_ptr, thresholds_ptr,
                      alpha, stride_kt, stride_kh, stride_vt, stride_vh, dim_qk, dim_v,
                      max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
                      False, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, HAS_POS, HAS_TIME,
                      BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV, INPUT_PRECISION, FAST_SIGMOID)
    for start in range(full_end, hi, BLOCK_N):
        dq = _dq_tile(dq, q, do, inv_norm, start, pos_q, row_ok, t_next, t_next_lo, t_next_hi, n, history,
                      key_start, h,
                      k_ptr, v_ptr, ts_ptr, pos_bias_ptr, time_bias_ptr, thresholds_ptr,
                      alpha, stride_kt, stride_kh, stride_vt, stride_vh, dim_qk, dim_v,
                      max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
                      True, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, HAS_POS, HAS_TIME,
                      BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV, INPUT_PRECISION, FAST_SIGMOID)
    dq = dq * alpha
    tl.store(dq_ptr + (query_start + rows)[:, None] * stride_dqt + h * stride_dqh + dqk[None, :],
             dq.to(dq_ptr.dtype.element_ty), mask=row_ok[:, None] & (dqk[None, :] < dim_qk))


@triton.jit
def _hstu_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, inv_norm_ptr, dq_ptr,
    seq_offsets_ptr, query_offsets_ptr, num_targets_ptr, ts_ptr, next_ts_ptr,
    pos_bias_ptr, time_bias_ptr, thresholds_ptr,
    alpha,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh,
    num_heads, dim_qk, dim_v, max_distance, num_buckets, bucket_scale, max_attn_len, num_contextual,
    TUNE_LEN,
    CAUSAL: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr,
    HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, HAS_NEXT_TS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, FAST_SIGMOID: tl.constexpr,
):
    """Grid (B * H, query tiles of max_seq_len): dQ, recomputing dS over the key tiles (no atomics)."""
    block = tl.num_programs(1) - 1 - tl.program_id(1)
    b = tl.program_id(0) // num_heads
    h = tl.program_id(0) % num_heads
    key_start, n, query_start, query_len, first_query, history = _sequence(
        seq_offsets_ptr, query_offsets_ptr, num_targets_ptr, b, HAS_TARGETS)
    start_m = block * BLOCK_M
    if start_m < query_len:
        _dq_block(q_ptr, k_ptr, v_ptr, do_ptr, inv_norm_ptr, dq_ptr, ts_ptr, next_ts_ptr, pos_bias_ptr, time_bias_ptr,
                  thresholds_ptr, b, h, start_m, key_start, n, query_start, query_len, first_query, history,
                  alpha, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
                  stride_dqt, stride_dqh, dim_qk, dim_v, max_distance, num_buckets, bucket_scale, max_attn_len,
                  num_contextual, CAUSAL, HAS_TARGETS, HAS_WINDOW, HAS_CONTEXT, HAS_POS, HAS_TIME, HAS_NEXT_TS,
                  BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV, INPUT_PRECISION, FAST_SIGMOID)


# ----------------------------------------------------------------------------------------------
# Launchers (autotuned on CUDA; fixed small tiles in the interpreter)
# ----------------------------------------------------------------------------------------------

# Hopper (H100 / H200) candidates, checked at D = 128, bf16 by compiling for sm_90a (ptxas register
# report, Triton 3.9): without bias the forward's 128 x 64 tile at 8 warps takes 194 registers and
# dK / dV's 128 keys x 32 queries at 8 warps 249, neither spilling; the per-pair bias adds
# registers, where 64 x 64 (forward), 64 keys x 32 queries (dK / dV) and 128 x 32 (dQ) tiles spill
# little or nothing. The smaller tiles also serve head dims above 128 (pruned to them).
FWD_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=8, num_stages=2),  # head dims above 128
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2),
]
DKDV_CONFIGS = [  # BLOCK_N keys per program (dK, dV accumulate in registers), BLOCK_M queries per step
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4, num_stages=2),  # head dims above 128
]
DQ_CONFIGS = [  # BLOCK_M queries per program (dQ accumulates in registers), BLOCK_N keys per step
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=8, num_stages=2),  # head dims above 128
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2),
]
TUNE_KEY = ["TUNE_LEN", "BLOCK_DQK", "BLOCK_DV", "CAUSAL", "HAS_TARGETS", "HAS_WINDOW", "HAS_POS", "HAS_TIME"]
INTERPRETER_BLOCK = 32


def _prune(configs, named_args, **kwargs):
    """Head dims above 128: only the tiles of at most 64 x 32 pairs (register spills otherwise)."""
    dims = max(kwargs.get("BLOCK_DQK", named_args.get("BLOCK_DQK", 16)),
               kwargs.get("BLOCK_DV", named_args.get("BLOCK_DV", 16)))
    if dims <= 128:
        return configs
    small = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 32]
    return small or configs[-1:]


_fwd_tuned = triton.autotune(FWD_CONFIGS, key=TUNE_KEY, prune_configs_by={"early_config_prune": _prune})(
    _hstu_fwd_kernel)


def _backward_warps_fit(config: triton.Config, dtype: torch.dtype) -> bool:
    """float32 inputs: 4-warp backward tiles only. Triton 3.6 on H100 compiles both float32 backward
    kernels at 8 warps (dK / dV: 64 x 64 at 3 stages, 32 keys x 64 or 128 at 2; dQ: 128 queries x 32
    at 2) into a wgmma (dO V^T) that reads shared memory past the kernel's allocation: an illegal
    memory access. bf16 at 8 warps ran."""
    return dtype != torch.float32 or config.num_warps <= 4


def _prune_backward(configs, named_args, **kwargs):
    """:func:`_prune`, then only the tiles :func:`_backward_warps_fit` allows for the inputs' dtype."""
    configs = _prune(configs, named_args, **kwargs)
    fitting = [c for c in configs if _backward_warps_fit(c, named_args["q_ptr"].dtype)]
    return fitting or configs


_dkdv_tuned = triton.autotune(DKDV_CONFIGS, key=TUNE_KEY + ["DETERMINISTIC"], reset_to_zero=["dpos_ptr", "dtime_ptr"],
                              prune_configs_by={"early_config_prune": _prune_backward})(_hstu_bwd_dkdv_kernel)
_dq_tuned = triton.autotune(DQ_CONFIGS, key=TUNE_KEY, prune_configs_by={"early_config_prune": _prune_backward})(
    _hstu_bwd_dq_kernel)


@functools.lru_cache(maxsize=None)
def _thresholds_on_cpu(num_buckets: int, base: float) -> torch.Tensor:
    """``[NB + 1]`` int64: entry k is the smallest integer ``d`` with ``time_buckets(d) >= k`` under
    the model's own (float64) function; found by bisection over int64 for every k at once."""
    wanted = torch.arange(num_buckets + 1)
    lo = torch.ones(num_buckets + 1, dtype=torch.int64)
    hi = torch.full((num_buckets + 1,), 2**62, dtype=torch.int64)  # a bucket above bucket(2^62) is never reached
    while bool((lo < hi).any()):
        mid = (lo + hi) // 2
        reached = time_buckets(mid, num_buckets, base) >= wanted
        hi = torch.where(reached, mid, hi)
        lo = torch.where(reached, lo, mid + 1)
    lo[0] = 0
    return lo


def time_bucket_thresholds(num_buckets: int, base: float, device: torch.device) -> torch.Tensor:
    """``[NB + 1]`` int64 smallest ``|dt|`` of each time bucket (see :func:`_thresholds_on_cpu`), on ``device``."""
    return _thresholds_on_cpu(num_buckets, float(base)).to(device)


def _settings(q, k, v, position_bias, time_bias, timestamps, num_targets, next_timestamp, max_attn_len,
              num_contextual, causal, time_bucket_base, max_seq_len):
    """Scalars and compile-time flags shared by the three kernels."""
    dim_qk, dim_v = q.size(2), v.size(2)
    has_time = time_bias is not None
    scalars = dict(
        num_heads=q.size(1), dim_qk=dim_qk, dim_v=dim_v,
        max_distance=(position_bias.numel() - 1) // 2 if position_bias is not None else 0,
        num_buckets=time_bias.numel() - 1 if has_time else 0,
        bucket_scale=math.log(2.0) / time_bucket_base,
        max_attn_len=max_attn_len, num_contextual=num_contextual,
        TUNE_LEN=triton.next_power_of_2(max(max_seq_len, 1)),
    )
    flags = dict(
        CAUSAL=causal, HAS_TARGETS=num_targets is not None, HAS_WINDOW=max_attn_len > 0, HAS_CONTEXT=num_contextual > 0,
        HAS_POS=position_bias is not None, HAS_TIME=has_time, HAS_NEXT_TS=has_time and next_timestamp is not None,
        BLOCK_DQK=max(16, triton.next_power_of_2(dim_qk)), BLOCK_DV=max(16, triton.next_power_of_2(dim_v)),
        INPUT_PRECISION=_input_precision(q),
        FAST_SIGMOID=q.is_cuda and q.dtype in (torch.bfloat16, torch.float16),
    )
    return scalars, flags


def _pointers(q, seq_offsets, num_targets, timestamps, next_timestamp, position_bias, time_bias, time_bucket_base):
    """The sequence and bias tensors the kernels read (q stands in for the absent ones: never read)."""
    thresholds = (time_bucket_thresholds(time_bias.numel() - 1, time_bucket_base, q.device)
                  if time_bias is not None else q)
    return dict(
        num_targets_ptr=num_targets if num_targets is not None else seq_offsets,
        ts_ptr=timestamps if time_bias is not None else seq_offsets,
        next_ts_ptr=next_timestamp if next_timestamp is not None and time_bias is not None else seq_offsets,
        pos_bias_ptr=position_bias.float().contiguous() if position_bias is not None else q,
        time_bias_ptr=time_bias.float().contiguous() if time_bias is not None else q,
        thresholds_ptr=thresholds,
    )


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[T, H, D] with unit stride along D (what the kernels' row loads assume)."""
    return t if t.stride(2) == 1 else t.contiguous()


# Deterministic runs take these fixed tiles on CUDA: autotuning could pick other tiles (another
# summation order) in another process.
DETERMINISTIC_CONFIGS = {"fwd": FWD_CONFIGS[0], "dkdv": DKDV_CONFIGS[2], "dq": DQ_CONFIGS[3]}  # backward: 4 warps, any dtype


def _blocks(q: torch.Tensor, block_m: int, block_n: int, kernel: str, deterministic: bool) -> dict:
    """Launch tiles of ``kernel``: as asked for; {} (autotune) on CUDA; fixed when deterministic or
    in the interpreter."""
    if block_m or block_n or not q.is_cuda:
        return dict(BLOCK_M=block_m or INTERPRETER_BLOCK, BLOCK_N=block_n or INTERPRETER_BLOCK)
    if not deterministic:
        return {}
    config = DETERMINISTIC_CONFIGS[kernel]
    return dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def _forward(q, k, v, seq_offsets, query_offsets, num_targets, timestamps, next_timestamp, position_bias, time_bias,
             max_seq_len, alpha, causal, length_norm, max_attn_len, num_contextual, time_bucket_base, block_m, block_n,
             deterministic):
    """``([Tq, H, Dv] output, [Tq] float32 1 / N per query row)``."""
    num_queries, num_heads, _ = q.shape
    num_seqs = seq_offsets.numel() - 1
    out = q.new_empty(num_queries, num_heads, v.size(2))
    inv_norm = torch.empty(num_queries, dtype=torch.float32, device=q.device)
    if num_queries == 0 or num_heads == 0 or num_seqs == 0:
        return out, inv_norm
    q, k, v = _rows(q), _rows(k), _rows(v)
    scalars, flags = _settings(q, k, v, position_bias, time_bias, timestamps, num_targets, next_timestamp,
                               max_attn_len, num_contextual, causal, time_bucket_base, max_seq_len)
    blocks = _blocks(q, block_m, block_n, "fwd", deterministic)
    kernel = _hstu_fwd_kernel if blocks else _fwd_tuned
    grid = lambda meta: (num_seqs * num_heads, triton.cdiv(max_seq_len, meta["BLOCK_M"]))  # noqa: E731
    kernel[grid](
        q, k, v, out, inv_norm, seq_offsets, query_offsets,
        **_pointers(q, seq_offsets, num_targets, timestamps, next_timestamp, position_bias, time_bias, time_bucket_base),
        alpha=alpha, max_len_norm=float(max_seq_len),
        stride_qt=q.stride(0), stride_qh=q.stride(1), stride_kt=k.stride(0), stride_kh=k.stride(1),
        stride_vt=v.stride(0), stride_vh=v.stride(1), stride_ot=out.stride(0), stride_oh=out.stride(1),
        **scalars, **flags, LENGTH_NORM=length_norm, **blocks,
    )
    return out, inv_norm


def _backward(grad_out, q, k, v, seq_offsets, query_offsets, num_targets, timestamps, next_timestamp, position_bias,
              time_bias, inv_norm, max_seq_len, alpha, causal, max_attn_len, num_contextual, time_bucket_base,
              block_m, block_n, deterministic, bias_grad):
    """``(dq, dk, dv, d position_bias, d time_bias)``; an absent table's gradient is an empty tensor."""
    num_queries, num_heads, _ = q.shape
    num_seqs = seq_offsets.numel() - 1
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)  # keys no query sees get 0
    tables = [t for t in (position_bias, time_bias)]
    sizes = [t.numel() if t is not None and bias_grad else 0 for t in tables]
    if num_queries == 0 or num_heads == 0 or num_seqs == 0 or k.size(0) == 0:
        return dq, dk, dv, *[q.new_zeros(n, dtype=torch.float32) if n else q.new_empty(0) for n in sizes]
    q, k, v, grad_out = _rows(q), _rows(k), _rows(v), _rows(grad_out)
    scalars, flags = _settings(q, k, v, position_bias, time_bias, timestamps, num_targets, next_timestamp,
                               max_attn_len, num_contextual, causal, time_bucket_base, max_seq_len)
    pointers = _pointers(q, seq_offsets, num_targets, timestamps, next_timestamp, position_bias, time_bias,
                         time_bucket_base)
    strides = dict(stride_qt=q.stride(0), stride_qh=q.stride(1), stride_kt=k.stride(0), stride_kh=k.stride(1),
                   stride_vt=v.stride(0), stride_vh=v.stride(1), stride_dot=grad_out.stride(0),
                   stride_doh=grad_out.stride(1))
    dkdv_blocks = _blocks(q, block_m, block_n, "dkdv", deterministic)
    key_tiles = triton.cdiv(max_seq_len, dkdv_blocks.get("BLOCK_N", 16))  # the smallest tile when tuned
    copies = num_seqs * num_heads * key_tiles if deterministic else NUM_COPIES
    partials = [torch.zeros(copies, max(n, 1), dtype=torch.float32, device=q.device) for n in sizes]
    kernel = _hstu_bwd_dkdv_kernel if dkdv_blocks else _dkdv_tuned
    grid = lambda meta: (num_seqs * num_heads, triton.cdiv(max_seq_len, meta["BLOCK_N"]))  # noqa: E731
    kernel[grid](
        q, k, v, grad_out, inv_norm, dk, dv, partials[0], partials[1], seq_offsets, query_offsets, **pointers,
        alpha=alpha, **strides, stride_dkt=dk.stride(0), stride_dkh=dk.stride(1), stride_dvt=dv.stride(0),
        stride_dvh=dv.stride(1), **scalars, pos_grad_stride=partials[0].stride(0),
        time_grad_stride=partials[1].stride(0), num_copies=copies, **flags,
        BIAS_GRAD=bias_grad and (position_bias is not None or time_bias is not None),
        DETERMINISTIC=deterministic, **dkdv_blocks,
    )
    blocks = _blocks(q, block_m, block_n, "dq", deterministic)
    kernel = _hstu_bwd_dq_kernel if blocks else _dq_tuned
    grid = lambda meta: (num_seqs * num_heads, triton.cdiv(max_seq_len, meta["BLOCK_M"]))  # noqa: E731
    kernel[grid](
        q, k, v, grad_out, inv_norm, dq, seq_offsets, query_offsets, **pointers,
        alpha=alpha, **strides, stride_dqt=dq.stride(0), stride_dqh=dq.stride(1), **scalars, **flags, **blocks,
    )
    # fixed-order sums of the copies / per-program partials
    table_grads = [p.sum(0)[:n] if n else q.new_empty(0) for p, n in zip(partials, sizes)]
    return dq, dk, dv, *table_grads


def _input_precision(q: torch.Tensor) -> Optional[str]:
    """float32 tiles: TF32 when PyTorch's matmuls may use it (``torch.backends.cuda.matmul.allow_tf32``);
    otherwise float32 accuracy, from three TF32 products per product on CUDA (``"tf32x3"``: tensor
    cores, error of the order of float32 rounding; exact IEEE products without tensor cores are
    several times slower than the reference) and exact products in the interpreter. Other dtypes:
    tensor cores as they are."""
    if q.dtype != torch.float32:
        return None
    if torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "tf32x3" if q.is_cuda else "ieee"


# ----------------------------------------------------------------------------------------------
# Custom ops (torch.compile / torch.export see these) and their autograd formula
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("recsys::hstu_attention_fwd", mutates_args=())
def hstu_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_offsets: torch.Tensor, query_offsets: torch.Tensor,
    num_targets: Optional[torch.Tensor], timestamps: Optional[torch.Tensor], next_timestamp: Optional[torch.Tensor],
    position_bias: Optional[torch.Tensor], time_bias: Optional[torch.Tensor],
    max_seq_len: int, alpha: float, causal: bool, length_norm: bool, max_attn_len: int, num_contextual: int,
    time_bucket_base: float, block_m: int, block_n: int, deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward: ``([Tq, H, Dv] output, [Tq] float32 1 / N)``; ``deterministic`` fixes the tiles (and the
    backward's summation order)."""
    return _forward(q, k, v, seq_offsets, query_offsets, num_targets, timestamps, next_timestamp, position_bias,
                    time_bias, max_seq_len, alpha, causal, length_norm, max_attn_len, num_contextual,
                    time_bucket_base, block_m, block_n, deterministic)


@hstu_attention_fwd.register_fake
def _(q, k, v, seq_offsets, query_offsets, num_targets, timestamps, next_timestamp, position_bias, time_bias,
      max_seq_len, alpha, causal, length_norm, max_attn_len, num_contextual, time_bucket_base, block_m, block_n,
      deterministic):
    return q.new_empty(q.size(0), q.size(1), v.size(2)), q.new_empty(q.size(0), dtype=torch.float32)


@torch.library.custom_op("recsys::hstu_attention_bwd", mutates_args=())
def hstu_attention_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_offsets: torch.Tensor,
    query_offsets: torch.Tensor, num_targets: Optional[torch.Tensor], timestamps: Optional[torch.Tensor],
    next_timestamp: Optional[torch.Tensor], position_bias: Optional[torch.Tensor], time_bias: Optional[torch.Tensor],
    inv_norm: torch.Tensor, max_seq_len: int, alpha: float, causal: bool, max_attn_len: int, num_contextual: int,
    time_bucket_base: float, block_m: int, block_n: int, deterministic: bool, bias_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward: ``(dq, dk, dv, d position_bias, d time_bias)``, the table gradients float32 (empty when absent
    or ``bias_grad`` is off)."""
    return _backward(grad_out, q, k, v, seq_offsets, query_offsets, num_targets, timestamps, next_timestamp,
                     position_bias, time_bias, inv_norm, max_seq_len, alpha, causal, max_attn_len, num_contextual,
                     time_bucket_base, block_m, block_n, deterministic, bias_grad)


@hstu_attention_bwd.register_fake
def _(grad_out, q, k, v, seq_offsets, query_offsets, num_targets, timestamps, next_timestamp, position_bias,
      time_bias, inv_norm, max_seq_len, alpha, causal, max_attn_len, num_contextual, time_bucket_base, block_m,
      block_n, deterministic, bias_grad):
    tables = [q.new_empty(t.numel() if t is not None and bias_grad else 0, dtype=torch.float32)
              for t in (position_bias, time_bias)]
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), *tables


_FWD_INPUTS = ("q", "k", "v", "seq_offsets", "query_offsets", "num_targets", "timestamps", "next_timestamp",
               "position_bias", "time_bias")
_FWD_SETTINGS = ("max_seq_len", "alpha", "causal", "length_norm", "max_attn_len", "num_contextual",
                 "time_bucket_base", "block_m", "block_n", "deterministic")


def _setup_context(ctx, inputs, output):
    tensors = inputs[: len(_FWD_INPUTS)]
    ctx.settings = dict(zip(_FWD_SETTINGS, inputs[len(_FWD_INPUTS):]))
    ctx.save_for_backward(*tensors, output[1])


def _backward_formula(ctx, grad_out, _grad_inv_norm):
    q, k, v, seq_offsets, query_offsets, num_targets, timestamps, next_timestamp, pos, time, inv_norm = ctx.saved_tensors
    s = ctx.settings
    bias_grad = any(ctx.needs_input_grad[i] for i in (8, 9))
    dq, dk, dv, dpos, dtime = torch.ops.recsys.hstu_attention_bwd(
        grad_out, q, k, v, seq_offsets, query_offsets, num_targets, timestamps, next_timestamp, pos, time, inv_norm,
        s["max_seq_len"], s["alpha"], s["causal"], s["max_attn_len"], s["num_contextual"], s["time_bucket_base"],
        s["block_m"], s["block_n"], s["deterministic"], bias_grad,
    )
    dpos = dpos.to(pos.dtype) if pos is not None and bias_grad else None
    dtime = dtime.to(time.dtype) if time is not None and bias_grad else None
    return (dq, dk, dv, None, None, None, None, None, dpos, dtime) + (None,) * len(_FWD_SETTINGS)


hstu_attention_fwd.register_autograd(_backward_formula, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Functional API (the dispatcher's "triton" backend)
# ----------------------------------------------------------------------------------------------


def hstu_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: Optional[float] = None,
    timestamps: Optional[torch.Tensor] = None,
    position_bias: Optional[torch.Tensor] = None,
    time_bias: Optional[torch.Tensor] = None,
    time_bucket_base: float = DEFAULT_TIME_BUCKET_BASE,
    num_targets: Optional[torch.Tensor] = None,
    causal: bool = True,
    normalization: str = "max_len",
    query_offsets: Optional[torch.Tensor] = None,
    layout=None,
    next_timestamp: Optional[torch.Tensor] = None,
    max_attn_len: int = 0,
    num_contextual: int = 0,
    deterministic: Optional[bool] = None,
    block_m: int = 0,
    block_n: int = 0,
) -> torch.Tensor:
    """Jagged HSTU attention, differentiable in q, k, v and both tables; arguments and result as
    :func:`recsys.ops.hstu_attention.hstu_attention` (which checks them). ``layout`` is accepted
    and not read: the kernels derive everything from the offsets, targets and timestamps.

    ``block_m`` / ``block_n``: fixed tiles (powers of two >= 16); 0 autotunes on CUDA (32 in the
    interpreter).

    Returns:
        ``[Tq, H, Dv]`` in ``q``'s dtype (accumulated in float32).
    """
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    if timestamps is not None:
        timestamps = timestamps.long()
    if next_timestamp is not None:
        next_timestamp = next_timestamp.long()
    out, _ = torch.ops.recsys.hstu_attention_fwd(
        q, k, v, seq_offsets, query_offsets if query_offsets is not None else seq_offsets,
        num_targets, timestamps, next_timestamp, position_bias, time_bias,
        int(max_seq_len), float(alpha if alpha is not None else 1.0 / math.sqrt(q.size(2))), bool(causal),
        normalization == "length", int(max_attn_len), int(num_contextual), float(time_bucket_base),
        int(block_m), int(block_n), bool(deterministic),
    )
    return out
