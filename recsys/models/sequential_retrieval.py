"""Next-item retrieval with a sequence encoder: the frame HSTU and SASRec share.

For a user's jagged sequence of items x_1 .. x_n (a :class:`~recsys.data.sequences.SequenceBatch`)::

    e_t  = E[x_t] * sqrt(D)? + P[t]?          item embedding (TorchRec EmbeddingCollection, sharded)
    h_t  = Encoder(dropout(e))_t              HSTU or SASRec, causal
    u_t  = h_t / ||h_t||                      the user vector after t events
    loss = sampled softmax of u_t against v_{x_{t+1}} = E[x_{t+1}] / ||E[x_{t+1}]||, t < n

Scoring is the dot product of L2-normalised vectors (temperature only in the loss); retrieval
ranks all items against the user vector after the last event.

Shape letters: B sequences, T tokens of the batch, D embedding dimension, I items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.sequences import ITEM_KEY, SequenceBatch
from recsys.errors import ConfigError
from recsys.modules.position_embedding import learned_position_table
from recsys.ops.hstu_attention_layout import sequence_ids
from recsys.modules.sampled_softmax import SampledSoftmaxLoss

ITEM_TABLE = "t_item_id"


@dataclass
class RetrievalLossConfig:
    """Sampled softmax of the next item.

    Args:
        num_negatives: uniform negatives per position (ignored with in-batch negatives).
        temperature: logits are cosine similarities divided by it.
        negatives: "uniform" over the corpus, or "in_batch" (the batch's other positives).
    """

    num_negatives: int = 512
    temperature: float = 0.05
    negatives: str = "uniform"


class SequentialRetrieval(nn.Module):
    """Item embeddings -> sequence encoder -> L2-normalised user vectors; next-item sampled softmax.

    Args:
        num_items: I, rows of the item table.
        embedding_dim: D.
        encoder: maps jagged ``(values [T, D], seq_offsets [B+1], timestamps [T])`` to ``[T, D]``.
        max_seq_len: longest sequence (sizes the optional absolute position table).
        loss: the sampled softmax settings.
        input_dropout: dropout on the input embeddings.
        scale_embeddings: multiply item embeddings by sqrt(D) (SASRec's and HSTU's reference inputs).
        position_embedding: add a learned absolute position embedding (counted from each
            sequence's first token) to the input; initialised N(0, 1/D), truncated at 2 std.
        item_init_std: standard deviation of the item table's initial weights, drawn uniformly
            in ``+-sqrt(3) * item_init_std`` (the sharded kernels initialise uniformly); 0.02 as
            the reference models' truncated normal.
        device: where the item table is built (``"meta"``: allocated by DMP when sharded).
    """

    def __init__(
        self,
        num_items: int,
        embedding_dim: int,
        encoder: nn.Module,
        max_seq_len: int,
        loss: RetrievalLossConfig,
        input_dropout: float = 0.0,
        scale_embeddings: bool = True,
        position_embedding: bool = True,
        item_init_std: float = 0.02,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if num_items < 2:
            raise ConfigError(f"num_items={num_items}; retrieval needs at least 2 items")
        if not item_init_std > 0:
            raise ConfigError(f"item_init_std={item_init_std}; use a positive standard deviation such as 0.02")
        self.num_items, self.embedding_dim, self.max_seq_len = num_items, embedding_dim, max_seq_len
        bound = math.sqrt(3.0) * item_init_std  # uniform(-b, b) has std b / sqrt(3)
        table = EmbeddingConfig(
            name=ITEM_TABLE, embedding_dim=embedding_dim, num_embeddings=num_items, feature_names=[ITEM_KEY],
            weight_init_min=-bound, weight_init_max=bound,
        )
        self.item_embeddings = EmbeddingCollection(
            tables=[table],
            device=None if device is None else torch.device(device),  # a "meta" string would not be seen as meta by DMP
        )
        self.encoder = encoder
        self.positions = learned_position_table(max_seq_len, embedding_dim) if position_embedding else None
        self.input_dropout = nn.Dropout(input_dropout)
        self.input_scale = math.sqrt(embedding_dim) if scale_embeddings else 1.0
        self.loss = SampledSoftmaxLoss(
            num_negatives=loss.num_negatives, num_items=num_items, temperature=loss.temperature,
            l2_normalize=True, negatives=loss.negatives,
        )

    # ------------------------------------------------------------------ embeddings
    def _lookup(self, features: KeyedJaggedTensor) -> torch.Tensor:
        return self.item_embeddings(features)[ITEM_KEY].values()  # [T, D]

    def embed_items(self, ids: torch.Tensor) -> torch.Tensor:
        """``[M]`` item ids -> ``[M, D]`` raw (unnormalised) embeddings, through the (sharded) table."""
        lengths = torch.ones_like(ids, dtype=torch.int32)
        return self._lookup(KeyedJaggedTensor.from_lengths_sync(keys=[ITEM_KEY], values=ids, lengths=lengths))

    @torch.no_grad()
    def item_vectors(self, chunk_size: int = 65_536) -> torch.Tensor:
        """``[I, D]`` L2-normalised vectors of all items (looked up in chunks)."""
        device = next(self.encoder.parameters()).device
        chunks = [
            self.embed_items(torch.arange(lo, min(lo + chunk_size, self.num_items), device=device))
            for lo in range(0, self.num_items, chunk_size)
        ]
        return F.normalize(torch.cat(chunks), dim=-1)

    # ------------------------------------------------------------------ encoder
    def encode(self, batch: SequenceBatch, next_timestamp: torch.Tensor | None = None) -> torch.Tensor:
        """``[T, D]`` L2-normalised user vector after each token of every sequence.

        ``next_timestamp``: ``[B]`` time of the event each sequence's last token predicts, for the
        encoder's time bias (training gives every other token its next token's time); None uses
        the last token's own time.
        """
        return self.encode_embeddings(self._lookup(batch.item_ids), batch.seq_offsets, batch.timestamps,
                                      next_timestamp)

    def encode_embeddings(self, embeddings: torch.Tensor, seq_offsets: torch.Tensor, timestamps: torch.Tensor,
                          next_timestamp: torch.Tensor | None = None) -> torch.Tensor:
        """Everything after the item lookup (the dense part ``recsys.inference`` exports).

        Args:
            embeddings: ``[T, D]`` raw item embeddings of every token (``embed_items``).
            seq_offsets: ``[B + 1]`` int64.
            timestamps: ``[T]`` int64.
            next_timestamp: ``[B]`` int64 time of the event each sequence's last token predicts, or None.

        Returns:
            ``[T, D]`` L2-normalised user vector after each token.
        """
        x = embeddings * self.input_scale  # [T, D]
        if self.positions is not None:
            positions = _positions_in_sequence(seq_offsets, x.size(0))  # [T]
            x = x + self.positions(positions.clamp(max=self.max_seq_len - 1))
        h = self.encoder(self.input_dropout(x), seq_offsets, timestamps=timestamps,
                         next_timestamp=next_timestamp)  # [T, D]
        return F.normalize(h, dim=-1)

    def user_vectors(self, batch: SequenceBatch) -> torch.Tensor:
        """``[B, D]`` the user vector after each sequence's last token (rows need >= 1 token).

        The last token's time bias reads the held-out target's timestamp (``batch.target_timestamp``),
        the time of the event it predicts, as every token's did in training; rows without a
        target (training batches) use the last token's own time.
        """
        last = batch.seq_offsets[1:] - 1  # [B]
        return self.encode(batch, prediction_timestamps(batch))[last]

    # ------------------------------------------------------------------ training
    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        """Mean sampled-softmax loss of predicting token t + 1 from the user vector at t."""
        u = self.encode(batch)  # [T, D]
        items = batch.item_ids.values()  # [T]
        has_next = torch.ones_like(items, dtype=torch.bool)
        has_next[batch.seq_offsets[1:] - 1] = False  # last token of each sequence: no next item
        position = torch.nonzero(has_next).squeeze(1)  # [N]
        return self.loss(u[position], items[position + 1], self.embed_items)


def prediction_timestamps(batch: SequenceBatch) -> torch.Tensor:
    """``[B]`` int64 time of the event each row's last user vector predicts: the held-out target's
    timestamp (``batch.target_timestamp``) where the row has a target, else the last token's own time.

    What :meth:`SequentialRetrieval.user_vectors` passes as ``next_timestamp`` (and
    ``recsys.inference.dense_inputs`` as the exported dense part's ``next_timestamp``).
    """
    last = batch.seq_offsets[1:] - 1  # [B]
    return torch.where(batch.target_item >= 0, batch.target_timestamp, batch.timestamps[last])  # [B]


def _positions_in_sequence(seq_offsets: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``[T]`` index of each token within its sequence: offsets [0, 3, 5] -> [0, 1, 2, 0, 1].

    ``num_tokens`` is T (``seq_offsets[-1]``), given so that nothing reads the offsets on the host.
    """
    sequence = sequence_ids(seq_offsets, num_tokens)  # [T]
    return torch.arange(num_tokens, device=seq_offsets.device) - seq_offsets[sequence]
