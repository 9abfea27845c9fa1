"""An :class:`~recsys.data.schema.EventLog` as the UIC's behaviour events.

A log is sorted by ``(user_id, timestamp)`` with ties in source order, so an event's position in
its user's log is a valid ``event_id`` (unique per user, increasing among equal timestamps):
replaying a log twice gives the same keys, which is what makes a replay idempotent.

Example::

    for batch in event_batches(log, users_per_batch=4096):   # lists of BehaviorEvent
        center.apply(batch)
    center = UserInterestCenter(model, store, version, history=EventLogHistory(log))
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from recsys.data.schema import EventLog
from recsys.uic.events import BehaviorEvent


def event_ids(log: EventLog) -> np.ndarray:
    """``[N]`` int64: each event's position in its user's log."""
    offsets = log.user_offsets()  # [U + 1]
    return np.arange(len(log), dtype=np.int64) - offsets[log.user_id]


def events_of(log: EventLog, start: int, end: int, ids: np.ndarray | None = None) -> list[BehaviorEvent]:
    """The log's events ``start:end`` as BehaviorEvents."""
    ids = event_ids(log) if ids is None else ids
    columns = zip(log.user_id[start:end].tolist(), log.item_id[start:end].tolist(), log.timestamp[start:end].tolist(),
                  ids[start:end].tolist(), log.actions[start:end].tolist())
    return [BehaviorEvent(u, i, t, e, a) for u, i, t, e, a in columns]


def event_batches(log: EventLog, users_per_batch: int) -> Iterator[list[BehaviorEvent]]:
    """Every event of the log, in batches of whole users (``users_per_batch`` users each).

    Whole users per batch suit a bulk warm-up: a user's events are stepped in one call, batched
    across the batch's users (steps = the longest history of the batch).
    """
    offsets, ids = log.user_offsets(), event_ids(log)
    for first in range(0, log.num_users, users_per_batch):
        start, end = int(offsets[first]), int(offsets[min(first + users_per_batch, log.num_users)])
        if end > start:
            yield events_of(log, start, end, ids)


class EventLogHistory:
    """``user_id -> the user's logged events``: the history a center replays to rebuild a state."""

    def __init__(self, log: EventLog):
        self.log = log
        self._offsets = log.user_offsets()
        self._ids = event_ids(log)

    def __call__(self, user_id: int) -> list[BehaviorEvent]:
        if not 0 <= user_id < self.log.num_users:
            return []
        return events_of(self.log, int(self._offsets[user_id]), int(self._offsets[user_id + 1]), self._ids)
