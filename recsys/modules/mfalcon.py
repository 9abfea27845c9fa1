"""M-FALCON: score many candidates per user against one encoded history (paper, Section 3.4).

Candidates are appended to each user's history as targets (:mod:`recsys.ops.hstu_attention`):
they attend to the whole history and to themselves, never to each other, and history never
attends to them. Hence:

- a candidate's output depends only on the history and on the candidate itself, not on the other
  candidates nor on how they are split into micro-batches;
- history keys/values at every layer do not depend on the candidates, so they are computed once
  (:meth:`recsys.modules.hstu.HSTUEncoder.encode_history`) and reused by every micro-batch.

Candidates are split per user into micro-batches of at most ``microbatch_size``: micro-batch
``r`` holds candidates ``r * m .. (r + 1) * m - 1`` of every user that has them.

Both properties need a causal encoder. In a non-causal one (``causal=False``) history tokens attend
to the candidates after them, so the cache would be wrong and candidates sharing a pass would see
each other through the history. Such an encoder is scored exactly only one candidate per pass
without the cache (``cache=False, microbatch_size=1``); anything else is a :class:`ConfigError`.

Shape letters: B users, Th history tokens, Tc candidates, D embedding dim.
"""

from __future__ import annotations

import torch

from recsys.errors import ConfigError, DataError
from recsys.modules.hstu import HSTUEncoder, HSTUKVCache, append_jagged


def score_candidates(
    encoder: HSTUEncoder,
    history_values: torch.Tensor,
    seq_offsets: torch.Tensor,
    candidate_values: torch.Tensor,
    candidate_offsets: torch.Tensor,
    microbatch_size: int,
    timestamps: torch.Tensor | None = None,
    candidate_timestamps: torch.Tensor | None = None,
    cache: bool = True,
    history_cache: HSTUKVCache | None = None,
) -> torch.Tensor:
    """The encoder's output for every candidate appended to its user's history.

    Args:
        encoder: an :class:`HSTUEncoder`; a non-causal one needs ``cache=False, microbatch_size=1``.
        history_values: ``[Th, D]`` history token embeddings, jagged by ``seq_offsets`` ``[B + 1]``.
        seq_offsets: ``[B + 1]`` int64 history offsets.
        candidate_values: ``[Tc, D]`` candidate embeddings, jagged by ``candidate_offsets`` ``[B + 1]``.
        candidate_offsets: ``[B + 1]`` int64 candidate offsets (a user may have none).
        microbatch_size: most candidates per user in one pass; history plus a micro-batch must
            fit in ``encoder.max_seq_len``.
        timestamps: ``[Th]`` int64 history timestamps (required by a time bias).
        candidate_timestamps: ``[Tc]`` int64 request times; by default each user's last history
            timestamp (0 for an empty history).
        cache: encode the history once and reuse its keys/values (True), or re-run history plus
            candidates for every micro-batch (False; same result, slower).
        history_cache: the histories' keys and values already encoded (e.g. kept across requests
            by ``recsys.serve.kv_cache``), equal to ``encoder.encode_history`` of these histories;
            None encodes them here. Needs ``cache=True``.

    Returns:
        ``[Tc, D]`` candidate outputs, in ``candidate_values`` order.

    Example::

        out = score_candidates(enc, hist, torch.tensor([0, 3, 5]), cands, torch.tensor([0, 4, 6]), microbatch_size=2)
    """
    _check(encoder, history_values, seq_offsets, candidate_values, candidate_offsets, microbatch_size)
    if not encoder.causal and (cache or microbatch_size > 1):
        raise ConfigError(
            f"score_candidates: the encoder is not causal (its history attends to the candidates), so cache={cache} "
            f"and microbatch_size={microbatch_size} would give wrong scores; pass cache=False, microbatch_size=1 "
            "(each candidate alone with its history: exact) or use a causal encoder"
        )
    if timestamps is not None and candidate_timestamps is None:
        candidate_timestamps = _default_candidate_timestamps(timestamps, seq_offsets, candidate_offsets)
    if history_cache is not None and not cache:
        raise ConfigError("score_candidates: history_cache is given but cache=False; pass cache=True to use it")
    if history_cache is None and cache:
        history_cache = encoder.encode_history(history_values, seq_offsets, timestamps)[1]
    out = candidate_values.new_zeros(candidate_values.shape)
    for rows, offsets in _microbatches(candidate_offsets, microbatch_size):
        values = candidate_values[rows]  # [Tm, D]
        times = None if candidate_timestamps is None else candidate_timestamps[rows]  # [Tm]
        if history_cache is not None:
            scored = encoder.forward_targets(values, offsets, history_cache, times)
        else:
            scored = _full_pass(encoder, history_values, seq_offsets, timestamps, values, offsets, times)
        out = out.index_copy(0, rows, scored)
    return out


def _full_pass(encoder, history_values, seq_offsets, timestamps, values, offsets, times) -> torch.Tensor:
    """History plus one micro-batch through the whole encoder; the micro-batch's rows, ``[Tm, D]``."""
    full, full_offsets = append_jagged(history_values, seq_offsets, values, offsets)
    full_times = None if timestamps is None else append_jagged(timestamps, seq_offsets, times, offsets)[0]
    num_targets = offsets[1:] - offsets[:-1]  # [B]
    encoded = encoder(full, full_offsets, full_times, num_targets)  # [Th + Tm, D]
    full_lengths = full_offsets[1:] - full_offsets[:-1]  # [B]
    user = torch.repeat_interleave(torch.arange(full_lengths.numel(), device=full.device), full_lengths, output_size=full.size(0))
    position = torch.arange(full.size(0), device=full.device) - full_offsets[user]  # [Th + Tm]
    is_target = position >= (seq_offsets[1:] - seq_offsets[:-1])[user]
    return encoded[is_target]


def _microbatches(candidate_offsets: torch.Tensor, microbatch_size: int):
    """Yield ``(rows [Tm], offsets [B + 1])``: micro-batch r takes candidates r*m .. r*m + m - 1 of each user."""
    lengths = candidate_offsets[1:] - candidate_offsets[:-1]  # [B]
    total = int(candidate_offsets[-1])
    user = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths, output_size=total)
    rank = torch.arange(total, device=lengths.device) - candidate_offsets[user]  # [Tc] index within the user
    num_batches = -(-int(lengths.max()) // microbatch_size) if lengths.numel() else 0
    for r in range(num_batches):
        rows = torch.nonzero(rank // microbatch_size == r).flatten()  # [Tm], grouped by user
        batch_lengths = (lengths - r * microbatch_size).clamp(0, microbatch_size)  # [B]
        offsets = torch.cat([candidate_offsets.new_zeros(1), torch.cumsum(batch_lengths, 0)])
        yield rows, offsets


def _default_candidate_timestamps(timestamps, seq_offsets, candidate_offsets) -> torch.Tensor:
    """``[Tc]``: each candidate gets its user's last history timestamp (0 without history)."""
    has_history = seq_offsets[1:] > seq_offsets[:-1]  # [B]
    last = torch.zeros_like(has_history, dtype=timestamps.dtype)
    last[has_history] = timestamps[seq_offsets[1:][has_history] - 1]
    return torch.repeat_interleave(last, candidate_offsets[1:] - candidate_offsets[:-1])


def _check(encoder, history_values, seq_offsets, candidate_values, candidate_offsets, microbatch_size) -> None:
    if microbatch_size < 1:
        raise ConfigError(f"score_candidates: microbatch_size={microbatch_size}; use at least 1")
    if seq_offsets.shape != candidate_offsets.shape:
        raise DataError(
            f"score_candidates: seq_offsets {tuple(seq_offsets.shape)} and candidate_offsets "
            f"{tuple(candidate_offsets.shape)} must both be [B + 1] over the same users"
        )
    if int(seq_offsets[-1]) != history_values.size(0) or int(candidate_offsets[-1]) != candidate_values.size(0):
        raise DataError("score_candidates: the last offset must equal the row count of its values (history and candidates)")
    history_lengths = seq_offsets[1:] - seq_offsets[:-1]
    candidate_lengths = (candidate_offsets[1:] - candidate_offsets[:-1]).clamp(max=microbatch_size)
    longest = int((history_lengths + candidate_lengths).max()) if history_lengths.numel() else 0
    if longest > encoder.max_seq_len:
        raise ConfigError(
            f"score_candidates: history plus one micro-batch reaches {longest} tokens > encoder max_seq_len="
            f"{encoder.max_seq_len}; lower microbatch_size or build the encoder with a larger max_seq_len"
        )
