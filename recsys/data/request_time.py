"""When a row's request started: the time every feature and sequence of the row must predate.

A request (one feed page) shows several items at once; its rows are scored together, before the
user acts on any of them. So a row may know only what happened before the request's *start*, the
earliest timestamp of the request's events, not before its own event: the slots of one page carry
the same or increasing timestamps, and a later slot's row would otherwise see the outcomes of the
earlier slots of its own page::

    page r7 of user u3:  e40 t=100 click | e41 t=101 - | e42 t=103 save
    request start of rows of e40, e41, e42:  100, 100, 100  (not 100, 101, 103)

Events without a request id (the log has none) are their own request: the start is their time.
Requests are keyed by (user, request id), so ids need only be unique per user.

Shape letters: N events, R rows.
"""

from __future__ import annotations

import numpy as np

from recsys.data.schema import EventLog
from recsys.errors import DataError


def event_request_start(log: EventLog) -> np.ndarray:
    """``[N]`` int64: the start of each event's request (min timestamp over the events sharing
    its (user, request id)); the event's own timestamp when the log has no request ids."""
    if log.request_id is None:
        return log.timestamp.astype(np.int64, copy=True)
    keys = np.stack([log.user_id, log.request_id], axis=1)  # [N, 2]
    _, request = np.unique(keys, axis=0, return_inverse=True)
    request = request.reshape(-1)
    start = np.full(int(request.max()) + 1 if len(request) else 0, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(start, request, log.timestamp)
    return start[request]


def request_start_times(log: EventLog, events) -> np.ndarray:
    """``[R]`` int64: the request start of the rows whose target events are ``events`` ``[R]``.

    Args:
        log: the event log the rows point into.
        events: ``[R]`` int64 indices of the rows' target events in ``log``.
    """
    events = np.asarray(events, dtype=np.int64).reshape(-1)
    if events.size and (events.min() < 0 or events.max() >= len(log)):
        raise DataError(f"events must be indices of the log's {len(log)} events, got values outside 0..{len(log) - 1}")
    return event_request_start(log)[events]
