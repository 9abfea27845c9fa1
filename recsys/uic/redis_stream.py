"""The UIC's event source: a Redis stream read by a consumer group, at least once.

Producers :meth:`RedisEventStream.publish` behaviour events (one ``XADD`` entry per event, the fields
of :class:`recsys.uic.events.BehaviorEvent` as decimal strings). A consumer reads entries with
``XREADGROUP``, hands the events to ``apply`` (the UIC's ingest: it commits the states to the store)
and acknowledges them (``XACK``) only after ``apply`` returned. So:

- a consumer killed after its commit and before its ``XACK`` leaves the entries pending; they are
  delivered again and the UIC's idempotence rule (``events.py``) drops what was already applied;
- a consumer killed before its commit loses nothing: the entries are still pending;
- at start, a consumer takes over the group's entries pending for at least ``min_idle_ms`` (a dead
  consumer's, ``XAUTOCLAIM``) and its own earlier ones, and processes them, oldest first, before new ones.

Malformed entries (missing or unknown fields, values that are not non-negative integers) are logged,
acknowledged and counted in :attr:`ConsumeStats.malformed`; they never stop the loop. An ``apply`` that
raises stops it (the entries stay pending; the next :meth:`RedisEventStream.consume` or a restarted
consumer retries them first).

Ordering: the idempotence rule keeps the last applied key per user, so a user's events must reach
``apply`` in key order. Run ONE consumer per stream at a time (a replacement after a crash is fine) and
scale out by partitioning users over several streams (``user_id % P``), each with its own consumer
and store namespace; two live consumers on one stream would interleave a user's events and report
the older ones as ``late``. ``min_idle_ms`` must exceed the longest ``apply`` so that a replacement
does not take entries a live consumer is still working on.

Example::

    stream = RedisEventStream("redis://127.0.0.1:6390/0", "uic:events", "uic", "uic-0")
    stream.publish([BehaviorEvent(user_id=1, item_id=7, timestamp=100, event_id=0)])
    stream.run(center.apply, stop_event)           # until stop_event is set
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from recsys.errors import DataError
from recsys.uic.events import EVENT_FIELDS, BehaviorEvent
from recsys.uic.redis_connection import RedisUnavailable, connect, translate_errors

logger = logging.getLogger(__name__)
INTEGER = re.compile(rb"^-?[0-9]{1,19}$")
PUBLISH_CHUNK = 1000


@dataclass
class ConsumeStats:
    """What a consumer did (totals over its :meth:`RedisEventStream.consume` calls).

    Args:
        batches: calls of ``apply``.
        events: well-formed events handed to ``apply`` (redelivered ones included).
        malformed: entries that could not be parsed (acknowledged and skipped).
        reclaimed: entries taken over from other consumers at start (``XAUTOCLAIM``).
        redelivered: entries read again from this consumer's pending list (after a restart or a failed ``apply``).
        trimmed: pending entries whose payload was deleted from the stream before they were processed.
    """

    batches: int = 0
    events: int = 0
    malformed: int = 0
    reclaimed: int = 0
    redelivered: int = 0
    trimmed: int = 0


class RedisEventStream:
    """One consumer of consumer group ``group`` on stream ``stream`` (and a publisher to it).

    Args:
        url_or_client: ``redis://...`` URL or a ``redis.Redis`` client (``decode_responses=False``).
        stream: the stream key (e.g. ``uic:events`` or ``uic:events:3`` for partition 3).
        group: the consumer group (created at the start of the stream if missing).
        consumer: this consumer's name in the group; a restarted consumer may reuse it or take a new one.
        min_idle_ms: other consumers' pending entries idle this long are taken over at start.
    """

    def __init__(self, url_or_client: Any, stream: str, group: str, consumer: str, min_idle_ms: int = 30_000):
        for name, value in (("stream", stream), ("group", group), ("consumer", consumer)):
            if not isinstance(value, str) or not value:
                raise DataError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(min_idle_ms, int) or min_idle_ms < 0:
            raise DataError(f"min_idle_ms must be an integer >= 0, got {min_idle_ms!r}")
        self.client, self.address, self._owned = connect(url_or_client)
        self.stream, self.group, self.consumer, self.min_idle_ms = stream, group, consumer, min_idle_ms
        self.stats = ConsumeStats()
        self._claimed = False
        self._pending_cursor: bytes | None = b"0"  # reading our own pending list from here; None: new entries
        self._ensure_group()

    # -- producing --------------------------------------------------------------------------------
    def publish(self, events: Iterable[BehaviorEvent], maxlen: int | None = None) -> list[bytes]:
        """Appends ``events`` (one entry each, in order); returns their stream ids.

        ``maxlen`` trims the stream to about that many entries (``MAXLEN ~``); leave it None unless
        every consumer keeps up, since a trimmed unread entry is lost.
        """
        events = list(events)
        for i, event in enumerate(events):
            if not isinstance(event, BehaviorEvent):
                raise DataError(f"events[{i}] must be a BehaviorEvent, got {type(event).__name__}")
        ids: list[bytes] = []
        with translate_errors(self.address):
            for start in range(0, len(events), PUBLISH_CHUNK):
                pipe = self.client.pipeline(transaction=False)
                for event in events[start:start + PUBLISH_CHUNK]:
                    fields = {name: getattr(event, name) for name in EVENT_FIELDS}
                    pipe.xadd(self.stream, fields, maxlen=maxlen, approximate=True)
                ids += pipe.execute()
        return ids

    # -- consuming --------------------------------------------------------------------------------
    def consume(self, apply: Callable[[list[BehaviorEvent]], object], batch_size: int = 500,
                block_ms: int = 1000) -> int:
        """Reads up to ``batch_size`` entries, applies them, acknowledges them; returns the entries handled.

        Pending entries (taken over at start, or left by an earlier ``apply`` that raised) come first,
        oldest first; then new ones, waiting up to ``block_ms`` for them (0 when none came).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(block_ms, int) or block_ms < 0:
            raise DataError(f"block_ms must be an integer >= 0 (0: do not wait), got {block_ms!r}")
        if not self._claimed:
            self._claim_idle(batch_size)
        try:
            return self._consume_batch(apply, batch_size, block_ms)
        except BaseException:
            # A failed apply, or a lost reply (read or XACK), may leave entries pending with us: they go
            # first on the next call, before any newer entry.
            self._pending_cursor = b"0"
            raise

    def _consume_batch(self, apply, batch_size: int, block_ms: int) -> int:
        entries = self._read(batch_size, block_ms)
        if not entries:
            return 0
        events, ids, bad = self._parse(entries)
        if bad:
            self._ack(bad)
        if events:
            apply(events)
            self.stats.batches += 1
            self.stats.events += len(events)
            self._ack(ids)
        return len(entries)

    def run(self, apply: Callable[[list[BehaviorEvent]], object], stop_event: threading.Event,
            batch_size: int = 500, block_ms: int = 1000) -> ConsumeStats:
        """Consumes until ``stop_event`` is set; the batch in progress is applied and acknowledged first.

        ``block_ms`` bounds how long a stop waits while the stream is idle. An ``apply`` that raises
        ends the loop with its error (its entries stay pending).
        """
        while not stop_event.is_set():
            self.consume(apply, batch_size, block_ms)
        logger.info("consumer %s of %s/%s stopped: %s", self.consumer, self.stream, self.group, self.stats)
        return self.stats

    def pending(self) -> int:
        """Entries of the group delivered and not yet acknowledged (all consumers)."""
        with translate_errors(self.address):
            return int(self.client.xpending(self.stream, self.group)["pending"])

    def close(self) -> None:
        if self._owned:
            self.client.close()

    def __enter__(self) -> "RedisEventStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------------------
    def _ensure_group(self) -> None:
        redis = __import__("redis")
        with translate_errors(self.address):
            try:
                self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except redis.exceptions.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise RedisUnavailable(f"Redis at {self.address} cannot create group {self.group!r} on "
                                           f"{self.stream!r} ({error}); is {self.stream!r} a stream?") from error

    def _claim_idle(self, batch_size: int) -> None:
        """Takes over the group's entries pending >= min_idle_ms (XAUTOCLAIM), page by page.

        (Not ``JUSTID``: the client library drops the cursor of that reply, which paging needs.)
        """
        cursor = "0-0"
        with translate_errors(self.address):
            while True:
                reply = self.client.xautoclaim(self.stream, self.group, self.consumer, self.min_idle_ms,
                                               start_id=cursor, count=batch_size)
                cursor, claimed = reply[0], reply[1]
                deleted = reply[2] if len(reply) > 2 else []
                self.stats.reclaimed += len(claimed)
                if deleted:
                    self.stats.trimmed += len(deleted)
                    logger.warning("%d pending entries of %s were deleted from the stream before they were "
                                   "processed: %s", len(deleted), self.stream, deleted[:5])
                if cursor in (b"0-0", "0-0"):
                    break
        if self.stats.reclaimed:
            logger.info("consumer %s took over %d pending entries of %s", self.consumer, self.stats.reclaimed, self.stream)
        self._claimed = True
        self._pending_cursor = b"0"

    def _read(self, batch_size: int, block_ms: int) -> list[tuple[bytes, dict | None]]:
        """Own pending entries after the cursor first; when none are left, new entries (blocking)."""
        with translate_errors(self.address):
            if self._pending_cursor is not None:
                reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: self._pending_cursor},
                                               count=batch_size)
                entries = reply[0][1] if reply else []
                if entries:
                    self._pending_cursor = entries[-1][0]
                    self.stats.redelivered += len(entries)
                    return entries
                self._pending_cursor = None
            reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=batch_size,
                                           block=block_ms or None)
        return reply[0][1] if reply else []

    def _parse(self, entries) -> tuple[list[BehaviorEvent], list[bytes], list[bytes]]:
        """(events, their ids, ids of malformed or trimmed entries)."""
        events, ids, bad = [], [], []
        for entry_id, fields in entries:
            if fields is None:  # a pending entry deleted from the stream (XDEL, MAXLEN)
                self.stats.trimmed += 1
                logger.warning("pending entry %s of %s was deleted from the stream; skipped", entry_id, self.stream)
                bad.append(entry_id)
                continue
            try:
                events.append(parse_entry(fields, entry_id))
                ids.append(entry_id)
            except DataError as error:
                self.stats.malformed += 1
                logger.warning("malformed entry %s of %s acknowledged and skipped: %s", entry_id, self.stream, error)
                bad.append(entry_id)
        return events, ids, bad

    def _ack(self, ids: list[bytes]) -> None:
        with translate_errors(self.address):
            self.client.xack(self.stream, self.group, *ids)


def parse_entry(fields: dict, entry_id: bytes | str = b"?") -> BehaviorEvent:
    """A :class:`BehaviorEvent` from one stream entry's fields, or a :class:`DataError` saying what is wrong."""
    label = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    values: dict[str, int] = {}
    for raw_name, raw_value in fields.items():
        name = raw_name.decode("utf-8", "replace") if isinstance(raw_name, bytes) else str(raw_name)
        value = raw_value if isinstance(raw_value, bytes) else str(raw_value).encode()
        if name in EVENT_FIELDS and not INTEGER.match(value):
            raise DataError(f"entry {label}: field {name} must be a decimal integer, got {value[:40]!r}")
        values[name] = int(value) if name in EVENT_FIELDS else value
    try:
        return BehaviorEvent.from_json(values)
    except DataError as error:
        raise DataError(f"entry {label}: {str(error).removeprefix('events[0]').lstrip('. ')}") from None
