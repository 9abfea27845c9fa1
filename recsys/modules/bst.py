"""BST: a Behavior Sequence Transformer over the user's history with the candidate as last token.

Chen et al., "Behavior Sequence Transformer for E-commerce Recommendation in Alibaba", DLP-KDD
2019. The ablation baseline of the TransAct encoder: ids instead of content, no action types, no
early fusion, the candidate is one more token of the sequence::

    tokens   e(i_1)  e(i_2)  ...  e(i_n)  e(c)             oldest ... newest history, candidate last
    + P[r]   r = n   r = n-1 ...  r = 1   r = 0             learned embedding of the recency rank
    h        = TransformerEncoder(tokens)                   1 layer, padding never attended
    out      = concat(h_candidate, mean_{k <= n} h_k)       [2 D]

Differences from the paper, kept simple on purpose: the position of a token is its recency rank
(the paper embeds the time gap to the candidate), and the outputs are pooled (candidate output
and the mean of the history outputs) rather than all concatenated, so the crossing layer that
reads them stays small. The item embeddings come from the caller (a TorchRec table in
:mod:`recsys.models.pinnability`). An empty history leaves the candidate alone (one token).

Shape letters: B rows, S most recent history items read, S_T history items of the batch
(jagged), D embedding dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError, DataError
from recsys.ops.padded_gather import gather_padded

DEFAULT_MAX_SEQUENCE = 50


@dataclass
class BSTConfig:
    """Sizes of a :class:`BSTEncoder` and of its item table.

    Args:
        embedding_dim: D, width of the item embeddings and the transformer.
        max_sequence: S, most recent history items read; None = the data's ``max_sequence``
            (or 50 when the data has none).
        num_layers: transformer layers (the paper's best: 1).
        num_heads: attention heads; must divide D.
        feedforward_dim: hidden width of the feed-forward network; None = 4 D.
        dropout: dropout inside the layers.
    """

    embedding_dim: int = 32
    max_sequence: int | None = None
    num_layers: int = 1
    num_heads: int = 2
    feedforward_dim: int | None = None
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"BSTConfig.{name} must be a positive int, got {value!r}")
        for name in ("max_sequence", "feedforward_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"BSTConfig.{name} must be a positive int or None, got {value!r}")
        if self.embedding_dim % self.num_heads:
            raise ConfigError(f"BSTConfig.num_heads={self.num_heads} must divide embedding_dim={self.embedding_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"BSTConfig.dropout must lie in [0, 1), got {self.dropout!r}")


class BSTEncoder(nn.Module):
    """History item embeddings + candidate embedding -> ``[B, 2 D]``.

    Args:
        config: sizes (``config.max_sequence`` None = 50).
        device: where the parameters live.

    Example::

        encoder = BSTEncoder(BSTConfig(embedding_dim=8, max_sequence=20))
        features = encoder(history, lengths, candidate)  # [S_T, 8], [B], [B, 8] -> [B, 16]
    """

    def __init__(self, config: BSTConfig | None = None, device: torch.device | str | None = None):
        super().__init__()
        config = config or BSTConfig()
        d = config.embedding_dim
        self.config = config
        self.max_sequence = config.max_sequence or DEFAULT_MAX_SEQUENCE
        self.position_embedding = nn.Embedding(self.max_sequence + 1, d, device=device)  # recency rank 0..S
        layer = nn.TransformerEncoderLayer(
            d, config.num_heads, dim_feedforward=config.feedforward_dim or 4 * d, dropout=config.dropout,
            activation=F.leaky_relu, batch_first=True, device=device,
        )
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        nn.init.normal_(self.position_embedding.weight, std=d**-0.5)

    @property
    def output_dim(self) -> int:
        """2 D: the candidate's output and the mean of the history outputs."""
        return 2 * self.config.embedding_dim

    def forward(self, history: torch.Tensor, lengths: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """Encodes each row's latest S history items together with its candidate.

        Args:
            history: ``[S_T, D]`` history item embeddings, rows one after the other, each oldest first.
            lengths: ``[B]`` history items per row (only the latest S are read).
            candidate: ``[B, D]`` candidate item embeddings.

        Returns:
            ``[B, 2 D]``: candidate output, then the mean of the history outputs (zeros if empty).
        """
        d = self.config.embedding_dim
        if history.dim() != 2 or history.shape[1] != d or candidate.shape != (lengths.shape[0], d):
            raise DataError(
                f"BSTEncoder: history must be [S_T, {d}] and candidate [B, {d}] with B = len(lengths) = {lengths.shape[0]}; "
                f"got {tuple(history.shape)} and {tuple(candidate.shape)}"
            )
        if int(lengths.sum()) != history.shape[0]:
            raise DataError(f"BSTEncoder: sum(lengths) = {int(lengths.sum())} but history has {history.shape[0]} rows")
        tokens, is_history, is_padding, read = self._tokens(history, lengths, candidate)  # [B, L, D], [B, L] x2, [B]
        outputs = self.encoder(tokens, src_key_padding_mask=is_padding)  # [B, L, D]
        rows = torch.arange(lengths.shape[0], device=lengths.device)  # [B]
        candidate_out = outputs[rows, read]  # [B, D]: the candidate sits right after the history
        history_sum = outputs.masked_fill(~is_history.unsqueeze(-1), 0.0).sum(dim=1)  # [B, D]
        history_mean = history_sum / read.clamp(min=1).unsqueeze(1).to(outputs.dtype)  # [B, D]
        return torch.cat([candidate_out, history_mean], dim=1)  # [B, 2 D]

    def _tokens(self, history, lengths, candidate):
        """Padded tokens ``[B, L, D]`` (latest S history items oldest first, candidate, padding),
        history and padding masks ``[B, L]``, and the history items read per row ``[B]``."""
        lengths = lengths.to(torch.int64)
        read = lengths.clamp(max=self.max_sequence)  # [B]
        num_rows, total = lengths.shape[0], history.shape[0]
        width = int(read.max()) + 1 if num_rows else 1  # L: longest history read + the candidate
        positions = torch.arange(width, device=history.device)  # [L]
        is_history = positions < read.unsqueeze(1)  # [B, L]
        is_candidate = positions == read.unsqueeze(1)  # [B, L]
        first_read = (torch.cumsum(lengths, dim=0) - read).unsqueeze(1)  # [B, 1] index of the oldest item read
        candidate_index = total + torch.arange(num_rows, device=history.device).unsqueeze(1)  # [B, 1]
        index = torch.where(is_history, first_read + positions, candidate_index)  # [B, L] (padding: any)
        values = torch.cat([history, candidate])  # [S_T + B, D]
        recency = (read.unsqueeze(1) - positions).clamp(min=0)  # [B, L]: candidate 0, newest 1, ...
        real = is_history | is_candidate  # [B, L]
        tokens = gather_padded(values, index, real) + self.position_embedding(recency)  # [B, L, D]
        return tokens, is_history, ~real, read
