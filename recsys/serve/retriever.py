"""Retrieval: top-K items of the whole corpus for a user, from an exact index built at load.

The index is the model's L2-normalised item table ``V [I, D]`` (``model.item_vectors()``, the
vectors evaluation ranks against); a user vector ``u [D]`` is the encoder's output after the
user's last engaged event before the request, with the request time as the time of the event it
predicts (HSTU's time bias reads it). Scores are ``V u`` (cosine), top-K by ``torch.topk``::

    users [B, D]  @  V^T [D, I]  ->  scores [B, I]  ->  topk(k)  ->  items [B, k]

Exclusion is the request's choice (``exclude_seen``, as ``eval.exclude_seen``): ``none`` (default),
``last_n`` (the history items the model read) or ``all`` (every engaged item before the request).

Shape letters: B requests, I items, D embedding dim, T tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.serve.features import FeatureStore

EXCLUDE_SEEN = ("none", "last_n", "all")


@dataclass
class RetrievalRequest:
    """One retrieval request, validated: ``user`` id, ``k`` items, ``time`` seconds, ``exclude_seen``."""

    user: int
    k: int
    time: int
    exclude_seen: str = "none"


class Retriever:
    """Exact top-K over the item table of a sequential retrieval model (hstu, sasrec).

    Args:
        model: a :class:`recsys.models.sequential_retrieval.SequentialRetrieval` in eval mode.
        store: the run's feature store.
    """

    def __init__(self, model: nn.Module, store: FeatureStore):
        self.model, self.store = model, store
        self.item_vectors = model.item_vectors()  # [I, D] the index, on the model's device
        self.device = self.item_vectors.device
        self.max_seq_len = store.spec.max_sequence or model.max_seq_len

    def user_vectors(self, requests: list[RetrievalRequest]):
        """``([B, D] user vectors, the SequenceBatch they were encoded from)``."""
        batch = self.store.sequence_batch([r.user for r in requests], [r.time for r in requests], self.max_seq_len)
        times = torch.tensor([r.time for r in requests], dtype=torch.int64, device=self.device)  # [B] predicted event's time
        on_device = batch.to(self.device)
        return self.model.encode(on_device, next_timestamp=times)[on_device.seq_offsets[1:] - 1], batch  # [B, D]

    def __call__(self, requests: list[RetrievalRequest]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per request ``(items [k], scores [k])``, best first."""
        users, batch = self.user_vectors(requests)
        scores = users @ self.item_vectors.T  # [B, I]
        self._exclude(scores, requests, batch)
        k = max(r.k for r in requests)
        top, items = torch.topk(scores, k, dim=1)  # [B, k]
        items, top = items.cpu(), top.cpu()
        return [(items[b, : r.k], top[b, : r.k]) for b, r in enumerate(requests)]

    def _exclude(self, scores: torch.Tensor, requests: list[RetrievalRequest], batch) -> None:
        """Sets the excluded items' scores to -inf, in place (``exclude_seen`` per request)."""
        read = torch.split(batch.item_ids.values(), batch.lengths.tolist())  # the items the model read
        seen = torch.split(batch.seen_items.values(), batch.seen_items.lengths().tolist())  # whole history
        for b, request in enumerate(requests):
            if request.exclude_seen == "last_n":
                scores[b, read[b].to(scores.device)] = float("-inf")
            elif request.exclude_seen == "all":
                scores[b, seen[b].to(scores.device)] = float("-inf")
