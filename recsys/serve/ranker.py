"""Rankers: a batch of served ranking requests -> per-head probabilities of every candidate.

Two ways to score, chosen by the model:

- :class:`PointwiseRanker` (dlrm, pinnability, transact_v1, bst, mimn and its baselines: every
  model whose ``forward(RankingBatch)`` scores rows independently): one row per candidate, built by
  the data pipeline's own collate, one forward for the whole batch of requests.
- :class:`MFalconRanker` (hstu_ranking): M-FALCON (:mod:`recsys.modules.mfalcon`). Each request's
  history is encoded once and its candidates are appended as targets in micro-batches of at most
  ``max_candidates_per_pass``; a candidate attends to the history and itself, never to another
  candidate, so its score does not depend on the others. With a KV cache
  (:mod:`recsys.serve.kv_cache`) a user's encoded history is kept across requests: a repeat
  request encodes nothing, a new event encodes only the new tokens.

Both return ``[R, H]`` probabilities (``sigmoid`` of the heads' logits), requests in order.

Shape letters: B requests, R candidates of all requests, H heads.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from recsys.serve.features import FeatureStore, RankingRequest, RequestRows
from recsys.serve.kv_cache import KVCacheConfig, PagedKVCache

HISTORY_EVENT_KEYS = ("seq_item_id", "seq_actions", "seq_surface", "seq_timestamp")


class PointwiseRanker:
    """Scores each candidate as its own row: ``sigmoid(model(batch))``."""

    def __init__(self, model: nn.Module, store: FeatureStore):
        self.model, self.store = model, store
        self.heads = list(model.heads)

    def __call__(self, requests: list[RankingRequest]) -> torch.Tensor:
        """``[R, H]`` probabilities of the candidates of ``requests``, request after request."""
        return torch.sigmoid(self.model(self.store.ranking_batch(requests)).float())  # [R, H]


class MFalconRanker:
    """HSTU ranking through M-FALCON: one history encoding per request, candidates in micro-batches.

    Args:
        model: an :class:`~recsys.models.hstu_ranking.HSTURanking` in eval mode, on any device.
        store: the feature store of the run's log.
        kv_cache: keep encoded histories across requests (:mod:`recsys.serve.kv_cache`); None or
            ``enabled=False`` encodes every request's history.

    A request's history is built once (not once per candidate row), its candidates' rows without a
    history; both by the data pipeline's own code, so every feature equals the training rows'.
    """

    def __init__(self, model: nn.Module, store: FeatureStore, kv_cache: KVCacheConfig | None = None):
        from recsys.models.hstu_ranking import TOKENS_PER_EVENT

        self.model, self.store = model, store
        self.heads = list(model.heads)
        self.microbatch_size = model.config.max_candidates_per_pass
        self.device = next(model.parameters()).device
        self._history_spec = replace(store.spec, max_history=0)  # sequence_features only
        self._candidate_spec = replace(store.spec, max_history=0, max_sequence=0)  # no history per candidate row
        self._ones = np.ones(store.spec.num_users, dtype=np.float32)
        enabled = kv_cache is not None and kv_cache.enabled
        self.cache = PagedKVCache(model.encoder, kv_cache, TOKENS_PER_EVENT) if enabled else None
        self.metrics = self.cache.metrics if self.cache is not None else ()

    def __call__(self, requests: list[RankingRequest]) -> torch.Tensor:
        """``[R, H]`` probabilities of the candidates of ``requests``, request after request."""
        history = self._rows(requests, self._history_spec, first_only=True).sequence_features  # B rows
        rows = self._rows(requests, self._candidate_spec, first_only=False)  # R rows: features per candidate
        counts = torch.tensor([len(r.items) for r in requests], dtype=torch.int64)  # [B]
        encode = None
        if self.cache is not None:
            users, events = [r.user for r in requests], _history_events(history)

            def encode(tokens, offsets, times):
                return self.cache.encode(users, events, tokens, offsets, times)

        device = self.device
        logits = self.model.score_candidates(
            history.to(device), torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]).to(device),
            rows.item_id.to(device), rows.timestamp.to(device),
            surface=rows.sparse_features["surface"].values().to(device), dense_features=rows.dense_features.to(device),
            microbatch_size=self.microbatch_size, encode_history=encode,
        )  # [R, H]
        return torch.sigmoid(logits.float()).cpu()

    def _rows(self, requests: list[RankingRequest], spec, first_only: bool):
        """The :class:`RankingBatch` of the requests' candidates (or of each request's first one) under ``spec``."""
        store = self.store
        items = [r.items[:1] if first_only else r.items for r in requests]
        counts = np.array([len(i) for i in items], dtype=np.int64)  # [B]
        user = np.repeat([r.user for r in requests], counts)  # [R]
        rows = RequestRows(
            log=store.log, spec=spec, event=store.index.any_event_of(user),
            item=np.concatenate(items).astype(np.int64), label_bits=np.zeros(len(user), np.int32),
            request_id=np.repeat(np.arange(len(requests)), counts), sampled_negative=np.zeros(len(user), bool),
            user_weights=self._ones, request_time=np.repeat([r.time for r in requests], counts).astype(np.int64),
            surface=np.repeat([r.surface for r in requests], counts).astype(np.int64), index=store.index,
        )
        return rows.collate(np.arange(len(user)))


def _history_events(history) -> list[torch.Tensor]:
    """B ``[n_b, 4]`` int64 (item, actions, surface, timestamp) per history event: what its tokens depend on."""
    features = history.to_dict()
    columns = torch.stack([features[key].values().to(torch.int64) for key in HISTORY_EVENT_KEYS], dim=1)  # [Th, 4]
    return list(torch.split(columns, features[HISTORY_EVENT_KEYS[0]].lengths().tolist()))


def make_ranker(model: nn.Module, store: FeatureStore, kv_cache: KVCacheConfig | None = None):
    """The ranker of ``model``: M-FALCON for HSTU ranking (with ``kv_cache``), pointwise otherwise."""
    from recsys.models.hstu_ranking import HSTURanking

    return MFalconRanker(model, store, kv_cache) if isinstance(model, HSTURanking) else PointwiseRanker(model, store)
