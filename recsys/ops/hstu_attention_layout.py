"""What every HSTU layer's attention shares: padding indices, mask, normalizer and bias indices.

Within one encoder pass, all layers attend over the same sequences: the same ``seq_offsets``,
targets, timestamps, causality and normalization. Only q, k, v and the learned bias tables
change from layer to layer. :func:`build_hstu_attention_layout` validates the jagged input and
computes everything that depends on the sequences alone, once; each layer then passes the
result to :func:`recsys.ops.hstu_attention.hstu_attention` as ``layout=``::

    layout = build_hstu_attention_layout(seq_offsets, max_seq_len, num_rows=T, timestamps=ts)
    for layer in layers:
        out = hstu_attention(q, k, v, seq_offsets, max_seq_len, timestamps=ts, layout=layout, ...)

The ``[B, M, N]`` parts (mask, normalizer, bias index) and the padded timestamps are computed on
first use only: the fused Triton kernel derives all of them in-kernel from the offsets, targets and
timestamps, so a layout handed to it costs the validation and two small index tensors.

Host synchronisations: building a layout reads ``lengths.max()`` on CPU (the padded width)
and, with :data:`CHECK_INPUTS` on, the value checks. On CUDA the padded width is
``max_seq_len``, so only the checks synchronise. Layers using a layout add none.

Shape letters: T tokens, Tq queries, B sequences, N padded keys, M padded queries per sequence.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from recsys.errors import ConfigError, DataError
from recsys.ops.relative_bias_index import history_lengths, relative_bias_index

CHECK_INPUTS = True
"""Check offset, length and target values (host syncs) when a layout is built; shapes are always
checked. ``torch.export`` traces skip the value checks (eager calls of the exported model run them)."""


def _check_values() -> bool:
    return CHECK_INPUTS and not torch.compiler.is_exporting()


@dataclass
class HSTUAttentionLayout:
    """The sequence-only part of jagged HSTU attention, computed once per encoder pass.

    Args:
        seq_offsets: ``[B + 1]`` int64 key offsets.
        query_offsets: ``[B + 1]`` int64 query offsets (``seq_offsets`` itself when every token queries).
        num_targets: ``[B]`` int64, or None.
        timestamps: ``[T]`` int64, or None.
        next_timestamp: ``[B]`` int64 ``t_next`` of each sequence's last history token, or None.
        max_seq_len: the bound the input was checked against.
        causal: whether later keys are hidden.
        normalization: ``"length"`` or ``"max_len"``.
        max_attn_len: keys farther than this before the query are hidden (0: no limit).
        num_contextual: the first C tokens of every sequence are visible to every query (0: none).
        lengths: ``[B]`` keys per sequence.
        query_lengths: ``[B]`` queries per sequence.
        num_slots: N.
        num_query_slots: M.
        key_slots: ``[T]`` flat index ``b * N + position`` of every key row.
        query_row_slots: ``[Tq]`` flat index ``b * M + row`` of every query row.
        query_slots: ``[B, M]`` position of each padded query in its sequence.

    Computed on first use: ``mask`` (``[B, M, N]`` bool, :func:`attention_mask`), ``normalizer``
    (``[B, M]`` int64 divisor of each query's output) and ``padded_timestamps`` (``[B, N]`` int64,
    or None).
    """

    seq_offsets: torch.Tensor
    query_offsets: torch.Tensor
    num_targets: torch.Tensor | None
    timestamps: torch.Tensor | None
    next_timestamp: torch.Tensor | None
    max_seq_len: int
    causal: bool
    normalization: str
    lengths: torch.Tensor
    query_lengths: torch.Tensor
    num_slots: int
    num_query_slots: int
    key_slots: torch.Tensor
    query_row_slots: torch.Tensor
    query_slots: torch.Tensor
    max_attn_len: int = 0
    num_contextual: int = 0
    _bias_indices: dict = field(default_factory=dict, repr=False)

    @functools.cached_property
    def mask(self) -> torch.Tensor:
        """``[B, M, N]`` bool: which key slot each query slot attends to."""
        return attention_mask(
            self.query_slots, self.query_lengths, self.lengths, self.num_targets, self.num_slots, self.causal,
            self.max_attn_len, self.num_contextual,
        )

    @functools.cached_property
    def normalizer(self) -> torch.Tensor:
        """``[B, M]`` int64 divisor of each query's output."""
        if self.normalization == "max_len":  # no mask needed
            return self.query_slots.new_full(self.query_slots.shape, self.max_seq_len)
        return normalizer(self.mask, self.max_seq_len, self.normalization)

    @functools.cached_property
    def padded_timestamps(self) -> torch.Tensor | None:
        """``[B, N]`` int64 timestamps (zeros in padding), or None without timestamps."""
        if self.timestamps is None:
            return None
        return _pad_timestamps(self.timestamps, self.key_slots, self.lengths.numel(), self.num_slots)

    def bias_index(self, position_entries: int | None, time_entries: int | None, time_bucket_base: float) -> torch.Tensor:
        """``[B, M, N]`` index into the combined bias table of these sizes (computed once, then reused)."""
        key = (position_entries, time_entries, time_bucket_base)
        if key not in self._bias_indices:
            self._bias_indices[key] = relative_bias_index(
                self.query_slots, self.lengths, self.num_targets, self.padded_timestamps,
                position_entries, time_entries, time_bucket_base, self.num_slots, self.next_timestamp,
            )
        return self._bias_indices[key]

    def matches(
        self, seq_offsets, query_offsets, num_targets, timestamps, max_seq_len, causal, normalization, next_timestamp=None,
        max_attn_len=0, num_contextual=0,
    ) -> bool:
        """Whether this layout was built for these arguments (same tensors, same settings)."""
        return (
            seq_offsets is self.seq_offsets
            and (query_offsets if query_offsets is not None else seq_offsets) is self.query_offsets
            and num_targets is self.num_targets
            and timestamps is self.timestamps
            and next_timestamp is self.next_timestamp
            and (max_seq_len, causal, normalization, max_attn_len, num_contextual)
            == (self.max_seq_len, self.causal, self.normalization, self.max_attn_len, self.num_contextual)
        )


def build_hstu_attention_layout(
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    num_rows: int,
    num_queries: int | None = None,
    num_targets: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
    causal: bool = True,
    normalization: str = "max_len",
    query_offsets: torch.Tensor | None = None,
    next_timestamp: torch.Tensor | None = None,
    max_attn_len: int = 0,
    num_contextual: int = 0,
) -> HSTUAttentionLayout:
    """Validate the jagged arguments of :func:`recsys.ops.hstu_attention.hstu_attention` and lay them out.

    Args:
        seq_offsets, max_seq_len, num_targets, timestamps, causal, normalization, query_offsets,
        next_timestamp, max_attn_len, num_contextual: as :func:`recsys.ops.hstu_attention.hstu_attention`.
        num_rows: T, the rows of k and v.
        num_queries: Tq, the rows of q; default T.

    Example::

        layout = build_hstu_attention_layout(torch.tensor([0, 3, 5]), 8, num_rows=5)
        layout.mask.shape  # torch.Size([2, 3, 3])
    """
    num_queries = num_rows if num_queries is None else num_queries
    lengths, query_lengths = check_hstu_attention_inputs(
        seq_offsets, max_seq_len, num_rows=num_rows, num_queries=num_queries, num_targets=num_targets,
        timestamps=timestamps, query_offsets=query_offsets, next_timestamp=next_timestamp,
        max_attn_len=max_attn_len, num_contextual=num_contextual,
    )
    n = _padded_width(lengths, max_seq_len)
    m = n if query_offsets is None else _padded_width(query_lengths, max_seq_len)
    query_offsets = seq_offsets if query_offsets is None else query_offsets
    query_slots = ((lengths - query_lengths).view(-1, 1) + torch.arange(m, device=lengths.device)).clamp(max=max(n - 1, 0))
    key_slots = jagged_slots(seq_offsets, n, num_rows)  # [T]
    return HSTUAttentionLayout(
        seq_offsets=seq_offsets, query_offsets=query_offsets, num_targets=num_targets, timestamps=timestamps,
        next_timestamp=next_timestamp, max_seq_len=max_seq_len, causal=causal, normalization=normalization,
        lengths=lengths, query_lengths=query_lengths, num_slots=n, num_query_slots=m,
        key_slots=key_slots,
        query_row_slots=key_slots if query_offsets is seq_offsets else jagged_slots(query_offsets, m, num_queries),
        query_slots=query_slots,  # [B, M]; padding rows point at a real slot
        max_attn_len=max_attn_len, num_contextual=num_contextual,
    )


def check_hstu_attention_inputs(
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    num_rows: int,
    num_queries: int,
    num_targets: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
    query_offsets: torch.Tensor | None = None,
    next_timestamp: torch.Tensor | None = None,
    max_attn_len: int = 0,
    num_contextual: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The checks of :func:`build_hstu_attention_layout` alone: ``([B] lengths, [B] query lengths)``.

    What a kernel that derives the mask and bias in-kernel needs before it runs.
    """
    if not isinstance(max_attn_len, int) or max_attn_len < 0:
        raise ConfigError(f"hstu_attention: max_attn_len={max_attn_len!r}; use an int >= 0 (0: no limit)")
    if not isinstance(num_contextual, int) or num_contextual < 0:
        raise ConfigError(f"hstu_attention: num_contextual={num_contextual!r}; use an int >= 0 (0: no contextual prefix)")
    lengths = check_offsets("seq_offsets", seq_offsets, num_rows)  # [B]
    query_lengths = _check_queries(query_offsets, lengths, num_queries, num_rows)  # [B]
    _check_sequences(lengths, max_seq_len, timestamps, num_targets, num_rows)
    if next_timestamp is not None and next_timestamp.shape != lengths.shape:
        raise DataError(f"hstu_attention: next_timestamp must be [B] = [{lengths.numel()}]; got {tuple(next_timestamp.shape)}")
    return lengths, query_lengths


def jagged_slots(offsets: torch.Tensor, num_slots: int, num_rows: int | None = None) -> torch.Tensor:
    """``[T]`` flat index ``b * num_slots + position`` of every jagged row in a padded ``[B, num_slots]``.

    Args:
        offsets: ``[B + 1]`` int64.
        num_slots: padded length per sequence.
        num_rows: T (``offsets[-1]``); given, no host sync.
    """
    total = int(offsets[-1]) if num_rows is None else num_rows
    seq_ids = sequence_ids(offsets, total)  # [T]
    return seq_ids * num_slots + torch.arange(total, device=offsets.device) - offsets[seq_ids]


def sequence_ids(offsets: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``[T]`` index of the sequence each jagged row belongs to (``T = num_rows = offsets[-1]``).

    Counts the sequence ends at or before each row (a cumulative sum), with no host sync,
    unlike ``repeat_interleave``.
    """
    ends = torch.zeros(num_rows + 1, dtype=offsets.dtype, device=offsets.device)  # [T + 1]
    ends.index_add_(0, offsets[1:-1], torch.ones_like(offsets[1:-1]))
    return ends[:num_rows].cumsum(0)  # [T]


def attention_mask(
    query_slots: torch.Tensor,
    query_lengths: torch.Tensor,
    lengths: torch.Tensor,
    num_targets: torch.Tensor | None,
    num_slots: int,
    causal: bool,
    max_attn_len: int = 0,
    num_contextual: int = 0,
) -> torch.Tensor:
    """``[B, M, N]`` bool: which key slot each query slot attends to.

    Query at position ``i`` and key at ``j`` of a sequence of ``n`` tokens, ``h`` of them history,
    positions ``p(x) = min(x, h)`` (targets share position ``h``)::

        mask = j < n  and  (j < C  or  (j <= i if causal)
                                      and not (i >= h and j >= h and i != j)
                                      and (p(i) - p(j) <= W, or |p(i) - p(j)| <= W if not causal, when W > 0))

    with ``W = max_attn_len`` and ``C = num_contextual`` (the contextual prefix, e.g. user
    features, that every query sees).

    Args:
        query_slots: ``[B, M]`` position of each query in its sequence.
        query_lengths: ``[B]`` real queries per sequence (rows beyond are padding).
        lengths: ``[B]`` sequence lengths.
        num_targets: ``[B]`` targets at the end of each sequence, or None.
        num_slots: N.
        causal: keys after the query are hidden.
        max_attn_len: W, 0 for no limit.
        num_contextual: C, 0 for none.
    """
    keys = torch.arange(num_slots, device=lengths.device).view(1, 1, -1)  # [1, 1, N]
    queries = query_slots.unsqueeze(2)  # [B, M, 1]
    rows = torch.arange(query_slots.size(1), device=lengths.device).view(1, -1, 1)  # [1, M, 1]
    real = (keys < lengths.view(-1, 1, 1)) & (rows < query_lengths.view(-1, 1, 1))  # [B, M, N]
    mask = real
    if causal:
        mask = mask & (keys <= queries)
    first_target = history_lengths(lengths, num_targets).view(-1, 1, 1)  # [B, 1, 1]
    if num_targets is not None:
        between_targets = (keys >= first_target) & (queries >= first_target) & (keys != queries)
        mask = mask & ~between_targets
    if max_attn_len > 0:
        distance = torch.minimum(queries, first_target) - torch.minimum(keys, first_target)  # [B, M, N]
        mask = mask & ((distance <= max_attn_len) if causal else (distance.abs() <= max_attn_len))
    if num_contextual > 0:
        mask = mask | (real & (keys < num_contextual))
    return mask


def normalizer(mask: torch.Tensor, max_seq_len: int, normalization: str) -> torch.Tensor:
    """``[B, M]`` int64 divisor N of each query's output, from the ``[B, M, N]`` attention mask.

    ``"length"``: the number of keys the query attends to (at least 1): ``i + 1`` for history
    position ``i`` of a causal pass, ``h_b + 1`` for a target. ``"max_len"``: ``max_seq_len``, as
    the reference code. Both are causal: a query's divisor never depends on the keys it cannot see,
    so appending tokens leaves every earlier output as it was.
    """
    if normalization == "max_len":
        return torch.full(mask.shape[:2], max_seq_len, dtype=torch.int64, device=mask.device)
    return mask.sum(dim=2).clamp(min=1)


def check_offsets(name: str, offsets: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Validate ``[B + 1]`` offsets over ``num_rows`` rows and return the ``[B]`` lengths."""
    if offsets.dim() != 1 or offsets.numel() < 1 or offsets.dtype != torch.int64:
        raise DataError(f"hstu_attention: {name} must be a [B + 1] int64 tensor; got {offsets.dtype} {tuple(offsets.shape)}")
    lengths = offsets[1:] - offsets[:-1]
    if _check_values() and (int(offsets[0]) != 0 or int(offsets[-1]) != num_rows or bool((lengths < 0).any())):
        raise DataError(
            f"hstu_attention: {name} must start at 0, never decrease and end at the row count {num_rows}; "
            f"got {offsets.tolist() if offsets.numel() <= 10 else '...'}"
        )
    return lengths


def _check_queries(query_offsets, lengths, num_queries: int, num_rows: int) -> torch.Tensor:
    """``[B]`` queries per sequence, checked against the sequence lengths."""
    if query_offsets is None:
        if num_queries != num_rows:
            raise DataError(f"hstu_attention: q has {num_queries} rows, k {num_rows}; pass query_offsets when q is a subset")
        return lengths
    query_lengths = check_offsets("query_offsets", query_offsets, num_queries)
    if query_lengths.numel() != lengths.numel() or (_check_values() and bool((query_lengths > lengths).any())):
        raise DataError("hstu_attention: query_offsets must give each of the B sequences at most its length in queries")
    return query_lengths


def _check_sequences(lengths, max_seq_len: int, timestamps, num_targets, num_rows: int) -> None:
    """Lengths within ``max_seq_len``, timestamps ``[T]``, targets ``[B]`` within each length."""
    if _check_values() and lengths.numel() and int(lengths.max()) > max_seq_len:
        raise DataError(
            f"hstu_attention: a sequence has {int(lengths.max())} tokens > max_seq_len={max_seq_len}; "
            "truncate the sequences or raise max_seq_len"
        )
    if timestamps is not None and timestamps.shape != (num_rows,):
        raise DataError(f"hstu_attention: timestamps must be [T] = [{num_rows}]; got {tuple(timestamps.shape)}")
    if num_targets is not None:
        if num_targets.shape != lengths.shape:
            raise DataError(f"hstu_attention: num_targets must be [B] = [{lengths.numel()}]; got {tuple(num_targets.shape)}")
        if _check_values() and (bool((num_targets < 0).any()) or bool((num_targets > lengths).any())):
            raise DataError("hstu_attention: num_targets[b] must lie in [0, length of sequence b]")


def _padded_width(lengths: torch.Tensor, max_seq_len: int) -> int:
    """N: the longest sequence on CPU (one read), ``max_seq_len`` on an accelerator or under
    ``torch.export`` (no sync)."""
    if lengths.device.type != "cpu" or torch.compiler.is_exporting():
        return max_seq_len
    return int(lengths.max()) if lengths.numel() else 0


def _pad_timestamps(timestamps: torch.Tensor, key_slots: torch.Tensor, num_seqs: int, n: int) -> torch.Tensor:
    """``[T]`` -> ``[B, N]`` (zeros in padding)."""
    flat = timestamps.new_zeros(num_seqs * n).index_copy(0, key_slots, timestamps)
    return flat.view(num_seqs, n)
