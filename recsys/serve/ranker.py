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
  candidate, so its score does not depend on the others.

Both return ``[R, H]`` probabilities (``sigmoid`` of the heads' logits), requests in order.

Shape letters: B requests, R candidates of all requests, H heads.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from recsys.errors import ConfigError
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
        """``[R, H]`` probabilities of the candidates of ``requests``, request after request (on the model's device)."""
        device = _device_of(self.model)
        batch = self.store.ranking_batch(requests).to(device)
        if not self.per_request:
            return torch.sigmoid(self.model(batch).float())  # [R, H]
        counts = torch.tensor([0] + [len(r.items) for r in requests], dtype=torch.int64)  # [B + 1]
        return torch.sigmoid(self.model.forward_requests(batch, torch.cumsum(counts, 0).to(device)).float())


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


class TransActV2Ranker:
    """TransAct V2 through ``rank_requests``: one :class:`~recsys.ranking.RankRequest` per request.

    A request's sequence is what ``lifelong`` holds for the user strictly before the request time;
    its history bags, surface and context come from the feature store's own row of the request (the
    training pipeline's collate), so the scores are the offline model's on the stored S_all rows.

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

    def __call__(self, requests: list[RankingRequest]) -> torch.Tensor:
        """``[R, H]`` probabilities of the candidates of ``requests``, request after request."""
        from recsys.ranking import rank_requests

        batch = self.rank_requests_of(requests)
        logits = rank_requests(self.model, batch, self.store.log.items, lifelong=self.config,
                               arena=self._arena(batch), kernel=self.kernel)
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


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


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


def make_ranker(model: nn.Module, store: FeatureStore, lifelong=None, uic=None):
    """The ranker of ``model``: M-FALCON for HSTU ranking, ``rank_requests`` for a lifelong run
    (``lifelong``: ``(LifelongStore, data.lifelong config)``), the UIC's states for MIMN given a
    :class:`~recsys.serve.uic_ranker.UICStates` ``uic``, pointwise otherwise."""
    from recsys.models.hstu_ranking import HSTURanking
    from recsys.models.mimn import MIMNRanker

    if uic is not None:
        if not isinstance(model, MIMNRanker):
            raise ConfigError(f"--uic-url serves mimn models from the UIC's states; this run holds "
                              f"{type(model).__name__} (leave --uic-url out)")
        from recsys.serve.uic_ranker import MIMNUICRanker

        return MIMNUICRanker(model, store, uic)
    if isinstance(model, HSTURanking):
        return MFalconRanker(model, store)
    if lifelong is not None:
        sequences, config = lifelong
        return TransActV2Ranker(model, store, sequences, config.sequence_config(), config.kernel)
    return PointwiseRanker(model, store)
