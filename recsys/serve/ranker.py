"""Rankers: a batch of served ranking requests -> per-head probabilities of every candidate.

Two ways to score, chosen by the model:

- :class:`PointwiseRanker` (dlrm, pinnability, transact_v1, bst, mimn and its baselines: every
  model whose ``forward(RankingBatch)`` scores rows independently): one row per candidate, built by
  the data pipeline's own collate, one forward for the whole batch of requests.
- :class:`MFalconRanker` (hstu_ranking): M-FALCON (:mod:`recsys.modules.mfalcon`). Each request's
  history is encoded once and its candidates are appended as targets in micro-batches of at most
  ``max_candidates_per_pass``; a candidate attends to the history and itself, never to another
  candidate, so its score does not depend on the others.

Both return ``[R, H]`` probabilities (``sigmoid`` of the heads' logits), requests in order.

Shape letters: B requests, R candidates of all requests, H heads.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from recsys.serve.features import FeatureStore, RankingRequest


class PointwiseRanker:
    """Scores each candidate as its own row: ``sigmoid(model(batch))``.

    A model with ``forward_requests(batch, request_offsets)`` (DLRM and its subclasses) computes
    what the candidates of one request share once per request instead of once per row.
    """

    def __init__(self, model: nn.Module, store: FeatureStore):
        self.model, self.store = model, store
        self.heads = list(model.heads)
        self.per_request = callable(getattr(model, "forward_requests", None))

    def __call__(self, requests: list[RankingRequest]) -> torch.Tensor:
        """``[R, H]`` probabilities of the candidates of ``requests``, request after request."""
        batch = self.store.ranking_batch(requests)
        if not self.per_request:
            return torch.sigmoid(self.model(batch).float())  # [R, H]
        counts = torch.tensor([0] + [len(r.items) for r in requests], dtype=torch.int64)  # [B + 1]
        return torch.sigmoid(self.model.forward_requests(batch, torch.cumsum(counts, 0)).float())  # [R, H]


class MFalconRanker:
    """HSTU ranking through M-FALCON: one history encoding per request, candidates in micro-batches."""

    def __init__(self, model: nn.Module, store: FeatureStore):
        self.model, self.store = model, store
        self.heads = list(model.heads)
        self.microbatch_size = model.config.max_candidates_per_pass

    def __call__(self, requests: list[RankingRequest]) -> torch.Tensor:
        """``[R, H]`` probabilities of the candidates of ``requests``, request after request."""
        rows = self.store.ranking_batch(requests)  # R rows: dense features, surface, time per candidate
        counts = torch.tensor([len(r.items) for r in requests], dtype=torch.int64)  # [B]
        first = torch.cumsum(counts, 0) - counts  # [B] the first row of each request
        history = rows.sequence_features.to_dict()  # every row of a request holds the same history
        history = _rows_of(history, first)  # B rows
        logits = self.model.score_candidates(
            history, torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]), rows.item_id, rows.timestamp,
            surface=rows.sparse_features["surface"].values(), dense_features=rows.dense_features,
            microbatch_size=self.microbatch_size,
        )  # [R, H]
        return torch.sigmoid(logits.float())


def _rows_of(features: dict, rows: torch.Tensor):
    """The KJT of ``features`` (key -> JaggedTensor, R rows) restricted to ``rows`` ``[B]``."""
    from recsys.data.collate import kjt_from_jagged
    from recsys.data.sequences import _ranges

    out = {}
    for key, jagged in features.items():
        keep = jagged.lengths()[rows]  # [B]
        index = _ranges(jagged.offsets()[rows].numpy(), keep.numpy().astype(np.int64))  # [T] values of the rows
        out[key] = (jagged.values()[torch.from_numpy(index)], keep)
    return kjt_from_jagged(out)


def make_ranker(model: nn.Module, store: FeatureStore):
    """The ranker of ``model``: M-FALCON for HSTU ranking, pointwise otherwise."""
    from recsys.models.hstu_ranking import HSTURanking

    return MFalconRanker(model, store) if isinstance(model, HSTURanking) else PointwiseRanker(model, store)
