"""SKUT (single-kernel user transformer): the semantics, in plain PyTorch.

SKUT is the whole TransAct V2 sequence encoder at inference, from the early-fused token vectors to
the max-pooled readout (:mod:`recsys.modules.transact_v2`, whose docstring draws the model)::

    x      [B, L, E]    token vectors (E = 2C: content ++ candidate content, + action, surface,
                        position embeddings), real tokens first in every row, lengths[b] of them
    z    = x W_in^T + b_in                                     [B, L, d]
    z    = layer_l(z, causal mask)   for l = 1 .. N            [B, L, d]  nn.TransformerEncoderLayer
    out  = max_{t < lengths[b]} (z_t W_out^T + b_out)          [B, F]     zeros when lengths[b] = 0

Each layer is ``nn.TransformerEncoderLayer`` in eval mode (dropout off), post-norm::

    z = LN_1(z + MHA(z))          z = LN_2(z + W_2 act(W_1 z + b_1) + b_2)

or, with ``norm_first``, ``z = z + MHA(LN_1(z))``, then ``z = z + FFN(LN_2(z))``. ``MHA`` is
softmax attention with H heads of width d / H, scaled by ``(d / H)^-1/2``, under the causal mask
(token t reads tokens s <= t). Padding sits at the end of each row, so a real token reads only
real tokens; values computed at padded slots are never read out.

:class:`SkutWeights` holds the trained weights (views of the module's parameters, no copies);
:func:`skut_reference` computes the above in the dtype of ``x``; :mod:`recsys.ops.skut` dispatches
to it or to the fused Triton kernel (:mod:`recsys.kernels.skut_triton`), which computes the same.

Shape letters: B rows, L padded length, E token width, d model width, H heads, f feed-forward
width, F readout width, N layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ACTIVATIONS = ("relu", "gelu")


@dataclass
class SkutLayerWeights:
    """One encoder layer's weights, as ``nn.TransformerEncoderLayer`` stores them.

    Args:
        qkv_weight: ``[3d, d]`` the stacked query, key and value projections (``in_proj_weight``).
        qkv_bias: ``[3d]``.
        out_weight: ``[d, d]`` the attention output projection; ``out_bias``: ``[d]``.
        ff1_weight: ``[f, d]`` (``linear1``); ``ff1_bias``: ``[f]``.
        ff2_weight: ``[d, f]`` (``linear2``); ``ff2_bias``: ``[d]``.
        norm1_weight, norm1_bias, norm2_weight, norm2_bias: ``[d]`` layer norm affine parameters.
    """

    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor
    ff1_weight: torch.Tensor
    ff1_bias: torch.Tensor
    ff2_weight: torch.Tensor
    ff2_bias: torch.Tensor
    norm1_weight: torch.Tensor
    norm1_bias: torch.Tensor
    norm2_weight: torch.Tensor
    norm2_bias: torch.Tensor


@dataclass
class SkutWeights:
    """The encoder's weights and the layer options SKUT follows.

    Args:
        input_weight: ``[d, E]`` token projection W_in; ``input_bias``: ``[d]``.
        layers: the N encoder layers.
        readout_weight: ``[F, d]`` W_out; ``readout_bias``: ``[F]``.
        num_heads: H (divides d).
        norm_first: pre-norm layers (``nn.TransformerEncoderLayer(norm_first=True)``); else post-norm.
        activation: the feed-forward activation, ``"relu"`` or ``"gelu"`` (erf form).
        eps: the layer norms' epsilon.
        packed: copies of these weights a backend derives on first use (padded, low precision),
            keyed by the backend; refreshed by building a new ``SkutWeights``.
    """

    input_weight: torch.Tensor
    input_bias: torch.Tensor
    layers: list[SkutLayerWeights]
    readout_weight: torch.Tensor
    readout_bias: torch.Tensor
    num_heads: int = 1
    norm_first: bool = False
    activation: str = "relu"
    eps: float = 1e-5
    packed: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def token_dim(self) -> int:
        """E, the width of the token vectors."""
        return self.input_weight.shape[1]

    @property
    def model_dim(self) -> int:
        """d."""
        return self.input_weight.shape[0]

    @property
    def feedforward_dim(self) -> int:
        """f (0 without layers)."""
        return self.layers[0].ff1_weight.shape[0] if self.layers else 0

    @property
    def output_dim(self) -> int:
        """F."""
        return self.readout_weight.shape[0]


def skut_reference(
    weights: SkutWeights, x: torch.Tensor, lengths: torch.Tensor, *, return_outputs: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The encoder's readout of padded rows, computed in ``x.dtype``.

    Args:
        weights: the encoder's weights.
        x: ``[B, L, E]`` token vectors, real tokens first in each row (values at padding: any finite).
        lengths: ``[B]`` int real tokens per row, in ``0 .. L``.
        return_outputs: also return the last layer's outputs.

    Returns:
        ``[B, F]`` readout (zeros for empty rows); with ``return_outputs`` also ``[B, L, d]`` the
        encoder's outputs (meaningful at real tokens only).
    """
    dtype = x.dtype
    rows, width, _ = x.shape
    h = F.linear(x, weights.input_weight.to(dtype), weights.input_bias.to(dtype))  # [B, L, d]
    for layer in weights.layers:
        h = _layer(h, layer, weights)  # [B, L, d]
    projected = F.linear(h, weights.readout_weight.to(dtype), weights.readout_bias.to(dtype))  # [B, L, F]
    real = torch.arange(width, device=x.device) < lengths.to(x.device).unsqueeze(1)  # [B, L]
    pooled = projected.masked_fill(~real.unsqueeze(-1), float("-inf"))  # [B, L, F]
    pooled = pooled.amax(dim=1) if width else projected.new_zeros(rows, projected.shape[-1])  # [B, F]
    features = torch.where(real.any(dim=1, keepdim=True), pooled, 0.0)  # [B, F]
    return (features, h) if return_outputs else features


def _layer(h: torch.Tensor, w: SkutLayerWeights, weights: SkutWeights) -> torch.Tensor:
    """One ``nn.TransformerEncoderLayer`` in eval mode: ``[B, L, d] -> [B, L, d]``."""
    dim = h.shape[-1]
    norm1 = lambda z: F.layer_norm(z, (dim,), _as(w.norm1_weight, z), _as(w.norm1_bias, z), weights.eps)  # noqa: E731
    norm2 = lambda z: F.layer_norm(z, (dim,), _as(w.norm2_weight, z), _as(w.norm2_bias, z), weights.eps)  # noqa: E731
    if weights.norm_first:
        h = h + _attention(norm1(h), w, weights.num_heads)
        return h + _feedforward(norm2(h), w, weights.activation)
    h = norm1(h + _attention(h, w, weights.num_heads))
    return norm2(h + _feedforward(h, w, weights.activation))


def _attention(h: torch.Tensor, w: SkutLayerWeights, heads: int) -> torch.Tensor:
    """Causal multi-head softmax attention with its projections: ``[B, L, d] -> [B, L, d]``."""
    rows, width, dim = h.shape
    qkv = F.linear(h, _as(w.qkv_weight, h), _as(w.qkv_bias, h))  # [B, L, 3d]
    q, k, v = qkv.view(rows, width, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, L, d/H]
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)  # [B, H, L, L]
    causal = torch.ones(width, width, dtype=torch.bool, device=h.device).tril()  # [L, L]
    weights = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # [B, H, L, L]
    mixed = (weights @ v).transpose(1, 2).reshape(rows, width, dim)  # [B, L, d]
    return F.linear(mixed, _as(w.out_weight, h), _as(w.out_bias, h))  # [B, L, d]


def _feedforward(h: torch.Tensor, w: SkutLayerWeights, activation: str) -> torch.Tensor:
    """``W_2 act(W_1 h + b_1) + b_2``: ``[B, L, d] -> [B, L, d]``."""
    hidden = F.linear(h, _as(w.ff1_weight, h), _as(w.ff1_bias, h))  # [B, L, f]
    hidden = F.relu(hidden) if activation == "relu" else F.gelu(hidden)
    return F.linear(hidden, _as(w.ff2_weight, h), _as(w.ff2_bias, h))  # [B, L, d]


def _as(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype)
