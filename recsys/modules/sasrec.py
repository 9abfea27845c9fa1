"""SASRec: a causal Transformer encoder over jagged sequences (the baseline HSTU is compared with).

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018::

    X   = Dropout(E + P[position])            item embeddings E plus learned position embedding
    X   = X + MHA(LN(X), LN(X), LN(X))        per block: causal, padding never attended
    X   = X + FFN(LN(X))                      per block: FFN = Linear-ReLU-Dropout-Linear-Dropout
    out = LN(X)                               after the last block

:class:`SASRecEncoder` takes the same arguments as :class:`recsys.modules.hstu.HSTUEncoder`
(``values`` ``[T, D]`` jagged by ``seq_offsets`` ``[B + 1]``, optional ``timestamps`` and
``num_targets``), so a retrieval model can take either. Timestamps are accepted and ignored.

Where this differs from the reference code, on purpose:

- queries, keys and values all come from the normalised input and the residual adds onto the
  un-normalised input (a standard pre-norm block, ``norm_first=True`` in pmixer/SASRec.pytorch).
  The original TensorFlow code (kang205/SASRec) and the generative-recommenders baseline take
  only the queries from ``LN(X)`` and keys/values from ``X``, and add the residual onto ``LN(X)``;
- the item embedding is not scaled by ``sqrt(D)`` here: the references do it, so a caller that
  wants their behaviour multiplies its item embeddings by ``sqrt(D)`` before calling;
- positions count from the first event of each sequence (the references pad on the left, so their
  positions count back from the latest event);
- targets (``num_targets``), when given, are masked as in HSTU: each reads the history and itself,
  never another target, and every target of sequence ``b`` sits at position ``h_b`` (the history
  length), so its output does not depend on how many other targets share the pass.

Shape letters: T tokens, B sequences, N padded length, D embedding dim, H heads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError, DataError
from recsys.modules.position_embedding import learned_position_table
from recsys.modules.relative_bias import effective_positions
from recsys.ops.hstu_attention_reference import attention_mask, jagged_to_padded, padded_to_jagged


class SASRecBlock(nn.Module):
    """One pre-norm Transformer block on a padded batch.

    Args:
        embedding_dim: D.
        num_heads: H; must divide D.
        ffn_dim: hidden width of the point-wise feed-forward network.
        dropout: rate on the attention weights and inside the feed-forward network.

    Example::

        block = SASRecBlock(embedding_dim=8, num_heads=2, ffn_dim=8, dropout=0.0)
        mask = torch.ones(1, 3, 3, dtype=torch.bool).tril()  # [B, N, N]
        y = block(torch.randn(1, 3, 8), mask)  # [1, 3, 8]
    """

    def __init__(self, embedding_dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.attention_norm = nn.LayerNorm(embedding_dim, eps=1e-8)
        self.qkv = nn.Linear(embedding_dim, 3 * embedding_dim)
        self.attention_output = nn.Linear(embedding_dim, embedding_dim)
        self.ffn_norm = nn.LayerNorm(embedding_dim, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(embedding_dim, ffn_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, embedding_dim),
            nn.Dropout(dropout),
        )

    def attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention: ``[B, N, D]`` with a ``[B, N, N]`` bool mask -> ``[B, N, D]``."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)  # 3 x [B, N, H, D/H]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # [B, H, N, D/H]
            attn_mask=mask.unsqueeze(1),  # [B, 1, N, N]
            dropout_p=self.dropout if self.training else 0.0,
        )  # [B, H, N, D/H]
        return self.attention_output(out.transpose(1, 2).reshape(b, n, d))  # [B, N, D]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, N, D]`` -> ``[B, N, D]``; ``mask[b, i, j]`` is True where query ``i`` may read key ``j``."""
        x = x + self.attend(self.attention_norm(x), mask)
        return x + self.ffn(self.ffn_norm(x))


class SASRecEncoder(nn.Module):
    """SASRec on jagged sequences, with the interface of :class:`recsys.modules.hstu.HSTUEncoder`.

    Args:
        num_layers: number of Transformer blocks.
        embedding_dim: D.
        num_heads: H; must divide D.
        max_seq_len: longest sequence (history plus targets); rows of the position embedding.
        dropout: embedding dropout, attention-weight dropout and feed-forward dropout rate.
        ffn_dim: feed-forward hidden width, default D (as in the reference).
        position_embedding: add a learned absolute position embedding to the input.

    Input values are item embeddings as they are: scale them by ``sqrt(D)`` first to match the
    reference implementations, which do.

    Example::

        enc = SASRecEncoder(num_layers=2, embedding_dim=8, num_heads=2, max_seq_len=16)
        out = enc(torch.randn(5, 8), torch.tensor([0, 2, 5]))  # [5, 8]
    """

    def __init__(
        self,
        num_layers: int,
        embedding_dim: int,
        num_heads: int,
        max_seq_len: int,
        dropout: float = 0.2,
        ffn_dim: int | None = None,
        position_embedding: bool = True,
    ) -> None:
        super().__init__()
        _check_config(num_layers, embedding_dim, num_heads, max_seq_len, dropout, ffn_dim)
        self.embedding_dim, self.max_seq_len = embedding_dim, max_seq_len
        self.position_embedding = learned_position_table(max_seq_len, embedding_dim) if position_embedding else None
        self.embedding_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            SASRecBlock(embedding_dim, num_heads, ffn_dim or embedding_dim, dropout) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(embedding_dim, eps=1e-8)

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
            values: ``[T, D]`` item embeddings, all sequences back to back.
            seq_offsets: ``[B + 1]`` int64 where each sequence starts.
            timestamps: ``[T]``, ignored (SASRec knows only the order of events).
            next_timestamp: ``[B]``, ignored likewise.
            num_targets: ``[B]`` int64 targets at the end of each sequence, or None.
        """
        lengths = self._check_input(values, seq_offsets, num_targets)  # [B]
        if torch.compiler.is_exporting():  # no host read of the lengths: pad to max_seq_len (same outputs)
            n = self.max_seq_len
        else:
            n = max(int(lengths.max()) if lengths.numel() else 0, 1)  # N >= 1 keeps empty batches regular
        x = jagged_to_padded(values, seq_offsets, n)  # [B, N, D]
        if self.position_embedding is not None:
            x = x + self.position_embedding(effective_positions(lengths, num_targets, n))  # [B, N, D]
        x = self.embedding_dropout(x)
        mask = sasrec_mask(lengths, num_targets, n)  # [B, N, N]
        for layer in self.layers:
            x = layer(x, mask)
        return padded_to_jagged(self.final_norm(x), seq_offsets, num_rows=values.size(0))  # [T, D]

    def _check_input(self, values: torch.Tensor, seq_offsets: torch.Tensor, num_targets: torch.Tensor | None) -> torch.Tensor:
        """Validate the jagged input and return the ``[B]`` lengths."""
        if values.dim() != 2 or values.size(1) != self.embedding_dim:
            raise DataError(f"SASRecEncoder: values must be [T, D={self.embedding_dim}]; got {tuple(values.shape)}")
        if seq_offsets.dim() != 1 or seq_offsets.numel() < 1 or seq_offsets.dtype != torch.int64:
            raise DataError(
                f"SASRecEncoder: seq_offsets must be a [B + 1] int64 tensor; got {seq_offsets.dtype} {tuple(seq_offsets.shape)}"
            )
        lengths = seq_offsets[1:] - seq_offsets[:-1]
        if torch.compiler.is_exporting():  # the value checks read tensors on the host; eager calls run them
            return lengths
        if int(seq_offsets[0]) != 0 or int(seq_offsets[-1]) != values.size(0) or bool((lengths < 0).any()):
            raise DataError(
                f"SASRecEncoder: seq_offsets must start at 0, never decrease and end at the row count {values.size(0)}"
            )
        if lengths.numel() and int(lengths.max()) > self.max_seq_len:
            raise DataError(
                f"SASRecEncoder: a sequence has {int(lengths.max())} tokens > max_seq_len={self.max_seq_len}; "
                "truncate the sequences or raise max_seq_len"
            )
        if num_targets is not None:
            if num_targets.shape != lengths.shape:
                raise DataError(f"SASRecEncoder: num_targets must be [B] = [{lengths.numel()}]; got {tuple(num_targets.shape)}")
            if bool((num_targets < 0).any()) or bool((num_targets > lengths).any()):
                raise DataError("SASRecEncoder: num_targets[b] must lie in [0, length of sequence b]")
        return lengths


def sasrec_mask(lengths: torch.Tensor, num_targets: torch.Tensor | None, n: int) -> torch.Tensor:
    """``[B, N, N]`` bool: causal, no padded keys, targets never read each other.

    Padding rows (whose outputs are dropped) read themselves only, so no row is fully masked and
    attention never produces NaN.
    """
    slots = torch.arange(n, device=lengths.device)  # [N]
    mask = attention_mask(slots.expand(lengths.numel(), n), lengths, lengths, num_targets, n, causal=True)  # [B, N, N]
    padding_rows = slots.view(1, -1, 1) >= lengths.view(-1, 1, 1)  # [B, N, 1]
    diagonal = torch.eye(n, dtype=torch.bool, device=lengths.device)  # [N, N]
    return mask | (padding_rows & diagonal)


def _check_config(num_layers, embedding_dim, num_heads, max_seq_len, dropout, ffn_dim) -> None:
    if num_layers < 1:
        raise ConfigError(f"SASRecEncoder: num_layers={num_layers}; use at least 1")
    if num_heads < 1 or embedding_dim % num_heads != 0:
        raise ConfigError(f"SASRecEncoder: num_heads={num_heads} must divide embedding_dim={embedding_dim}")
    if max_seq_len < 1:
        raise ConfigError(f"SASRecEncoder: max_seq_len={max_seq_len}; use at least 1")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"SASRecEncoder: dropout={dropout}; use a rate in [0, 1)")
    if ffn_dim is not None and ffn_dim < 1:
        raise ConfigError(f"SASRecEncoder: ffn_dim={ffn_dim}; use a positive width or None (= embedding_dim)")


@dataclass
class SASRecConfig:
    """Hyper-parameters of a :class:`SASRecEncoder`; ``build()`` makes one.

    The presets below are the SASRec baselines of the HSTU paper, from generative-recommenders'
    ``configs/<dataset>/sasrec-sampled-softmax-*-final.gin`` (themselves the settings of
    "Revisiting Neural Retrieval on Accelerators", KDD 2023). ``max_seq_len`` there is the history
    length; a model that appends targets must add their count.
    """

    num_layers: int
    embedding_dim: int
    num_heads: int
    max_seq_len: int
    dropout: float = 0.2
    ffn_dim: int | None = None
    position_embedding: bool = True

    def build(self) -> SASRecEncoder:
        return SASRecEncoder(**asdict(self))


def sasrec_ml1m() -> SASRecConfig:
    """ML-1M: D=50, 2 blocks x 1 head, FFN 50, dropout 0.2, 200 events."""
    return SASRecConfig(num_layers=2, embedding_dim=50, num_heads=1, max_seq_len=200, dropout=0.2, ffn_dim=50)


def sasrec_ml20m() -> SASRecConfig:
    """ML-20M: D=256, 4 blocks x 4 heads, FFN 256, dropout 0.2, 200 events."""
    return SASRecConfig(num_layers=4, embedding_dim=256, num_heads=4, max_seq_len=200, dropout=0.2, ffn_dim=256)


def sasrec_books() -> SASRecConfig:
    """Amazon Books: D=64, 4 blocks x 4 heads, FFN 64, dropout 0.5, 50 events."""
    return SASRecConfig(num_layers=4, embedding_dim=64, num_heads=4, max_seq_len=50, dropout=0.5, ffn_dim=64)


SASREC_PRESETS = {
    "sasrec_ml1m": sasrec_ml1m,
    "sasrec_ml20m": sasrec_ml20m,
    "sasrec_books": sasrec_books,
}
