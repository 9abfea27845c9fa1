"""Candidate-conditioned nearest-neighbour selection: the semantics, in plain PyTorch.

TransAct V2 cannot feed a 10^4-token lifelong sequence to the ranking model for every candidate.
For each candidate it keeps the k tokens of a user sequence whose content embedding has the
largest dot product with the candidate's, and feeds those. This module defines that selection
exactly; :mod:`recsys.ops.nn_select` dispatches to it or to faster backends with the same result.

Sequences are windows ``values[seq_starts[r] : seq_starts[r] + seq_lengths[r]]`` of one int8 token
table, so overlapping windows of one user's stream (the history as of different times) cost no
copy. Candidates name the sequence they rank (``candidate_seq``), so the many candidates of one
request share one sequence (the request-level dedup)::

    values        [T, C] int8   t0 t1 t2 t3 t4 t5 t6
    seq_starts    [R]           0        3            sequence 0 = t0..t2, sequence 1 = t3..t6
    seq_lengths   [R]           3        4
    candidates    [B, C]        c0 c1 c2
    candidate_seq [B]           1  1  0               c0 and c1 rank sequence 1, c2 sequence 0

Scores are the paper's serving path: the dequantised token, L2-normalised, against the candidate::

    score(c, t) = (q_c . q_t) / ||q_t||          (a zero token scores 0)

The dequantisation factor ``s / 127`` cancels in the normalisation, and the candidate's own scale
and norm are one positive factor per candidate, so the order is that of the cosine between the
candidate and the dequantised token. Raw int8 dot products would rank a long token above a near
one whenever the stored content is not unit-norm.

Every backend computes the score in the same exactly rounded steps, so every backend, batch split
and device selects the very same tokens: the candidate is quantised with the sequence's scale
(float input; int8 input is taken as already quantised); ``q_c . q_t`` is the int8 x int8 dot
product accumulated exactly (what int8 tensor cores compute; exact in float32 too, for C up to
:data:`MAX_EXACT_DIM`); ``1 / ||q_t||`` is computed once per token in float64 and rounded to
float32 (:func:`token_inverse_norms`); the score is their float32 product (one correctly rounded
multiply), ordered by :func:`ordered_keys` (its float32 bits as a sortable integer).

Selection rule, per candidate with a sequence of length L:

- ``min(k, L)`` tokens; a shorter sequence returns all its tokens, ``k = 0`` or ``L = 0`` none;
- higher score first; equal scores go to the more recent token (the larger position);
- the output lists the chosen positions (0-based within the sequence) in ascending order, i.e.
  in time order for a time-ordered sequence, padded with -1 on the right to ``k`` columns.

Shape letters: T tokens, C content dimension, R sequences, B candidates, k tokens kept.
"""

from __future__ import annotations

import torch

from recsys.ops.int8_quantization import DEFAULT_SCALE, INT8_LEVELS, quantize_int8

FP32_EXACT = 1 << 24  # integers up to this are exact in float32
MAX_EXACT_DIM = (FP32_EXACT - 1) // (INT8_LEVELS * INT8_LEVELS)  # 1040: |q_c . q_t| < 2^24
SMALL_PRODUCT = 1 << 16  # below this many scores, an int64 matmul on CPU (no BLAS threads to start) is faster


def nn_select_reference(
    values: torch.Tensor,
    seq_starts: torch.Tensor,
    seq_lengths: torch.Tensor,
    candidates: torch.Tensor,
    candidate_seq: torch.Tensor,
    k: int,
    *,
    scale: float = DEFAULT_SCALE,
    inverse_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Top-``k`` tokens of each candidate's sequence by normalised score, in time order.

    One sequence at a time: the sequence's tokens are read once for all its candidates.

    Args:
        values: ``[T, C]`` int8 quantised token embeddings.
        seq_starts: ``[R]`` int64 first row of each sequence in ``values``.
        seq_lengths: ``[R]`` int64 number of tokens of each sequence.
        candidates: ``[B, C]`` float candidate embeddings (quantised here with ``scale``), or int8.
        candidate_seq: ``[B]`` int64 sequence each candidate ranks.
        k: tokens kept per candidate (>= 0).
        scale: the int8 scale of ``values`` (and of float ``candidates``).
        inverse_norms: ``[T]`` float32 :func:`token_inverse_norms` of ``values`` (computed when None).

    Returns:
        ``[B, k]`` int64 chosen positions within the sequence, ascending, -1 padded.
    """
    codes = candidates if candidates.dtype == torch.int8 else quantize_int8(candidates, scale)
    out = torch.full((codes.size(0), k), -1, dtype=torch.int64, device=values.device)
    if k == 0 or codes.size(0) == 0:
        return out
    inverse_norms = token_inverse_norms(values) if inverse_norms is None else inverse_norms
    float_dtype = torch.float32 if values.size(1) * INT8_LEVELS * INT8_LEVELS < FP32_EXACT else torch.float64
    order = torch.argsort(candidate_seq, stable=True)  # [B] candidates grouped by sequence
    seqs, counts = torch.unique_consecutive(candidate_seq[order], return_counts=True)
    for seq, group in zip(seqs.tolist(), torch.split(order, counts.tolist())):
        start, length = int(seq_starts[seq]), int(seq_lengths[seq])
        keep = min(k, length)
        if keep == 0:
            continue
        small = not values.is_cuda and group.numel() * length < SMALL_PRODUCT
        dtype = torch.int64 if small else float_dtype  # exact either way
        tokens = values[start : start + length].to(dtype)  # [L, C]
        dots = (codes[group].to(dtype) @ tokens.T).to(torch.float32)  # [n, L] exact integers
        scores = dots * inverse_norms[start : start + length]  # [n, L] float32, one rounding
        positions = torch.arange(length, device=values.device)
        keys = ordered_keys(scores) * length + positions  # [n, L] distinct: score first, then the later position
        chosen = keys.topk(keep, dim=1).indices  # [n, keep]
        out[group, :keep] = chosen.sort(dim=1).values
    return out


def token_inverse_norms(values: torch.Tensor) -> torch.Tensor:
    """``[T]`` float32 ``1 / ||q_t||`` of ``[T, C]`` int8 tokens (0 for a zero token), computed in
    float64 and rounded once, so every device gets the same bits."""
    norm = values.to(torch.float64).square().sum(dim=1).sqrt()  # [T] exact sum of squares
    return torch.where(norm > 0, 1.0 / norm.clamp(min=1.0), torch.zeros_like(norm)).to(torch.float32)


def ordered_keys(scores: torch.Tensor) -> torch.Tensor:
    """float32 scores -> int64 keys in the same order (the float's bits, negatives flipped)."""
    bits = scores.contiguous().view(torch.int32)
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
