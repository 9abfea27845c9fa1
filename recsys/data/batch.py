"""The batch every zoo model consumes: candidates with their user's history, as TorchRec tensors.

One row b of a batch is one candidate item shown to one user at one time::

    row   user  candidate  history (oldest ... newest, engaged events before the candidate)
    0     u7    i42        i3 i9 i11
    1     u7    i8         i3 i9 i11
    2     u2    i5         (empty)

``sparse_features`` is a KeyedJaggedTensor with one key per id feature, e.g.::

    key                 row0          row1          row2
    user_id             [7]           [7]           [2]
    item_id             [42]          [8]           [5]
    surface             [0]           [0]           [1]
    item_category       [4]           [1]           [0]
    history_click       [3, 9, 11]    [3, 9, 11]    []
    history_hide        []            []            []

``history_<action>`` holds the items of history events that carry that action (most recent last,
at most ``max_history``), so an EmbeddingBagCollection pools "what the user clicked", "what the
user hid", ... ``sequence_features`` (optional) carries the whole time-ordered history for the
sequence models, one key per field, all keys with the same lengths: ``seq_item_id``,
``seq_actions`` (bit mask), ``seq_surface``, ``seq_timestamp``; ``sequence_content`` holds the
content embedding of each of those tokens (aligned with the KJT's values), for the models that
read content rather than ids (TransAct).

Shape letters: B rows, A actions, C content-embedding dimension, T context features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.pipelineable import TensorDataclass, pytree_dataclass


@pytree_dataclass
@dataclass
class RankingBatch(TensorDataclass):
    """A batch of candidates.

    Args:
        sparse_features: KJT of id features (keys listed in the module docstring).
        dense_features: ``[B, C + T]`` float32: the candidate's content embedding, then context.
        labels: ``[B, A]`` float32 multi-hot of the actions taken on the candidate.
        weights: ``[B]`` float32 per-example loss weight (per-user weights).
        user_id: ``[B]`` int64.
        item_id: ``[B]`` int64 candidate item.
        request_id: ``[B]`` int64: rows with one id were shown together (ranking metrics group by it).
        timestamp: ``[B]`` int64 start time of the candidate's request (every feature predates it).
        sequence_features: KJT of the full history (``seq_*`` keys), or None.
        sequence_content: ``[S_T, C]`` float32 content embedding of every ``sequence_features``
            token (S_T = its number of values), or None (no sequence or no content embeddings).
    """

    sparse_features: KeyedJaggedTensor
    dense_features: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    user_id: torch.Tensor
    item_id: torch.Tensor
    request_id: torch.Tensor
    timestamp: torch.Tensor
    sequence_features: KeyedJaggedTensor | None = None
    sequence_content: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])
