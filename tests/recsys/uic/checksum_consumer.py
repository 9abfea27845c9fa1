"""A deterministic UIC applier for the stream tests, and a consumer process that runs it.

:class:`ChecksumApplier` does what the UIC's ingest does, with a running hash in place of the MIMN
state: read the batch's users, drop events by the idempotence rule of ``recsys/uic/events.py``
(``key == last``: duplicate; ``key < last``: late), apply the rest in key order, and commit every
changed record and the counters in one ``store.commit``. The hash is order-sensitive, so an event
applied twice, skipped or out of order changes it.

    python -m tests.recsys.uic.checksum_consumer --url redis://127.0.0.1:PORT/0 --stream s --group g \\
        --consumer c1 --namespace ns [--batch-size 100] [--min-idle-ms 0] [--pause-after-commit-ms 0]

consumes until SIGTERM/SIGINT (a graceful stop: the batch in progress is committed and acknowledged),
then prints its :class:`recsys.uic.redis_stream.ConsumeStats` as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import time
from collections import defaultdict

from recsys.uic.events import BehaviorEvent
from recsys.uic.store import StateStore, UserRecord

MODULUS = 2**61 - 1
VERSION = "checksum-v1"


def mix(state: int, event: BehaviorEvent) -> int:
    """The running hash after ``event`` (order-sensitive)."""
    return (state * 1_000_003 + event.item_id * 131 + event.actions + 1) % MODULUS


class ChecksumApplier:
    """``applier(events)`` -> ``{"applied": a, "duplicates": d, "late": l}``, committed to ``store``."""

    def __init__(self, store: StateStore, pause_after_commit_s: float = 0.0):
        self.store = store
        self.pause_after_commit_s = pause_after_commit_s  # widens the commit -> acknowledge window (kill tests)

    def __call__(self, events: list[BehaviorEvent]) -> dict[str, int]:
        by_user: dict[int, list[BehaviorEvent]] = defaultdict(list)
        for event in events:
            by_user[event.user_id].append(event)
        current = self.store.read(list(by_user))
        counts = {"applied": 0, "duplicates": 0, "late": 0}
        changed = []
        for user_id, user_events in by_user.items():
            record = current.get(user_id)
            state = int.from_bytes(record.state, "big") if record else 0
            last = record.last_key if record else (-1, -1)
            applied = record.events_applied if record else 0
            for event in sorted(user_events, key=lambda e: e.order_key):
                if event.order_key == last:
                    counts["duplicates"] += 1
                elif event.order_key < last:
                    counts["late"] += 1
                else:
                    state, last, applied = mix(state, event), event.order_key, applied + 1
                    counts["applied"] += 1
            if record is None or applied != record.events_applied:
                changed.append(UserRecord(user_id, state.to_bytes(8, "big"), last[0], last[1], applied, VERSION))
        self.store.commit(changed, counts)
        time.sleep(self.pause_after_commit_s)
        return counts


def main(argv: list[str] | None = None) -> int:
    from recsys.uic.redis_store import RedisStateStore
    from recsys.uic.redis_stream import RedisEventStream

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--min-idle-ms", type=int, default=0)
    parser.add_argument("--pause-after-commit-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with RedisStateStore(args.url, args.namespace) as store, \
            RedisEventStream(args.url, args.stream, args.group, args.consumer, args.min_idle_ms) as stream:
        print("ready", flush=True)
        stats = stream.run(ChecksumApplier(store, args.pause_after_commit_ms / 1000), stop, batch_size=args.batch_size, block_ms=100)
    print(json.dumps(dataclasses.asdict(stats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
