"""The embedded UIC store: one SQLite file (the default of ``recsys uic serve``).

Tables::

    records           user_id PK | state BLOB | last_timestamp | last_event_id | events_applied | model_version
    counters          name PK | value
    snapshots         seq PK | name UNIQUE | created (UTC seconds)
    snapshot_records  (name, user_id) PK | the columns of records

Durability: WAL journal with ``synchronous=FULL``, one transaction per :meth:`commit`. In WAL
mode FULL syncs the WAL to disk at every commit, so a commit that returned (and the events the
service then acknowledged) survives a process kill *and* a power loss or OS crash; NORMAL would
sync only at checkpoints and may lose the last commits on a power loss (it is still safe against
a killed process). The cost is one fsync per batch, small next to a batch of 1,000 events.

Snapshots live in the same file, so :meth:`snapshot` and :meth:`restore` are single transactions:
a crash leaves the old or the new records, never a mix. The counters are the service's totals
and are not rolled back by :meth:`restore`.

The connection is shared by the threads of one process under a lock; several processes (a
server and ``recsys uic snapshot``) may open one file: SQLite serialises their writes and
``busy_timeout`` waits for the lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from recsys.errors import ConfigError
from recsys.uic.store import StateStore, UserRecord, check_snapshot_name, missing_snapshot

COLUMNS = "user_id, state, last_timestamp, last_event_id, events_applied, model_version"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS records (
    user_id INTEGER PRIMARY KEY, state BLOB NOT NULL, last_timestamp INTEGER NOT NULL,
    last_event_id INTEGER NOT NULL, events_applied INTEGER NOT NULL, model_version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot_records (
    name TEXT NOT NULL, user_id INTEGER NOT NULL, state BLOB NOT NULL, last_timestamp INTEGER NOT NULL,
    last_event_id INTEGER NOT NULL, events_applied INTEGER NOT NULL, model_version TEXT NOT NULL,
    PRIMARY KEY (name, user_id));
"""
READ_CHUNK = 900  # bound parameters per SELECT (SQLite's default limit is 999 on old builds)


class SQLiteStateStore(StateStore):
    """A :class:`StateStore` in one SQLite file.

    Args:
        path: the database file (created with its folder when absent).
        busy_timeout_s: how long a write waits for another process's lock.
        cache_mib: SQLite's page cache of this connection (the hot users' pages stay in memory).
        checkpoint_pages: WAL pages between automatic checkpoints (copies of the WAL into the
            database file). SQLite's 1,000 checkpoints every few 1,000-event batches, which then
            cost more than the batch's own commit; 10,000 amortises them.
        page_size: bytes per database page, for a new file only. A batch updates users spread over
            the whole table, so each record written dirties its own page and the WAL holds whole
            pages: pages near the record size write less per user. 2,048 holds two states of
            ``configs/mimn/synthetic.yaml`` (656 B): its 1,000-event commits take half the time of
            SQLite's default 4,096. Larger states spill into overflow pages, which still works.
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0, cache_mib: int = 64,
                 checkpoint_pages: int = 10_000, page_size: int = 2048):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=busy_timeout_s)
            self._db.execute(f"PRAGMA page_size={int(page_size)}")  # before the first table; ignored after
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA cache_size={-1024 * int(cache_mib)}")  # negative: KiB
            self._db.execute(f"PRAGMA wal_autocheckpoint={int(checkpoint_pages)}")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise ConfigError(f"cannot open the UIC store {self.path} as SQLite: {error}; "
                              "pass another --store sqlite:PATH or remove the file") from None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStateStore({str(self.path)!r})"

    # ------------------------------------------------------------------ records
    def read(self, user_ids: Sequence[int]) -> dict[int, UserRecord]:
        ids = list(dict.fromkeys(int(u) for u in user_ids))
        found: dict[int, UserRecord] = {}
        with self._lock:
            for start in range(0, len(ids), READ_CHUNK):
                chunk = ids[start:start + READ_CHUNK]
                marks = ",".join("?" * len(chunk))
                for row in self._db.execute(f"SELECT {COLUMNS} FROM records WHERE user_id IN ({marks})", chunk):
                    found[row[0]] = UserRecord(*row)
        return found

    def commit(self, records: Iterable[UserRecord], counters: Mapping[str, int] | None = None) -> None:
        rows = [(r.user_id, bytes(r.state), r.last_timestamp, r.last_event_id, r.events_applied, r.model_version)
                for r in records]
        with self._lock, self._transaction():
            self._db.executemany(f"INSERT OR REPLACE INTO records ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._db.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                [(str(k), int(v)) for k, v in (counters or {}).items()],
            )

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM counters ORDER BY name").fetchall())

    def count(self) -> int:
        """Users with a record."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, name: str) -> None:
        name = check_snapshot_name(name)
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM snapshot_records WHERE name = ?", (name,))
            self._db.execute("DELETE FROM snapshots WHERE name = ?", (name,))
            self._db.execute(f"INSERT INTO snapshot_records (name, {COLUMNS}) SELECT ?, {COLUMNS} FROM records", (name,))
            self._db.execute("INSERT INTO snapshots (name, created) VALUES (?, ?)", (name, time.time()))

    def snapshots(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT name FROM snapshots ORDER BY seq")]

    def restore(self, name: str) -> None:
        name = check_snapshot_name(name)
        with self._lock, self._transaction():
            self._require_snapshot(name)
            self._db.execute("DELETE FROM records")
            self._db.execute(f"INSERT INTO records ({COLUMNS}) SELECT {COLUMNS} FROM snapshot_records WHERE name = ?", (name,))

    def drop_snapshot(self, name: str) -> None:
        name = check_snapshot_name(name)
        with self._lock, self._transaction():
            self._require_snapshot(name)
            self._db.execute("DELETE FROM snapshot_records WHERE name = ?", (name,))
            self._db.execute("DELETE FROM snapshots WHERE name = ?", (name,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ helpers
    def _require_snapshot(self, name: str) -> None:
        """A DataError listing the snapshots when ``name`` is not one (inside the caller's transaction)."""
        if self._db.execute("SELECT 1 FROM snapshots WHERE name = ?", (name,)).fetchone() is None:
            available = [row[0] for row in self._db.execute("SELECT name FROM snapshots ORDER BY seq")]
            raise missing_snapshot(name, str(self.path), available)

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on an error (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, error, trace) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")

