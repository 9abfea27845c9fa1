"""The UIC's stream ingest: a thread that feeds a Redis stream's events to ``center.apply``.

``recsys uic serve --source redis://...`` runs one :class:`StreamIngest` beside the HTTP service::

    XREADGROUP (RedisEventStream) -> drop events the model cannot take (logged, counted "rejected")
                                  -> center.apply(batch)   (commits to the store)
                                  -> XACK                  (only after the commit)

At-least-once from end to end: a process killed anywhere leaves the unacknowledged entries pending in
the group; the restarted service (same consumer name, or another one after ``min_idle_ms``) applies
them again and the center's idempotence rule (``recsys/uic/events.py``) drops what was committed.

Errors: an event the model cannot take (an item id beyond its table, action bits beyond its
vocabulary) would fail its whole batch on every redelivery, so it is logged, acknowledged and
counted as ``rejected`` instead (the stream already does so for malformed entries). Any other error
(Redis or the store unreachable) is logged and counted as ``errors``; the loop waits
``retry_s`` and goes on, with the failed batch's entries first (they stayed pending).
:meth:`StreamIngest.stop` (the service's SIGTERM / SIGINT) lets the batch in progress commit and
acknowledge before the thread ends.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

from recsys.errors import DataError
from recsys.uic.center import UserInterestCenter
from recsys.uic.events import BehaviorEvent

logger = logging.getLogger(__name__)


class StreamIngest:
    """Consumes ``stream`` into ``center`` on a thread of its own.

    Args:
        center: the center whose :meth:`~UserInterestCenter.apply` each batch goes to.
        stream: a :class:`recsys.uic.redis_stream.RedisEventStream` (one consumer of a group).
        batch_size: entries per ``apply`` (at most).
        block_ms: how long one read waits for new entries; bounds how long :meth:`stop` waits when idle.
        retry_s: pause after an error before the next read.

    Example::

        ingest = StreamIngest(center, RedisEventStream(url, "uic:events", "uic", "uic-0")).start()
        ...
        ingest.stop()       # the batch in progress is committed and acknowledged first
    """

    def __init__(self, center: UserInterestCenter, stream: Any, batch_size: int = 500, block_ms: int = 500,
                 retry_s: float = 1.0):
        if batch_size < 1:
            raise DataError(f"the source's batch must be >= 1 entries, got {batch_size}")
        self.center, self.stream = center, stream
        self.batch_size, self.block_ms, self.retry_s = batch_size, block_ms, retry_s
        self.rejected = 0
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="uic-stream-ingest", daemon=True)

    def start(self) -> "StreamIngest":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """Ends the loop after the batch in progress (committed and acknowledged) and waits for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def apply(self, events: list[BehaviorEvent]) -> None:
        """``center.apply`` of the events the model can take; the others are logged and counted."""
        valid = []
        for event in events:
            try:
                self.center.validate([event])
            except DataError as error:
                self.rejected += 1
                logger.warning("stream event rejected (acknowledged, not applied): %s: %s", event, error)
                continue
            valid.append(event)
        if valid:
            self.center.apply(valid)

    def stats(self) -> dict[str, Any]:
        """The stream's counters (:class:`~recsys.uic.redis_stream.ConsumeStats`), this loop's and the group's pending entries."""
        body: dict[str, Any] = {"stream": self.stream.stream, "group": self.stream.group, "consumer": self.stream.consumer,
                                "running": self.running, **dataclasses.asdict(self.stream.stats),
                                "rejected": self.rejected, "errors": self.errors, "last_error": self.last_error}
        try:
            body["pending"] = self.stream.pending()
        except Exception as error:  # Redis down: the stats still answer
            body["pending"] = None
            body["last_error"] = str(error)
        return body

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.stream.run(self.apply, self._stop, batch_size=self.batch_size, block_ms=self.block_ms)
            except Exception as error:  # the failed batch stays pending and goes first next time
                self.errors += 1
                self.last_error = f"{type(error).__name__}: {error}"
                logger.exception("stream ingest from %s failed; retrying in %.1f s", self.stream.stream, self.retry_s)
                self._stop.wait(self.retry_s)
        logger.info("stream ingest from %s stopped", self.stream.stream)
