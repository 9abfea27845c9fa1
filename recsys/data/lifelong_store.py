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
    merged_actions [E]      int32: OR of the actions of the user's events with this item up to this one
    next_time     [E]       int64: time of the user's next event with this item (INT64_MAX: none)

TransAct V2 stores repeated interactions with one item as one *record*: the action bits of all
of them OR-ed, the latest time. As of a request time t, the user's record of item i is its
latest event before t, with ``merged_actions``: the rows with ``timestamp < t <= next_time``
(exactly one per item the user engaged with before t; :meth:`EventStream.visible_before`).
So merging needs no second copy of the stream and never lets a record show an event at or after
t (a store-level merge over the whole log would).
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
FORMAT_VERSION = 2  # 2: merged_actions and next_time (TransAct V2's merged records)
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
        merged_actions: ``[E]`` int32 OR of ``actions`` over the user's rows of this item up to this one.
        next_time: ``[E]`` int64 time of the user's next row of this item (INT64_MAX when none).
    """

    user_offsets: np.ndarray
    item_id: np.ndarray
    actions: np.ndarray
    surface: np.ndarray
    timestamp: np.ndarray
    content: np.ndarray
    merged_actions: np.ndarray
    next_time: np.ndarray

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

    def visible_before(self, users: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The merged records as of each query: per (user, item) the latest row before the time.

        Args:
            users / times: ``[n]`` int64 queries.

        Returns:
            ``(rows [M], offsets [n + 1], count [n])``: query j's records are stream rows
            ``rows[offsets[j] : offsets[j + 1]]`` (time order), ``count[j]`` of them.
        """
        first, count = self.count_before(users, times)
        query = np.repeat(np.arange(len(first)), count)  # [sum(count)]
        rows = np.repeat(first - (np.cumsum(count) - count), count) + np.arange(int(count.sum()))
        visible = self.next_time[rows] >= np.asarray(times, dtype=np.int64)[query]
        rows = rows[visible]
        kept = np.bincount(query[visible], minlength=len(first)).astype(np.int64)
        return rows, np.concatenate([[0], np.cumsum(kept)]).astype(np.int64), kept

    def count_records_before(self, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        """``[n]`` int64 merged records per query (distinct items before the time): the rows before
        it less those superseded before it (``next_time < time``), without listing them."""
        users = np.asarray(users, dtype=np.int64)
        times = np.asarray(times, dtype=np.int64)
        first, count = self.count_before(users, times)
        if len(self) == 0:
            return count
        origin, span = self._time_range()
        keys = self._user_next_time_keys()
        queries = users * span + np.clip(times - origin, 0, span - 1)
        return count - (np.searchsorted(keys, queries, side="left") - first)

    def _user_next_time_keys(self) -> np.ndarray:
        """``[E]`` int64 sorted ``user * span + clip(next_time - origin)`` (each user's next times, sorted)."""
        cached = getattr(self, "_next_keys", None)
        if cached is not None:
            return cached
        origin, span = self._time_range()
        user = np.repeat(np.arange(self.num_users, dtype=np.int64), np.diff(self.user_offsets))
        self._user_time_keys()  # checks the key range
        next_time = np.minimum(self.next_time, origin + span - 1)  # INT64_MAX (never superseded) -> the last key
        self._next_keys = np.sort(user * span + (next_time - origin))
        return self._next_keys

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


_COLUMNS = ("item_id", "actions", "surface", "timestamp", "content", "merged_actions", "next_time")


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
    merged_actions, next_time = _merge_repeats(log.user_id[mask], log.item_id[mask], log.timestamp[mask],
                                               log.actions[mask])
    return EventStream(
        user_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        item_id=log.item_id[mask],
        actions=log.actions[mask],
        surface=log.surface[mask],
        timestamp=log.timestamp[mask],
        content=codes[log.item_id[mask]],
        merged_actions=merged_actions,
        next_time=next_time,
    )


def _merge_repeats(user, item, timestamp, actions) -> tuple[np.ndarray, np.ndarray]:
    """``[E]`` cumulative OR of the actions of each (user, item) in stream order, and ``[E]`` the
    time of the next row of the same (user, item) (INT64_MAX for its last row)."""
    order = np.lexsort((np.arange(len(item)), item, user))  # rows of one (user, item) together, in stream order
    u, i = user[order], item[order]
    start = np.ones(len(order), dtype=bool)
    start[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])  # [E] first row of its (user, item) group
    group = np.cumsum(start) - 1
    merged = np.zeros(len(order), dtype=np.int32)
    bits = actions[order].astype(np.int64)
    for b in range(31):  # OR within each group up to the row: a running max of every bit
        bit = (bits >> b) & 1
        if bit.any():
            merged |= (_group_cummax(bit, group) << b).astype(np.int32)
    following = np.full(len(order), np.iinfo(np.int64).max, dtype=np.int64)
    same = ~start[1:]  # row k + 1 continues row k's group
    following[:-1][same] = timestamp[order][1:][same]
    out_merged, out_next = np.empty_like(merged), np.empty_like(following)
    out_merged[order], out_next[order] = merged, following
    return out_merged, out_next


def _group_cummax(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Running maximum of 0/1 ``values`` restarting at every group (groups consecutive, increasing)."""
    offset = group * 2  # larger for every later group: the global running max never crosses a group
    return np.maximum.accumulate(values + offset) - offset
