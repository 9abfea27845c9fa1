"""Where the UIC keeps each user's state: one interface, two stores.

A :class:`UserRecord` is what a store holds per user: the serialized MIMN state, the key of the last
event applied (idempotence, see ``events.py``), how many events built it, and the version of the
model that computed it (a state from another model version is rebuilt, never mixed).

A store's contract (``tests/recsys/uic/`` checks it for every store):

- :meth:`StateStore.read` returns the records of the users asked for that exist.
- :meth:`StateStore.commit` writes a batch of records and adds to the counters **atomically**: after a
  crash either every record and counter of the batch is visible or none is. The ingest path
  acknowledges events only after ``commit`` returned.
- Snapshots: :meth:`StateStore.snapshot` saves every record under a name; :meth:`StateStore.restore`
  replaces the current records by a snapshot's; :meth:`StateStore.snapshots` lists names, oldest first.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence


@dataclass(frozen=True)
class UserRecord:
    """One user's stored state.

    Args:
        user_id: the user.
        state: the user's MIMN state, serialized (``recsys.uic`` codec; fixed size per model config).
        last_timestamp: ``timestamp`` of the last event applied.
        last_event_id: ``event_id`` of the last event applied.
        events_applied: events applied to build ``state``.
        model_version: the version of the model that computed ``state``.
    """

    user_id: int
    state: bytes
    last_timestamp: int
    last_event_id: int
    events_applied: int
    model_version: str

    @property
    def last_key(self) -> tuple[int, int]:
        return (self.last_timestamp, self.last_event_id)


class StateStore(abc.ABC):
    """The storage interface of the UIC (SQLite embedded, Redis scale-out)."""

    @abc.abstractmethod
    def read(self, user_ids: Sequence[int]) -> dict[int, UserRecord]:
        """Records of ``user_ids`` that exist (absent users are missing from the dict)."""

    @abc.abstractmethod
    def commit(self, records: Iterable[UserRecord], counters: Mapping[str, int] | None = None) -> None:
        """Write ``records`` and add ``counters`` (e.g. ``{"applied": 5, "late": 1}``) atomically."""

    @abc.abstractmethod
    def counters(self) -> dict[str, int]:
        """Totals of every counter committed so far."""

    @abc.abstractmethod
    def snapshot(self, name: str) -> None:
        """Save every record under ``name`` (overwrites a snapshot of that name)."""

    @abc.abstractmethod
    def snapshots(self) -> list[str]:
        """Snapshot names, oldest first."""

    @abc.abstractmethod
    def restore(self, name: str) -> None:
        """Replace the current records by snapshot ``name``'s (a clear error if it does not exist)."""

    @abc.abstractmethod
    def drop_snapshot(self, name: str) -> None:
        """Delete snapshot ``name``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and files."""

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
