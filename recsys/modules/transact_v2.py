"""TransAct V2: a causal transformer over the selected lifelong sequence S_all, fused early with the candidate.

Xia et al., "TransAct V2: Lifelong User Action Sequence Modeling on Pinterest Recommendation"
(arXiv 2506.02267). For every candidate c, :mod:`recsys.data.lifelong` selects S_all, at most 192
tokens of the user's lifelong, realtime and impression sequences (``NN(S_LL, c) ++ S_RT[:r] ++
NN(S_RT[r:], c) ++ NN(S_imp, c)``, each part in time order). Each token is one event: the item's
C-dimensional content embedding (int8 as stored, dequantised), its action bit mask (0 for an
impression without action) and its surface. The encoder::

    position t = 0 .. L-1 within S_all (the parts in the order above; padding at the end)

    x_t = concat(content_t, content_c)                      [2C]  early fusion with the candidate
        + sum_{a : bit a of actions_t set} E_action[a]       [2C]  multi-hot action embedding
        + E_surface[surface_t]                               [2C]
        + E_position[t]                                      [2C]  learned
    z_t = W_in x_t + b_in                                    [d]   d = 64
    h   = TransformerEncoder(z, causal mask)                 [L, d] 2 layers, 1 head, FFN 32, post-norm
    out = max_{t real} (W_out h_t + b_out)                   [F]   max-pool over the real tokens

``h_t`` reads only tokens ``s <= t`` (a causal mask; padding sits at the end of each row, so no real
token ever reads a padded one), so it is a user representation "as of token t": the next-action loss
(:mod:`recsys.modules.next_action_loss`) scores it against the content of the next engaged item.
A row whose S_all is empty reads out as zeros.

At inference (eval mode, no gradient) on CUDA, everything from ``x_t`` to the readout runs as one
Triton kernel, SKUT (:mod:`recsys.ops.skut`: projections, attention, norms and FFN of every layer,
bfloat16 matmuls with float32 accumulation); ``TransActV2Config.inference_kernel`` chooses.

Choices where the paper gives no detail, kept simple:

- the content part of a token is the stored content embedding itself (no learned transform);
- the position is the token's index within S_all, so the positions of a part shift with the
  lengths of the parts before it (a short lifelong history moves the realtime tokens forward);
- the causal order is S_all's order: within a part it is time order; across parts, a token reads
  every token of the parts before it (the realtime-recent tokens, the targets of the next-action
  loss, come after the lifelong part, which is older, and before the older realtime remainder and
  the impressions, which they therefore never read);
- no random time-window mask (TransAct V1's) and no first-K readout columns: the readout is the
  projected max-pool only, ``F = readout_dim`` wide.

Shape letters: B rows, L longest S_all of the batch, V tokens of the batch (jagged), C content
dimension, A actions, d model dimension, F readout width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.errors import ConfigError, DataError
from recsys.modules.time_window_mask import key_padding_mask
from recsys.ops.padded_gather import gather_padded
from recsys.ops.skut import SKUT_KERNELS, skut, skut_backend
from recsys.ops.skut_reference import SkutLayerWeights, SkutWeights

PAPER_MAX_SEQUENCE = 192  # 96 + 32 + 32 + 32 tokens of S_all
MAX_ACTIONS = 16


@dataclass
class TransActV2Config:
    """Sizes of a :class:`TransActV2` encoder.

    Args:
        max_sequence: most S_all tokens a row may hold (rows of the position table); 192 is
            :class:`~recsys.data.lifelong.LifelongConfig`'s default 96 + 32 + 32 + 32.
        model_dim: d, width of the transformer (paper: 64).
        num_layers: transformer encoder layers (paper: 2).
        num_heads: attention heads (paper: 1); must divide ``model_dim``.
        feedforward_dim: hidden width of each layer's feed-forward network (paper: 32).
        dropout: dropout inside the encoder layers.
        readout_dim: F, width of the max-pooled readout; None = ``model_dim``.
        length_groups: rows are sorted by length and encoded in this many groups, each padded to
            its own longest row (same outputs, less padding); 1 = one padded batch.
        inference_kernel: how eval-mode calls without gradient run the encoder: ``"auto"`` (the
            single-kernel SKUT, :mod:`recsys.ops.skut`, on CUDA when it supports the sizes, else
            the PyTorch layers), ``"triton"`` (SKUT, an error naming what it does not support)
            or ``"pytorch"``. Training and calls that need a gradient always run the PyTorch layers.
    """

    max_sequence: int = PAPER_MAX_SEQUENCE
    model_dim: int = 64
    num_layers: int = 2
    num_heads: int = 1
    feedforward_dim: int = 32
    dropout: float = 0.1
    readout_dim: int | None = None
    length_groups: int = 4
    inference_kernel: str = "auto"

    def __post_init__(self) -> None:
        for name in ("max_sequence", "model_dim", "num_layers", "num_heads", "feedforward_dim", "length_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"TransActV2Config.{name} must be a positive int, got {value!r}")
        if self.readout_dim is not None and (not isinstance(self.readout_dim, int) or self.readout_dim <= 0):
            raise ConfigError(f"TransActV2Config.readout_dim must be a positive int or None, got {self.readout_dim!r}")
        if self.model_dim % self.num_heads:
            raise ConfigError(
                f"TransActV2Config.num_heads={self.num_heads} must divide model_dim={self.model_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"TransActV2Config.dropout must lie in [0, 1), got {self.dropout!r}")
        if self.inference_kernel not in ("auto", *SKUT_KERNELS):
            raise ConfigError(f"TransActV2Config.inference_kernel must be one of {['auto', *SKUT_KERNELS]}, "
                              f"got {self.inference_kernel!r}")


@dataclass
class TransActV2Encoding:
    """What :meth:`TransActV2.encode` returns.

    Args:
        features: ``[B, F]`` the max-pooled readout (zeros for empty rows).
        outputs: ``[V, d]`` the encoder's output at every token, aligned with the input tokens.
    """

    features: torch.Tensor
    outputs: torch.Tensor


class TransActV2(nn.Module):
    """TransAct V2 encoder: jagged S_all tokens + candidate content -> ``[B, F]``.

    Args:
        num_actions: A; a token's actions are an A-bit mask.
        num_surfaces: rows of the surface table.
        content_dim: C, width of the content embeddings (tokens and candidate).
        config: sizes.
        device: where the parameters live.

    Example::

        encoder = TransActV2(num_actions=4, num_surfaces=3, content_dim=32)
        features = encoder(lengths, action_bits, surface, content, candidate_content)  # [B, 64]
    """

    def __init__(
        self,
        num_actions: int,
        num_surfaces: int,
        content_dim: int,
        config: TransActV2Config | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        config = config or TransActV2Config()
        if not 0 < num_actions <= MAX_ACTIONS:
            raise ConfigError(f"TransActV2: num_actions must lie in 1..{MAX_ACTIONS}, got {num_actions}")
        if num_surfaces <= 0:
            raise ConfigError(f"TransActV2: num_surfaces must be >= 1, got {num_surfaces}")
        if content_dim <= 0:
            raise ConfigError(
                f"TransActV2 reads content embeddings but content_dim={content_dim}; use data whose items carry "
                "content embeddings (ItemTable.content_embedding)"
            )
        self.config = config
        self.num_actions, self.num_surfaces, self.content_dim = num_actions, num_surfaces, content_dim
        self.max_sequence = config.max_sequence
        self.model_dim = config.model_dim
        token_dim = 2 * content_dim
        self.action_embedding = nn.Embedding(num_actions, token_dim, device=device)  # one vector per action bit
        self.surface_embedding = nn.Embedding(num_surfaces, token_dim, device=device)
        self.position_embedding = nn.Embedding(config.max_sequence, token_dim, device=device)
        self.input_projection = nn.Linear(token_dim, config.model_dim, device=device)
        layer = nn.TransformerEncoderLayer(
            config.model_dim, config.num_heads, dim_feedforward=config.feedforward_dim, dropout=config.dropout,
            batch_first=True, device=device,
        )
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.readout_projection = nn.Linear(config.model_dim, self.output_dim, device=device)
        for table in (self.action_embedding, self.surface_embedding, self.position_embedding):
            nn.init.normal_(table.weight, std=token_dim**-0.5)  # the scale of a unit-norm content's coordinates

    @property
    def output_dim(self) -> int:
        """F, the readout width."""
        return self.config.readout_dim or self.config.model_dim

    def forward(
        self,
        lengths: torch.Tensor,
        action_bits: torch.Tensor,
        surface: torch.Tensor,
        content: torch.Tensor,
        candidate_content: torch.Tensor,
    ) -> torch.Tensor:
        """Encodes each row's S_all against its candidate: ``[B, F]`` (zeros for empty rows).

        Args: as :meth:`encode`.
        """
        return self.encode(lengths, action_bits, surface, content, candidate_content).features

    def encode(
        self,
        lengths: torch.Tensor,
        action_bits: torch.Tensor,
        surface: torch.Tensor,
        content: torch.Tensor,
        candidate_content: torch.Tensor,
    ) -> "TransActV2Encoding":
        """The readout and the per-token outputs of the causal encoder.

        Rows are encoded in ``config.length_groups`` groups of similar length (sorted by length),
        each padded only to its own longest row: attention and layers are per row, so the outputs
        are those of one padded batch, with less padding.

        Args:
            lengths: ``[B]`` tokens per row (at most ``max_sequence``).
            action_bits: ``[V]`` int action bit mask of every token, rows one after the other,
                each in S_all order (``sequence_features["seq_actions"]``).
            surface: ``[V]`` int surface of every token.
            content: ``[V, C]`` content embedding of every token.
            candidate_content: ``[B, C]`` content embedding of each row's candidate.

        Returns:
            :class:`TransActV2Encoding`: ``features [B, F]`` and ``outputs [V, d]`` (token v's
            output ``h_t``, aligned with the inputs).
        """
        self._check_inputs(lengths, action_bits, surface, content, candidate_content)
        lengths = lengths.to(torch.int64)
        starts = torch.cumsum(lengths, dim=0) - lengths  # [B]
        positions = torch.arange(action_bits.shape[0], device=lengths.device) - starts.repeat_interleave(lengths)  # [V]
        candidate = candidate_content.repeat_interleave(lengths, dim=0)  # [V, C]
        vectors = self._token_vectors(content, candidate, action_bits, surface, positions)  # [V, 2C]
        if self._inference_backend(vectors) == "triton":
            return self._encode_skut(vectors, lengths)
        tokens = self.input_projection(vectors)  # [V, d]
        features, outputs, rows, token_index = [], [], [], []
        groups = 1 if torch.compiler.is_exporting() else self.config.length_groups  # export: one static shape
        for group in length_groups(lengths, groups):
            group_features, group_outputs, group_index = self._encode_rows(tokens, starts[group], lengths[group])
            features.append(group_features)
            outputs.append(group_outputs)
            rows.append(group)
            token_index.append(group_index)
        row_order = torch.argsort(torch.cat(rows))  # [B]: back to the input order
        token_order = torch.argsort(torch.cat(token_index))  # [V]
        return TransActV2Encoding(torch.cat(features)[row_order], torch.cat(outputs)[token_order])

    def encode_padded(
        self,
        action_bits: torch.Tensor,
        surface: torch.Tensor,
        content: torch.Tensor,
        real: torch.Tensor,
        candidate_content: torch.Tensor,
    ) -> torch.Tensor:
        """The readout ``[B, F]`` of rows padded to one width L: static shapes, no host read, so a
        CUDA graph can capture it (the request path of :mod:`recsys.ranking`).

        Each row's real tokens come first (``real`` is a prefix of every row); the values at padded
        slots are ignored (any finite value). Equals :meth:`forward` on the jagged rows up to float
        rounding: under the causal mask a real token reads only real tokens.

        Args:
            action_bits: ``[B, L]`` int action bit masks.
            surface: ``[B, L]`` int surfaces.
            content: ``[B, L, C]`` float32 content embeddings.
            real: ``[B, L]`` bool, True at real tokens (a prefix of each row), L <= ``max_sequence``.
            candidate_content: ``[B, C]``.
        """
        rows, width = real.shape
        positions = torch.arange(width, device=real.device).expand(rows, width)  # [B, L]
        candidate = candidate_content.unsqueeze(1).expand(-1, width, -1)  # [B, L, C]
        vectors = self._token_vectors(content, candidate, action_bits, surface, positions)  # [B, L, 2C]
        if self._inference_backend(vectors) == "triton":  # SKUT: one launch, no host read
            lengths = real.sum(dim=1)  # [B]; real is a prefix of each row
            return skut(self.skut_weights(), vectors, lengths, kernel="triton", check_lengths=False).to(vectors.dtype)
        tokens = self.input_projection(vectors)  # [B, L, d]
        causal = nn.Transformer.generate_square_subsequent_mask(width, device=tokens.device, dtype=tokens.dtype)
        outputs = self.encoder(tokens, mask=causal, is_causal=True)  # [B, L, d]
        return self.readout(outputs, real)  # [B, F]

    def _token_vectors(self, content, candidate, action_bits, surface, positions) -> torch.Tensor:
        """``[..., 2C]``: the early-fused token vectors ``x_t`` (module docstring), any leading shape."""
        return (torch.cat([content, candidate], dim=-1) + self._action_vectors(action_bits)
                + self.surface_embedding(surface) + self.position_embedding(positions))  # [..., 2C]

    def _inference_backend(self, vectors: torch.Tensor) -> str:
        """``"triton"`` when this call runs SKUT (eval mode, no gradient, not traced), else ``"pytorch"``."""
        if (self.config.inference_kernel == "pytorch" or self.training or torch.is_grad_enabled()
                or torch.compiler.is_compiling()):
            return "pytorch"
        return skut_backend(self.skut_weights(), vectors, self.config.inference_kernel)

    def _encode_skut(self, vectors: torch.Tensor, lengths: torch.Tensor) -> "TransActV2Encoding":
        """:meth:`encode` by SKUT: the jagged token vectors ``[V, 2C]`` padded to one batch ``[B, L, 2C]``."""
        width = max(int(lengths.max()) if lengths.numel() else 0, 1)
        index, real = jagged_index(lengths, width)  # [B, L], [B, L]
        padded = gather_padded(vectors, index, real)  # [B, L, 2C]
        features, outputs = skut(self.skut_weights(), padded, lengths, kernel="triton", return_outputs=True,
                                 check_lengths=False)  # [B, F], [B, L, d]
        return TransActV2Encoding(features.to(vectors.dtype), outputs[real].to(vectors.dtype))  # outputs [V, d]

    def skut_weights(self) -> SkutWeights:
        """The encoder's weights as :mod:`recsys.ops.skut` reads them (views of the parameters), kept
        until a parameter changes (an optimizer step, ``load_state_dict``, a move to another device)."""
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        cached = getattr(self, "_skut_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, _skut_weights(self))
            self._skut_cache = cached
        return cached[1]

    def _encode_rows(self, tokens, starts, lengths) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``starts, lengths`` (``[b]`` each) padded to their longest: ``features [b, F]``,
        their real tokens' outputs ``[v, d]`` and those tokens' indices ``[v]`` among all tokens."""
        if torch.compiler.is_exporting():  # no host read of the lengths: pad to the table's size (same outputs)
            width = self.max_sequence
        else:
            width = max(int(lengths.max()) if lengths.numel() else 0, 1)
        index, real = jagged_index(lengths, width, starts)  # [b, L], [b, L]
        padded = gather_padded(tokens, index, real)  # [b, L, d]
        # Padding sits at the end of each row, so a real token t reads only real tokens s <= t under
        # the causal mask alone; a padded slot reads real and padded tokens (finite, never used).
        causal = nn.Transformer.generate_square_subsequent_mask(width, device=tokens.device, dtype=tokens.dtype)
        outputs = self.encoder(padded, mask=causal, is_causal=True)  # [b, L, d]
        return self.readout(outputs, real), outputs[real], index[real]

    def readout(self, outputs: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``[B, F]``: max over the real tokens of ``W_out h_t + b_out``; zeros for empty rows.

        Args:
            outputs: ``[B, L, d]`` encoder outputs.
            real: ``[B, L]`` bool, True at real tokens.
        """
        projected = self.readout_projection(outputs)  # [B, L, F]
        pooled = projected.masked_fill(~real.unsqueeze(-1), float("-inf")).max(dim=1).values  # [B, F]
        return torch.where(real.any(dim=1, keepdim=True), pooled, 0.0)  # [B, F]

    def _action_vectors(self, action_bits: torch.Tensor) -> torch.Tensor:
        """``[..., 2C]``: the sum of the action vectors of every bit set (zeros for an impression)."""
        bits = torch.arange(self.num_actions, device=action_bits.device)  # [A]
        multi_hot = ((action_bits.to(torch.int64).unsqueeze(-1) >> bits) & 1).to(self.action_embedding.weight.dtype)
        return multi_hot @ self.action_embedding.weight  # [..., A] @ [A, 2C]

    def _check_inputs(self, lengths, action_bits, surface, content, candidate_content) -> None:
        if torch.compiler.is_exporting():  # the value checks read tensors on the host; eager calls run them
            return
        num_rows, total = lengths.shape[0], action_bits.shape[0]
        if lengths.dim() != 1 or int(lengths.sum()) != total or surface.shape != action_bits.shape:
            raise DataError(
                f"TransActV2: action_bits and surface must be [V] with V = sum(lengths) = {int(lengths.sum())}; "
                f"got {tuple(action_bits.shape)} and {tuple(surface.shape)}"
            )
        if content.shape != (total, self.content_dim) or candidate_content.shape != (num_rows, self.content_dim):
            raise DataError(
                f"TransActV2: content must be [V, {self.content_dim}] and candidate_content [B, {self.content_dim}]; "
                f"got {tuple(content.shape)} and {tuple(candidate_content.shape)}"
            )
        if num_rows and int(lengths.max()) > self.max_sequence:
            raise DataError(
                f"TransActV2: a row holds {int(lengths.max())} tokens but the position table has "
                f"max_sequence={self.max_sequence} rows; set model.transact_v2.max_sequence to at least the "
                "lifelong config's lifelong_k + realtime_recent + realtime_k + impression_k"
            )
        if total and (int(action_bits.min()) < 0 or int(action_bits.max()) >= 2**self.num_actions):
            raise DataError(
                f"TransActV2: action bit masks must lie in 0..{2**self.num_actions - 1} for {self.num_actions} actions, "
                f"got {int(action_bits.min())}..{int(action_bits.max())}; build the model and batches from one FeatureSpec"
            )
        if total and (int(surface.min()) < 0 or int(surface.max()) >= self.num_surfaces):
            raise DataError(
                f"TransActV2: surfaces must lie in 0..{self.num_surfaces - 1}, got {int(surface.min())}..{int(surface.max())}"
            )


def _skut_weights(encoder: TransActV2) -> SkutWeights:
    """:class:`SkutWeights` viewing ``encoder``'s parameters."""
    layers = list(encoder.encoder.layers)
    first = layers[0]

    def bias(part, name="bias"):  # a layer built with bias=False adds zeros
        value = getattr(part, name)
        weight = part.in_proj_weight if name == "in_proj_bias" else part.weight
        return value if value is not None else weight.new_zeros(weight.shape[0])

    return SkutWeights(
        input_weight=encoder.input_projection.weight, input_bias=encoder.input_projection.bias,
        layers=[SkutLayerWeights(
            qkv_weight=layer.self_attn.in_proj_weight, qkv_bias=bias(layer.self_attn, "in_proj_bias"),
            out_weight=layer.self_attn.out_proj.weight, out_bias=bias(layer.self_attn.out_proj),
            ff1_weight=layer.linear1.weight, ff1_bias=bias(layer.linear1),
            ff2_weight=layer.linear2.weight, ff2_bias=bias(layer.linear2),
            norm1_weight=layer.norm1.weight, norm1_bias=bias(layer.norm1),
            norm2_weight=layer.norm2.weight, norm2_bias=bias(layer.norm2),
        ) for layer in layers],
        readout_weight=encoder.readout_projection.weight, readout_bias=encoder.readout_projection.bias,
        num_heads=first.self_attn.num_heads, norm_first=first.norm_first,
        activation={1: "relu", 2: "gelu"}.get(first.activation_relu_or_gelu, repr(first.activation)),
        eps=first.norm1.eps,
    )


def jagged_index(lengths: torch.Tensor, width: int, starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each padded slot's token sits among the jagged values.

    Args:
        lengths: ``[B]`` tokens per row.
        width: L, the padded length (at least the longest row).
        starts: ``[B]`` index of each row's first token; None = rows one after the other from 0.

    Returns:
        ``[B, L]`` int64 index into the values (meaningless at padding) and ``[B, L]`` bool, True
        at real tokens::

            lengths [2, 0, 1], L = 2   ->   [[0, 1], [2, 3], [2, 3]],  [[T, T], [F, F], [T, F]]
    """
    lengths = lengths.to(torch.int64)
    if starts is None:
        starts = torch.cumsum(lengths, dim=0) - lengths  # [B]
    real = ~key_padding_mask(lengths, width)  # [B, L]
    positions = torch.arange(width, device=lengths.device)  # [L]
    return starts.unsqueeze(1) + positions, real  # [B, L], [B, L]


def length_groups(lengths: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """Row indices sorted by length, cut into at most ``groups`` groups of (nearly) equal size.

    Args:
        lengths: ``[B]`` tokens per row.
        groups: how many groups (1 = all rows together).

    Returns:
        ``[b_i]`` int64 row indices per non-empty group, shortest rows first::

            lengths [5, 1, 3, 2], groups 2   ->   [[1, 3], [2, 0]]
    """
    order = torch.argsort(lengths, stable=True)  # [B]
    return [group for group in torch.tensor_split(order, max(min(groups, order.numel()), 1)) if group.numel()]
