"""Daily snapshots of a UIC store and the rollback to one.

A snapshot is named by its UTC date (``uic-2026-12-04``); taking the day's snapshot again replaces
it. :func:`take_daily_snapshot` keeps the ``keep`` newest *daily* snapshots and drops the older
ones (snapshots of other names, taken by hand, are never dropped). :func:`rollback` replaces the
current records by a snapshot's (one transaction of the store) and lists the available ones
when the name is unknown.

Example::

    name, dropped = take_daily_snapshot(store)      # ("uic-2026-12-04", ["uic-2026-11-27"])
    rollback(store, "uic-2026-12-03")
"""

from __future__ import annotations

import datetime as dt
import re

from recsys.errors import DataError
from recsys.uic.store import StateStore

PREFIX = "uic-"
DAILY = re.compile(r"^uic-\d{4}-\d{2}-\d{2}$")
KEEP = 7


def snapshot_name(when: dt.datetime | None = None) -> str:
    """``uic-YYYY-MM-DD`` of ``when`` (default: now) in UTC."""
    when = when or dt.datetime.now(dt.timezone.utc)
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc)
    return f"{PREFIX}{when:%Y-%m-%d}"


def take_daily_snapshot(store: StateStore, when: dt.datetime | None = None, keep: int = KEEP) -> tuple[str, list[str]]:
    """Snapshots ``store`` under the UTC day's name and drops the daily snapshots beyond the ``keep`` newest.

    Returns:
        the snapshot's name and the names dropped.
    """
    if keep < 1:
        raise DataError(f"keep must be >= 1 (the snapshot just taken), got {keep}")
    name = snapshot_name(when)
    store.snapshot(name)
    daily = sorted(n for n in store.snapshots() if DAILY.match(n))  # dates sort as text
    dropped = daily[:-keep]
    for old in dropped:
        store.drop_snapshot(old)
    return name, dropped


def rollback(store: StateStore, name: str) -> None:
    """Replaces the current records by snapshot ``name``'s; a DataError listing the snapshots if it is unknown."""
    available = store.snapshots()
    if name not in available:
        raise DataError(f"no snapshot {name!r}; available (oldest first): {available or 'none'} "
                        "(take one with `recsys uic snapshot`)")
    store.restore(name)
