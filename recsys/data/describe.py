"""A summary of an :class:`EventLog`: sizes, action and surface counts, time range, user activity.

``describe_log`` returns plain Python values (JSON-ready); ``format_description`` lays them out
as a two-column table for the ``recsys data`` command.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from recsys.data.schema import EventLog

PERCENTILES = (50, 90, 99)


def describe_log(log: EventLog) -> dict:
    """Summary statistics of ``log``.

    Returns:
        dict with ``events``, ``users``, ``items``, ``engaged_fraction``, ``actions`` (name ->
        events carrying it), ``surfaces`` (name -> events), ``time_range`` (first and last event
        as ISO dates, UTC), ``events_per_user`` and ``history_length`` (engaged events per user:
        the history a sequence model reads), each as ``p50``/``p90``/``p99``/``max``.
    """
    n = len(log)
    engaged = log.engaged()
    action_counts = log.action_matrix().sum(axis=0) if n else np.zeros(log.num_actions, np.int64)
    surface_counts = np.bincount(log.surface, minlength=len(log.surface_vocab))
    return {
        "events": n,
        "users": log.num_users,
        "items": log.num_items,
        "engaged_fraction": float(engaged.mean()) if n else 0.0,
        "actions": {name: int(c) for name, c in zip(log.action_vocab, action_counts)},
        "surfaces": {name: int(c) for name, c in zip(log.surface_vocab, surface_counts)},
        "time_range": [_iso_date(log.timestamp.min()), _iso_date(log.timestamp.max())] if n else [None, None],
        "events_per_user": _percentiles(np.bincount(log.user_id, minlength=log.num_users)),
        "history_length": _percentiles(np.bincount(log.user_id[engaged], minlength=log.num_users)),
    }


def format_description(d: dict) -> str:
    """``describe_log``'s dict as a readable two-column table."""
    rows = [
        ("events", f"{d['events']:,}"),
        ("users", f"{d['users']:,}"),
        ("items", f"{d['items']:,}"),
        ("engaged fraction", f"{d['engaged_fraction']:.3f}"),
    ]
    rows += [(f"action {name}", f"{count:,}") for name, count in d["actions"].items()]
    rows += [(f"surface {name}", f"{count:,}") for name, count in d["surfaces"].items()]
    rows.append(("time range", f"{d['time_range'][0]} .. {d['time_range'][1]}"))
    for key, label in (("events_per_user", "events per user"), ("history_length", "history length")):
        stats = d[key]
        rows.append((label, "  ".join(f"{k} {v:,}" for k, v in stats.items())))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _iso_date(seconds) -> str:
    try:
        return datetime.fromtimestamp(int(seconds), tz=timezone.utc).date().isoformat()
    except (OverflowError, OSError, ValueError):  # beyond what dates hold: show the number
        return f"{int(seconds)} s"


def _percentiles(counts: np.ndarray) -> dict[str, int]:
    if len(counts) == 0:
        return {**{f"p{p}": 0 for p in PERCENTILES}, "max": 0}
    values = np.percentile(counts, PERCENTILES, method="lower")
    return {**{f"p{p}": int(v) for p, v in zip(PERCENTILES, values)}, "max": int(counts.max())}
