"""Sampled softmax: the next-item loss of the sequential retrieval models (SASRec, HSTU).

A full softmax over all I items costs ``N x I`` scores per batch. Sampled softmax scores each query
(one per sequence position that has a next item) against its positive item and K negatives only::

    logits_n = [ <q_n, e(pos_n)>, <q_n, e(neg_n1)>, ..., <q_n, e(neg_nK)> ] / temperature
    loss     = mean_n cross_entropy(logits_n, class 0)

- ``negatives="uniform"``: K item ids drawn uniformly from ``[0, num_items)`` for every query.
- ``negatives="in_batch"``: the negatives of query n are the positives of the other queries of the
  batch (K = N - 1; ``num_negatives`` is not used).

With ``l2_normalize`` the query and item vectors are scaled to unit length first, so a score is a
cosine similarity and the temperature sets the sharpness (HSTU uses 0.05). A negative that is the
query's own positive item (an *accidental hit*) is masked to -inf: it is not a negative.

Item vectors come from a callable ``ids [M] -> [M, D]`` (an ``nn.Embedding``, or a lambda around a
possibly sharded TorchRec EmbeddingCollection), called once per forward.

Example::

    loss_fn = SampledSoftmaxLoss(num_negatives=128, num_items=12101)
    loss = loss_fn(queries, positive_ids, item_embedding)   # queries [N, D], positive_ids [N]

Shape letters: N queries, K negatives per query, D embedding dimension, I items.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError, DataError

NEGATIVE_MODES = ("uniform", "uniform_shared", "in_batch")


class SampledSoftmaxLoss(nn.Module):
    """Cross-entropy of each positive against sampled negatives (see the module docstring).

    Args:
        num_negatives: K negatives per query for ``negatives="uniform"``.
        num_items: I, the id space negatives are drawn from (required for "uniform").
        temperature: logits are scores divided by it; > 0.
        l2_normalize: scale query and item vectors to unit length before scoring.
        negatives: "uniform" (K per query), "uniform_shared" (K per batch, shared by all queries)
            or "in_batch".
    """

    def __init__(
        self,
        num_negatives: int,
        num_items: int | None = None,
        temperature: float = 0.05,
        l2_normalize: bool = True,
        negatives: str = "uniform",
    ):
        super().__init__()
        if negatives not in NEGATIVE_MODES:
            raise ConfigError(f"negatives must be one of {NEGATIVE_MODES}, got {negatives!r}")
        if negatives.startswith("uniform") and (num_items is None or num_items < 1):
            raise ConfigError(f"uniform negatives need num_items >= 1 (the item id space), got {num_items}")
        if negatives.startswith("uniform") and num_negatives < 1:
            raise ConfigError(f"num_negatives must be at least 1, got {num_negatives}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.num_negatives = int(num_negatives)
        self.num_items = num_items
        self.temperature = float(temperature)
        self.l2_normalize = bool(l2_normalize)
        self.negatives = negatives

    def forward(
        self,
        queries: torch.Tensor,
        positive_ids: torch.Tensor,
        item_embedding: Callable[[torch.Tensor], torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean sampled-softmax cross-entropy.

        Args:
            queries: ``[N, D]`` one vector per position that has a next item.
            positive_ids: ``[N]`` int64 id of each position's next item.
            item_embedding: ids ``[M]`` -> vectors ``[M, D]``.
            generator: random generator of the uniform negatives (None: torch's global one).

        Returns:
            scalar tensor; 0 when N is 0.
        """
        _check_inputs(queries, positive_ids)
        if queries.shape[0] == 0:
            return queries.sum() * 0.0
        if self.negatives == "in_batch":
            logits, hits = self._in_batch_logits(queries, positive_ids, item_embedding)
        elif self.negatives == "uniform_shared":
            logits, hits = self._shared_uniform_logits(queries, positive_ids, item_embedding, generator)
        else:
            logits, hits = self._uniform_logits(queries, positive_ids, item_embedding, generator)
        logits = logits.masked_fill(hits, float("-inf"))  # [N, 1 + K]
        labels = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)  # class 0: the positive
        return F.cross_entropy(logits, labels)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.l2_normalize else x

    def _uniform_logits(self, queries, positive_ids, item_embedding, generator):
        """``[N, 1 + K]`` logits (column 0 the positive) and the ``[N, 1 + K]`` accidental-hit mask.

        The N * (1 + K) sampled ids hold many repeats (on a small corpus nearly every item is drawn
        many times), so each distinct id is looked up and normalised once: U vectors ``[U, D]``.
        When ``U <= K * D``, the scores against all U (``[N, U]``, one matmul) take less memory than
        gathering ``[N, K, D]`` vectors, and the K logits per query are picked from them; otherwise
        the vectors are gathered. Both give the same logits and gradients.
        """
        n, k = queries.shape[0], self.num_negatives
        negative_ids = torch.randint(
            0, self.num_items, (n, k), generator=generator, device=positive_ids.device
        )  # [N, K]
        unique_ids, inverse = torch.unique(torch.cat([positive_ids, negative_ids.reshape(-1)]), return_inverse=True)
        vectors = self._normalise(_lookup(item_embedding, unique_ids, queries.shape[1]))  # [U, D]
        q = self._normalise(queries)  # [N, D]
        positive_logit = (q * vectors[inverse[:n]]).sum(-1, keepdim=True)  # [N, 1]
        negative_index = inverse[n:].reshape(n, k)  # [N, K] rows of `vectors`
        if unique_ids.shape[0] <= k * queries.shape[1]:
            negative_logits = (q @ vectors.T).gather(1, negative_index)  # [N, U] -> [N, K]
        else:
            negative_logits = torch.einsum("nd,nkd->nk", q, vectors[negative_index])  # [N, K]
        logits = torch.cat([positive_logit, negative_logits], dim=1) / self.temperature  # [N, 1 + K]
        hits = torch.cat([torch.zeros_like(positive_logit, dtype=torch.bool),
                          negative_ids == positive_ids[:, None]], dim=1)  # [N, 1 + K]
        return logits, hits

    def _shared_uniform_logits(self, queries, positive_ids, item_embedding, generator):
        """Like :meth:`_uniform_logits` with one set of K uniform negatives shared by every query of
        the batch: K lookups instead of N * K, the cheap choice on CPUs."""
        n, k = queries.shape[0], self.num_negatives
        negative_ids = torch.randint(0, self.num_items, (k,), generator=generator, device=positive_ids.device)  # [K]
        vectors = _lookup(item_embedding, torch.cat([positive_ids, negative_ids]), queries.shape[1])
        q = self._normalise(queries)  # [N, D]
        positive_logit = (q * self._normalise(vectors[:n])).sum(-1, keepdim=True)  # [N, 1]
        negative_logits = q @ self._normalise(vectors[n:]).T  # [N, K]
        logits = torch.cat([positive_logit, negative_logits], dim=1) / self.temperature  # [N, 1 + K]
        hits = torch.cat([torch.zeros_like(positive_logit, dtype=torch.bool),
                          negative_ids[None, :] == positive_ids[:, None]], dim=1)  # [N, 1 + K]
        return logits, hits

    def _in_batch_logits(self, queries, positive_ids, item_embedding):
        """``[N, N]`` logits against every positive of the batch, rolled so that column 0 holds the
        query's own positive, and the mask of the other columns holding the same item."""
        n = queries.shape[0]
        q = self._normalise(queries)  # [N, D]
        positives = self._normalise(_lookup(item_embedding, positive_ids, queries.shape[1]))  # [N, D]
        scores = q @ positives.T / self.temperature  # [N, N]: row n against positive m
        same_item = positive_ids[:, None] == positive_ids[None, :]  # [N, N], diagonal True
        # Move the diagonal (the query's own positive) to column 0: column j of row n is positive (n + j) % N.
        columns = (torch.arange(n, device=q.device)[:, None] + torch.arange(n, device=q.device)[None, :]) % n
        logits = scores.gather(1, columns)  # [N, N]
        hits = same_item.gather(1, columns)
        hits[:, 0] = False
        return logits, hits


def _lookup(item_embedding, ids: torch.Tensor, dim: int) -> torch.Tensor:
    vectors = item_embedding(ids)
    if vectors.shape != (ids.shape[0], dim):
        raise DataError(f"item_embedding must map ids [{ids.shape[0]}] to vectors [{ids.shape[0]}, {dim}] "
                        f"(the query dimension), got {tuple(vectors.shape)}")
    return vectors


def _check_inputs(queries: torch.Tensor, positive_ids: torch.Tensor) -> None:
    if queries.ndim != 2:
        raise DataError(f"queries must be [N, D], got shape {tuple(queries.shape)}")
    if positive_ids.shape != (queries.shape[0],):
        raise DataError(f"positive_ids must be [N] = [{queries.shape[0]}], one per query, "
                        f"got {tuple(positive_ids.shape)}")
    if positive_ids.is_floating_point():
        raise DataError(f"positive_ids must be integer item ids, got {positive_ids.dtype}")
