"""TransAct V2's selected sequence S_all: built per request, stored per training row, collated.

For a request (user, start time t, candidates), the user's sequences as of strictly before t are windows
of the :class:`~recsys.data.lifelong_store.LifelongStore` streams (each in time order)::

    engaged events before t:   [ ........ S_LL (<= 10^4) ........ | .... S_RT (last 100) .... ]
    impressions before t:                                        [ .. S_imp (last 100) .. ]

- S_RT, the realtime sequence: the user's last ``realtime_max`` engaged events (100, as the
  realtime sequence of TransAct V1); a count, not a time window, so every user has one of the
  same size whatever their activity;
- S_LL, the lifelong sequence: the engaged events before S_RT, the most recent
  ``lifelong_max`` (10^4) of them, so S_LL and S_RT never hold the same event;
- S_imp: the last ``impression_max`` impressions the user did not act on.

Engaged events are *records* (``records="merged"``, the paper's): the user's repeated engagements
with one item as of t are one record, its actions OR-ed, its latest time
(:meth:`~recsys.data.lifelong_store.EventStream.visible_before`); S_RT and S_LL count records.
``records="events"`` keeps one token per engaged event (the ablation).

Per candidate c, with NN(S, c) the k tokens of S nearest to c: the largest score of c against the
dequantised, L2-normalised token content (:func:`recsys.ops.nn_select.nn_select`: ties to the
more recent, kept in time order)::

    S_all = NN(S_LL, c) ++ S_RT[:r] ++ NN(S_RT[r:], c) ++ NN(S_imp, c)
            lifelong_k     realtime_recent  realtime_k      impression_k      (96 + 32 + 32 + 32 = 192)

where ``S_RT[:r]`` are the r most recent realtime events (kept whatever the candidate) and
``S_RT[r:]`` the older rest. Each part is in time order; the parts follow in this order. A short
history gives a shorter S_all (no padding is stored). The split of the 192 tokens is ours: half
to the lifelong part, the rest shared by the realtime and impression parts.

Every S_all token carries its item id, action bits, surface, timestamp, int8 content (as stored),
its source part (``SOURCE_*``) and whether it is engaged (``actions != 0``: every part but S_imp).

After S_all, a row also stores S_RT's most recent ``realtime_history`` events (100: TransAct V1
reads the 100 most recent realtime actions), in time order, with source ``SOURCE_REALTIME_HISTORY``:
not part of S_all (TransAct V2 drops them), the plain realtime history of V1 and BST.

Training: :func:`build_lifelong_sequences` computes S_all for every row of a
:class:`~recsys.data.examples.RankingExamples` in chunks (t is the start of the row's request, the
earliest timestamp of its page: :mod:`recsys.data.request_time`; rows of one user and request start
form one request: the sequence is searched once for all its candidates) and writes it to a directory of
memory-mapped ``.npy`` files, O(192) values per row, renamed into place when complete.
:class:`LifelongSequences` reads rows back; :func:`collate_lifelong` makes RankingBatches.
Serving: :func:`serve_lifelong_tokens` computes S_all on the fly from one user's full sequences.
Both paths share the window arithmetic and the NN op, and give identical S_all.

Shape letters: R rows, B rows of a batch (or candidates of a request), V tokens of B rows,
C content dimension.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from recsys.data.batch import RankingBatch
from recsys.data.collate import kjt_from_jagged
from recsys.data.examples import RankingExamples
from recsys.data.directory_io import atomic_directory, load_array, read_meta, write_meta
from recsys.data.lifelong_store import EventStream, LifelongStore, UserHistory
from recsys.errors import ConfigError, DataError
from recsys.ops.int8_quantization import dequantize_int8
from recsys.ops.nn_select import nn_select
from recsys.ops.nn_select_reference import token_inverse_norms

FORMAT_NAME = "recsys-lifelong-sequences"
FORMAT_VERSION = 2  # 2: sequences end before the request's start (1: before the row's own event)
SOURCE_LIFELONG, SOURCE_REALTIME_RECENT, SOURCE_REALTIME_NN, SOURCE_IMPRESSION = 0, 1, 2, 3
SOURCE_REALTIME_HISTORY = 4  # not part of S_all: the plain realtime history of TransAct V1 and BST
SOURCE_NAMES = ("lifelong", "realtime_recent", "realtime_nn", "impression", "realtime_history")
S_ALL_SOURCES = (SOURCE_LIFELONG, SOURCE_REALTIME_RECENT, SOURCE_REALTIME_NN, SOURCE_IMPRESSION)
SEQUENCE_KEYS = ("seq_item_id", "seq_actions", "seq_surface", "seq_timestamp", "seq_source")
SELECTIONS = ("nn", "recent")
RECORDS = ("merged", "events")
TOKEN_COLUMNS = ("item_id", "actions", "surface", "timestamp", "source", "content")


@dataclass(frozen=True)
class LifelongConfig:
    """How long each sequence is and how S_all's tokens are split between the parts.

    Args:
        lifelong_max: S_LL holds at most this many engaged events (the most recent before S_RT).
        realtime_max: S_RT is the last this many engaged events.
        impression_max: S_imp is the last this many impressions without action.
        lifelong_k: tokens of NN(S_LL, c).
        realtime_recent: r, the most recent realtime events always kept (S_RT[:r]).
        realtime_k: tokens of NN(S_RT[r:], c).
        impression_k: tokens of NN(S_imp, c).
        realtime_history: also store S_RT's most recent this many events (in time order, source
            ``SOURCE_REALTIME_HISTORY``, after S_all's tokens): the realtime history that TransAct
            V1 (the paper's 100 actions) and BST read from a lifelong batch. Not part of S_all;
            0 stores none (they then read S_RT[:r]). S_RT holds at most ``realtime_max`` events, so
            no more than that are stored.
        records: "merged" (the paper: repeated engagements with one item are one record, its action
            bits OR-ed, its latest time; as of the request, :meth:`EventStream.visible_before`) or
            "events" (one token per engaged event: the ablation). Impressions are never merged.
        selection: "nn" (the paper: each NN part keeps its k tokens nearest to the candidate) or
            "recent" (the ablation without NN selection: each part keeps its k most recent tokens,
            whatever the candidate).
    """

    lifelong_max: int = 10_000
    realtime_max: int = 100
    impression_max: int = 100
    lifelong_k: int = 96
    realtime_recent: int = 32
    realtime_k: int = 32
    impression_k: int = 32
    realtime_history: int = 100
    selection: Literal["nn", "recent"] = "nn"
    records: Literal["merged", "events"] = "merged"

    def __post_init__(self) -> None:
        if self.records not in RECORDS:
            raise ConfigError(f"LifelongConfig.records={self.records!r} must be one of {list(RECORDS)}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"LifelongConfig.selection={self.selection!r} must be one of {list(SELECTIONS)}")
        for f in dataclasses.fields(LifelongConfig):  # these fields only (subclasses add others)
            if f.name in ("selection", "records"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ConfigError(f"LifelongConfig.{f.name}={value!r} must be an integer >= 0")
        if self.realtime_recent > self.realtime_max:
            raise ConfigError(f"LifelongConfig.realtime_recent={self.realtime_recent} must be <= realtime_max="
                              f"{self.realtime_max} (S_RT[:r] is part of S_RT)")
        if self.sequence_length == 0:
            raise ConfigError("LifelongConfig selects no token at all; set lifelong_k, realtime_recent, ... > 0")

    @property
    def sequence_length(self) -> int:
        """The most tokens S_all can hold (192 by default; a row stores ``realtime_history`` more)."""
        return self.lifelong_k + self.realtime_recent + self.realtime_k + self.impression_k


@dataclass
class LifelongTokens:
    """S_all of B rows, jagged: row b's tokens are ``offsets[b] : offsets[b + 1]`` of each column.

    Args:
        lengths: ``[B]`` int64 tokens per row (at most ``sequence_length + realtime_history``).
        item_id: ``[V]`` int64.
        actions: ``[V]`` int32 action bit mask.
        surface: ``[V]`` int64.
        timestamp: ``[V]`` int64 seconds.
        source: ``[V]`` int8 part of S_all (``SOURCE_*``).
        content: ``[V, C]`` int8 content embedding as stored.
        scale: int8 scale of ``content``.
    """

    lengths: np.ndarray
    item_id: np.ndarray
    actions: np.ndarray
    surface: np.ndarray
    timestamp: np.ndarray
    source: np.ndarray
    content: np.ndarray
    scale: float

    @property
    def offsets(self) -> np.ndarray:
        """``[B + 1]`` int64 row offsets."""
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    @property
    def engaged(self) -> np.ndarray:
        """``[V]`` bool: the token is an engaged event (every part but S_imp)."""
        return self.actions != 0

    def dequantized_content(self) -> torch.Tensor:
        """``[V, C]`` float32 content embeddings, ``q * scale / 127``."""
        return dequantize_int8(np.ascontiguousarray(self.content), self.scale)


# -------------------------------------------------------------------- selection (shared)
@dataclass
class SequenceWindows:
    """Per request ``[n]`` int64 first stream row and length of each sequence."""

    lifelong_start: np.ndarray
    lifelong_len: np.ndarray
    realtime_start: np.ndarray
    realtime_len: np.ndarray
    impression_start: np.ndarray
    impression_len: np.ndarray


def sequence_windows(engaged_first, engaged_count, impression_first, impression_count,
                     config: LifelongConfig) -> SequenceWindows:
    """S_LL, S_RT and S_imp as windows of the streams, from the events before each request time
    (training and the request path of :mod:`recsys.ranking` share this arithmetic)."""
    realtime_len = np.minimum(engaged_count, config.realtime_max)
    lifelong_len = np.minimum(engaged_count - realtime_len, config.lifelong_max)
    impression_len = np.minimum(impression_count, config.impression_max)
    return SequenceWindows(
        lifelong_start=engaged_first + engaged_count - realtime_len - lifelong_len,
        lifelong_len=lifelong_len,
        realtime_start=engaged_first + engaged_count - realtime_len,
        realtime_len=realtime_len,
        impression_start=impression_first + impression_count - impression_len,
        impression_len=impression_len,
    )


def expected_lengths(w: SequenceWindows, config: LifelongConfig) -> np.ndarray:
    """``[n]`` stored tokens per request: min(k, length) of every part of S_all, and the realtime history."""
    recent = np.minimum(w.realtime_len, config.realtime_recent)
    return (np.minimum(w.lifelong_len, config.lifelong_k) + recent
            + np.minimum(w.realtime_len - recent, config.realtime_k)
            + np.minimum(w.impression_len, config.impression_k)
            + np.minimum(w.realtime_len, config.realtime_history))


def _select_tokens(
    engaged: EventStream,
    impressions: EventStream,
    values: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    windows: SequenceWindows,
    candidates: np.ndarray,
    candidate_request: np.ndarray,
    config: LifelongConfig,
    scale: float,
    kernel: str,
    device: str,
) -> LifelongTokens:
    """S_all of every candidate (one row each) from the request windows.

    Args:
        engaged / impressions: the streams the windows point into.
        values: per stream its ``content`` on the device and its token inverse norms (:func:`_content_tensors`).
        windows: per request windows (``[n]`` each).
        candidates: ``[B, C]`` float32 candidate content embeddings.
        candidate_request: ``[B]`` int64 request of each candidate.
    """
    w = windows
    recent_len = np.minimum(w.realtime_len, config.realtime_recent)
    older_len = w.realtime_len - recent_len
    engaged_values, impression_values = values
    cand = torch.from_numpy(np.ascontiguousarray(candidates, dtype=np.float32)).to(device)
    request = torch.from_numpy(candidate_request).to(device)

    def nearest(table, start, length, k):  # [B, k] stream rows, -1 where none
        if config.selection == "recent":  # the ablation without NN selection: the k latest rows
            return latest_of(start, length, k)
        values, inverse_norms = table
        picked = nn_select(values, _tensor(start, device), _tensor(length, device), cand, request, k,
                           scale=scale, kernel=kernel, inverse_norms=inverse_norms).cpu().numpy()
        return np.where(picked >= 0, start[candidate_request][:, None] + picked, -1)

    def latest_of(start, length, width):  # [B, width] the last min(width, length) rows of a window, -1 padded
        count = np.minimum(length, width)
        slots = np.arange(width)
        rows = (start + length - count)[candidate_request][:, None] + slots
        return np.where(slots < count[candidate_request][:, None], rows, -1)

    recent = latest_of(w.realtime_start, w.realtime_len, config.realtime_recent)  # S_RT[:r]
    parts = [  # (stream rows [B, k_part], from the impression stream?, source)
        (nearest(engaged_values, w.lifelong_start, w.lifelong_len, config.lifelong_k), False, SOURCE_LIFELONG),
        (recent, False, SOURCE_REALTIME_RECENT),
        (nearest(engaged_values, w.realtime_start, older_len, config.realtime_k), False, SOURCE_REALTIME_NN),
        (nearest(impression_values, w.impression_start, w.impression_len, config.impression_k), True,
         SOURCE_IMPRESSION),
        (latest_of(w.realtime_start, w.realtime_len, min(config.realtime_history, config.realtime_max)), False,
         SOURCE_REALTIME_HISTORY),
    ]
    rows = np.concatenate([p[0] for p in parts], axis=1)  # [B, S]
    from_impressions = np.concatenate([np.full(p[0].shape, p[1]) for p in parts], axis=1)  # [B, S]
    source = np.concatenate([np.full(p[0].shape, p[2], dtype=np.int8) for p in parts], axis=1)  # [B, S]
    keep = rows >= 0
    return _gather_tokens(engaged, impressions, rows[keep], from_impressions[keep], source[keep], keep.sum(1), scale)


def _gather_tokens(engaged, impressions, rows, from_impressions, source, lengths, scale) -> LifelongTokens:
    """Token columns of stream ``rows`` ``[V]`` (engaged or impression stream per token)."""
    columns = {}
    for name in ("item_id", "actions", "surface", "timestamp", "content"):
        a, b = getattr(engaged, name), getattr(impressions, name)
        out = np.empty((len(rows),) + a.shape[1:], dtype=a.dtype)
        out[~from_impressions] = a[rows[~from_impressions]]
        out[from_impressions] = b[rows[from_impressions]]
        columns[name] = out
    return LifelongTokens(lengths=lengths.astype(np.int64), source=source, scale=scale, **columns)


def _content_tensors(engaged: EventStream, impressions: EventStream, device: str):
    """Both streams' ``[E, C]`` int8 content as tensors on ``device`` (copied when read-only), each
    with its ``[E]`` float32 token inverse norms (computed once for every selection)."""

    def tensor(content: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        array = np.ascontiguousarray(content)
        values = torch.from_numpy(array if array.flags.writeable else array.copy()).to(device)
        return values, token_inverse_norms(values)

    return tensor(engaged.content), tensor(impressions.content)


def _tensor(array: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(device)


# -------------------------------------------------------------------- serving
def serve_lifelong_tokens(
    history: UserHistory,
    request_time: int,
    candidate_content: np.ndarray,
    config: LifelongConfig = LifelongConfig(),
    kernel: str = "auto",
    device: str = "cpu",
) -> LifelongTokens:
    """S_all of every candidate of one request, on the fly from the user's full sequences.

    Args:
        history: the user's streams (:meth:`LifelongStore.user`).
        request_time: seconds; only events strictly before it are used.
        candidate_content: ``[B, C]`` float32 content embeddings of the candidates.
        config: sequence lengths and the split of S_all.
        kernel / device: passed to :func:`recsys.ops.nn_select.nn_select`.

    Returns:
        :class:`LifelongTokens` with one row per candidate, in the given order.
    """
    candidates = _as_candidates(candidate_content, history.engaged.content.shape[1])
    user, time = np.zeros(1, dtype=np.int64), np.array([request_time], dtype=np.int64)
    engaged, engaged_first, engaged_count = engaged_view(history.engaged, user, time, config)
    windows = sequence_windows(engaged_first, engaged_count, *history.impressions.count_before(user, time), config)
    values = _content_tensors(engaged, history.impressions, device)
    return _select_tokens(engaged, history.impressions, values, windows, candidates,
                          np.zeros(len(candidates), dtype=np.int64), config, history.scale, kernel, device)


def engaged_view(stream: EventStream, users: np.ndarray, times: np.ndarray,
                 config: LifelongConfig) -> tuple[EventStream, np.ndarray, np.ndarray]:
    """The engaged events each query ``(users [n], times [n])`` reads: ``(stream, first [n], count [n])``.

    ``records == "events"``: the store's stream, each query's rows before its time. ``"merged"``: a
    new stream holding, per query, its merged records (per item the latest row before the time,
    with the OR of the item's actions so far: :meth:`EventStream.visible_before`), in time order.
    """
    if config.records == "events":
        return (stream, *stream.count_before(users, times))
    rows, offsets, count = stream.visible_before(users, times)
    merged = EventStream(user_offsets=offsets, item_id=stream.item_id[rows], actions=stream.merged_actions[rows],
                         surface=stream.surface[rows], timestamp=stream.timestamp[rows], content=stream.content[rows],
                         merged_actions=stream.merged_actions[rows], next_time=stream.next_time[rows])
    return merged, offsets[:-1], count


def _as_candidates(content, dim: int) -> np.ndarray:
    array = np.asarray(content, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise DataError(
            f"candidate_content must be [B, C={dim}] (one content embedding per candidate), got {array.shape}"
        )
    return array


# -------------------------------------------------------------------- training: build and store
def build_lifelong_sequences(
    examples: RankingExamples,
    store: LifelongStore,
    path: str | Path,
    config: LifelongConfig = LifelongConfig(),
    chunk_rows: int = 4096,
    kernel: str = "auto",
    device: str = "cpu",
    overwrite: bool = False,
) -> "LifelongSequences":
    """Computes S_all of every row of ``examples`` and writes it to the directory ``path``.

    A row's request is (its user, the start of its request: the earliest timestamp of the request's
    events, :func:`recsys.data.request_time.request_start_times`), so no row sees an outcome of its
    own page (an earlier slot of the same request); rows of one request in a chunk share one search
    of the sequences. The files are written into a staging directory and
    renamed to ``path`` when complete.

    Args:
        examples: ranking rows over a log whose users and items the store was built from.
        store: the lifelong store (:meth:`LifelongStore.from_log` of the same log).
        path: the output directory; must not exist unless ``overwrite``.
        config: sequence lengths and the split of S_all.
        chunk_rows: rows searched per call of the NN op (memory: ~``chunk_rows * 192`` tokens).
        kernel / device: passed to :func:`recsys.ops.nn_select.nn_select`.

    Returns:
        The written sequences, opened for reading.
    """
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows={chunk_rows} must be >= 1")
    log = examples.log
    _check_store_matches(store, log)
    users = log.user_id[examples.event]  # [R]
    times = examples.request_time  # [R] sequences end strictly before the request starts
    lengths = expected_lengths(_request_windows(store, users, times, config), config)  # [R]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [R + 1]
    num_tokens, dim = int(offsets[-1]), store.content_dim
    with atomic_directory(path, overwrite) as staging:
        np.save(staging / "offsets.npy", offsets)
        columns = _open_columns(staging, num_tokens, dim)
        values = _content_tensors(store.engaged, store.impressions, device) if config.records == "events" else None
        for lo in range(0, len(examples), chunk_rows):
            hi = min(lo + chunk_rows, len(examples))
            tokens = _chunk_tokens(examples, store, values, users[lo:hi], times[lo:hi], lo, hi, config, kernel, device)
            if not np.array_equal(tokens.lengths, lengths[lo:hi]):
                raise DataError(f"rows {lo}..{hi - 1}: selected sequence lengths differ from the expected ones; "
                                "the store changed while building, rebuild it")
            for name, column in columns.items():
                column[offsets[lo]:offsets[hi]] = getattr(tokens, name)
        for column in columns.values():
            column.flush()
        del columns
        _write_meta(staging, examples, store, config, num_tokens)
    return LifelongSequences.open(path)


def _request_windows(store: LifelongStore, users: np.ndarray, times: np.ndarray,
                     config: LifelongConfig) -> SequenceWindows:
    """The windows' lengths per query (the first rows are meaningful for ``records == "events"`` only)."""
    first, count = store.engaged.count_before(users, times)
    if config.records == "merged":
        count = store.engaged.count_records_before(users, times)
    return sequence_windows(first, count, *store.impressions.count_before(users, times), config)


def _chunk_tokens(examples, store, values, users, times, lo, hi, config, kernel, device) -> LifelongTokens:
    """S_all of rows ``lo:hi``: rows with the same (user, time) are one request."""
    requests, candidate_request = np.unique(np.stack([users, times], axis=1), axis=0, return_inverse=True)
    engaged, first, count = engaged_view(store.engaged, requests[:, 0], requests[:, 1], config)
    windows = sequence_windows(first, count, *store.impressions.count_before(requests[:, 0], requests[:, 1]), config)
    if values is None:  # merged records: this chunk's own engaged table
        values = _content_tensors(engaged, store.impressions, device)
    content = examples.log.items.content_embedding[examples.item[lo:hi]]  # [B, C] float32
    return _select_tokens(engaged, store.impressions, values, windows, content, candidate_request.reshape(-1),
                          config, store.scale, kernel, device)


def _open_columns(folder: Path, num_tokens: int, dim: int) -> dict[str, np.memmap]:
    dtypes = {"item_id": np.int64, "actions": np.int32, "surface": np.int64, "timestamp": np.int64, "source": np.int8}
    columns = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=(num_tokens,))
               for name, dtype in dtypes.items()}
    columns["content"] = np.lib.format.open_memmap(folder / "content.npy", mode="w+", dtype=np.int8,
                                                   shape=(num_tokens, dim))
    return columns


def _write_meta(folder: Path, examples: RankingExamples, store: LifelongStore, config: LifelongConfig,
                num_tokens: int) -> None:
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "num_rows": len(examples), "num_tokens": num_tokens,
            "content_dim": store.content_dim, "scale": store.scale, "config": dataclasses.asdict(config),
            "rows_fingerprint": rows_fingerprint(examples)}
    write_meta(folder, meta)


def rows_fingerprint(examples: RankingExamples) -> str:
    """A hash of the rows (target events and candidate items): stored S_all belongs to these rows."""
    digest = hashlib.sha1()
    for array in (examples.event, examples.item, np.array([len(examples.log)])):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _check_store_matches(store: LifelongStore, log) -> None:
    if log.items is None:
        raise DataError("the examples' log has no ItemTable; lifelong sequences need candidate content embeddings")
    if store.num_users != log.num_users or store.content_dim != log.items.content_dim:
        raise DataError(
            f"the store has {store.num_users} users and C={store.content_dim}, the examples' log {log.num_users} users "
            f"and C={log.items.content_dim}; build the store with LifelongStore.from_log(examples.log)"
        )


# -------------------------------------------------------------------- training: read and collate
class LifelongSequences:
    """Stored S_all of the rows of one :class:`RankingExamples`, memory-mapped.

    Use :meth:`open` on a directory written by :func:`build_lifelong_sequences`; :meth:`rows`
    reads any set of rows (O(192) values each).
    """

    def __init__(self, path: Path, meta: dict, offsets: np.ndarray, columns: dict[str, np.ndarray]):
        self.path, self.meta, self.offsets, self.columns = path, meta, offsets, columns
        self.config = LifelongConfig(**meta["config"])
        self.scale = float(meta["scale"])

    @classmethod
    def open(cls, path: str | Path) -> "LifelongSequences":
        path = Path(path)
        meta = read_meta(path, FORMAT_NAME, FORMAT_VERSION,
                         ("num_rows", "num_tokens", "content_dim", "scale", "config", "rows_fingerprint"))
        offsets = load_array(path, "offsets.npy", mmap=False)
        columns = {name: load_array(path, f"{name}.npy") for name in TOKEN_COLUMNS}
        rows, tokens = int(meta["num_rows"]), int(meta["num_tokens"])
        if offsets.shape != (rows + 1,) or offsets[0] != 0 or offsets[-1] != tokens:
            raise DataError(
                f"{path}/offsets.npy must be [{rows + 1}] offsets from 0 to {tokens}; build the sequences again"
            )
        for name, column in columns.items():
            shape = (tokens, int(meta["content_dim"])) if name == "content" else (tokens,)
            if column.shape != shape:
                raise DataError(
                    f"{path}/{name}.npy has shape {column.shape}, expected {shape}; build the sequences again"
                )
        try:
            LifelongConfig(**meta["config"])
        except TypeError:
            raise DataError(f"{path}/meta.json: config {meta['config']} is not a LifelongConfig; build again") from None
        return cls(path, meta, offsets, columns)

    def __len__(self) -> int:
        return int(self.meta["num_rows"])

    def __repr__(self) -> str:
        return f"LifelongSequences({self.path}, rows={len(self)}, tokens={self.meta['num_tokens']})"

    def rows(self, row_indices) -> LifelongTokens:
        """S_all of the rows ``row_indices`` (``[B]`` ints), in that order."""
        rows = np.asarray(row_indices, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise DataError(f"row indices must lie in 0..{len(self) - 1}, the rows of {self.path}")
        starts, lengths = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        flat = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))  # [V]
        return LifelongTokens(lengths=lengths, scale=self.scale,
                              **{name: np.asarray(column[flat]) for name, column in self.columns.items()})


def collate_lifelong(examples: RankingExamples, sequences: LifelongSequences, row_indices,
                     check_rows: bool = True) -> RankingBatch:
    """The RankingBatch of ``row_indices`` with S_all as its sequence.

    Non-sequence fields come from :meth:`RankingExamples.collate`. ``sequence_features`` is a KJT
    with keys :data:`SEQUENCE_KEYS` (``seq_item_id``, ``seq_actions``, ``seq_surface``,
    ``seq_timestamp``, ``seq_source``), all with the S_all lengths; ``sequence_content`` is the
    dequantised ``[S_T, C]`` float32 content of those tokens.

    Args:
        examples: the rows the sequences were built for.
        sequences: :func:`build_lifelong_sequences`' output for ``examples``.
        row_indices: ``[B]`` row numbers.
        check_rows: hash the rows to check that the sequences belong to them (a loader that
            checked once, :func:`check_sequences_match`, skips it for every batch).
    """
    if check_rows:
        check_sequences_match(examples, sequences)
    batch = examples.collate(row_indices)
    tokens = sequences.rows(row_indices)
    columns = {"seq_item_id": tokens.item_id, "seq_actions": tokens.actions, "seq_surface": tokens.surface,
               "seq_timestamp": tokens.timestamp, "seq_source": tokens.source}
    features = kjt_from_jagged({key: (columns[key], tokens.lengths) for key in SEQUENCE_KEYS})
    return dataclasses.replace(batch, sequence_features=features, sequence_content=tokens.dequantized_content())


def check_sequences_match(examples: RankingExamples, sequences: LifelongSequences) -> None:
    """Raises :class:`DataError` when ``sequences`` were built for other rows than ``examples``."""
    if sequences.meta["rows_fingerprint"] != rows_fingerprint(examples):
        raise DataError(f"{sequences.path} was built for other rows than these examples; "
                        "run build_lifelong_sequences on these examples")
