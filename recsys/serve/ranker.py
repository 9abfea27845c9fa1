"""Rankers: a batch of served ranking requests -> per-head probabilities of every candidate.

Two ways to score, chosen by the model:

- :class:`PointwiseRanker` (dlrm, pinnability, transact_v1, bst, mimn and its baselines: every
  model whose ``forward(RankingBatch)`` scores rows independently): one row per candidate, built by
  the data pipeline's own collate, one forward for the whole batch of requests.
- :class:`TransActV2Ranker` (transact_v2 on lifelong sequences): the request path of
  :func:`recsys.ranking.rank_requests` (each user's lifelong sequence read once per request from
  the run's :class:`~recsys.data.lifelong_store.LifelongStore`, S_all selected per candidate by
  nearest neighbours, request features looked up once).
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

from recsys.errors import ConfigError
from recsys.serve.features import FeatureStore, RankingRequest, RequestRows
from recsys.serve.kv_cache import KVCacheConfig, PagedKVCache

HISTORY_EVENT_KEYS = ("seq_item_id", "seq_actions", "seq_surface", "seq_timestamp")


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
        """``[R, H]`` probabilities of the candidates of ``requests``, request after request (on the model's device)."""
        device = _device_of(self.model)
        batch = self.store.ranking_batch(requests).to(device)
        if not self.per_request:
            return torch.sigmoid(self.model(batch).float())  # [R, H]
        counts = torch.tensor([0] + [len(r.items) for r in requests], dtype=torch.int64)  # [B + 1]
        return torch.sigmoid(self.model.forward_requests(batch, torch.cumsum(counts, 0).to(device)).float())


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


class TransActV2Ranker:
    """TransAct V2 through ``rank_requests``: one :class:`~recsys.ranking.RankRequest` per request.

    A request's sequence is what ``lifelong`` holds for the user strictly before the request time;
    its history bags, surface and context come from the feature store's own row of the request (the
    training pipeline's collate), so the scores are the offline model's on the stored S_all rows.
    On CUDA the dense stage (encoder, interaction, heads) replays one CUDA graph per bucketed shape
    (:class:`~recsys.ranking.graphs.DenseStageGraphs`), captured on the bucket's first batch.

    Args:
        model: a ``transact_v2`` Pinnability in eval mode.
        store: the run's feature store (history bags, context).
        lifelong: the run's lifelong store (the sequences).
        config: the run's ``data.lifelong`` windows and selection (a :class:`LifelongConfig`).
        kernel: the nearest-neighbour selection backend (``data.lifelong.kernel``).
    """

    def __init__(self, model: nn.Module, store: FeatureStore, lifelong, config, kernel: str = "auto"):
        self.model, self.store, self.lifelong, self.config, self.kernel = model, store, lifelong, config, kernel
        self.heads = list(model.heads)
        self.arena = None  # grown to the largest batch seen, then reused
        self.graphs = _dense_stage_graphs(model)  # CUDA: the dense stage replayed per bucket; else None

    def __call__(self, requests: list[RankingRequest]) -> torch.Tensor:
        """``[R, H]`` probabilities of the candidates of ``requests``, request after request."""
        from recsys.ranking import rank_requests

        batch = self.rank_requests_of(requests)
        logits = rank_requests(self.model, batch, self.store.log.items, lifelong=self.config,
                               arena=self._arena(batch), kernel=self.kernel, graphs=self.graphs)
        return torch.sigmoid(torch.cat(logits).float())  # [R, H]

    def rank_requests_of(self, requests: list[RankingRequest]) -> list:
        """The :class:`~recsys.ranking.RankRequest` of each request (sequence, bags and context from the stores)."""
        from recsys.ranking import RankRequest, UserSequence

        spec = self.store.spec
        # One row per request (its first candidate): every row of a request holds the same bags and context.
        rows = self.store.ranking_batch([RankingRequest(r.user, r.items[:1], r.time, r.surface) for r in requests])
        bags = {key: rows.sparse_features[key].to_dense() for key in spec.history_features}  # key -> B tensors
        context = rows.dense_features[:, spec.content_dim:].numpy()  # [B, T]
        return [RankRequest(user_id=r.user, request_time=r.time,
                            sequence=UserSequence.from_store(self.lifelong, r.user, r.time, self.config),
                            candidates=r.items, surface=r.surface, context=context[b],
                            history={key: bags[key][b].numpy() for key in spec.history_features})
                for b, r in enumerate(requests)]

    def _arena(self, batch: list):
        """A :class:`~recsys.ranking.HostArena` holding ``batch``: the last one, or one twice as large."""
        from recsys.ranking import HostArena

        need = (len(batch), sum(r.num_candidates for r in batch), max(sum(r.sequence.num_tokens for r in batch), 1))
        have = self.arena.capacity if self.arena is not None else None
        if have is None or any(n > c for n, c in zip(need, (have.requests, have.candidates, have.tokens))):
            grown = need if have is None else [max(n, 2 * c) for n, c in zip(need, (have.requests, have.candidates,
                                                                                    have.tokens))]
            self.arena = HostArena(self.store.spec, *grown, device=_device_of(self.model))
        return self.arena


def _dense_stage_graphs(model: nn.Module):
    """The CUDA graphs of ``rank_requests``' dense stage for a model on a CUDA device, else None (eager)."""
    if _device_of(model).type != "cuda":
        return None
    from recsys.ranking.graphs import DenseStageGraphs

    return DenseStageGraphs(model)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def make_ranker(model: nn.Module, store: FeatureStore, kv_cache: KVCacheConfig | None = None, lifelong=None, uic=None):
    """The ranker of ``model``: M-FALCON for HSTU ranking (with ``kv_cache``), ``rank_requests`` for a
    lifelong run (``lifelong``: ``(LifelongStore, data.lifelong config)``), the UIC's states for MIMN
    given a :class:`~recsys.serve.uic_ranker.UICStates` ``uic``, pointwise otherwise."""
    from recsys.models.hstu_ranking import HSTURanking
    from recsys.models.mimn import MIMNRanker

    if uic is not None:
        if not isinstance(model, MIMNRanker):
            raise ConfigError(f"--uic-url serves mimn models from the UIC's states; this run holds "
                              f"{type(model).__name__} (leave --uic-url out)")
        from recsys.serve.uic_ranker import MIMNUICRanker

        return MIMNUICRanker(model, store, uic)
    if isinstance(model, HSTURanking):
        return MFalconRanker(model, store, kv_cache)
    if lifelong is not None:
        sequences, config = lifelong
        return TransActV2Ranker(model, store, sequences, config.sequence_config(), config.kernel)
    return PointwiseRanker(model, store)
