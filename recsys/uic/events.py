"""One behaviour event as the UIC receives it, and the order events are applied in.

A UIC applies a user's events in ``(timestamp, event_id)`` order. ``event_id`` is the producer's
id of the event, unique per user and increasing among events that share a timestamp (the position
of the event in the user's log will do). The pair is the event's :func:`order_key`; a user's
record keeps the key of the last event applied, which is what makes ingestion idempotent:

- key == last applied key: a redelivery, counted as ``duplicates`` and not applied;
- key <  last applied key: late or redelivered after later events, counted as ``late``, not applied;
- key >  last applied key: applied, in key order within the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from recsys.errors import DataError

EVENT_FIELDS = ("user_id", "item_id", "timestamp", "event_id", "actions")


@dataclass(frozen=True)
class BehaviorEvent:
    """One user behaviour in the zoo's event schema (see ``recsys/data/schema.py``).

    Args:
        user_id: the user (``0..num_users-1``).
        item_id: the item acted on (``0..num_items-1``).
        timestamp: event time, integer seconds.
        event_id: the producer's id of the event, unique per user (ties of ``timestamp`` apply in
            ``event_id`` order).
        actions: multi-hot bit mask over the action vocabulary (0 = an impression without action).
    """

    user_id: int
    item_id: int
    timestamp: int
    event_id: int
    actions: int = 0

    @property
    def order_key(self) -> tuple[int, int]:
        return order_key(self.timestamp, self.event_id)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], index: int = 0) -> "BehaviorEvent":
        """Parse one JSON object; a clear :class:`DataError` naming ``events[index].field`` otherwise."""
        if not isinstance(payload, Mapping):
            raise DataError(f"events[{index}] must be an object with fields {list(EVENT_FIELDS)}, got {type(payload).__name__}")
        unknown = sorted(set(payload) - set(EVENT_FIELDS))
        if unknown:
            raise DataError(f"events[{index}] has unknown fields {unknown}; the fields are {list(EVENT_FIELDS)}")
        values = {}
        for name in EVENT_FIELDS:
            if name not in payload:
                if name == "actions":
                    values[name] = 0
                    continue
                raise DataError(f"events[{index}].{name} is missing; every event needs {list(EVENT_FIELDS[:4])}")
            value = payload[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataError(f"events[{index}].{name} must be an integer, got {value!r}")
            if value < 0:
                raise DataError(f"events[{index}].{name} must be >= 0, got {value}")
            values[name] = value
        return cls(**values)


def order_key(timestamp: int, event_id: int) -> tuple[int, int]:
    """The order a user's events are applied in: by time, then by the producer's event id."""
    return (int(timestamp), int(event_id))
