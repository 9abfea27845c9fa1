"""A reusable host buffer that a request batch is assembled into, moved to the device in one copy.

The host side of :func:`recsys.ranking.rank.rank_requests`: every field of a
:class:`~recsys.ranking.request.RankRequestBatch` (and its candidates' item features) is written
straight into views of one host buffer, pinned when the device is a GPU, and the used region goes
to a device buffer of the same layout in one ``non_blocking`` copy on a copy stream (an event
orders the compute after it). Both buffers are allocated once, sized for the largest bucket.

Shapes are bucketed: a batch of (R requests, N candidates, T tokens) is laid out in the bucket of
the next powers of two (at least ``MIN_BUCKET``; at most the arena's capacity), so the device views of a
bucket have fixed addresses and shapes and a CUDA graph captured for the bucket replays on every
batch of it. The layout of a bucket, fields in this order, each 64-byte aligned::

    per request  [R_b]     user_id i64, surface i64, context f32 [T_ctx], history i64 [A, H],
                           history_lengths i64 [A], windows i64 [6], candidate_offsets i64 [R_b + 1]
    per candidate [N_b]    item_id i64, attributes i64 [n_attr], content f32 [C]
    per token    [T_b]     actions i32, surface i32, content i8 [C]

Every batch zero-fills its bucket region before writing, so no slot holds a previous batch's data.
:meth:`HostArena.transfer_bytes` counts what moves per batch, deduplicated (each sequence once)
and replicated (each candidate row with its own copy of its request's sequence, as one
RankingBatch row per (request, candidate) with the selection on the device would move it).

Shape letters as :mod:`recsys.ranking.request`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsys.data.features import CONTEXT_FEATURES, FeatureSpec
from recsys.data.lifelong import LifelongConfig, expected_lengths
from recsys.data.schema import ItemTable
from recsys.errors import ConfigError, DataError
from recsys.ranking.request import RankRequestBatch

ALIGN = 64
MIN_BUCKET = {"requests": 1, "candidates": 8, "tokens": 256}
WINDOW_COLUMNS = 6  # lifelong start, length; realtime start, length; impression start, length


@dataclass(frozen=True)
class Bucket:
    """Capacities of one bucketed shape: requests, candidates, tokens."""

    requests: int
    candidates: int
    tokens: int


@dataclass(frozen=True)
class TransferBytes:
    """Host-to-device bytes of one batch.

    Args:
        payload: the deduplicated batch's data (each request's sequence once).
        copied: what the one copy moves (the bucket's layout, padding included).
        replicated: the same batch with every candidate row carrying its request's sequence.
        s_all: the same batch with every candidate row carrying its S_all, selected on the host
            (the training layout: at most 192 tokens per row).
    """

    payload: int
    copied: int
    replicated: int
    s_all: int


def _next_bucket(size: int, minimum: int, capacity: int) -> int:
    return min(max(minimum, 1 << max(size - 1, 0).bit_length()), capacity)


def _field_specs(spec: FeatureSpec, bucket: Bucket) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(name, dtype, shape) of every field of ``bucket``'s layout, in buffer order."""
    r, n, t = bucket.requests, bucket.candidates, bucket.tokens
    c, actions = spec.content_dim, spec.num_actions
    return [
        ("user_id", torch.int64, (r,)), ("surface", torch.int64, (r,)),
        ("context", torch.float32, (r, len(CONTEXT_FEATURES))),
        ("history", torch.int64, (r, actions, spec.max_history)), ("history_lengths", torch.int64, (r, actions)),
        ("windows", torch.int64, (r, WINDOW_COLUMNS)), ("candidate_offsets", torch.int64, (r + 1,)),
        ("item_id", torch.int64, (n,)), ("attributes", torch.int64, (n, len(spec.item_attributes))),
        ("candidate_content", torch.float32, (n, c)),
        ("token_actions", torch.int32, (t,)), ("token_surface", torch.int32, (t,)),
        ("token_content", torch.int8, (t, c)),
    ]


def _layout(spec: FeatureSpec, bucket: Bucket) -> tuple[dict[str, tuple[int, torch.dtype, tuple[int, ...]]], int]:
    """name -> (byte offset, dtype, shape), and the bucket's total bytes."""
    layout, offset = {}, 0
    for name, dtype, shape in _field_specs(spec, bucket):
        layout[name] = (offset, dtype, shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        offset += -(-nbytes // ALIGN) * ALIGN
    return layout, offset


def _views(buffer: torch.Tensor, layout) -> dict[str, torch.Tensor]:
    views = {}
    for name, (offset, dtype, shape) in layout.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        views[name] = buffer[offset : offset + nbytes].view(dtype).view(shape)
    return views


class HostArena:
    """Host and device buffers for request batches up to a capacity (module docstring).

    Args:
        spec: the model's features (field widths).
        max_requests / max_candidates / max_tokens: the largest bucket (R, N, T of one batch).
        device: where the batches go; a CUDA device pins the host buffer and copies on a side stream.

    Example::

        arena = HostArena(model.spec, max_requests=8, max_candidates=1024, max_tokens=1 << 16, device="cuda")
        views = arena.load(batch, items, lifelong_config)   # device views of the batch's bucket
    """

    def __init__(self, spec: FeatureSpec, max_requests: int, max_candidates: int, max_tokens: int,
                 device: torch.device | str = "cpu"):
        for name, value in (("max_requests", max_requests), ("max_candidates", max_candidates),
                            ("max_tokens", max_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"HostArena.{name} must be a positive int, got {value!r}")
        self.spec, self.device = spec, _indexed(torch.device(device))
        self.capacity = Bucket(max_requests, max_candidates, max_tokens)
        _, size = _layout(spec, self.capacity)
        cuda = self.device.type == "cuda"
        self.host = torch.zeros(size, dtype=torch.uint8, pin_memory=cuda)
        self.on_device = torch.zeros(size, dtype=torch.uint8, device=self.device)
        self._copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self._layouts: dict[Bucket, tuple[dict, int]] = {}
        self.last_bytes: TransferBytes | None = None

    @classmethod
    def for_batch(cls, spec: FeatureSpec, batch: RankRequestBatch, device: torch.device | str = "cpu") -> "HostArena":
        """A one-off arena whose capacity is ``batch``'s own bucket: the batch is laid out (padded)
        as in any larger arena, so its scores are the same bit for bit."""
        need = (batch.num_requests, batch.num_candidates, max(batch.num_tokens, 1))
        sizes = [_next_bucket(n, MIN_BUCKET[name], 2 * max(n, MIN_BUCKET[name]))  # (a cap it never reaches)
                 for n, name in zip(need, ("requests", "candidates", "tokens"))]
        return cls(spec, *sizes, device=device)

    def bucket(self, batch: RankRequestBatch) -> Bucket:
        """The bucket of ``batch``'s shape; :class:`DataError` when it exceeds the capacity."""
        need = Bucket(batch.num_requests, batch.num_candidates, batch.num_tokens)
        for name in ("requests", "candidates", "tokens"):
            if getattr(need, name) > getattr(self.capacity, name):
                raise DataError(f"the batch holds {getattr(need, name)} {name}, more than the arena's "
                                f"max_{name}={getattr(self.capacity, name)}; split the batch or build a larger "
                                "HostArena")
        return Bucket(*(_next_bucket(getattr(need, name), MIN_BUCKET[name], getattr(self.capacity, name))
                        for name in ("requests", "candidates", "tokens")))

    def layout(self, bucket: Bucket) -> tuple[dict, int]:
        """The layout of ``bucket`` (cached): name -> (offset, dtype, shape), and its total bytes."""
        if bucket not in self._layouts:
            self._layouts[bucket] = _layout(self.spec, bucket)
        return self._layouts[bucket]

    def pack(self, batch: RankRequestBatch, items: ItemTable, config: LifelongConfig) -> tuple[Bucket, dict]:
        """Writes ``batch`` into the host buffer (the bucket's region zero-filled first); returns the
        bucket and the host views (``[R_b]``, ``[N_b]``, ``[T_b]`` leading sizes)."""
        bucket = self.bucket(batch)
        layout, size = self.layout(bucket)
        self.host[:size].zero_()
        views = _views(self.host, layout)
        r, n, t = batch.num_requests, batch.num_candidates, batch.num_tokens
        w = batch.windows(config)
        columns = {
            "user_id": batch.user_id, "surface": batch.surface, "context": batch.context, "history": batch.history,
            "history_lengths": batch.history_lengths,
            "windows": np.stack([w.lifelong_start, w.lifelong_len, w.realtime_start, w.realtime_len,
                                 w.impression_start, w.impression_len], axis=1),
            "item_id": batch.candidates,
            "attributes": np.stack([items.attributes[a][batch.candidates] for a in self.spec.item_attributes], axis=1)
            if self.spec.item_attributes else np.zeros((n, 0), dtype=np.int64),
            "candidate_content": items.content_embedding[batch.candidates],
            "token_actions": batch.actions, "token_surface": batch.surfaces, "token_content": batch.content,
        }
        for name, array in columns.items():
            rows = {"requests": r, "candidates": n, "tokens": t}[_group(name)]
            views[name][:rows].copy_(torch.from_numpy(np.ascontiguousarray(array)))
        views["candidate_offsets"][: r + 1].copy_(torch.from_numpy(batch.candidate_offsets))
        views["candidate_offsets"][r + 1 :] = n  # padded requests own no candidate
        self.last_bytes = self.transfer_bytes(batch, config)
        return bucket, views

    def to_device(self, bucket: Bucket) -> dict[str, torch.Tensor]:
        """Copies the bucket's region to the device buffer (one copy) and returns its device views.

        On CUDA the copy runs ``non_blocking`` on the arena's copy stream; the current stream
        waits on its event before any later work reads the views.
        """
        layout, size = self.layout(bucket)
        if self._copy_stream is None:
            self.on_device[:size].copy_(self.host[:size])
        else:
            self._copy_stream.wait_stream(torch.cuda.current_stream(self.device))  # the previous batch is done
            with torch.cuda.stream(self._copy_stream):
                self.on_device[:size].copy_(self.host[:size], non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(self._copy_stream)
            torch.cuda.current_stream(self.device).wait_event(copied)
        return _views(self.on_device, layout)

    def load(self, batch: RankRequestBatch, items: ItemTable, config: LifelongConfig) -> tuple[Bucket, dict]:
        """:meth:`pack` then :meth:`to_device`: the bucket and the device views of ``batch``."""
        bucket, _ = self.pack(batch, items, config)
        return bucket, self.to_device(bucket)

    def transfer_bytes(self, batch: RankRequestBatch, config: LifelongConfig) -> TransferBytes:
        """Bytes ``batch`` moves host to device, deduplicated and not (:class:`TransferBytes`)."""
        unit = Bucket(1, 1, 1)
        per = {group: 0 for group in ("requests", "candidates", "tokens")}
        for name, dtype, shape in _field_specs(self.spec, unit):
            if name == "candidate_offsets":
                continue  # counted below: R + 1 entries
            per[_group(name)] += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        offsets = 8  # one candidate_offsets entry per request, and one more
        per_candidate = np.diff(batch.candidate_offsets)  # [R]
        tokens = np.diff(batch.token_offsets)  # [R]
        request_part = batch.num_requests * (per["requests"] + offsets) + offsets
        payload = request_part + batch.num_candidates * per["candidates"] + batch.num_tokens * per["tokens"]
        row = per["requests"] + offsets + per["candidates"]  # one (request, candidate) row without its tokens
        replicated = batch.num_candidates * row + int(np.sum(per_candidate * tokens)) * per["tokens"]
        selected = expected_lengths(batch.windows(config), _without_history(config))  # [R] S_all tokens per row
        s_all = batch.num_candidates * row + int(np.sum(per_candidate * selected)) * per["tokens"]
        return TransferBytes(payload=int(payload), copied=self.layout(self.bucket(batch))[1],
                             replicated=int(replicated), s_all=int(s_all))


def _group(name: str) -> str:
    if name.startswith("token_"):
        return "tokens"
    if name in ("item_id", "attributes", "candidate_content"):
        return "candidates"
    return "requests"


def _without_history(config: LifelongConfig) -> LifelongConfig:
    """``config`` storing no realtime history (S_all alone: what TransAct V2 reads)."""
    from dataclasses import replace

    return replace(LifelongConfig(**{f: getattr(config, f) for f in LifelongConfig.__dataclass_fields__}),
                   realtime_history=0)


def _indexed(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:<current>``: the form a tensor's ``.device`` reports, so devices compare equal."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
