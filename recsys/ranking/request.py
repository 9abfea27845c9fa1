"""One user's ranking request, and a batch of them that holds each user's sequence once.

A TransAct V2 request is one user at one time with N candidates. Its lifelong sequence is what the
:class:`~recsys.data.lifelong_store.LifelongStore` holds for that user before the request time:
the engaged records (S_LL ++ S_RT, time order) then the impressions without action (S_imp), each
token with its int8 content, action bits, surface, timestamp and item id.

Training and evaluation build one RankingBatch row per (request, candidate), each with its own
S_all (the *replicated* layout). :class:`RankRequestBatch` keeps the request level instead: every
request's sequence once, and its candidates as a slice of one candidate column::

    request r       0               1          2
    tokens          t0 .. t9999     (none)     t0 .. t310        token_offsets     [R + 1]
    candidates      c0 .. c499      c0         c0 .. c3          candidate_offsets [R + 1]

    request r's candidates are candidates[candidate_offsets[r] : candidate_offsets[r + 1]],
    its tokens are rows token_offsets[r] : token_offsets[r + 1] of every token column.

Every feature of a request predates it: a token at or after the request time is refused.

Shape letters: R requests, N candidates of the batch, S tokens of one sequence, T tokens of the
batch, C content dimension, A actions, H the most history ids per action (``max_history``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recsys.data.features import CONTEXT_FEATURES, FeatureSpec
from recsys.data.lifelong import LifelongConfig, engaged_view, sequence_windows
from recsys.data.lifelong_store import LifelongStore
from recsys.data.schema import ItemTable
from recsys.errors import DataError
from recsys.ops.int8_quantization import check_scale

TOKEN_COLUMNS = ("item_id", "actions", "surface", "timestamp", "content")


@dataclass
class UserSequence:
    """One user's lifelong tokens before one request, as the store holds them (time order per part).

    Args:
        item_id: ``[S]`` int64.
        actions: ``[S]`` int32 action bit masks (merged records: the OR of the item's actions so far).
        surface: ``[S]`` int64.
        timestamp: ``[S]`` int64 seconds.
        content: ``[S, C]`` int8 quantised content embeddings.
        num_engaged: the first ``num_engaged`` tokens are engaged records (S_LL ++ S_RT), the rest
            impressions without action (S_imp).
        scale: the int8 scale of ``content``.
    """

    item_id: np.ndarray
    actions: np.ndarray
    surface: np.ndarray
    timestamp: np.ndarray
    content: np.ndarray
    num_engaged: int
    scale: float

    def __post_init__(self) -> None:
        self.item_id = np.asarray(self.item_id, dtype=np.int64)
        self.actions = np.asarray(self.actions, dtype=np.int32)
        self.surface = np.asarray(self.surface, dtype=np.int64)
        self.timestamp = np.asarray(self.timestamp, dtype=np.int64)
        if not isinstance(self.content, np.ndarray) or self.content.dtype != np.int8 or self.content.ndim != 2:
            raise DataError(f"UserSequence.content must be an [S, C] int8 array (quantize_int8), got "
                            f"{getattr(self.content, 'dtype', type(self.content))} {np.shape(self.content)}")
        size = len(self.content)
        for name in ("item_id", "actions", "surface", "timestamp"):
            if getattr(self, name).shape != (size,):
                raise DataError(f"UserSequence.{name} must be [S={size}] (one per content row), "
                                f"got {getattr(self, name).shape}")
        if not 0 <= int(self.num_engaged) <= size:
            raise DataError(f"UserSequence.num_engaged={self.num_engaged} must lie in 0..{size} (the tokens)")
        self.num_engaged = int(self.num_engaged)
        self.scale = check_scale(self.scale)
        for part, times in (("engaged", self.timestamp[: self.num_engaged]),
                            ("impression", self.timestamp[self.num_engaged:])):
            if np.any(np.diff(times) < 0):
                raise DataError(f"UserSequence: the {part} tokens must be in time order (timestamps non-decreasing)")

    @property
    def num_tokens(self) -> int:
        """S, engaged and impression tokens together."""
        return int(len(self.content))

    @property
    def content_dim(self) -> int:
        return int(self.content.shape[1])

    @classmethod
    def empty(cls, content_dim: int, scale: float) -> "UserSequence":
        """A user without any event before the request."""
        return cls(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, content_dim), np.int8), 0, scale)

    @classmethod
    def from_store(cls, store: LifelongStore, user: int, request_time: int,
                   config: LifelongConfig = LifelongConfig()) -> "UserSequence":
        """What the store holds for ``user`` strictly before ``request_time``: the windows S_LL ++ S_RT
        of the engaged stream (merged records unless ``config.records == "events"``) and S_imp.

        Args:
            store: the lifelong store.
            user: the user id.
            request_time: seconds; only events strictly before it are read.
            config: the lengths of the windows (``lifelong_max``, ``realtime_max``, ``impression_max``).
        """
        history = store.user(user)
        query_user, query_time = np.zeros(1, dtype=np.int64), np.array([request_time], dtype=np.int64)
        engaged, first, count = engaged_view(history.engaged, query_user, query_time, config)
        w = sequence_windows(first, count, *history.impressions.count_before(query_user, query_time), config)
        engaged_rows = np.arange(w.lifelong_start[0], w.realtime_start[0] + w.realtime_len[0])  # S_LL ++ S_RT
        impression_rows = np.arange(w.impression_start[0], w.impression_start[0] + w.impression_len[0])
        columns = {name: np.concatenate([getattr(engaged, name)[engaged_rows],
                                         getattr(history.impressions, name)[impression_rows]])
                   for name in TOKEN_COLUMNS}
        return cls(**columns, num_engaged=len(engaged_rows), scale=history.scale)


@dataclass
class RankRequest:
    """One user's request: rank ``candidates`` for ``user_id`` at ``request_time``.

    Args:
        user_id: the user.
        request_time: seconds; every token of ``sequence`` must be older.
        sequence: the user's lifelong tokens (:meth:`UserSequence.from_store`).
        candidates: ``[N]`` int64 candidate item ids (N >= 1).
        surface: the surface the request comes from.
        context: ``[T]`` float32 request context (``CONTEXT_FEATURES``: hour, weekday, history length, ...).
        history: ``history_<action>`` -> ``[<= H]`` int64 item ids the user took that action on, most
            recent last (the DLRM part's pooled history bags); a missing key is an empty bag.
    """

    user_id: int
    request_time: int
    sequence: UserSequence
    candidates: np.ndarray
    surface: int = 0
    context: np.ndarray = field(default_factory=lambda: np.zeros(len(CONTEXT_FEATURES), dtype=np.float32))
    history: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.candidates = np.asarray(self.candidates)
        if self.candidates.ndim != 1 or self.candidates.size == 0:
            raise DataError(f"RankRequest.candidates must be a non-empty 1-D array of item ids, got shape "
                            f"{self.candidates.shape} for user {self.user_id}; send at least one candidate")
        if not np.issubdtype(self.candidates.dtype, np.integer):
            raise DataError(f"RankRequest.candidates must be integer item ids, got {self.candidates.dtype}")
        self.candidates = self.candidates.astype(np.int64)
        self.context = np.asarray(self.context, dtype=np.float32)
        if self.context.shape != (len(CONTEXT_FEATURES),) or not np.isfinite(self.context).all():
            raise DataError(f"RankRequest.context must be [{len(CONTEXT_FEATURES)}] finite floats "
                            f"({', '.join(CONTEXT_FEATURES)}), got shape {self.context.shape}")
        self.history = {key: np.asarray(ids, dtype=np.int64).reshape(-1) for key, ids in self.history.items()}
        late = self.sequence.timestamp >= self.request_time
        if late.any():
            raise DataError(
                f"RankRequest for user {self.user_id}: {int(late.sum())} sequence tokens are at or after the request "
                f"time {self.request_time} (latest {int(self.sequence.timestamp.max())}); every feature must predate "
                "its request: read the sequence with UserSequence.from_store(store, user, request_time)"
            )

    @property
    def num_candidates(self) -> int:
        return int(self.candidates.size)


def check_request(request: RankRequest, spec: FeatureSpec, items: ItemTable) -> None:
    """Raises :class:`DataError` when ``request`` names ids the model does not know."""
    who = f"RankRequest for user {request.user_id}"
    if not 0 <= request.user_id < spec.num_users:
        raise DataError(f"{who}: user_id is outside 0..{spec.num_users - 1}, the model's users")
    bad = request.candidates[(request.candidates < 0) | (request.candidates >= items.num_items)]
    if bad.size:
        raise DataError(f"{who}: unknown candidate ids {bad[:5].tolist()}; item ids lie in 0..{items.num_items - 1}")
    if not 0 <= request.surface < len(spec.surface_vocab):
        raise DataError(f"{who}: surface={request.surface} is outside 0..{len(spec.surface_vocab) - 1} "
                        f"({', '.join(spec.surface_vocab)})")
    unknown = sorted(set(request.history) - set(spec.history_features))
    if unknown:
        raise DataError(f"{who}: unknown history keys {unknown}; known: {spec.history_features}")
    for key, ids in request.history.items():
        if ids.size > spec.max_history or (ids.size and (ids.min() < 0 or ids.max() >= spec.num_items)):
            raise DataError(f"{who}: {key} must hold at most max_history={spec.max_history} item ids in "
                            f"0..{spec.num_items - 1}, got {ids.size} ids")
    sequence = request.sequence
    if sequence.content_dim != spec.content_dim or items.content_dim != spec.content_dim:
        raise DataError(f"{who}: the sequence's content has C={sequence.content_dim}, the items' "
                        f"{items.content_dim}, the model's {spec.content_dim}; use the store and items of its data")
    if sequence.num_tokens and (sequence.actions.min() < 0 or sequence.actions.max() >= 2**spec.num_actions):
        raise DataError(f"{who}: sequence action bits must lie in 0..{2**spec.num_actions - 1}")
    if sequence.num_tokens and (sequence.surface.min() < 0 or sequence.surface.max() >= len(spec.surface_vocab)):
        raise DataError(f"{who}: sequence surfaces must lie in 0..{len(spec.surface_vocab) - 1}")


@dataclass
class RankRequestBatch:
    """Requests with each sequence held once (module docstring): the request-level dedup.

    Args:
        user_id / request_time / surface: ``[R]`` int64.
        context: ``[R, T]`` float32.
        history: ``[R, A, H]`` int64 history ids (``spec.history_features`` order), zero padded.
        history_lengths: ``[R, A]`` int64 ids per bag.
        candidates: ``[N]`` int64 candidate item ids; ``candidate_offsets [R + 1]`` int64.
        token_offsets: ``[R + 1]`` int64; ``num_engaged`` ``[R]`` int64 engaged tokens of each request.
        actions / surfaces: ``[T]`` int32 token action bits and surfaces; ``content`` ``[T, C]`` int8.
        scale: the int8 scale of every request's content.
    """

    user_id: np.ndarray
    request_time: np.ndarray
    surface: np.ndarray
    context: np.ndarray
    history: np.ndarray
    history_lengths: np.ndarray
    candidates: np.ndarray
    candidate_offsets: np.ndarray
    token_offsets: np.ndarray
    num_engaged: np.ndarray
    actions: np.ndarray
    surfaces: np.ndarray
    content: np.ndarray
    scale: float

    @property
    def num_requests(self) -> int:
        return int(len(self.user_id))

    @property
    def num_candidates(self) -> int:
        return int(len(self.candidates))

    @property
    def num_tokens(self) -> int:
        return int(len(self.content))

    def candidate_request(self) -> np.ndarray:
        """``[N]`` int64 the request of each candidate."""
        return np.repeat(np.arange(self.num_requests), np.diff(self.candidate_offsets))

    def windows(self, config: LifelongConfig):
        """S_LL, S_RT and S_imp of every request as :class:`~recsys.data.lifelong.SequenceWindows`
        (``[R]`` each) of the batch's token rows, from the tail of each request's tokens."""
        starts, sizes = self.token_offsets[:-1], np.diff(self.token_offsets)
        return sequence_windows(starts, self.num_engaged, starts + self.num_engaged, sizes - self.num_engaged, config)

    @classmethod
    def build(cls, requests: list[RankRequest], spec: FeatureSpec, items: ItemTable) -> "RankRequestBatch":
        """The batch of ``requests`` (checked against the model's ``spec`` and the ``items``)."""
        if not requests:
            raise DataError("rank_requests needs at least one RankRequest, got none")
        for request in requests:
            if not isinstance(request, RankRequest):
                raise DataError(f"expected RankRequest objects, got {type(request).__name__}")
            check_request(request, spec, items)
        scales = {r.sequence.scale for r in requests}
        if len(scales) > 1:
            raise DataError(f"the requests' sequences have different int8 scales {sorted(scales)}; "
                            "read them from one store")
        sequences = [r.sequence for r in requests]
        return cls(
            user_id=np.array([r.user_id for r in requests], dtype=np.int64),
            request_time=np.array([r.request_time for r in requests], dtype=np.int64),
            surface=np.array([r.surface for r in requests], dtype=np.int64),
            context=np.stack([r.context for r in requests]),
            **_history_block(requests, spec),
            candidates=np.concatenate([r.candidates for r in requests]),
            candidate_offsets=_offsets([r.num_candidates for r in requests]),
            token_offsets=_offsets([s.num_tokens for s in sequences]),
            num_engaged=np.array([s.num_engaged for s in sequences], dtype=np.int64),
            actions=np.concatenate([s.actions for s in sequences]).astype(np.int32),
            surfaces=np.concatenate([s.surface for s in sequences]).astype(np.int32),
            content=np.concatenate([s.content for s in sequences]).reshape(-1, spec.content_dim),
            scale=scales.pop(),
        )


def _history_block(requests: list[RankRequest], spec: FeatureSpec) -> dict[str, np.ndarray]:
    """``history [R, A, H]`` zero padded and ``history_lengths [R, A]``."""
    keys = spec.history_features
    history = np.zeros((len(requests), len(keys), spec.max_history), dtype=np.int64)
    lengths = np.zeros((len(requests), len(keys)), dtype=np.int64)
    for r, request in enumerate(requests):
        for a, key in enumerate(keys):
            ids = request.history.get(key, np.zeros(0, dtype=np.int64))
            history[r, a, : ids.size] = ids
            lengths[r, a] = ids.size
    return {"history": history, "history_lengths": lengths}


def _offsets(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
