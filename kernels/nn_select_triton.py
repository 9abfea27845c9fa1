"""Nearest-neighbour selection in one fused Triton kernel: tensor-core scores, in-kernel top-k.

Same signature and result as :func:`recsys.ops.nn_select_reference.nn_select_reference` (read it
for the semantics and the tie-break). Candidates are grouped by the sequence they rank; one
program takes a block of up to ``BLOCK_N`` candidates of one sequence (the request-level dedup of
TransAct V2 serving) and streams that sequence's tokens in tiles of ``BLOCK_S``. Nothing of size
``[B, L]`` is ever written: per candidate the kernel keeps O(k) keys.

Scores, per tile (dequantisation and normalisation fused; the scale ``s / 127`` cancels)::

    dots   = candidates[BN, C] @ tokens[BS, C]^T        int8 x int8 -> int32 on tensor cores, exact
    score  = float32(dots) * inverse_norm[token]         one rounding: the reference's bits
    key    = ordered(score) * 2^32 + position            int64, distinct, larger = preferred

``ordered`` maps the float's bits to an int32 in score order (negatives flipped); adding the
position makes every key distinct and breaks ties towards the more recent token, so the top-k
keys are exactly the reference's choice.

Top-k in two passes over the program's tokens (the second re-reads them from L2):

1. Group maxima: ``best[n, j] = max ordered score over the tokens in tile column j`` (one
   elementwise int32 max per score). The ``BLOCK_S`` groups are disjoint, so with ``tau`` the
   k-th largest group maximum, at least k tokens score ``>= tau``: the top k all have keys
   ``>= tau * 2^32``. With ``BLOCK_S >= 2k`` only about ``-BLOCK_S * ln(1 - k / BLOCK_S) <= 1.4 k``
   tokens pass, for scores in random order (more under exact ties of the k-th score: duplicates).
2. Collection: the tokens whose key is ``>= tau`` go to a per-candidate buffer of
   ``CAP >= k + BLOCK_S`` slots in global memory (L1/L2-resident; an int32 score and an int32
   position per slot), at ``kept + cumsum``. Should a buffer overflow (scores in an adversarial
   order, many ties, or ``k > BLOCK_S`` where pass 1 gives no bound), ``tau`` rises to the k-th
   largest of the ``CAP`` keys it holds and the pass runs again: exact whatever the order, only
   slower.

Then each buffer is sorted (a bitonic network in registers, ``SUB`` candidates at a time, through
memory so that few registers are live), its top k keys kept, and their positions sorted again
into time order and written, padded with -1. ``tl.sort`` is not used: its xor reduction takes
seconds per call in the interpreter; the network here compares by a min and a max over a pair axis.

When the candidate blocks cannot fill the GPU (one request, or few), each sequence is also cut
into segments, one program per (block, segment). Each writes its segment's top-k keys, and a
second kernel merges a candidate's ``segments * k`` keys the same way (sort, top k, time order).

Shapes: T tokens, C content dimension, R sequences, B candidates, k tokens kept.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from recsys.errors import DataError
from recsys.ops.int8_quantization import DEFAULT_SCALE, quantize_int8
from recsys.ops.nn_select_reference import token_inverse_norms

INT64_MIN = tl.constexpr(-(2**63))  # below every key: an empty slot
INT32_MAX = tl.constexpr(2**31 - 1)  # above every position: an unused output slot
INT32_MIN = tl.constexpr(-(2**31))  # below every ordered score: a token past the end
MAX_LENGTH = 2**31 - 1  # positions must fit the low 31 bits of a key
MIN_DOT = 16  # tl.dot needs at least 16 rows
MAX_BLOCK_N = 64  # candidates per program
PROGRAMS_PER_SM = 4  # cut sequences into segments until the grid has this many programs per SM
MIN_SEGMENT = 1024  # ... but no segment shorter than this many tokens
MAX_SEGMENT = 8192  # and none longer (the second pass re-reads a segment: keep it in L2)
SEGMENT_ALIGN = 256  # segment lengths are multiples of the largest BLOCK_S
MERGE_ROWS = 4  # candidates per program of the merge kernel
INTERPRETER_BLOCK_S = 32  # token tile in the interpreter (small: fast, and S not a multiple is tested)


@triton.jit
def _tile_scores(values_ptr, inv_norms_ptr, seq_start, t0, end, stride_v, dim, cand,
                 BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """``[BLOCK_N, BLOCK_S]`` int32 ordered scores of the candidates against tokens ``t0 ..``
    (``INT32_MIN`` past ``end``, below every score); ``seq_start`` is the sequence's first row in
    ``values``. Also the tokens' positions ``[BLOCK_S]`` within the sequence."""
    pos = t0 + tl.arange(0, BLOCK_S)  # [BS] positions within the sequence
    col = tl.arange(0, BLOCK_C)  # [BC]
    valid = pos < end
    rows = seq_start + pos  # [BS] int64 rows of values
    tokens = tl.load(values_ptr + rows[:, None] * stride_v + col[None, :],
                     mask=valid[:, None] & (col < dim)[None, :], other=0)  # [BS, BC] int8
    dots = tl.dot(cand, tl.trans(tokens), out_dtype=tl.int32)  # [BN, BS] exact
    inv_norm = tl.load(inv_norms_ptr + rows, mask=valid, other=0.0)  # [BS] float32
    bits = (dots.to(tl.float32) * inv_norm[None, :]).to(tl.int32, bitcast=True)  # one rounding
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # int32 in score order, > INT32_MIN
    return tl.where(valid[None, :], ordered, INT32_MIN), pos


@triton.jit
def _keys(ordered, pos):
    """int64 keys ``ordered * 2^32 + position`` (later position wins ties; ``INT32_MIN`` -> below every key)."""
    return (ordered.to(tl.int64) << 32) + pos.to(tl.int64)[None, :]


@triton.jit
def _compare_exchange(x, R: tl.constexpr, W: tl.constexpr, s: tl.constexpr, j: tl.constexpr):
    """One step of a bitonic network on the rows of ``x [R, W]``: columns ``2^j`` apart exchanged
    into order, ascending in runs of ``2^s`` of even index, descending in odd ones."""
    pairs = tl.reshape(x, [R, W >> (j + 1), 2, 1 << j])
    lo = tl.min(pairs, axis=2, keep_dims=True)
    hi = tl.max(pairs, axis=2, keep_dims=True)
    c = tl.reshape(tl.arange(0, W), [1, W >> (j + 1), 2, 1 << j])
    take_hi = ((c >> j) & 1) != ((c >> s) & 1)  # the right of a pair, swapped in descending runs
    return tl.reshape(tl.where(take_hi, hi, lo), [R, W])


@triton.jit
def _sort_rows(x, R: tl.constexpr, W: tl.constexpr, LOG_W: tl.constexpr):
    """``x [R, W]`` with every row sorted ascending (``W = 2^LOG_W``): a bitonic network whose
    compare-exchange is a min and a max over a pair axis (cheap in the interpreter too, unlike
    ``tl.sort``'s xor reduction)."""
    for s in tl.static_range(1, LOG_W + 1):  # merge sorted runs of 2^(s-1) into runs of 2^s
        for i in tl.static_range(s):
            x = _compare_exchange(x, R, W, s, s - 1 - i)
    return x


@triton.jit
def _store_positions(keys, keep, out_ptr, out_rows, row_ok, k, R: tl.constexpr, W: tl.constexpr,
                     LOG_W: tl.constexpr):
    """Write the positions of the top ``keep[r]`` of ascending ``keys [R, W]`` to ``out[out_rows, :k]``,
    ascending, padded with -1."""
    col = tl.arange(0, W)
    chosen = col[None, :] >= (W - keep)[:, None]  # [R, W] the last `keep` columns
    pos = tl.where(chosen, (keys - ((keys >> 32) << 32)).to(tl.int32), INT32_MAX)
    pos = _sort_rows(pos, R, W, LOG_W)  # [R, W] time order, unused slots last
    pos = tl.where(pos == INT32_MAX, -1, pos).to(tl.int64)
    tl.store(out_ptr + out_rows[:, None] * k + col[None, :], pos, mask=row_ok[:, None] & (col[None, :] < k))


@triton.jit
def _split(keys):
    """int64 keys -> (ordered score, position) int32 halves."""
    high = keys >> 32
    return high.to(tl.int32), (keys - (high << 32)).to(tl.int32)


@triton.jit
def _sorted_buffers(buf_ptr, at, kept, ok, SUB: tl.constexpr, CAP: tl.constexpr, W: tl.constexpr,
                    LOG_W: tl.constexpr):
    """``[SUB, W]`` int64 keys of the first ``W`` slots of buffer rows ``at``, sorted ascending
    (empty slots, ``INT64_MIN``, first). A buffer row is ``CAP`` int32 scores then ``CAP`` int32 positions."""
    col = tl.arange(0, W)
    here = buf_ptr + at[:, None] * (2 * CAP) + col[None, :]  # [SUB, W] the scores' slots
    used = ok[:, None] & (col[None, :] < kept[:, None])
    keys = _keys(tl.load(here, mask=used, other=INT32_MIN), tl.load(here + CAP, mask=used, other=0))
    return _sort_rows(keys, SUB, W, LOG_W)


@triton.jit
def _emit_top_k(buf_ptr, at, kept, ok, cand, out_ptr, segment, num_segments, k, SUB: tl.constexpr,
                CAP: tl.constexpr, W: tl.constexpr, LOG_W: tl.constexpr, WRITE_KEYS: tl.constexpr):
    """The top ``min(kept, k)`` keys of the buffer rows ``at`` (all within their first ``W`` slots)
    to ``out``: as keys (``WRITE_KEYS``, ``out [B, segments, k]``, ``INT64_MIN`` padded) or as
    positions in time order (``out [B, k]``, -1 padded)."""
    keys = _sorted_buffers(buf_ptr, at, kept, ok, SUB, CAP, W, LOG_W)
    keep = tl.minimum(kept, k)
    col = tl.arange(0, W)
    if WRITE_KEYS:
        rows = (cand * num_segments + segment) * k
        tl.store(out_ptr + rows[:, None] + col[None, :] - (W - keep)[:, None], keys,
                 mask=ok[:, None] & (col[None, :] >= (W - keep)[:, None]))
        tl.store(out_ptr + rows[:, None] + col[None, :], tl.full([SUB, W], INT64_MIN, tl.int64),
                 mask=ok[:, None] & (col[None, :] >= keep[:, None]) & (col[None, :] < k))
    else:
        _store_positions(keys, keep, out_ptr, cand, ok, k, SUB, W, LOG_W)


@triton.jit
def _write_top_k(buf_ptr, state_ptr, order_ptr, out_ptr, slot0, count, segment, num_segments, k,
                 BLOCK_N: tl.constexpr, CAP: tl.constexpr, LOG_CAP: tl.constexpr, SUB: tl.constexpr,
                 WRITE_KEYS: tl.constexpr):
    """Every buffer's top k to ``out``, ``SUB`` candidates at a time (``state[row] = (kept, tau)``);
    a chunk whose buffers fill at most half their slots (the usual case) sorts only that half."""
    for r0 in range(0, BLOCK_N, SUB):  # a loop, not unrolled: one chunk live at a time
        r = r0 + tl.arange(0, SUB)
        ok = r < count
        at = (slot0 + r) * num_segments + segment  # [SUB] int64 row of buf and state
        kept = tl.load(state_ptr + at * 2, mask=ok, other=0)  # [SUB] int64
        cand = tl.load(order_ptr + slot0 + r, mask=ok, other=0)  # [SUB] original candidate index
        if tl.max(kept, axis=0) <= CAP // 2:
            _emit_top_k(buf_ptr, at, kept, ok, cand, out_ptr, segment, num_segments, k, SUB, CAP, CAP // 2,
                        LOG_CAP - 1, WRITE_KEYS)
        else:
            _emit_top_k(buf_ptr, at, kept, ok, cand, out_ptr, segment, num_segments, k, SUB, CAP, CAP, LOG_CAP,
                        WRITE_KEYS)


@triton.jit
def _shrink_buffers(buf_ptr, state_ptr, slot0, count, segment, num_segments, k, BLOCK_N: tl.constexpr,
                    CAP: tl.constexpr, LOG_CAP: tl.constexpr, SUB: tl.constexpr):
    """Keep the top ``min(kept, k)`` keys of every buffer at its start and raise ``tau`` to the
    k-th key, ``SUB`` candidates at a time (``state[row] = (kept, tau)``)."""
    col = tl.arange(0, CAP)
    for r0 in range(0, BLOCK_N, SUB):  # a loop, not unrolled: one chunk live at a time
        r = r0 + tl.arange(0, SUB)
        ok = r < count
        at = (slot0 + r) * num_segments + segment  # [SUB] int64 row of buf and state
        kept = tl.load(state_ptr + at * 2, mask=ok, other=0)  # [SUB] int64
        tau = tl.load(state_ptr + at * 2 + 1, mask=ok, other=INT64_MIN)
        keys = _sorted_buffers(buf_ptr, at, kept, ok, SUB, CAP, CAP, LOG_CAP)  # [SUB, CAP]
        keep = tl.minimum(kept, k)
        top = ok[:, None] & (col[None, :] >= (CAP - keep)[:, None])  # [SUB, CAP] the top `keep`
        kth = tl.max(tl.where(col[None, :] == CAP - k, keys, INT64_MIN), axis=1)  # INT64_MIN if kept < k
        kept_scores, kept_pos = _split(keys)
        there = buf_ptr + at[:, None] * (2 * CAP) + col[None, :] - (CAP - keep)[:, None]  # slots 0 .. keep - 1
        tl.store(there, kept_scores, mask=top)
        tl.store(there + CAP, kept_pos, mask=top)
        tl.store(state_ptr + at * 2, keep, mask=ok)
        tl.store(state_ptr + at * 2 + 1, tl.maximum(tau, kth), mask=ok)


@triton.jit
def _kth_group_max(buf_ptr, state_ptr, slot0, count, segment, num_segments, k, BLOCK_N: tl.constexpr,
                   BLOCK_S: tl.constexpr, LOG_S: tl.constexpr, CAP: tl.constexpr, SUB: tl.constexpr):
    """``state[row].tau = (k-th largest of the BLOCK_S group maxima in the buffer's score slots) * 2^32``,
    ``SUB`` candidates at a time: no key below it can be in the top k (its score is below k others)."""
    col = tl.arange(0, BLOCK_S)
    for r0 in range(0, BLOCK_N, SUB):  # a loop, not unrolled: one chunk live at a time
        r = r0 + tl.arange(0, SUB)
        ok = r < count
        at = (slot0 + r) * num_segments + segment  # [SUB]
        best = tl.load(buf_ptr + at[:, None] * (2 * CAP) + col[None, :], mask=ok[:, None], other=INT32_MIN)
        best = _sort_rows(best, SUB, BLOCK_S, LOG_S)  # [SUB, BS] ascending
        kth = tl.max(tl.where(col[None, :] == BLOCK_S - k, best, INT32_MIN), axis=1)  # INT32_MIN: < k groups
        tl.store(state_ptr + at * 2 + 1, kth.to(tl.int64) << 32, mask=ok)


@triton.jit
def _nn_select_kernel(
    values_ptr, inv_norms_ptr, seq_starts_ptr, seq_lengths_ptr, codes_ptr, order_ptr, group_first_ptr,
    group_count_ptr, buf_ptr, state_ptr, out_ptr,
    k, dim, stride_v, stride_c, segment_len, num_segments, len_bucket,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, LOG_S: tl.constexpr, BLOCK_C: tl.constexpr, K_PAD: tl.constexpr,
    CAP: tl.constexpr, LOG_CAP: tl.constexpr, SUB: tl.constexpr, WRITE_KEYS: tl.constexpr,
):
    """Program (sequence, block, segment): the top-k of up to ``BLOCK_N`` candidates of one
    sequence over one segment of its tokens (``len_bucket`` only keys the autotuner)."""
    seq = tl.program_id(0)
    first = tl.program_id(1) * BLOCK_N  # the block's first candidate within its sequence's group
    segment = tl.program_id(2)
    count = tl.load(group_count_ptr + seq) - first  # candidates of this block (up to BLOCK_N)
    if count > 0:
        slot0 = tl.load(group_first_ptr + seq) + first  # first entry of `order` in the block
        row = tl.arange(0, BLOCK_N)
        row_ok = row < count
        cand_id = tl.load(order_ptr + slot0 + row, mask=row_ok, other=0)  # [BN] int64
        col_c = tl.arange(0, BLOCK_C)
        cand = tl.load(codes_ptr + cand_id[:, None] * stride_c + col_c[None, :],
                       mask=row_ok[:, None] & (col_c < dim)[None, :], other=0)  # [BN, BC] int8
        seq_start = tl.load(seq_starts_ptr + seq)  # int64
        lo = segment * segment_len
        hi = tl.minimum(tl.load(seq_lengths_ptr + seq), lo + segment_len).to(tl.int32)  # segment's end
        at = (slot0 + row) * num_segments + segment  # [BN] int64 row of state
        base = buf_ptr + (slot0 * num_segments + segment) * (2 * CAP)  # the block's first buffer row
        row_off = row * (num_segments * 2 * CAP)  # [BN] int32 offsets of the block's buffer rows

        # Pass 1: group maxima of the scores -> tau, the k-th largest of them (a bound on the k-th key).
        best = tl.full([BLOCK_N, BLOCK_S], INT32_MIN, tl.int32)
        for t0 in range(lo, hi, BLOCK_S):
            scores, pos = _tile_scores(values_ptr, inv_norms_ptr, seq_start, t0, hi, stride_v, dim, cand,
                                       BLOCK_S, BLOCK_C)
            best = tl.maximum(best, scores)
        if BLOCK_S >= K_PAD:  # sort the maxima SUB candidates at a time, through the buffer
            col_s = tl.arange(0, BLOCK_S)
            tl.store(base + row_off[:, None] + col_s[None, :], best, mask=row_ok[:, None])
            tl.debug_barrier()
            _kth_group_max(buf_ptr, state_ptr, slot0, count, segment, num_segments, k, BLOCK_N, BLOCK_S, LOG_S, CAP,
                           SUB)
            tl.debug_barrier()
            tau = tl.load(state_ptr + at * 2 + 1, mask=row_ok, other=INT64_MIN)
        else:  # fewer groups than k: no bound; the buffer shrinks as it fills
            tau = tl.full([BLOCK_N], INT64_MIN, tl.int64)

        # Pass 2: collect the keys >= tau, i.e. score > tau's or equal with a position >= tau's. Should
        # a buffer overflow, tau rises to the k-th of the CAP keys it holds and the pass runs again.
        tau_score, tau_pos = _split(tau)
        kept = tl.full([BLOCK_N], CAP + 1, tl.int32)
        while tl.max(kept, axis=0) > CAP:
            kept = tl.zeros([BLOCK_N], tl.int32)
            for t0 in range(lo, hi, BLOCK_S):
                scores, pos = _tile_scores(values_ptr, inv_norms_ptr, seq_start, t0, hi, stride_v, dim, cand,
                                           BLOCK_S, BLOCK_C)
                take = (scores != INT32_MIN) & row_ok[:, None] & (
                    (scores > tau_score[:, None]) | ((scores == tau_score[:, None]) & (pos[None, :] >= tau_pos[:, None])))
                slot = kept[:, None] + tl.cumsum(take.to(tl.int32), axis=1) - 1  # [BN, BS]
                there = base + row_off[:, None] + slot
                tl.store(there, scores, mask=take & (slot < CAP))
                tl.store(there + CAP, tl.broadcast_to(pos[None, :], [BLOCK_N, BLOCK_S]), mask=take & (slot < CAP))
                kept += tl.sum(take.to(tl.int32), axis=1)
            if tl.max(kept, axis=0) > CAP:  # rare (adversarial order, or k > BLOCK_S): raise tau, run again
                tl.store(state_ptr + at * 2, tl.minimum(kept, CAP).to(tl.int64), mask=row_ok)
                tl.store(state_ptr + at * 2 + 1, tau, mask=row_ok)
                tl.debug_barrier()
                _shrink_buffers(buf_ptr, state_ptr, slot0, count, segment, num_segments, k, BLOCK_N, CAP, LOG_CAP,
                                SUB)
                tl.debug_barrier()
                tau = tl.load(state_ptr + at * 2 + 1, mask=row_ok, other=INT64_MIN)
                tau_score, tau_pos = _split(tau)

        # Sort the buffers; write the top k.
        tl.store(state_ptr + at * 2, kept.to(tl.int64), mask=row_ok)
        tl.store(state_ptr + at * 2 + 1, tau, mask=row_ok)
        tl.debug_barrier()
        _write_top_k(buf_ptr, state_ptr, order_ptr, out_ptr, slot0, count, segment, num_segments, k, BLOCK_N, CAP,
                     LOG_CAP, SUB, WRITE_KEYS)


@triton.jit
def _merge_segments_kernel(keys_ptr, out_ptr, num_candidates, k, width, ROWS: tl.constexpr, W: tl.constexpr,
                           LOG_W: tl.constexpr):
    """``keys [B, width]`` (a candidate's segments' top-k keys, ``INT64_MIN`` padded) -> ``out [B, k]``."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    ok = r < num_candidates
    col = tl.arange(0, W)
    keys = tl.load(keys_ptr + r[:, None].to(tl.int64) * width + col[None, :],
                   mask=ok[:, None] & (col[None, :] < width), other=INT64_MIN)
    keys = _sort_rows(keys, ROWS, W, LOG_W)  # [ROWS, W] ascending
    keep = tl.minimum(tl.sum((keys != INT64_MIN).to(tl.int32), axis=1), k)
    _store_positions(keys, keep, out_ptr, r.to(tl.int64), ok, k, ROWS, W, LOG_W)


def _cap(args: dict) -> int:
    """Buffer slots per candidate: a power of two >= k + BLOCK_S (the ~1.4 k tokens pass 1 admits,
    with slack; an overflow costs another pass, which then admits at least CAP - k fewer)."""
    return 2 * max(args["K_PAD"], args["BLOCK_S"])


def _sub(args: dict) -> int:
    """Candidates sorted at a time: [SUB, CAP] int64 keys stay small in registers."""
    return max(2, min(16, args["BLOCK_N"], 1024 // _cap(args)))


_heuristics = triton.heuristics({"CAP": _cap, "LOG_CAP": lambda args: _cap(args).bit_length() - 1,
                                  "LOG_S": lambda args: args["BLOCK_S"].bit_length() - 1, "SUB": _sub})

# Hopper candidates, checked by compiling for sm_90a (Triton 3.9, cuobjdump -res-usage): at C = 32,
# k = 64, 64 candidates x 128 tokens at 8 warps takes 255 registers and spills ~100 bytes, at 4 warps
# ~950 bytes; 16 x 128 at 4 warps spills nothing. A build without the sorts (run once per program)
# did not spill, so the spills sit there rather than in the two passes. Not yet timed on a GPU.
CONFIGS = [
    triton.Config({"BLOCK_S": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_S": 128}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_S": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_S": 64}, num_warps=4, num_stages=3),  # k < 64
    triton.Config({"BLOCK_S": 256}, num_warps=8, num_stages=2),  # k >= 128
]
TUNE_KEY = ["len_bucket", "BLOCK_N", "BLOCK_C", "K_PAD", "WRITE_KEYS"]


def _fitting(configs, k: int) -> list:
    """Tiles wider than k, so that pass 1's bound admits few tokens (``-BLOCK_S * ln(1 - k / BLOCK_S)``:
    4.2 k at ``BLOCK_S = k``, 1.4 k at ``2k``), and no wider than needed (the buffer grows with
    the tile): ``k < BLOCK_S <= max(128, 2 * k_pad)``; else the widest."""
    widest = max(128, 2 * triton.next_power_of_2(k))
    fit = [c for c in configs if k < c.kwargs["BLOCK_S"] <= widest]
    return fit or [max(configs, key=lambda c: c.kwargs["BLOCK_S"])]


def _prune(configs, named_args, **kwargs):
    return _fitting(configs, kwargs.get("k", named_args.get("k")))


_select_plain = _heuristics(_nn_select_kernel)
_select_tuned = triton.autotune(CONFIGS, key=TUNE_KEY, prune_configs_by={"early_config_prune": _prune})(
    _select_plain)


def nn_select_triton(
    values: torch.Tensor,
    seq_starts: torch.Tensor,
    seq_lengths: torch.Tensor,
    candidates: torch.Tensor,
    candidate_seq: torch.Tensor,
    k: int,
    *,
    scale: float = DEFAULT_SCALE,
    inverse_norms: torch.Tensor | None = None,
    segment_len: int | None = None,
    block_s: int | None = None,
    groups: CandidateGroups | None = None,
) -> torch.Tensor:
    """Top-``k`` tokens of each candidate's sequence by normalised score, in time order.

    Args and result as :func:`recsys.ops.nn_select_reference.nn_select_reference`; inputs are
    checked by :func:`recsys.ops.nn_select.nn_select`.

    Args:
        inverse_norms: ``[T]`` float32 token inverse norms (computed when None).
        segment_len: tokens per program (positive); default: whole
            sequences, or segments when the candidate blocks alone cannot fill the GPU.
        block_s: the token tile, instead of the autotuned one (a power of two >= 16).
        groups: :func:`candidate_groups` of these candidates and sequences, for callers that select
            for the same candidates and sequences many times; None = computed here (one device sync).
            With ``groups``, int8 ``candidates`` and ``inverse_norms`` given, the call launches two
            kernels and never syncs (it can be captured in a CUDA graph). The graph owns only what
            the call allocates: keep every tensor passed in (``groups`` included) alive while it is
            replayed, or the replays read freed memory.

    Returns:
        ``[B, k]`` int64 positions within the sequence, ascending, -1 padded.
    """
    codes = (candidates if candidates.dtype == torch.int8 else quantize_int8(candidates, scale)).contiguous()
    values = values.contiguous()
    inverse_norms = (token_inverse_norms(values) if inverse_norms is None else inverse_norms).contiguous()
    num_candidates, num_seqs = codes.size(0), seq_starts.numel()
    if k == 0 or num_candidates == 0:
        return torch.full((num_candidates, k), -1, dtype=torch.int64, device=values.device)
    seq_lengths = seq_lengths.to(torch.int64).contiguous()
    if groups is None:
        groups = candidate_groups(candidate_seq, seq_lengths)
    order, group_first, group_count, most, longest = groups
    if longest > MAX_LENGTH:
        raise DataError(f"nn_select_triton: sequences must be shorter than 2^31 tokens, got {longest}")
    block_n = min(MAX_BLOCK_N, max(MIN_DOT, triton.next_power_of_2(most)))
    blocks = triton.cdiv(most, block_n)
    if block_s is None and not values.is_cuda:
        block_s = INTERPRETER_BLOCK_S
    segment_len = _segment_len(values, num_seqs * blocks, longest) if segment_len is None else int(segment_len)
    if segment_len < 1:
        raise DataError(f"nn_select_triton: segment_len must be positive, got {segment_len}")
    num_segments = max(1, triton.cdiv(longest, segment_len))
    write_keys = num_segments > 1
    k_pad = triton.next_power_of_2(k)
    widest = block_s or max(c.kwargs["BLOCK_S"] for c in _fitting(CONFIGS, k))
    cap = _cap(dict(K_PAD=k_pad, BLOCK_S=widest))  # the most slots any config uses
    buf = torch.empty(num_candidates * num_segments * 2 * cap, dtype=torch.int32, device=values.device)
    state = torch.empty(num_candidates * num_segments * 2, dtype=torch.int64, device=values.device)
    out = torch.empty((num_candidates, k), dtype=torch.int64, device=values.device)
    target = torch.empty((num_candidates, num_segments, k), dtype=torch.int64, device=values.device) if write_keys else out
    kernel, tiles = (_select_plain, dict(BLOCK_S=block_s)) if block_s else (_select_tuned, {})
    kernel[(num_seqs, blocks, num_segments)](
        values, inverse_norms, seq_starts.to(torch.int64).contiguous(), seq_lengths, codes, order, group_first,
        group_count, buf, state, target,
        k, values.size(1), values.stride(0), codes.stride(0), segment_len, num_segments,
        triton.next_power_of_2(min(longest, segment_len)),
        BLOCK_N=block_n, BLOCK_C=max(32, triton.next_power_of_2(values.size(1))), K_PAD=k_pad,
        WRITE_KEYS=write_keys, **tiles,
    )
    if write_keys:
        width = num_segments * k
        merge_w = triton.next_power_of_2(width)
        _merge_segments_kernel[(triton.cdiv(num_candidates, MERGE_ROWS),)](
            target, out, num_candidates, k, width, ROWS=MERGE_ROWS, W=merge_w, LOG_W=merge_w.bit_length() - 1)
    return out


class CandidateGroups(NamedTuple):
    """Candidates grouped by the sequence they rank (what the kernel's grid is built from)."""

    order: torch.Tensor  # [B] int64 candidate indices grouped by sequence
    first: torch.Tensor  # [R] int64 each sequence's first entry in `order`
    count: torch.Tensor  # [R] int64 each sequence's candidate count
    most: int  # the largest count
    longest: int  # the longest sequence that has candidates


def candidate_groups(candidate_seq: torch.Tensor, seq_lengths: torch.Tensor) -> CandidateGroups:
    """:class:`CandidateGroups` of ``candidate_seq [B]`` over ``seq_lengths [R]``, with one device sync."""
    candidate_seq = candidate_seq.to(torch.int64)
    order = torch.argsort(candidate_seq, stable=True)  # [B]
    count = torch.zeros(seq_lengths.numel(), dtype=torch.int64, device=candidate_seq.device)
    count.index_add_(0, candidate_seq, torch.ones_like(candidate_seq))  # [R], no sync (bincount syncs)
    first = torch.cumsum(count, 0) - count  # [R]
    most, longest = torch.stack([count.max(), torch.where(count > 0, seq_lengths.to(torch.int64), 0).max()]).tolist()
    return CandidateGroups(order.contiguous(), first.contiguous(), count, int(most), int(longest))


def _segment_len(values: torch.Tensor, num_blocks: int, longest: int) -> int:
    """Whole sequences when the blocks fill the GPU and fit in L2 twice; else segments giving about
    ``PROGRAMS_PER_SM`` programs per SM, each at least ``MIN_SEGMENT`` and at most ``MAX_SEGMENT`` tokens."""
    if not values.is_cuda:
        return max(1, longest)
    target = PROGRAMS_PER_SM * torch.cuda.get_device_properties(values.device).multi_processor_count
    segments = max(1, min(triton.cdiv(target, num_blocks), longest // MIN_SEGMENT))
    segments = max(segments, triton.cdiv(longest, MAX_SEGMENT))
    return max(SEGMENT_ALIGN, triton.cdiv(triton.cdiv(longest, segments), SEGMENT_ALIGN) * SEGMENT_ALIGN)
