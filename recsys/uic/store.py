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
  Every store follows the same rules: a name is 1-128 letters, digits or ``._-``
  (:func:`check_snapshot_name`; ``uic-2026-12-04``); snapshotting under an existing name replaces
  that snapshot and makes it the newest; restoring or dropping a name that does not exist is a
  :class:`~recsys.errors.DataError` (:func:`missing_snapshot`) that lists the snapshots and changes
  nothing; counters are ingest totals, which a restore leaves alone.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from recsys.errors import DataError

SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def check_snapshot_name(name: str) -> str:
    """``name`` if it is a valid snapshot name (1-128 letters, digits or ``._-``), else a DataError."""
    if not isinstance(name, str) or not SNAPSHOT_NAME.match(name):
        raise DataError(f"snapshot name {name!r} must be 1-128 letters, digits or ._- (e.g. 'uic-2026-12-04')")
    return name


def missing_snapshot(name: str, where: str, available: Sequence[str]) -> DataError:
    """The error every store raises for a snapshot ``name`` it does not hold."""
    return DataError(f"no snapshot {name!r} in {where}; available (oldest first): {list(available)} "
                     "(take one with `recsys uic snapshot`)")


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
    def count(self) -> int:
        """Users with a record."""

    @abc.abstractmethod
    def snapshot(self, name: str) -> None:
        """Save every record under ``name`` (replaces a snapshot of that name, which becomes the newest)."""

    @abc.abstractmethod
    def snapshots(self) -> list[str]:
        """Snapshot names, oldest first."""

    @abc.abstractmethod
    def restore(self, name: str) -> None:
        """Replace the current records by snapshot ``name``'s (a clear error if it does not exist)."""

    @abc.abstractmethod
    def drop_snapshot(self, name: str) -> None:
        """Delete snapshot ``name`` (a clear error if it does not exist)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and files."""

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
