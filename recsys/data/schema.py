"""The one event schema every model in the zoo reads.

An :class:`EventLog` is a columnar table of user events, sorted by ``(user_id, timestamp)``
(ties keep their order in the source). Each event says that a user was shown or acted on an
item at a time, on a surface, with zero or more actions from a vocabulary:

- ``impression`` is True when the system showed the item (an impression may carry no action:
  a negative example); False for organic events that no impression logged.
- ``actions`` is a multi-hot bit mask over ``action_vocab`` (bit ``a`` set = action ``a`` taken).

The item side is an :class:`ItemTable`: a dense content embedding per item (32-d by default;
the role PinSage plays in the papers) and categorical attributes.

Ids are contiguous: users ``0..num_users-1``, items ``0..num_items-1``. Readers keep the raw ids
of the source in ``raw_user_ids`` / ``raw_item_ids`` (index = our id).

Shape letters: N events, I items, A actions, C content-embedding dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from recsys.errors import DataError

DEFAULT_ACTIONS: tuple[str, ...] = ("click", "save", "hide", "long_view")
DEFAULT_SURFACES: tuple[str, ...] = ("home", "search", "related")
DEFAULT_CONTENT_DIM = 32
MAX_ACTIONS = 31  # actions are bits of an int32 mask


def action_mask(vocab: Sequence[str], names: Sequence[str]) -> int:
    """Bit mask of ``names`` in ``vocab``: ``action_mask(("click", "save"), ["save"]) == 0b10``."""
    mask = 0
    for name in names:
        if name not in vocab:
            raise DataError(f"unknown action {name!r}; the vocabulary is {list(vocab)}")
        mask |= 1 << vocab.index(name)
    return mask


def actions_to_multi_hot(actions: np.ndarray, num_actions: int) -> np.ndarray:
    """``[N]`` int32 bit masks -> ``[N, A]`` bool multi-hot."""
    bits = np.arange(num_actions, dtype=np.int32)
    return ((actions[:, None].astype(np.int64) >> bits) & 1).astype(bool)


MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second dates can print

@dataclass
class ItemTable:
    """Item-side features.

    Args:
        content_embedding: ``[I, C]`` float32 dense content embedding per item.
        attributes: name -> ``[I]`` int64 categorical attribute (values ``0..cardinality-1``).
        attribute_cardinality: name -> number of values of that attribute.
    """

    content_embedding: np.ndarray
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    attribute_cardinality: dict[str, int] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return int(self.content_embedding.shape[0])

    @property
    def content_dim(self) -> int:
        return int(self.content_embedding.shape[1])

    def validate(self) -> None:
        emb = self.content_embedding
        if emb.ndim != 2 or emb.dtype != np.float32:
            raise DataError(f"ItemTable.content_embedding must be float32 [I, C], got {emb.dtype} {emb.shape}")
        if not np.isfinite(emb).all():
            raise DataError("ItemTable.content_embedding holds NaN or inf values; clean the item features")
        for name, values in self.attributes.items():
            card = self.attribute_cardinality.get(name)
            if card is None:
                raise DataError(f"item attribute {name!r} has no entry in attribute_cardinality")
            if values.shape != (self.num_items,):
                raise DataError(f"item attribute {name!r} must have shape [{self.num_items}], got {values.shape}")
            if len(values) and (values.min() < 0 or values.max() >= card):
                raise DataError(f"item attribute {name!r} has values outside 0..{card - 1}")


@dataclass
class EventLog:
    """Columnar event log sorted by ``(user_id, timestamp)``.

    Args:
        user_id: ``[N]`` int64, ``0..num_users-1``.
        item_id: ``[N]`` int64, ``0..num_items-1``.
        timestamp: ``[N]`` int64 seconds since the epoch, in ``0..MAX_TIMESTAMP`` (year 9999).
        actions: ``[N]`` int32 multi-hot bit mask over ``action_vocab``.
        surface: ``[N]`` int64 index into ``surface_vocab``.
        impression: ``[N]`` bool, True when the item was shown by the system.
        num_users / num_items: id space sizes (tables are sized from these).
        action_vocab / surface_vocab: names of the action bits and surfaces.
        items: item-side features, or None when the source has none.
        raw_user_ids / raw_item_ids: source ids, index = our id (optional).
        rating: ``[N]`` float32 explicit rating where the source has one (optional).
        request_id: ``[N]`` int64: events shown together in one request (one feed page) share
            an id (optional; ranking metrics such as HIT@k group candidates by it).

    Example::

        log = EventLog.from_arrays(user_id=[0, 0, 1], item_id=[3, 1, 2], timestamp=[5, 9, 1],
                                   actions=[1, 0, 3], num_items=4)
        log.user_offsets()  # array([0, 2, 3])
    """

    user_id: np.ndarray
    item_id: np.ndarray
    timestamp: np.ndarray
    actions: np.ndarray
    surface: np.ndarray
    impression: np.ndarray
    num_users: int
    num_items: int
    action_vocab: tuple[str, ...] = DEFAULT_ACTIONS
    surface_vocab: tuple[str, ...] = DEFAULT_SURFACES
    items: ItemTable | None = None
    raw_user_ids: np.ndarray | None = None
    raw_item_ids: np.ndarray | None = None
    rating: np.ndarray | None = None
    request_id: np.ndarray | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_arrays(
        cls,
        user_id,
        item_id,
        timestamp,
        actions=None,
        surface=None,
        impression=None,
        num_users: int | None = None,
        num_items: int | None = None,
        sort: bool = True,
        **kwargs,
    ) -> "EventLog":
        """Builds a validated log from array-likes; sorts by (user, time) with a stable sort."""
        user_id = np.asarray(user_id, dtype=np.int64)
        n = len(user_id)
        for name, dtype in (("rating", np.float32), ("request_id", np.int64)):
            if kwargs.get(name) is not None:
                kwargs[name] = np.asarray(kwargs[name], dtype=dtype)
        log = cls(
            user_id=user_id,
            item_id=np.asarray(item_id, dtype=np.int64),
            timestamp=np.asarray(timestamp, dtype=np.int64),
            actions=np.ones(n, np.int32) if actions is None else np.asarray(actions, dtype=np.int32),
            surface=np.zeros(n, np.int64) if surface is None else np.asarray(surface, dtype=np.int64),
            impression=np.ones(n, bool) if impression is None else np.asarray(impression, dtype=bool),
            num_users=int(num_users if num_users is not None else (user_id.max() + 1 if n else 0)),
            num_items=int(num_items if num_items is not None else (np.max(item_id) + 1 if n else 0)),
            **kwargs,
        )
        if sort:
            log = log.sorted()
        log.validate()
        return log

    def __len__(self) -> int:
        return int(self.user_id.shape[0])

    _COLUMNS = ("user_id", "item_id", "timestamp", "actions", "surface", "impression")
    _OPTIONAL_COLUMNS = ("rating", "request_id")

    def take(self, index: np.ndarray) -> "EventLog":
        """A new log with the events at ``index`` (int indices or a bool mask), same vocabularies."""
        cols = {c: getattr(self, c)[index] for c in self._COLUMNS}
        optional = {c: getattr(self, c)[index] for c in self._OPTIONAL_COLUMNS if getattr(self, c) is not None}
        return EventLog(
            **cols,
            num_users=self.num_users,
            num_items=self.num_items,
            action_vocab=self.action_vocab,
            surface_vocab=self.surface_vocab,
            items=self.items,
            raw_user_ids=self.raw_user_ids,
            raw_item_ids=self.raw_item_ids,
            **optional,
        )

    @classmethod
    def concatenate(cls, logs: Sequence["EventLog"]) -> "EventLog":
        """Joins logs of disjoint, consecutive user ranges that share id spaces, vocabularies and
        the item table (e.g. the shards of a generator); the result stays sorted."""
        if not logs:
            raise DataError("EventLog.concatenate needs at least one log")
        first = logs[0]
        columns = {c: np.concatenate([getattr(log, c) for log in logs]) for c in cls._COLUMNS}
        optional = {
            c: np.concatenate([getattr(log, c) for log in logs])
            for c in cls._OPTIONAL_COLUMNS
            if all(getattr(log, c) is not None for log in logs)
        }
        return replace(first, **columns, **optional)

    def sorted(self) -> "EventLog":
        """Stable sort by (user_id, timestamp)."""
        order = np.lexsort((self.timestamp, self.user_id))
        if len(order) and np.all(order[1:] > order[:-1]):
            return self
        return self.take(order)

    # ---------------------------------------------------------------- views
    @property
    def num_actions(self) -> int:
        return len(self.action_vocab)

    def action_matrix(self) -> np.ndarray:
        """``[N, A]`` bool multi-hot of the actions."""
        return actions_to_multi_hot(self.actions, self.num_actions)

    def engaged(self) -> np.ndarray:
        """``[N]`` bool: the event carries at least one action."""
        return self.actions != 0

    def user_offsets(self) -> np.ndarray:
        """``[num_users + 1]`` int64 offsets: user u's events are ``offsets[u]:offsets[u+1]``."""
        counts = np.bincount(self.user_id, minlength=self.num_users)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    # ---------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raises :class:`DataError` naming the field and the fix on any inconsistency."""
        n = len(self)
        for c in self._COLUMNS:
            arr = getattr(self, c)
            if arr.ndim != 1 or arr.shape[0] != n:
                raise DataError(f"EventLog.{c} must be 1-D with {n} entries, got shape {arr.shape}")
        for c in self._OPTIONAL_COLUMNS:
            arr = getattr(self, c)
            if arr is not None and arr.shape != (n,):
                raise DataError(f"EventLog.{c} must have shape [{n}], got {arr.shape}")
        if len(self.action_vocab) > MAX_ACTIONS:
            raise DataError(f"at most {MAX_ACTIONS} actions fit in the mask, got {len(self.action_vocab)}")
        _check_range("user_id", self.user_id, self.num_users, "num_users")
        _check_range("item_id", self.item_id, self.num_items, "num_items")
        _check_range("surface", self.surface, len(self.surface_vocab), "len(surface_vocab)")
        if n and self.timestamp.min() < 0:
            bad = int(np.argmin(self.timestamp))
            raise DataError(f"timestamp of event {bad} is negative ({self.timestamp[bad]}); timestamps are seconds since the epoch")
        if n and self.timestamp.max() > MAX_TIMESTAMP:
            bad = int(np.argmax(self.timestamp))
            raise DataError(f"timestamp of event {bad} is {self.timestamp[bad]} s, after the year 9999 (at most "
                            f"{MAX_TIMESTAMP}); timestamps are seconds since the epoch: check the unit (ms? us?)")
        if n and (self.actions.min() < 0 or self.actions.max() >= (1 << self.num_actions)):
            raise DataError(f"actions hold bits beyond the {self.num_actions}-action vocabulary {list(self.action_vocab)}")
        if n > 1:
            order_ok = (self.user_id[1:] > self.user_id[:-1]) | (
                (self.user_id[1:] == self.user_id[:-1]) & (self.timestamp[1:] >= self.timestamp[:-1])
            )
            if not order_ok.all():
                raise DataError("EventLog must be sorted by (user_id, timestamp); call .sorted()")
        if self.items is not None:
            self.items.validate()
            if self.items.num_items != self.num_items:
                raise DataError(f"ItemTable has {self.items.num_items} items but the log has num_items={self.num_items}")


def _check_range(name: str, values: np.ndarray, size: int, size_name: str) -> None:
    if len(values) == 0:
        return
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= size:
        bad = int(np.argmax((values < 0) | (values >= size)))
        raise DataError(
            f"{name} of event {bad} is {int(values[bad])}, outside 0..{size - 1} ({size_name}={size}); "
            f"remap ids to a contiguous range or raise {size_name}"
        )
