"""HSTU: the Hierarchical Sequential Transduction Unit and a stack of them, on jagged sequences.

One layer (Zhai et al., "Actions Speak Louder than Words", ICML 2024, Section 3.1)::

    X_n        = LayerNorm(X)                                   pre-norm
    U, V, Q, K = Split(SiLU(f1(X_n)))                           Eq. 1, f1: D -> H * (2 Dv + 2 Dqk)
    O          = SiLU(alpha Q K^T + rab^{p,t}) V / N             Eq. 2, masked, per sequence
    Y          = f2(Dropout(LayerNorm(O) * U))                  Eq. 3, f2: H * Dv -> D
    out        = X + Y                                          residual; no feed-forward block

Jagged input: ``values`` ``[T, D]`` holds all sequences back to back, ``seq_offsets`` ``[B + 1]``
where each starts (see :mod:`recsys.ops.hstu_attention`). Targets (candidates) are the last
``num_targets[b]`` tokens of sequence ``b``: they read the history and never each other.

Where this differs from the reference code (generative-recommenders), on purpose:

- both LayerNorms are affine (the research model's are not; the newer ``STULayer``'s are) and f1
  has a bias, as in ``STULayer``;
- ``alpha`` defaults to ``1 / sqrt(Dqk)`` (``STULayer``); the research model used 1;
- attention normalization defaults to theirs (``"max_len"``); ``"length"`` divides each query by
  the number of keys it attends to instead (both causal);
- dropout sits on f2's input, as in both reference models.

KV cache (M-FALCON): in a causal encoder history tokens never attend to targets, so their keys
and values at every layer are the same with or without targets appended.
:meth:`HSTUEncoder.encode_history` keeps them; :meth:`HSTUEncoder.forward_targets` runs only the
targets against them. A non-causal encoder's history reads the targets, so both refuse it.

Shared layout: every layer of a pass attends over the same sequences, so the encoder validates
the jagged input once (:class:`recsys.ops.hstu_attention_layout.HSTUAttentionLayout`) and hands the
layout to each layer. On CUDA, ``kernel="auto"`` runs the fused Triton kernel in training and
evaluation: it takes the timestamps and the bias tables and computes the mask and relative bias
in-kernel, so the layout's ``[B, N, N]`` mask and bias index are never built; the PyTorch
reference (CPU, or ``kernel="pytorch"``) builds them on first use and every layer reuses them.

Shape letters: T tokens, B sequences, D embedding dim, H heads, Dqk / Dv per-head dims.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError, DataError
from recsys.modules.relative_bias import DEFAULT_NUM_TIME_BUCKETS, DEFAULT_TIME_BUCKET_BASE, RelativeAttentionBias
from recsys.ops.hstu_attention import NORMALIZATIONS, hstu_attention
from recsys.ops.hstu_attention_layout import HSTUAttentionLayout, build_hstu_attention_layout, sequence_ids


class HSTULayer(nn.Module):
    """One HSTU block on jagged input.

    Args:
        embedding_dim: D.
        num_heads: H.
        attention_dim: Dqk, per head.
        linear_dim: Dv, per head.
        max_seq_len: longest sequence (history plus targets) the layer sees.
        dropout: dropout rate on f2's input.
        normalization: ``"length"`` or ``"max_len"`` (see :func:`recsys.ops.hstu_attention.hstu_attention`).
        use_position_bias: learn the relative position bias.
        use_time_bias: learn the relative time bias (then timestamps are required).
        num_time_buckets: time bias buckets (table has ``num_time_buckets + 1`` rows).
        time_bucket_base: time bucket width in natural-log units.
        alpha: score scale, default ``1 / sqrt(attention_dim)``.
        causal: hide later tokens.
        kernel: attention backend, ``"auto"`` or a name from ``hstu_attention_kernels()``.
        max_attn_len: attend to at most this many positions back (0: no limit).
        num_contextual: the first tokens of every sequence that every query sees (0: none).

    Example::

        layer = HSTULayer(embedding_dim=8, num_heads=2, attention_dim=4, linear_dim=4, max_seq_len=16)
        y = layer(torch.randn(5, 8), torch.tensor([0, 2, 5]), timestamps=torch.arange(5))  # [5, 8]
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        attention_dim: int,
        linear_dim: int,
        max_seq_len: int,
        dropout: float = 0.0,
        normalization: str = "max_len",
        use_position_bias: bool = True,
        use_time_bias: bool = True,
        num_time_buckets: int = DEFAULT_NUM_TIME_BUCKETS,
        time_bucket_base: float = DEFAULT_TIME_BUCKET_BASE,
        alpha: float | None = None,
        causal: bool = True,
        kernel: str = "auto",
        max_attn_len: int = 0,
        num_contextual: int = 0,
    ) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"HSTULayer: normalization={normalization!r}; use one of {NORMALIZATIONS}")
        if max_attn_len < 0 or num_contextual < 0:
            raise ConfigError(
                f"HSTULayer: max_attn_len={max_attn_len}, num_contextual={num_contextual}; use values >= 0 (0: off)"
            )
        self.max_attn_len, self.num_contextual = max_attn_len, num_contextual
        self.num_heads, self.attention_dim, self.linear_dim = num_heads, attention_dim, linear_dim
        self.max_seq_len, self.normalization, self.alpha = max_seq_len, normalization, alpha
        self.causal, self.kernel = causal, kernel
        self.input_norm = nn.LayerNorm(embedding_dim, eps=1e-6)
        self.f1 = nn.Linear(embedding_dim, num_heads * (2 * linear_dim + 2 * attention_dim))
        self.output_norm = nn.LayerNorm(num_heads * linear_dim, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.f2 = nn.Linear(num_heads * linear_dim, embedding_dim)
        self.relative_bias = (
            RelativeAttentionBias(max_seq_len, num_time_buckets, time_bucket_base, use_position_bias, use_time_bias)
            if use_position_bias or use_time_bias
            else None
        )
        nn.init.normal_(self.f1.weight, mean=0.0, std=0.02)  # small U, V, Q, K at the start, as the reference
        nn.init.zeros_(self.f1.bias)
        nn.init.xavier_uniform_(self.f2.weight)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 1: ``[T, D]`` -> U ``[T, H*Dv]``, Q ``[T, H, Dqk]``, K ``[T, H, Dqk]``, V ``[T, H, Dv]``."""
        h, dqk, dv = self.num_heads, self.attention_dim, self.linear_dim
        uvqk = F.silu(self.f1(self.input_norm(x)))  # [T, H * (2 Dv + 2 Dqk)]
        u, v, q, k = torch.split(uvqk, [h * dv, h * dv, h * dqk, h * dqk], dim=1)
        return u, q.view(-1, h, dqk), k.view(-1, h, dqk), v.view(-1, h, dv)

    def attend(
        self, q, k, v, seq_offsets, timestamps, num_targets, query_offsets=None, layout=None, next_timestamp=None
    ) -> torch.Tensor:
        """Eq. 2 through :func:`hstu_attention`: ``[Tq, H, Dqk]`` queries -> ``[Tq, H * Dv]``.

        ``layout``: an :class:`HSTUAttentionLayout` of these arguments shared by the layers of a
        pass (see :meth:`attention_layout`), or None to build one here. ``next_timestamp``: ``[B]``
        time of the event after each history (see :func:`hstu_attention`), or None.
        """
        bias_kwargs = self.relative_bias.op_kwargs() if self.relative_bias is not None else {}
        if bias_kwargs.get("time_bias") is not None and timestamps is None:
            raise DataError("HSTULayer: this layer learns a time bias; pass timestamps ([T] int64) or build it with use_time_bias=False")
        out = hstu_attention(
            q, k, v, seq_offsets, self.max_seq_len,
            alpha=self.alpha, timestamps=timestamps, num_targets=num_targets, causal=self.causal,
            normalization=self.normalization, query_offsets=query_offsets, kernel=self.kernel, layout=layout,
            next_timestamp=next_timestamp, max_attn_len=self.max_attn_len, num_contextual=self.num_contextual,
            **bias_kwargs,
        )  # [Tq, H, Dv]
        return out.flatten(1, 2)  # [Tq, H * Dv]

    def attention_layout(
        self,
        seq_offsets: torch.Tensor,
        num_rows: int,
        timestamps: torch.Tensor | None = None,
        num_targets: torch.Tensor | None = None,
        query_offsets: torch.Tensor | None = None,
        num_queries: int | None = None,
        next_timestamp: torch.Tensor | None = None,
    ) -> HSTUAttentionLayout:
        """The validated :class:`HSTUAttentionLayout` of a pass, reusable by every layer with this one's settings.

        Args:
            seq_offsets: ``[B + 1]`` int64 offsets of the ``num_rows`` keys.
            timestamps, num_targets, query_offsets, next_timestamp: as :meth:`attend`.
            num_queries: rows of q with ``query_offsets``; default ``num_rows``.
        """
        return build_hstu_attention_layout(
            seq_offsets, self.max_seq_len, num_rows=num_rows, num_queries=num_queries, num_targets=num_targets,
            timestamps=timestamps, causal=self.causal, normalization=self.normalization, query_offsets=query_offsets,
            next_timestamp=next_timestamp, max_attn_len=self.max_attn_len, num_contextual=self.num_contextual,
        )

    def output(self, x: torch.Tensor, attn: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Eq. 3 plus the residual: ``x + f2(Dropout(LayerNorm(attn) * u))``, ``[T, D]``."""
        return x + self.f2(self.dropout(self.output_norm(attn) * u))

    def forward_with_kv(
        self,
        x: torch.Tensor,
        seq_offsets: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        num_targets: torch.Tensor | None = None,
        layout: HSTUAttentionLayout | None = None,
        next_timestamp: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward`, also returning this layer's K ``[T, H, Dqk]`` and V ``[T, H, Dv]``."""
        u, q, k, v = self.project(x)
        attn = self.attend(q, k, v, seq_offsets, timestamps, num_targets, layout=layout, next_timestamp=next_timestamp)
        return self.output(x, attn, u), k, v

    def forward(
        self,
        x: torch.Tensor,
        seq_offsets: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        num_targets: torch.Tensor | None = None,
        layout: HSTUAttentionLayout | None = None,
        next_timestamp: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[T, D]`` jagged tokens -> ``[T, D]``.

        Args:
            x: ``[T, D]`` token embeddings.
            seq_offsets: ``[B + 1]`` int64.
            timestamps: ``[T]`` int64, required with a time bias.
            num_targets: ``[B]`` int64 targets at the end of each sequence, or None.
            layout: :meth:`attention_layout` of these arguments, shared across layers; None builds one.
            next_timestamp: ``[B]`` int64 time of the event after each history, or None (see
                :func:`recsys.modules.relative_bias.next_timestamps`).
        """
        return self.forward_with_kv(x, seq_offsets, timestamps, num_targets, layout, next_timestamp)[0]

    def forward_targets(
        self,
        x: torch.Tensor,
        target_offsets: torch.Tensor,
        history_k: torch.Tensor,
        history_v: torch.Tensor,
        history_offsets: torch.Tensor,
        history_timestamps: torch.Tensor | None = None,
        target_timestamps: torch.Tensor | None = None,
        layout: HSTUAttentionLayout | None = None,
    ) -> torch.Tensor:
        """Targets appended after cached history: ``[Tc, D]`` -> ``[Tc, D]``.

        Args:
            x: ``[Tc, D]`` target tokens, jagged by ``target_offsets`` ``[B + 1]``.
            history_k: ``[Th, H, Dqk]`` this layer's cached history keys (from :meth:`forward_with_kv`).
            history_v: ``[Th, H, Dv]`` cached history values.
            history_offsets: ``[B + 1]`` int64 offsets of the history.
            history_timestamps: ``[Th]`` int64 and ``target_timestamps`` ``[Tc]``, with a time bias.
            layout: :func:`targets_layout` of these arguments, shared across layers; None builds one.
        """
        if layout is None:
            layout = targets_layout(
                self, history_k.size(0), history_offsets, x.size(0), target_offsets, history_timestamps, target_timestamps
            )
        u, q, k, v = self.project(x)
        full_k, _ = append_jagged(history_k, history_offsets, k, target_offsets)
        full_v, _ = append_jagged(history_v, history_offsets, v, target_offsets)
        attn = self.attend(
            q, full_k, full_v, layout.seq_offsets, layout.timestamps, layout.num_targets,
            query_offsets=target_offsets, layout=layout,
        )
        return self.output(x, attn, u)

    def extend_with_kv(
        self,
        x: torch.Tensor,
        new_offsets: torch.Tensor,
        prefix_k: torch.Tensor,
        prefix_v: torch.Tensor,
        prefix_offsets: torch.Tensor,
        layout: HSTUAttentionLayout,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """History tokens appended after a cached history prefix: ``[Tn, D]`` -> ``([Tn, D], K, V)``.

        The new tokens attend causally to the prefix and to each other, exactly as the same rows of
        :meth:`forward` on prefix plus new tokens (no targets). Returns their outputs and the keys
        ``[Tp + Tn, H, Dqk]`` and values ``[Tp + Tn, H, Dv]`` of prefix plus new tokens, jagged by
        ``prefix_offsets + new_offsets``.

        Args:
            x: ``[Tn, D]`` new tokens, jagged by ``new_offsets`` ``[B + 1]``.
            prefix_k: ``[Tp, H, Dqk]`` and ``prefix_v`` ``[Tp, H, Dv]``: this layer's cached keys and
                values, jagged by ``prefix_offsets`` ``[B + 1]``.
            layout: :meth:`attention_layout` of the full sequences with ``query_offsets=new_offsets``
                (see :meth:`HSTUEncoder.extend_history`).
        """
        u, q, k, v = self.project(x)
        full_k, _ = append_jagged(prefix_k, prefix_offsets, k, new_offsets)  # [Tp + Tn, H, Dqk]
        full_v, _ = append_jagged(prefix_v, prefix_offsets, v, new_offsets)  # [Tp + Tn, H, Dv]
        attn = self.attend(
            q, full_k, full_v, layout.seq_offsets, layout.timestamps, None, query_offsets=new_offsets, layout=layout
        )
        return self.output(x, attn, u), full_k, full_v


def targets_layout(
    layer: HSTULayer,
    num_history_rows: int,
    history_offsets: torch.Tensor,
    num_target_rows: int,
    target_offsets: torch.Tensor,
    history_timestamps: torch.Tensor | None = None,
    target_timestamps: torch.Tensor | None = None,
) -> HSTUAttentionLayout:
    """Layout of the targets queried against history plus targets (:meth:`HSTULayer.forward_targets`).

    Args:
        layer: any layer with the settings of the pass.
        num_history_rows: Th; ``history_offsets`` ``[B + 1]`` int64.
        num_target_rows: Tc; ``target_offsets`` ``[B + 1]`` int64.
        history_timestamps: ``[Th]`` int64 and ``target_timestamps`` ``[Tc]``, with a time bias.
    """
    full_timestamps = None
    if history_timestamps is not None and target_timestamps is not None:
        full_timestamps, _ = append_jagged(history_timestamps, history_offsets, target_timestamps, target_offsets)
    return layer.attention_layout(
        history_offsets + target_offsets, num_history_rows + num_target_rows, full_timestamps,
        num_targets=target_offsets[1:] - target_offsets[:-1], query_offsets=target_offsets, num_queries=num_target_rows,
    )


def append_jagged(
    left: torch.Tensor, left_offsets: torch.Tensor, right: torch.Tensor, right_offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence, ``left`` rows then ``right`` rows: ``([Tl + Tr, *F], [B + 1] offsets)``.

    Example::

        append_jagged(a, [0, 2, 3], b, [0, 1, 3])  # rows a0 a1 b0 | a2 b1 b2, offsets [0, 3, 6]
    """
    offsets = left_offsets + right_offsets  # [B + 1]
    left_seq = sequence_ids(left_offsets, left.size(0))  # [Tl]
    right_seq = sequence_ids(right_offsets, right.size(0))  # [Tr]
    left_lengths = left_offsets[1:] - left_offsets[:-1]  # [B]
    # Row r of sequence b moves from in_offsets[b] + i to offsets[b] + i (+ left length for right rows).
    left_rows = torch.arange(left.size(0), device=left.device) - left_offsets[left_seq] + offsets[left_seq]
    right_rows = (
        torch.arange(right.size(0), device=right.device) - right_offsets[right_seq] + offsets[right_seq] + left_lengths[right_seq]
    )
    out = left.new_zeros((left.size(0) + right.size(0), *left.shape[1:]))
    return out.index_copy(0, left_rows, left).index_copy(0, right_rows, right), offsets


@dataclass
class HSTUKVCache:
    """Per-layer keys and values of encoded histories, for :meth:`HSTUEncoder.forward_targets`.

    Args:
        keys: one ``[Th, H, Dqk]`` per layer.
        values: one ``[Th, H, Dv]`` per layer.
        seq_offsets: ``[B + 1]`` int64 offsets of the histories.
        timestamps: ``[Th]`` int64 history timestamps, or None.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    seq_offsets: torch.Tensor
    timestamps: torch.Tensor | None = None


class HSTUEncoder(nn.Module):
    """A stack of :class:`HSTULayer` on jagged sequences, with an optional final LayerNorm.

    Args:
        num_layers: number of HSTU blocks.
        embedding_dim, num_heads, attention_dim, linear_dim, max_seq_len, dropout, normalization,
        use_position_bias, use_time_bias, num_time_buckets, time_bucket_base, alpha, causal, kernel:
            as :class:`HSTULayer` (every layer learns its own bias tables, as in the reference).
        final_norm: apply LayerNorm(D) to the output.
        max_attn_len, num_contextual: as :class:`HSTULayer` (attention window, contextual prefix).

    Example::

        enc = HSTUEncoder(num_layers=2, embedding_dim=8, num_heads=2, attention_dim=4, linear_dim=4, max_seq_len=16)
        out = enc(torch.randn(5, 8), torch.tensor([0, 2, 5]), timestamps=torch.arange(5))  # [5, 8]
    """

    def __init__(
        self,
        num_layers: int,
        embedding_dim: int,
        num_heads: int,
        attention_dim: int,
        linear_dim: int,
        max_seq_len: int,
        dropout: float = 0.0,
        normalization: str = "max_len",
        use_position_bias: bool = True,
        use_time_bias: bool = True,
        num_time_buckets: int = DEFAULT_NUM_TIME_BUCKETS,
        time_bucket_base: float = DEFAULT_TIME_BUCKET_BASE,
        alpha: float | None = None,
        causal: bool = True,
        kernel: str = "auto",
        final_norm: bool = True,
        max_attn_len: int = 0,
        num_contextual: int = 0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"HSTUEncoder: num_layers={num_layers}; use at least 1")
        self.embedding_dim, self.max_seq_len, self.causal = embedding_dim, max_seq_len, causal
        self.layers = nn.ModuleList(
            HSTULayer(
                embedding_dim, num_heads, attention_dim, linear_dim, max_seq_len, dropout, normalization,
                use_position_bias, use_time_bias, num_time_buckets, time_bucket_base, alpha, causal, kernel,
                max_attn_len, num_contextual,
            )
            for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(embedding_dim, eps=1e-6) if final_norm else nn.Identity()

    def forward(
        self,
        values: torch.Tensor,
        seq_offsets: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        num_targets: torch.Tensor | None = None,
        next_timestamp: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[T, D]`` jagged tokens -> ``[T, D]``.

        Args:
            values: ``[T, D]`` token embeddings.
            seq_offsets: ``[B + 1]`` int64.
            timestamps: ``[T]`` int64 (required with a time bias).
            num_targets: ``[B]`` int64 targets at the end of each sequence, or None.
            next_timestamp: ``[B]`` int64 time of the event after each sequence's history (at
                evaluation, the held-out target's), so that the last history token's time bias is
                the one training gave it; None uses its own timestamp.
        """
        self._check_input(values)
        layout = self.layers[0].attention_layout(
            seq_offsets, values.size(0), timestamps, num_targets, next_timestamp=next_timestamp
        )
        x = values
        for layer in self.layers:
            x = layer(x, seq_offsets, timestamps, num_targets, layout, next_timestamp)
        return self.final_norm(x)

    def encode_history(
        self, values: torch.Tensor, seq_offsets: torch.Tensor, timestamps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, HSTUKVCache]:
        """Encode histories (no targets) and keep every layer's K/V: ``([Th, D], cache)``.

        Causal encoders only: a non-causal history attends to the targets appended after it, so its
        keys and values depend on them and cannot be cached (:class:`ConfigError`).
        """
        self._check_causal("encode_history")
        self._check_input(values)
        layout = self.layers[0].attention_layout(seq_offsets, values.size(0), timestamps)
        keys, vals, x = [], [], values
        for layer in self.layers:
            x, k, v = layer.forward_with_kv(x, seq_offsets, timestamps, layout=layout)
            keys.append(k)
            vals.append(v)
        return self.final_norm(x), HSTUKVCache(keys, vals, seq_offsets, timestamps)

    def extend_history(
        self,
        values: torch.Tensor,
        offsets: torch.Tensor,
        prefix: HSTUKVCache,
        timestamps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, HSTUKVCache]:
        """Encode history tokens appended to cached history prefixes: ``([Tn, D], cache of the whole histories)``.

        Exact for a causal encoder: a history token reads only itself and the tokens before it, so
        the prefix's keys and values are those :meth:`encode_history` gives on the whole history,
        with one exception the caller handles: the time bias of the prefix's last token reads the
        timestamp of the token after it (``t_next``, :mod:`recsys.ops.relative_bias_index`), which
        is its own while it ends the history. A prefix that gains tokens must therefore leave its
        last token out and encode it again with the new ones (``recsys.serve.kv_cache`` does).

        Args:
            values: ``[Tn, D]`` new tokens, jagged by ``offsets`` ``[B + 1]`` (a sequence may have none).
            prefix: cached keys and values of the B prefixes (possibly empty), with their timestamps.
            timestamps: ``[Tn]`` int64 timestamps of the new tokens (required with a time bias).

        Returns:
            The new tokens' outputs ``[Tn, D]`` and an :class:`HSTUKVCache` of prefix plus new
            tokens, equal to ``encode_history`` on the whole histories.
        """
        self._check_causal("extend_history")
        self._check_input(values)
        if offsets.numel() != prefix.seq_offsets.numel():
            raise DataError(
                f"HSTUEncoder.extend_history: offsets has {offsets.numel() - 1} sequences, the prefix "
                f"{prefix.seq_offsets.numel() - 1}; give one (possibly empty) list of new tokens per prefix"
            )
        full_times = None
        if timestamps is not None and prefix.timestamps is not None:
            full_times, _ = append_jagged(prefix.timestamps, prefix.seq_offsets, timestamps, offsets)  # [Tp + Tn]
        full_offsets = prefix.seq_offsets + offsets  # [B + 1]
        layout = self.layers[0].attention_layout(
            full_offsets, prefix.keys[0].size(0) + values.size(0), full_times,
            query_offsets=offsets, num_queries=values.size(0),
        )
        keys, vals, x = [], [], values
        for layer, k, v in zip(self.layers, prefix.keys, prefix.values):
            x, k, v = layer.extend_with_kv(x, offsets, k, v, prefix.seq_offsets, layout)
            keys.append(k)
            vals.append(v)
        return self.final_norm(x), HSTUKVCache(keys, vals, full_offsets, full_times)

    def forward_targets(
        self,
        target_values: torch.Tensor,
        target_offsets: torch.Tensor,
        cache: HSTUKVCache,
        target_timestamps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Targets appended to the cached histories, one pass: ``[Tc, D]`` -> ``[Tc, D]``.

        Equal to the targets' rows of ``forward(history + targets, num_targets=...)``.

        Args:
            target_values: ``[Tc, D]`` target tokens, jagged by ``target_offsets`` ``[B + 1]``.
            cache: from :meth:`encode_history` on the same B sequences.
            target_timestamps: ``[Tc]`` int64 (required with a time bias).
        """
        self._check_causal("forward_targets")
        self._check_input(target_values)
        if target_offsets.numel() != cache.seq_offsets.numel():
            raise DataError(
                f"HSTUEncoder.forward_targets: target_offsets has {target_offsets.numel() - 1} sequences, "
                f"the cache {cache.seq_offsets.numel() - 1}; give one (possibly empty) target list per cached history"
            )
        layout = targets_layout(
            self.layers[0], cache.keys[0].size(0), cache.seq_offsets, target_values.size(0), target_offsets,
            cache.timestamps, target_timestamps,
        )
        x = target_values
        for layer, k, v in zip(self.layers, cache.keys, cache.values):
            x = layer.forward_targets(
                x, target_offsets, k, v, cache.seq_offsets, cache.timestamps, target_timestamps, layout=layout
            )
        return self.final_norm(x)

    def _check_causal(self, method: str) -> None:
        if not self.causal:
            raise ConfigError(
                f"HSTUEncoder.{method}: the KV cache is exact for causal encoders only (causal=False lets history "
                "attend to the targets appended after it); build the encoder with causal=True, or score each target "
                "in its own full pass (recsys.modules.mfalcon.score_candidates with cache=False, microbatch_size=1)"
            )

    def _check_input(self, values: torch.Tensor) -> None:
        if values.dim() != 2 or values.size(1) != self.embedding_dim:
            raise DataError(f"HSTUEncoder: values must be [T, D={self.embedding_dim}]; got {tuple(values.shape)}")


@dataclass
class HSTUConfig:
    """Hyper-parameters of an :class:`HSTUEncoder`; ``build()`` makes one.

    The presets below are the reference's public configurations (configs/<dataset>/hstu-*.gin).
    ``max_seq_len`` there is the history length; a model that appends targets must add their count.
    ``max_attn_len`` (>= 0, 0: no limit) and ``num_contextual`` (>= 0, 0: none) are the attention
    window and the contextual prefix of :func:`recsys.ops.hstu_attention.hstu_attention`.
    """

    num_layers: int
    embedding_dim: int
    num_heads: int
    attention_dim: int
    linear_dim: int
    max_seq_len: int
    dropout: float = 0.0
    normalization: str = "max_len"
    use_position_bias: bool = True
    use_time_bias: bool = True
    num_time_buckets: int = DEFAULT_NUM_TIME_BUCKETS
    time_bucket_base: float = DEFAULT_TIME_BUCKET_BASE
    alpha: float | None = None
    causal: bool = True
    kernel: str = "auto"
    final_norm: bool = True
    max_attn_len: int = 0
    num_contextual: int = 0

    def build(self) -> HSTUEncoder:
        return HSTUEncoder(**asdict(self))


def hstu_ml1m() -> HSTUConfig:
    """ML-1M: D=50, 2 blocks x 1 head, Dqk = Dv = 50, dropout 0.2, 200 events."""
    return HSTUConfig(num_layers=2, embedding_dim=50, num_heads=1, attention_dim=50, linear_dim=50, max_seq_len=200, dropout=0.2)


def hstu_ml1m_large() -> HSTUConfig:
    """ML-1M large: D=50, 8 blocks x 2 heads, Dqk = Dv = 25, dropout 0.2, 200 events."""
    return HSTUConfig(num_layers=8, embedding_dim=50, num_heads=2, attention_dim=25, linear_dim=25, max_seq_len=200, dropout=0.2)


def hstu_ml20m() -> HSTUConfig:
    """ML-20M: D=256, 4 blocks x 4 heads, Dqk = Dv = 64, dropout 0.2, 200 events."""
    return HSTUConfig(num_layers=4, embedding_dim=256, num_heads=4, attention_dim=64, linear_dim=64, max_seq_len=200, dropout=0.2)


def hstu_ml20m_large() -> HSTUConfig:
    """ML-20M large: D=256, 16 blocks x 8 heads, Dqk = Dv = 32, dropout 0.2, 200 events."""
    return HSTUConfig(num_layers=16, embedding_dim=256, num_heads=8, attention_dim=32, linear_dim=32, max_seq_len=200, dropout=0.2)


def hstu_books() -> HSTUConfig:
    """Amazon Books: D=64, 4 blocks x 4 heads, Dqk = Dv = 16, dropout 0.5, 50 events."""
    return HSTUConfig(num_layers=4, embedding_dim=64, num_heads=4, attention_dim=16, linear_dim=16, max_seq_len=50, dropout=0.5)


def hstu_books_large() -> HSTUConfig:
    """Amazon Books large: D=64, 16 blocks x 8 heads, Dqk = Dv = 8, dropout 0.5, 50 events."""
    return HSTUConfig(num_layers=16, embedding_dim=64, num_heads=8, attention_dim=8, linear_dim=8, max_seq_len=50, dropout=0.5)


HSTU_PRESETS = {
    "hstu_ml1m": hstu_ml1m,
    "hstu_ml1m_large": hstu_ml1m_large,
    "hstu_ml20m": hstu_ml20m,
    "hstu_ml20m_large": hstu_ml20m_large,
    "hstu_books": hstu_books,
    "hstu_books_large": hstu_books_large,
}
