"""The lifelong per-user store: every user's events, time-ordered, with int8 content embeddings.

TransAct V2 reads two streams of each user (the paper's sequences are windows of them):

- ``engaged``: events with at least one action (``actions != 0``: clicks, saves, hides, ...),
  the source of the lifelong sequence S_LL and the realtime sequence S_RT;
- ``impressions``: impressions without any action, the source of S_imp.

Each stream is a jagged table over users, in time order within a user, stored once::

    user_offsets  [U + 1]   user u's events are rows user_offsets[u] : user_offsets[u + 1]
    item_id       [E]       int64
    actions       [E]       int32 action bit mask
    surface       [E]       int64
    timestamp     [E]       int64 seconds
    content       [E, C]    int8, quantize_int8(item content embedding, scale)

The history of a user as of time t is a prefix of each stream (events with ``timestamp < t``), so
both training (many rows at once, :meth:`EventStream.count_before`) and serving (one user,
:meth:`LifelongStore.user`) select from the same rows without copying them.

On disk a store is a directory of ``.npy`` files (memory-mapped when read) and ``meta.json``,
written to a temporary sibling directory and renamed into place (:mod:`recsys.data.directory_io`).

Shape letters: U users, E events of a stream, C content dimension, n queries.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from recsys.data.directory_io import atomic_directory, load_array, read_meta, write_meta
from recsys.data.schema import EventLog
from recsys.errors import DataError
from recsys.ops.int8_quantization import DEFAULT_SCALE, check_scale, quantize_int8

FORMAT_NAME = "recsys-lifelong-store"
FORMAT_VERSION = 1
STREAMS = ("engaged", "impressions")


@dataclass
class EventStream:
    """One kind of event of every user, time-ordered per user (see the module docstring).

    Args:
        user_offsets: ``[U + 1]`` int64 offsets of each user's rows.
        item_id: ``[E]`` int64.
        actions: ``[E]`` int32 action bit mask.
        surface: ``[E]`` int64.
        timestamp: ``[E]`` int64 seconds, non-decreasing within a user.
        content: ``[E, C]`` int8 quantised content embeddings.
    """

    user_offsets: np.ndarray
    item_id: np.ndarray
    actions: np.ndarray
    surface: np.ndarray
    timestamp: np.ndarray
    content: np.ndarray

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    @property
    def num_users(self) -> int:
        return int(self.user_offsets.shape[0]) - 1

    def count_before(self, users: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query, the user's first row and how many of its events have ``timestamp < time``.

        Vectorised: one ``searchsorted`` on (user, time) keys for all queries.

        Args:
            users: ``[n]`` int64 user ids.
            times: ``[n]`` int64 request times (seconds).

        Returns:
            ``(first [n], count [n])`` int64: the events are rows ``first : first + count``.
        """
        users = np.asarray(users, dtype=np.int64)
        times = np.asarray(times, dtype=np.int64)
        first = self.user_offsets[users]
        if len(self) == 0:
            return first, np.zeros_like(first)
        origin, span = self._time_range()
        keys = self._user_time_keys()
        queries = users * span + np.clip(times - origin, 0, span - 1)
        return first, np.searchsorted(keys, queries, side="left") - first

    def user(self, user: int) -> "EventStream":
        """User ``user``'s rows as a one-user stream (views, no copy)."""
        lo, hi = int(self.user_offsets[user]), int(self.user_offsets[user + 1])
        return EventStream(
            user_offsets=np.array([0, hi - lo], dtype=np.int64),
            **{name: getattr(self, name)[lo:hi] for name in _COLUMNS},
        )

    def validate(self, what: str) -> None:
        """Raises :class:`DataError` naming ``what`` and the field on any inconsistency."""
        n = len(self)
        offsets = self.user_offsets
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) < 0):
            raise DataError(f"{what}.user_offsets must be non-decreasing from 0 to {n} events; rebuild the store")
        for name in _COLUMNS:
            if getattr(self, name).shape[0] != n:
                rows = getattr(self, name).shape[0]
                raise DataError(f"{what}.{name} has {rows} rows, expected {n}; rebuild the store")
        if self.content.ndim != 2 or self.content.dtype != np.int8:
            raise DataError(f"{what}.content must be [E, C] int8, got {self.content.dtype} {self.content.shape}")

    def _time_range(self) -> tuple[int, int]:
        origin = int(self.timestamp.min())
        return origin, int(self.timestamp.max()) - origin + 2

    def _user_time_keys(self) -> np.ndarray:
        """``[E]`` int64 ``user * span + (timestamp - origin)``: sorted, since rows are (user, time) sorted."""
        cached = getattr(self, "_keys", None)
        if cached is not None:
            return cached
        origin, span = self._time_range()
        if self.num_users * span >= 2**62:
            raise DataError(
                f"{self.num_users} users x {span} s of timestamps overflow the (user, time) keys; "
                "store timestamps in seconds, not milliseconds"
            )
        user = np.repeat(np.arange(self.num_users, dtype=np.int64), np.diff(self.user_offsets))
        self._keys = user * span + (self.timestamp - origin)
        return self._keys


_COLUMNS = ("item_id", "actions", "surface", "timestamp", "content")


@dataclass
class UserHistory:
    """One user's full sequences, as a serving request reads them from the store.

    Args:
        engaged: the user's engaged events (a one-user :class:`EventStream`).
        impressions: the user's impressions without action.
        scale: the int8 scale of ``content``.
    """

    engaged: EventStream
    impressions: EventStream
    scale: float


@dataclass
class LifelongStore:
    """The engaged and impression streams of every user. Build with :meth:`from_log`.

    Args:
        engaged: events with ``actions != 0``.
        impressions: impressions (``impression`` True) with ``actions == 0``.
        scale: int8 scale of the content embeddings (:data:`DEFAULT_SCALE`, the paper's 0.65).

    Example::

        store = LifelongStore.from_log(log)
        history = store.user(7)            # what serving reads for user 7
        store.save("runs/store"); LifelongStore.load("runs/store")
    """

    engaged: EventStream
    impressions: EventStream
    scale: float = DEFAULT_SCALE

    @classmethod
    def from_log(cls, log: EventLog, scale: float = DEFAULT_SCALE) -> "LifelongStore":
        """Both streams of every user of ``log``, content quantised with ``scale``.

        Args:
            log: a sorted event log with an :class:`~recsys.data.schema.ItemTable`.
            scale: int8 scale (see :func:`recsys.ops.int8_quantization.choose_scale`).
        """
        log.validate()
        if log.items is None:
            raise DataError("the lifelong store needs content embeddings; the log has no ItemTable (log.items is None)")
        codes = quantize_int8(log.items.content_embedding, scale).numpy()  # [I, C] int8
        engaged = log.actions != 0
        impressions = log.impression & (log.actions == 0)
        return cls(_stream(log, engaged, codes), _stream(log, impressions, codes), check_scale(scale))

    @property
    def num_users(self) -> int:
        return self.engaged.num_users

    @property
    def content_dim(self) -> int:
        return int(self.engaged.content.shape[1])

    def user(self, user: int) -> UserHistory:
        """User ``user``'s full sequences (views into the store)."""
        if not 0 <= int(user) < self.num_users:
            raise DataError(f"user {user} is outside 0..{self.num_users - 1}, the users of this store")
        return UserHistory(self.engaged.user(int(user)), self.impressions.user(int(user)), self.scale)

    def validate(self) -> None:
        self.engaged.validate("engaged")
        self.impressions.validate("impressions")
        if self.impressions.num_users != self.num_users or self.impressions.content.shape[1] != self.content_dim:
            raise DataError("the engaged and impression streams must cover the same users and content dimension")
        check_scale(self.scale)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Writes the store to the directory ``path`` (``.npy`` files and ``meta.json``), atomically."""
        self.validate()
        with atomic_directory(path, overwrite) as staging:
            for stream_name in STREAMS:
                stream = getattr(self, stream_name)
                for f in fields(stream):
                    np.save(staging / f"{stream_name}.{f.name}.npy", getattr(stream, f.name))
            meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "scale": self.scale,
                    "num_users": self.num_users, "content_dim": self.content_dim,
                    "events": {name: len(getattr(self, name)) for name in STREAMS}}
            write_meta(staging, meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> "LifelongStore":
        """Reads a store written by :meth:`save` (arrays memory-mapped unless ``mmap=False``)."""
        path = Path(path)
        meta = read_meta(path, FORMAT_NAME, FORMAT_VERSION, ("scale", "num_users", "content_dim"))
        streams = {
            name: EventStream(**{f.name: load_array(path, f"{name}.{f.name}.npy", mmap) for f in fields(EventStream)})
            for name in STREAMS
        }
        store = cls(**streams, scale=float(meta["scale"]))
        try:
            store.validate()
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        return store


def _stream(log: EventLog, mask: np.ndarray, codes: np.ndarray) -> EventStream:
    counts = np.bincount(log.user_id[mask], minlength=log.num_users)
    return EventStream(
        user_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        item_id=log.item_id[mask],
        actions=log.actions[mask],
        surface=log.surface[mask],
        timestamp=log.timestamp[mask],
        content=codes[log.item_id[mask]],
    )
