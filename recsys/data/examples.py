"""Ranking examples: the rows a data set yields, and the batches built from them.

A row is one candidate item for one user at the time of one *target* event of the log. Each
target event gives one row (its own item, labelled with its actions) plus, for logs that hold no
logged negatives (MovieLens: every event is a rating), ``negatives_per_target`` sampled rows: an
item the user never had an event with anywhere in the log, all labels 0, same user, time, surface,
history and request as the target::

    target event        rows (candidate, labels, request)
    e17: u3 i8 click    i8 [1,0,0,0] r0 | i40 [0,0,0,0] r0 | i2 [0,0,0,0] r0     (2 negatives)
    e21: u3 i5 save     i5 [0,1,0,0] r1 | ...

Everything a row knows predates its *request*. A row's request time is the earliest timestamp of
the events of its request (the log's ``request_id``, per user; a row of a log without request ids
is a request of its own, at its target's timestamp). The row's history is the user's engaged
events (``actions != 0``) with a timestamp strictly before the request time, and every time
feature (hour, weekday, seconds since the last engagement) and ``RankingBatch.timestamp`` is the
request time: an earlier slot of the same feed page, an event tied with the request's start, or
the slot's own later impression time never leaks into a row::

    user 3, request r1 at t=100:  e4 t=90 click | e5 t=100 (r1 slot 0) click | e6 t=104 (r1 slot 1)
    row of e6: history [e4], time features of t=100 (not e5, which the page showed at the same time)

Rows live in numpy arrays; :meth:`RankingExamples.collate` turns any set of them into a
:class:`~recsys.data.batch.RankingBatch` with vectorised numpy (searchsorted on per-action event
positions, no loop over history events), laid out exactly as the :class:`FeatureSpec` says.

Shape letters: R rows, B rows of a batch, A actions, C content dimension, T context features,
H ``spec.max_history``, S ``spec.max_sequence``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsys.data.batch import RankingBatch
from recsys.data.collate import kjt_from_jagged
from recsys.data.features import CONTEXT_FEATURES, FeatureSpec
from recsys.data.schema import EventLog
from recsys.data.request_time import request_start_times
from recsys.errors import DataError

SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86400
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0, as datetime.weekday())


@dataclass(repr=False)
class RankingExamples:
    """The rows of a ranking data set over one log. Build with :meth:`build`.

    Args:
        log: the event log the rows point into.
        spec: feature names and table sizes of the batches.
        event: ``[R]`` int64 index of the row's target event in ``log`` (a negative's target).
        item: ``[R]`` int64 candidate item.
        label_bits: ``[R]`` int32 action bit mask of the candidate (0 for sampled negatives).
        request_id: ``[R]`` int64 request of the row.
        sampled_negative: ``[R]`` bool, True for rows drawn as negatives.
        user_weights: ``[num_users]`` float32 loss weight per user.
        request_time: ``[R]`` int64 start of the row's request (see the module docstring); None =
            computed from the log.
        surface: ``[R]`` int64 surface id of the row's request; None = its target event's surface
            (a served request names its own surface: :mod:`recsys.serve.features`).
    """

    log: EventLog
    spec: FeatureSpec
    event: np.ndarray
    item: np.ndarray
    label_bits: np.ndarray
    request_id: np.ndarray
    sampled_negative: np.ndarray
    user_weights: np.ndarray
    request_time: np.ndarray | None = None
    surface: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.request_time is None:
            self.request_time = request_start_times(self.log, self.event)
        # History ends at the user's first event at or after the request time: log[start:end].
        self._history_end = first_position_at_or_after(self.log, self.log.user_id[self.event], self.request_time)
        # Per-user event ranges and the positions of the events of each kind, so a row's history
        # is a searchsorted away: user u's events are log[offsets[u]:offsets[u + 1]].
        self._user_offsets = self.log.user_offsets()
        self._engaged_events = np.flatnonzero(self.log.actions != 0)
        self._action_events = [
            np.flatnonzero(self.log.actions & (1 << a)) for a in range(self.spec.num_actions)
        ]

    # ---------------------------------------------------------------- construction
    @classmethod
    def build(
        cls,
        log: EventLog,
        targets,
        spec: FeatureSpec,
        negatives_per_target: int = 0,
        seed: int = 0,
        user_weights=None,
        negative_sampler=None,
    ) -> "RankingExamples":
        """Rows for the target events of ``log``, with sampled negatives.

        Args:
            log: a validated, sorted event log.
            targets: ``[T]`` int64 indices of the target events in ``log``.
            spec: the feature spec of the batches (``FeatureSpec.from_log(log)`` fits).
            negatives_per_target: sampled negative rows per target, drawn uniformly from the
                items the user never had an event with; 0 for logs with logged negatives.
            seed: seed of the negative sampling (same seed -> same rows).
            user_weights: ``[num_users]`` non-negative loss weight per user; None = all ones.
            negative_sampler: ``(log, users [M], rng) -> items [M]``, the negatives' items; None =
                :func:`sample_unseen_items` (uniform over the items each user never had an event with).

        Returns:
            ``T * (1 + negatives_per_target)`` rows: each target followed by its negatives.
            ``request_id`` is the log's request id when it has one, else the target's ordinal;
            ``request_time`` the request's start (its earliest event, or the target's time).
        """
        log.validate()
        _check_spec_matches_log(spec, log)
        targets = _as_index_array(targets, len(log), "targets", "event indices into the log")
        per_target = _as_count(negatives_per_target)
        weights = _as_user_weights(user_weights, log.num_users)

        is_negative = np.tile(np.arange(1 + per_target) > 0, len(targets))  # [R]
        event = np.repeat(targets, 1 + per_target)  # [R]
        item = log.item_id[event].copy()
        sampler = sample_unseen_items if negative_sampler is None else negative_sampler
        item[is_negative] = sampler(log, log.user_id[event[is_negative]], np.random.default_rng(seed))
        label_bits = np.where(is_negative, 0, log.actions[event]).astype(np.int32)
        if log.request_id is not None:
            request_id = log.request_id[event].astype(np.int64)
        else:
            request_id = np.repeat(np.arange(len(targets), dtype=np.int64), 1 + per_target)

        examples = cls(log, spec, event, item, label_bits, request_id, is_negative, weights)
        examples._check_row_ids()
        return examples

    def __len__(self) -> int:
        return int(self.event.shape[0])

    def __repr__(self) -> str:
        return (f"RankingExamples(rows={len(self)}, sampled_negatives={int(self.sampled_negative.sum())}, "
                f"events={len(self.log)}, sparse_features={self.spec.sparse_features})")

    # ---------------------------------------------------------------- batches
    def collate(self, row_indices) -> RankingBatch:
        """The batch of the rows ``row_indices``, in that order.

        Args:
            row_indices: ``[B]`` ints in ``0..len(self)-1`` (list, numpy array or tensor).

        Returns:
            RankingBatch with ``sparse_features`` keyed by ``spec.sparse_features``,
            ``dense_features [B, C + T]``, ``labels [B, A]``, ``weights [B]``, ``timestamp [B]``
            (the request time), and ``sequence_features`` keyed by ``spec.sequence_features``
            (None when S == 0). Every feature holds only events before the request time.
        """
        rows = _as_index_array(row_indices, len(self), "row_indices", "row numbers of the examples")
        if len(rows) == 0:
            raise DataError("row_indices is empty; a batch needs at least one row")
        log = self.log
        event, item = self.event[rows], self.item[rows]  # [B], [B]
        user = log.user_id[event]  # [B]
        start = self._user_offsets[user]  # [B] first event of the user; history is log[start:end]
        end = self._history_end[rows]  # [B] first event of the user at or after the request time
        time = self.request_time[rows]  # [B]

        surface = log.surface[event] if self.surface is None else self.surface[rows]  # [B]
        engaged, num_engaged = _recent_events(self._engaged_events, start, end, 1)
        return RankingBatch(
            sparse_features=kjt_from_jagged(self._sparse(surface, item, user, start, end)),
            dense_features=torch.from_numpy(self._dense(item, time, engaged, num_engaged)),
            labels=torch.from_numpy(_multi_hot(self.label_bits[rows], self.spec.num_actions)),
            weights=torch.from_numpy(self.user_weights[user]),
            user_id=torch.from_numpy(user),
            item_id=torch.from_numpy(item),
            request_id=torch.from_numpy(self.request_id[rows]),
            timestamp=torch.from_numpy(time.copy()),
            **self._sequence(start, end),
        )

    def _sparse(self, surface, item, user, start, end) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """KJT key -> (values, lengths [B]) in ``spec.sparse_features`` order."""
        log, spec = self.log, self.spec
        one = np.ones(len(item), dtype=np.int32)
        features = {"user_id": (user, one), "item_id": (item, one), "surface": (surface, one)}
        for name in spec.item_attributes:
            features[f"item_{name}"] = (log.items.attributes[name][item], one)
        for key, positions in zip(spec.history_features, self._action_events):
            recent, _ = _recent_events(positions, start, end, spec.max_history)
            features[key] = (log.item_id[recent.values], recent.lengths)
            _check_ids(key, features[key][0], spec.num_items, "num_items")
        return features

    def _dense(self, item, timestamp, last_engaged, num_engaged) -> np.ndarray:
        """``[B, C + T]`` float32: candidate content embedding, then ``CONTEXT_FEATURES``."""
        if self.spec.content_dim:
            content = self.log.items.content_embedding[item]  # [B, C]
        else:
            content = np.zeros((len(item), 0), dtype=np.float32)
        last_time = self.log.timestamp[last_engaged.values]  # [B'] rows with >= 1 engaged event
        since = np.zeros(len(item), dtype=np.float64)
        since[last_engaged.lengths > 0] = timestamp[last_engaged.lengths > 0] - last_time
        context = context_features(timestamp, num_engaged, since)  # [B, T]
        return np.concatenate([content, context], axis=1).astype(np.float32)

    def _sequence(self, start, end) -> dict:
        """``sequence_features``: KJT of the last S engaged history events (``seq_*`` keys, equal
        lengths), and ``sequence_content``: ``[S_T, C]`` their content embeddings; empty without S."""
        if self.spec.max_sequence <= 0:
            return {}
        log = self.log
        recent, _ = _recent_events(self._engaged_events, start, end, self.spec.max_sequence)
        pos, lengths = recent.values, recent.lengths
        _check_ids("seq_item_id", log.item_id[pos], self.spec.num_items, "num_items")
        _check_ids("seq_surface", log.surface[pos], len(self.spec.surface_vocab), "len(surface_vocab)")
        columns = {"seq_item_id": log.item_id, "seq_actions": log.actions, "seq_surface": log.surface,
                   "seq_timestamp": log.timestamp}
        content = None
        if self.spec.content_dim:
            content = torch.from_numpy(np.ascontiguousarray(log.items.content_embedding[log.item_id[pos]]))
        return {
            "sequence_features": kjt_from_jagged({key: (column[pos], lengths) for key, column in columns.items()}),
            "sequence_content": content,
        }

    def _check_row_ids(self) -> None:
        """Every row-level id fits its table in the spec."""
        spec, log = self.spec, self.log
        _check_ids("user_id", log.user_id[self.event], spec.num_users, "num_users")
        _check_ids("item_id", self.item, spec.num_items, "num_items")
        _check_ids("surface", log.surface[self.event], len(spec.surface_vocab), "len(surface_vocab)")
        for name, size in spec.item_attributes.items():
            _check_ids(f"item_{name}", log.items.attributes[name][self.item], size, f"item_attributes[{name!r}]")


# -------------------------------------------------------------------- vectorised pieces
@dataclass
class _Jagged:
    values: np.ndarray  # [sum(lengths)]
    lengths: np.ndarray  # [B] int32


def _recent_events(positions: np.ndarray, start: np.ndarray, end: np.ndarray, limit: int):
    """Per row b, the last ``limit`` entries of sorted ``positions`` inside ``[start[b], end[b])``.

    Returns:
        (_Jagged of log positions, oldest first, lengths ``[B]``; ``[B]`` int64 count of all
        entries in the range before the limit).
    """
    lo = np.searchsorted(positions, start, side="left")  # [B]
    hi = np.searchsorted(positions, end, side="left")  # [B]
    count = hi - lo
    lengths = np.minimum(count, max(limit, 0))
    row_offsets = np.cumsum(lengths) - lengths  # [B] where each row starts in the flat output
    flat = np.repeat(hi - lengths - row_offsets, lengths) + np.arange(int(lengths.sum()))
    return _Jagged(positions[flat], lengths.astype(np.int32)), count


def first_position_at_or_after(log: EventLog, user: np.ndarray, time: np.ndarray) -> np.ndarray:
    """``[R]`` log position of ``user``'s first event with timestamp ``>= time`` (one past the user's
    last event when none): the user's events strictly before ``time`` are ``log[offsets[user]:that]``.

    The log is sorted by (user, timestamp), so ``(user, dense rank of timestamp)`` is a sorted key.
    """
    times = np.unique(log.timestamp)  # [M] sorted distinct timestamps
    width = len(times) + 1
    keys = log.user_id * width + np.searchsorted(times, log.timestamp)  # [N] non-decreasing
    query = np.asarray(user, dtype=np.int64) * width + np.searchsorted(times, time, side="left")  # [R]
    return np.searchsorted(keys, query, side="left").astype(np.int64)


def context_features(timestamp: np.ndarray, history_length: np.ndarray, seconds_since_last: np.ndarray) -> np.ndarray:
    """``[B, T]`` float32 ``CONTEXT_FEATURES`` of candidates.

    Args:
        timestamp: ``[B]`` request time of the candidates, seconds since the epoch (UTC).
        history_length: ``[B]`` number of engaged history events.
        seconds_since_last: ``[B]`` seconds since the last engaged history event (0 if none).
    """
    hour = (timestamp // SECONDS_PER_HOUR) % 24
    weekday = (timestamp // SECONDS_PER_DAY + EPOCH_WEEKDAY) % 7
    columns = {
        "hour_sin": np.sin(2 * np.pi * hour / 24),
        "hour_cos": np.cos(2 * np.pi * hour / 24),
        "weekday_sin": np.sin(2 * np.pi * weekday / 7),
        "weekday_cos": np.cos(2 * np.pi * weekday / 7),
        "log1p_history_length": np.log1p(history_length.astype(np.float64)),
        "log1p_seconds_since_last_engagement": np.log1p(np.asarray(seconds_since_last, dtype=np.float64)),
    }
    return np.stack([columns[name] for name in CONTEXT_FEATURES], axis=1).astype(np.float32)


def _multi_hot(bits: np.ndarray, num_actions: int) -> np.ndarray:
    """``[B]`` int32 bit masks -> ``[B, A]`` float32 multi-hot."""
    return ((bits[:, None] >> np.arange(num_actions, dtype=np.int32)) & 1).astype(np.float32)


def sample_unseen_items(log: EventLog, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of ``users``, uniform over the items that user has no event with.

    Exact, without rejection: with the user's seen items sorted as ``S``, the r-th unseen item is
    ``r + #{k : S[k] - k <= r}`` (``S[k] - k`` counts the unseen items below ``S[k]``).

    Args:
        log: the event log that defines what each user has seen.
        users: ``[M]`` int64 user ids.
        rng: numpy random generator.

    Returns:
        ``[M]`` int64 item ids.
    """
    num_items = log.num_items
    seen = np.unique(log.user_id * num_items + log.item_id)  # [P] sorted (user, item) pairs
    seen_user, seen_item = seen // num_items, seen % num_items
    seen_count = np.bincount(seen_user, minlength=log.num_users)  # [U]
    seen_start = np.cumsum(seen_count) - seen_count  # [U]
    unseen_count = num_items - seen_count[users]  # [M]
    if len(users) and unseen_count.min() <= 0:
        bad = int(users[np.argmin(unseen_count)])
        raise DataError(
            f"user {bad} has events with all {num_items} items, so no negative can be sampled for it; "
            "use negatives_per_target=0 or drop that user's targets"
        )
    rank = rng.integers(0, np.maximum(unseen_count, 1))  # [M] r-th unseen item of the user
    unseen_below = seen_item - (np.arange(len(seen)) - seen_start[seen_user])  # [P] non-decreasing per user
    keys = seen_user * (num_items + 1) + unseen_below  # [P] globally sorted
    seen_before = np.searchsorted(keys, users * (num_items + 1) + rank, side="right") - seen_start[users]
    return (rank + seen_before).astype(np.int64)


# -------------------------------------------------------------------- input checks
def _check_spec_matches_log(spec: FeatureSpec, log: EventLog) -> None:
    if tuple(spec.action_vocab) != tuple(log.action_vocab):
        raise DataError(
            f"FeatureSpec.action_vocab {list(spec.action_vocab)} differs from the log's {list(log.action_vocab)}; "
            "build the spec with FeatureSpec.from_log(log)"
        )
    log_dim = log.items.content_dim if log.items is not None else 0
    if spec.content_dim != log_dim:
        raise DataError(
            f"FeatureSpec.content_dim is {spec.content_dim} but the log's items have {log_dim}-d content "
            "embeddings; set content_dim to match (FeatureSpec.from_log(log) does)"
        )
    have = set(log.items.attributes) if log.items is not None else set()
    missing = [name for name in spec.item_attributes if name not in have]
    if missing:
        raise DataError(
            f"FeatureSpec.item_attributes names {missing}, which the log's ItemTable lacks (it has {sorted(have)}); "
            "remove them from the spec or add them to log.items"
        )


def _check_ids(feature: str, values: np.ndarray, size: int, size_name: str) -> None:
    if len(values) == 0:
        return
    if values.min() < 0 or values.max() >= size:
        bad = int(values[(values < 0) | (values >= size)][0])
        raise DataError(
            f"feature {feature!r} has id {bad} but its table has {size} rows (FeatureSpec {size_name}={size}); "
            "build the spec from this log with FeatureSpec.from_log(log) or raise the size"
        )


def _as_index_array(indices, size: int, name: str, meaning: str) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.numpy()
    array = np.asarray(indices)
    if array.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of {meaning}, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{name} must hold integers ({meaning}), got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= size):
        bad = int(array[(array < 0) | (array >= size)][0])
        raise DataError(f"{name} holds {bad}, outside 0..{size - 1}; they must be {meaning}")
    return array


def _as_count(negatives_per_target) -> int:
    if isinstance(negatives_per_target, bool) or not isinstance(negatives_per_target, (int, np.integer)) \
            or negatives_per_target < 0:
        raise DataError(f"negatives_per_target must be an integer >= 0, got {negatives_per_target!r}")
    return int(negatives_per_target)


def _as_user_weights(user_weights, num_users: int) -> np.ndarray:
    if user_weights is None:
        return np.ones(num_users, dtype=np.float32)
    try:
        weights = np.asarray(user_weights, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError("user_weights must be an array of numbers, one per user") from None
    if weights.shape != (num_users,):
        raise DataError(f"user_weights must have shape [{num_users}] (one per user), got {weights.shape}")
    if not np.isfinite(weights).all() or weights.min(initial=0) < 0:
        raise DataError("user_weights must be finite and non-negative")
    return weights
