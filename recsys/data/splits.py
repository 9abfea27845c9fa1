"""Train / validation / test splits of an :class:`EventLog`, as index arrays into the log.

- :func:`leave_one_out`: the protocol of the sequential-recommendation literature. Per user, the
  last engaged event (``actions != 0``) is the test target and the engaged event before it the
  validation target. Events from the validation target up to (not including) the test target
  go to valid (the target plus the impressions shown between the two), events from the test
  target on go to test, everything earlier to train. Users with fewer than ``min_engaged``
  engaged events stay wholly in train.
- :func:`time_split`: one global cut in time: the latest events go to test, those before to valid.

Example::

    split = leave_one_out(log)
    train_log, valid_log, test_log = split.logs(log)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.data.schema import EventLog
from recsys.errors import ConfigError


@dataclass
class Split:
    """Disjoint int64 index arrays into one log that together cover it.

    Args:
        train / valid / test: ``[N_train]`` / ``[N_valid]`` / ``[N_test]`` sorted event indices.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> "Split":
        """From ``[N]`` labels 0 (train), 1 (valid), 2 (test)."""
        return cls(*(np.flatnonzero(labels == k).astype(np.int64) for k in range(3)))

    def logs(self, log: EventLog) -> tuple[EventLog, EventLog, EventLog]:
        """The three parts of ``log`` as logs (same id spaces and vocabularies)."""
        return log.take(self.train), log.take(self.valid), log.take(self.test)


def leave_one_out(log: EventLog, min_engaged: int = 3) -> Split:
    """Per-user leave-one-out split on engaged events (see the module docstring).

    Args:
        log: a (user, time)-sorted log.
        min_engaged: users with fewer engaged events stay wholly in train; at least 2.
    """
    if min_engaged < 2:
        raise ConfigError(f"min_engaged={min_engaged} must be at least 2 (a test and a validation target)")
    engaged = np.flatnonzero(log.engaged())  # [E] event indices, grouped by user in time order
    engaged_user = log.user_id[engaged]
    counts = np.bincount(engaged_user, minlength=log.num_users)  # [U]
    last = np.cumsum(counts) - 1  # [U] position in `engaged` of each user's last engaged event
    eligible = counts >= min_engaged
    test_start = np.full(log.num_users, np.iinfo(np.int64).max)
    valid_start = np.full(log.num_users, np.iinfo(np.int64).max)
    test_start[eligible] = engaged[last[eligible]]
    valid_start[eligible] = engaged[last[eligible] - 1]
    position = np.arange(len(log))
    labels = np.zeros(len(log), np.int8)
    labels[position >= valid_start[log.user_id]] = 1
    labels[position >= test_start[log.user_id]] = 2
    return Split.from_labels(labels)


def time_split(
    log: EventLog,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    valid_start: int | None = None,
    test_start: int | None = None,
) -> Split:
    """Global time split: events at or after ``test_start`` go to test, from ``valid_start`` to valid.

    Without explicit starts they are the timestamps of the events at the ``1 - valid_fraction -
    test_fraction`` and ``1 - test_fraction`` quantiles of all events in time order; events tied
    with a start go to the later part, so a part can be slightly larger than its fraction.

    Args:
        log: the event log.
        valid_fraction / test_fraction: shares of events, each in [0, 1), summing below 1.
        valid_start / test_start: explicit cut timestamps (seconds), overriding the fractions.
    """
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name}={value} must be in [0, 1)")
    if valid_fraction + test_fraction >= 1.0:
        raise ConfigError(f"valid_fraction + test_fraction = {valid_fraction + test_fraction} must be below 1")
    times = np.sort(log.timestamp)
    n = len(times)
    if test_start is None:
        cut = n - int(round(n * test_fraction))
        test_start = int(times[cut]) if cut < n else np.iinfo(np.int64).max
    if valid_start is None:
        cut = n - int(round(n * (test_fraction + valid_fraction)))
        valid_start = int(times[cut]) if cut < n else test_start
    if valid_start > test_start:
        raise ConfigError(f"valid_start={valid_start} is after test_start={test_start}; swap them")
    labels = np.zeros(n, np.int8)
    labels[log.timestamp >= valid_start] = 1
    labels[log.timestamp >= test_start] = 2
    return Split.from_labels(labels)
