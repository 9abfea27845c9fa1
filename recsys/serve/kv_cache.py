"""A paged, user-keyed cache of encoded HSTU histories, kept across requests (M-FALCON serving).

Every layer's keys and values of a user's history tokens live in fixed-size pages of one pool
preallocated on the model's device; a page table per user lists its pages in token order::

    pool keys    [L, P * S, H, Dqk]     L layers, P pages of S token slots (page p: slots p*S .. p*S+S-1)
    pool values  [L, P * S, H, Dv]
    user 3 -> pages [7, 2, 11]          its token t sits in slot pages[t // S] * S + t % S

A request's history (its events, oldest first) is compared with the events the cache encoded for
its user. They share a prefix of ``p`` events, ``p * e`` tokens (``e`` tokens per event)::

    hit      the same events: every cached token is reused, nothing is encoded;
    append   p >= 1: the first p * e - 1 tokens are reused, the others are encoded against them
             (HSTUEncoder.extend_history) and written back (new events, or an earlier request time);
    miss     no entry, or p = 0 (the oldest event differs, e.g. the history window slid past the
             model's max_sequence): the whole history is encoded.

Why ``p * e - 1`` and not ``p * e``. In a causal encoder a history token's keys and values depend
only on it and the tokens before it, and on nothing a request brings: the candidates come after the
history, their bias to the request time is computed when they are scored, and positions count from
the first token. One term breaks this: HSTU's time bias of a query token reads ``t_next``, the
timestamp of the token after it (paper Eq. 2, :mod:`recsys.ops.relative_bias_index`). The last
history token has none and uses its own timestamp, so once an event follows it, its output (and
hence its keys and values from the second layer on) changes. Leaving that one token out of the
reused prefix and encoding it again with the new ones keeps every score exact, at the cost of one
token per append (the alternative, reading the request time as ``t_next``, would change what the
model was trained on and make every request time a miss).

When the pool runs out of pages, the least recently used entries that the current batch does not
use are evicted; a history larger than the whole pool is scored without being kept. Not
thread-safe: the server calls it from its one model thread.

Shape letters: L layers, P pages, S page size, H heads, Dqk / Dv head dims, B requests, F event
fields, Tp reused tokens, Tn encoded tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from recsys.errors import ConfigError, DataError
from recsys.modules.hstu import HSTUEncoder, HSTUKVCache
from recsys.serve.metrics import Counter, Gauge

OUTCOMES = ("hit", "append", "miss")


@dataclass
class KVCacheConfig:
    """The serve config's ``kv_cache`` section (``configs/serve/*.yaml``).

    Args:
        enabled: keep encoded histories across requests; False encodes every request's history.
        num_pages: P, pages in the pool, allocated when the server starts (P * S token slots).
        page_size: S, token slots per page.
    """

    enabled: bool = True
    num_pages: int = 1024
    page_size: int = 64

    def __post_init__(self) -> None:
        for name in ("num_pages", "page_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"kv_cache.{name} must be an integer >= 1, got {value!r}")


@dataclass
class _Entry:
    """One user's cached history: the events its tokens encode and the pages holding them."""

    events: torch.Tensor  # [n, F] int64 on the CPU
    num_tokens: int
    pages: list[int]


class PagedKVCache:
    """User-keyed paged KV cache of one :class:`HSTUEncoder` (causal).

    Args:
        encoder: the model's encoder; the pool takes its device, dtype and layer shapes.
        config: pool size and page size.
        tokens_per_event: e, tokens each history event becomes (2 for interleaved item and action tokens).

    Example::

        cache = PagedKVCache(model.encoder, KVCacheConfig(num_pages=256, page_size=64), tokens_per_event=2)
        kv = cache.encode([3], [events_of_user_3], tokens, offsets, timestamps)  # HSTUKVCache, as encode_history
    """

    def __init__(self, encoder: HSTUEncoder, config: KVCacheConfig, tokens_per_event: int = 1):
        if not encoder.causal:
            raise ConfigError("kv_cache: the encoder is not causal, so a cached history would be wrong; "
                              "set kv_cache.enabled=false or serve a causal model")
        layer, param = encoder.layers[0], next(encoder.parameters())
        self.encoder, self.config, self.tokens_per_event = encoder, config, tokens_per_event
        self.page_size = config.page_size
        slots, heads = config.num_pages * config.page_size, layer.num_heads
        try:
            self.keys = torch.empty(len(encoder.layers), slots, heads, layer.attention_dim, dtype=param.dtype,
                                    device=param.device)  # [L, P * S, H, Dqk]
            self.values = torch.empty(len(encoder.layers), slots, heads, layer.linear_dim, dtype=param.dtype,
                                      device=param.device)  # [L, P * S, H, Dv]
        except RuntimeError as error:  # out of memory, CPU or GPU
            raise ConfigError(f"kv_cache: the pool of {config.num_pages} pages x {config.page_size} tokens does not "
                              f"fit on {param.device} ({error}); lower kv_cache.num_pages or kv_cache.page_size") from None
        self._free = list(range(config.num_pages - 1, -1, -1))  # pop() takes the lowest page
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._init_metrics()

    # ------------------------------------------------------------------ public
    def encode(
        self,
        users: list[int],
        events: list[torch.Tensor],
        values: torch.Tensor,
        seq_offsets: torch.Tensor,
        timestamps: torch.Tensor | None = None,
    ) -> HSTUKVCache:
        """Keys and values of B histories, reusing and updating the cache: equal to
        ``encoder.encode_history(values, seq_offsets, timestamps)[1]``.

        Args:
            users: B user ids (a user twice in one call: its later histories are encoded, not cached).
            events: B ``[n_b, F]`` int64 CPU tensors, what identifies each history's events (every
                field a token depends on: item, actions, surface, timestamp), oldest first.
            values: ``[T, D]`` history tokens, ``n_b * tokens_per_event`` per history, jagged by
                ``seq_offsets`` ``[B + 1]``.
            timestamps: ``[T]`` int64 token timestamps (required with a time bias).
        """
        lengths = (seq_offsets[1:] - seq_offsets[:-1]).tolist()  # [B] tokens per history
        self._check(users, events, lengths)
        first = _first_occurrences(users)
        try:
            keep = [self._lookup(u, e) if f else self._record("miss", 0) for u, e, f in zip(users, events, first)]
            full = self._extend(users, keep, values, seq_offsets, timestamps)
            self._store(users, events, keep, first, full)
        except BaseException:  # entries half-updated: forget them, the pool stays consistent
            for user, is_first in zip(users, first):
                if is_first:
                    self._drop(user)
            raise
        self.pages_used.set(self.config.num_pages - len(self._free))
        return full

    def clear(self) -> None:
        """Forget every entry (the pool stays allocated)."""
        for user in list(self._entries):
            self._drop(user)
        self.pages_used.set(0)

    def __contains__(self, user: int) -> bool:
        return user in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ lookup
    def _lookup(self, user: int, events: torch.Tensor) -> int:
        """Tokens of ``user``'s entry to reuse for ``events``; the entry keeps only those (created if absent)."""
        entry = self._entries.get(user)
        if entry is None:
            self._entries[user] = _Entry(events[:0], 0, [])
            return self._record("miss", 0)
        self._entries.move_to_end(user)
        old = entry.events
        if old.shape == events.shape and torch.equal(old, events):
            return self._record("hit", entry.num_tokens)
        shared = min(len(old), len(events))
        differs = (old[:shared] != events[:shared]).any(dim=1)  # [shared]
        prefix = int(differs.nonzero()[0, 0]) if bool(differs.any()) else shared  # p events in common
        keep = max(prefix * self.tokens_per_event - 1, 0)  # its last token's t_next changes: encode it again
        self._truncate(entry, keep)
        return self._record("append" if prefix else "miss", keep)

    def _record(self, outcome: str, keep: int) -> int:
        self.lookups.inc(outcome)
        self.reused_tokens.inc(amount=keep)
        return keep

    # ------------------------------------------------------------------ encode
    def _extend(self, users, keep, values, seq_offsets, timestamps) -> HSTUKVCache:
        """Gather the reused prefixes, encode the rest of each history against them."""
        if not any(keep):  # every history a miss: the plain encoder pass
            self.encoded_tokens.inc(amount=values.size(0))
            return self.encoder.encode_history(values, seq_offsets, timestamps)[1]
        device = values.device
        keep_t = torch.tensor(keep, dtype=torch.int64, device=device)  # [B]
        prefix_offsets = _offsets(keep_t)  # [B + 1]
        prefix_rows = _jagged_rows(seq_offsets, torch.zeros_like(keep_t), keep_t)  # [Tp]
        slots = [self._slots(self._entries[u].pages, 0, k) for u, k in zip(users, keep) if k]
        slots = torch.cat(slots).to(device) if slots else torch.zeros(0, dtype=torch.int64, device=device)  # [Tp]
        prefix = HSTUKVCache(
            list(self.keys.index_select(1, slots).to(values.dtype).unbind(0)),  # L x [Tp, H, Dqk]
            list(self.values.index_select(1, slots).to(values.dtype).unbind(0)),  # L x [Tp, H, Dv]
            prefix_offsets, None if timestamps is None else timestamps[prefix_rows],
        )
        new_rows = _jagged_rows(seq_offsets, keep_t, seq_offsets[1:] - seq_offsets[:-1])  # [Tn]
        self.encoded_tokens.inc(amount=new_rows.numel())
        if new_rows.numel() == 0:  # every history a hit: nothing to encode
            return prefix
        new_times = None if timestamps is None else timestamps[new_rows]
        return self.encoder.extend_history(values[new_rows], seq_offsets - prefix_offsets, prefix, new_times)[1]

    # ------------------------------------------------------------------ store
    def _store(self, users, events, keep, first, full: HSTUKVCache) -> None:
        """Write each first-seen user's newly encoded tokens into its pages (evicting others for room)."""
        offsets = full.seq_offsets.tolist()  # [B + 1]
        pinned = {u for u, f in zip(users, first) if f}
        slots, rows = [], []
        for b, user in enumerate(users):
            if not first[b]:
                continue
            entry, n = self._entries[user], offsets[b + 1] - offsets[b]
            if not self._reserve(entry, n, pinned):
                self._drop(user)
                self.evictions.inc()
                continue
            entry.events, entry.num_tokens = events[b], n
            slots.append(self._slots(entry.pages, keep[b], n))
            rows.append(torch.arange(offsets[b] + keep[b], offsets[b + 1]))
        if not slots:
            return
        device = self.keys.device
        slots, rows = torch.cat(slots).to(device), torch.cat(rows).to(device)
        for layer, (k, v) in enumerate(zip(full.keys, full.values)):
            self.keys[layer].index_copy_(0, slots, k.index_select(0, rows).to(self.keys.dtype))
            self.values[layer].index_copy_(0, slots, v.index_select(0, rows).to(self.values.dtype))

    def _reserve(self, entry: _Entry, num_tokens: int, pinned: set) -> bool:
        """Give ``entry`` pages for ``num_tokens`` tokens, evicting unpinned LRU entries; False if impossible."""
        need = -(-num_tokens // self.page_size) - len(entry.pages)
        while need > len(self._free):
            victim = next((u for u in self._entries if u not in pinned), None)
            if victim is None:
                return False
            self._drop(victim)
            self.evictions.inc()
        for _ in range(max(need, 0)):
            entry.pages.append(self._free.pop())
        return True

    def _truncate(self, entry: _Entry, num_tokens: int) -> None:
        keep_pages = -(-num_tokens // self.page_size)
        self._free.extend(reversed(entry.pages[keep_pages:]))
        del entry.pages[keep_pages:]
        entry.num_tokens = num_tokens

    def _drop(self, user: int) -> None:
        entry = self._entries.pop(user, None)
        if entry is not None:
            self._free.extend(reversed(entry.pages))

    def _slots(self, pages: list[int], start: int, stop: int) -> torch.Tensor:
        """``[stop - start]`` pool slots of tokens ``start .. stop - 1`` of a page table (CPU int64)."""
        token = torch.arange(start, stop)
        return torch.tensor(pages, dtype=torch.int64)[token // self.page_size] * self.page_size + token % self.page_size

    # ------------------------------------------------------------------ checks and metrics
    def _check(self, users, events, lengths) -> None:
        if not len(users) == len(events) == len(lengths):
            raise DataError(f"kv_cache: {len(users)} users, {len(events)} event lists and {len(lengths)} histories; "
                            "give one of each per request")
        for user, ev, n in zip(users, events, lengths):
            if ev.dim() != 2 or ev.size(0) * self.tokens_per_event != n:
                raise DataError(f"kv_cache: user {user}'s history has {n} tokens but its events are {tuple(ev.shape)}; "
                                f"give [n, F] events with n * {self.tokens_per_event} == tokens")

    def _init_metrics(self) -> None:
        self.lookups = Counter("recsys_serve_kv_cache_lookups_total", "HSTU history KV cache lookups: hit (all reused), "
                               "append (a prefix reused, the rest encoded), miss (encoded whole).", ("outcome",))
        for outcome in OUTCOMES:
            self.lookups.inc(outcome, amount=0.0)
        self.evictions = Counter("recsys_serve_kv_cache_evictions_total",
                                 "Cached histories evicted for room (least recently used first).")
        self.reused_tokens = Counter("recsys_serve_kv_cache_reused_tokens_total", "History tokens read from the cache.")
        self.encoded_tokens = Counter("recsys_serve_kv_cache_encoded_tokens_total", "History tokens encoded.")
        self.pages_used = Gauge("recsys_serve_kv_cache_pages_used",
                                f"Pages of the KV cache pool in use (of {self.config.num_pages}, "
                                f"{self.config.page_size} tokens each).")
        self.metrics = (self.lookups, self.evictions, self.reused_tokens, self.encoded_tokens, self.pages_used)


def _first_occurrences(users: list[int]) -> list[bool]:
    seen: set = set()
    out = []
    for user in users:
        out.append(user not in seen)
        seen.add(user)
    return out


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    """``[B]`` lengths -> ``[B + 1]`` offsets."""
    return torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])


def _jagged_rows(seq_offsets: torch.Tensor, start: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """Rows ``seq_offsets[b] + start[b] .. seq_offsets[b] + stop[b] - 1`` of every sequence b, concatenated."""
    lengths = stop - start  # [B]
    total = int(lengths.sum())
    seq = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths, output_size=total)
    out_offsets = _offsets(lengths)
    return torch.arange(total, device=lengths.device) - out_offsets[seq] + seq_offsets[seq] + start[seq]  # [total]
