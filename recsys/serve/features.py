"""The server's feature store: a run's event log, indexed once, cut at each request's time.

A served request names a user, candidates and (optionally) its time; every feature comes from the
log the run trained on, as of that time, built by the same code as the training rows
(:class:`recsys.data.examples.RankingExamples` for rankers, the engaged-event sequences of
:mod:`recsys.data.sequences` for retrieval), never from the client's word::

    log of user 3:   e4 t=90 click | e5 t=100 - | e6 t=104 save
    request (user 3, time 104, candidates [8, 40]):  history [e4] (engaged, strictly before 104),
                     time features of t=104, one row per candidate

What :class:`RankingExamples` computes over the whole log per construction (user offsets, the
positions of engaged and per-action events, the sorted (user, time) keys that find where a history
ends) is computed once here (:class:`LogIndex`); :class:`RequestRows` then builds a request's rows
in time linear in the request, not in the log.

Shape letters: N events, R rows (candidates of all requests), B requests, T tokens, S max sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsys.data.batch import RankingBatch
from recsys.data.collate import LENGTH_DTYPE, kjt_from_jagged
from recsys.data.examples import RankingExamples
from recsys.data.features import FeatureSpec
from recsys.data.schema import EventLog
from recsys.data.sequences import ITEM_KEY, NO_TARGET, SequenceBatch, _ranges
from recsys.errors import DataError


class UnknownUser(DataError):
    """The user has no event in the served log (HTTP 404)."""


@dataclass
class RankingRequest:
    """One ranking request, validated: ``user`` and ``items [C]`` ids, ``time`` seconds, ``surface`` id."""

    user: int
    items: np.ndarray
    time: int
    surface: int


class LogIndex:
    """What finding a user's history at any time needs, computed once over the log.

    Args:
        log: the run's sorted event log.
        num_actions: A, the spec's actions (one position list per action).
    """

    def __init__(self, log: EventLog, num_actions: int):
        self.log = log
        self.user_offsets = log.user_offsets()  # [U + 1]
        self.engaged_events = np.flatnonzero(log.actions != 0)  # [E] sorted log positions
        self.action_events = [np.flatnonzero(log.actions & (1 << a)) for a in range(num_actions)]
        self._times = np.unique(log.timestamp)  # [M] distinct timestamps
        width = len(self._times) + 1
        self._keys = log.user_id * width + np.searchsorted(self._times, log.timestamp)  # [N] non-decreasing

    def history_end(self, user: np.ndarray, time: np.ndarray) -> np.ndarray:
        """``[R]`` log position of each user's first event at or after ``time``: their history is
        ``log[user_offsets[user]:that]`` (as :func:`recsys.data.examples.first_position_at_or_after`)."""
        width = len(self._times) + 1
        query = np.asarray(user, np.int64) * width + np.searchsorted(self._times, time, side="left")  # [R]
        return np.searchsorted(self._keys, query, side="left").astype(np.int64)

    def check_user(self, user: int) -> None:
        """:class:`UnknownUser` unless ``user`` has at least one event in the log."""
        if not 0 <= user < len(self.user_offsets) - 1 or self.user_offsets[user + 1] == self.user_offsets[user]:
            raise UnknownUser(f"user_id {user} is unknown: the served log has no event of it "
                              f"(known users have ids in 0..{len(self.user_offsets) - 2} and at least one event)")

    def any_event_of(self, user: np.ndarray) -> np.ndarray:
        """``[R]`` one log position per user (their first event): the row's user, nothing else, is read from it."""
        return self.user_offsets[np.asarray(user, np.int64)]


@dataclass(repr=False)
class RequestRows(RankingExamples):
    """:class:`RankingExamples` of served requests, on a shared :class:`LogIndex` (no per-log work).

    ``event`` points at any event of the row's user (only its user is read); ``request_time`` and
    ``surface`` are the request's; labels are zero (unknown at serving time).
    """

    index: LogIndex | None = None

    def __post_init__(self) -> None:
        index = self.index
        self._history_end = index.history_end(self.log.user_id[self.event], self.request_time)
        self._user_offsets = index.user_offsets
        self._engaged_events = index.engaged_events
        self._action_events = index.action_events


class FeatureStore:
    """Per-user histories of a run's log, as of any request time.

    Args:
        log: the event log the run trained on (``recsys.data.pipeline.load_events(cfg.data)``).
        spec: the run's FeatureSpec (``feature_spec.json``).

    Example::

        store = FeatureStore(log, spec)
        batch = store.ranking_batch([RankingRequest(3, np.array([8, 40]), 1_700_000_000, 0)])  # 2 rows
    """

    def __init__(self, log: EventLog, spec: FeatureSpec):
        log.validate()
        self.log, self.spec = log, spec
        self.index = LogIndex(log, spec.num_actions)
        self._ones = np.ones(spec.num_users, dtype=np.float32)

    # ---------------------------------------------------------------- ranking
    def ranking_batch(self, requests: list[RankingRequest]) -> RankingBatch:
        """One :class:`RankingBatch` of every candidate of ``requests``, request after request (R rows)."""
        counts = np.array([len(r.items) for r in requests], dtype=np.int64)  # [B]
        user = np.repeat([r.user for r in requests], counts)  # [R]
        rows = RequestRows(
            log=self.log, spec=self.spec, event=self.index.any_event_of(user),
            item=np.concatenate([r.items for r in requests]).astype(np.int64),
            label_bits=np.zeros(len(user), np.int32), request_id=np.repeat(np.arange(len(requests)), counts),
            sampled_negative=np.zeros(len(user), bool), user_weights=self._ones,
            request_time=np.repeat([r.time for r in requests], counts).astype(np.int64),
            surface=np.repeat([r.surface for r in requests], counts).astype(np.int64), index=self.index,
        )
        return rows.collate(np.arange(len(user)))

    # ---------------------------------------------------------------- retrieval
    def sequence_batch(self, users: list[int], times: list[int], max_seq_len: int) -> SequenceBatch:
        """The users' last ``max_seq_len`` engaged events strictly before their times, as a
        :class:`SequenceBatch` without targets (B rows, T tokens); ``seen_items`` holds each user's
        whole engaged history before the time (for ``exclude_seen=all``)."""
        user = np.asarray(users, np.int64)  # [B]
        start, end = self.index.user_offsets[user], self.index.history_end(user, np.asarray(times, np.int64))
        engaged = self.index.engaged_events
        lo, hi = np.searchsorted(engaged, start), np.searchsorted(engaged, end)  # [B] engaged range
        if (hi <= lo).any():
            bad = int(user[np.argmax(hi <= lo)])
            raise DataError(f"user_id {bad} has no engaged event before request_time; retrieval needs at least one "
                            "(pass a later request_time)")
        begin = np.maximum(lo, hi - max_seq_len)  # most recent S
        lengths = hi - begin  # [B]
        positions = engaged[_ranges(begin, lengths)]  # [T] log positions, row after row
        log = self.log
        seen = engaged[_ranges(lo, hi - lo)]
        from torchrec.sparse.jagged_tensor import JaggedTensor

        return SequenceBatch(
            item_ids=kjt_from_jagged({ITEM_KEY: (torch.from_numpy(log.item_id[positions]),
                                                 torch.from_numpy(lengths).to(LENGTH_DTYPE))},
                                     num_ids={ITEM_KEY: log.num_items}),
            seq_offsets=torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)),
            timestamps=torch.from_numpy(log.timestamp[positions].astype(np.int64)),
            actions=torch.from_numpy(log.actions[positions].astype(np.int32)),
            lengths=torch.from_numpy(lengths.astype(np.int64)),
            user_id=torch.from_numpy(user),
            target_item=torch.full((len(user),), NO_TARGET, dtype=torch.int64),
            target_timestamp=torch.full((len(user),), NO_TARGET, dtype=torch.int64),
            seen_items=JaggedTensor(values=torch.from_numpy(log.item_id[seen]),
                                    lengths=torch.from_numpy(hi - lo).to(LENGTH_DTYPE)),
        )

