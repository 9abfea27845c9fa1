"""The UIC's Redis floor: commit throughput of RedisStateStore and event throughput of RedisEventStream.

    python benchmarks/mimn_uic_redis.py                                  # a throwaway redis-server
    python benchmarks/mimn_uic_redis.py --url redis://10.0.0.5:6379/0    # a running server (uses, then deletes, namespace uic-bench)
    python benchmarks/mimn_uic_redis.py --records 20000 --events 100000 --out runs/bench/mimn_uic_redis.json

Store: ``--records`` user records of ``--state-bytes`` bytes (a serialized MIMN state; 4 KB is MIMN
with 8 slots x 128 dims in fp32) committed in batches of ``--batch`` (one Lua script per batch, with
the ``applied`` counter), then read back in batches of the same size, then one snapshot of all of
them (the script that blocks the server while it copies). Stream: ``--events`` events published in
pipelines of 1,000 ``XADD``, then consumed by one consumer in batches of ``--batch`` with an ``apply``
that does nothing (XREADGROUP, parsing and XACK only: the stream's own cost).

A throwaway server logs to an append-only file fsynced before each reply (``--fsync always``, what
the ingest's acknowledgement relies on; ``everysec`` for comparison). Client and server run on the
same host, so the figures include their contention for the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from recsys.atomic_files import write_json_atomic
from recsys.plots import grouped_bars, png_beside
from recsys.uic.events import BehaviorEvent
from recsys.uic.store import UserRecord


@contextlib.contextmanager
def throwaway_server(fsync: str) -> Iterator[str]:
    """A redis-server on a free loopback port with its AOF in a temp folder; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server), or pass --url")
    with tempfile.TemporaryDirectory(prefix="uic-redis-bench-") as folder, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                    "yes", "--appendfsync", fsync, "--dir", folder, "--logfile", f"{folder}/redis.log"])
        try:
            url = f"redis://127.0.0.1:{port}/0"
            _wait_for_ping(url, process)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_for_ping(url: str, process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    import redis

    client, deadline = redis.Redis.from_url(url), time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return client.close()
        except redis.exceptions.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server at {url} did not start")
            time.sleep(0.02)


def bench_store(url: str, namespace: str, records: int, state_bytes: int, batch: int) -> list[dict]:
    """Rows for commit, read and snapshot of ``records`` records of ``state_bytes`` bytes."""
    from recsys.uic.redis_store import RedisStateStore

    state = bytes(range(256)) * (state_bytes // 256) + bytes(state_bytes % 256)
    starts = range(0, records, batch)
    with RedisStateStore(url, namespace) as store:
        commit_s = []
        for start in starts:
            rows = [UserRecord(u, state, 1000 + u, u, 1, "bench") for u in range(start, min(start + batch, records))]
            began = time.perf_counter()
            store.commit(rows, {"applied": len(rows)})
            commit_s.append(time.perf_counter() - began)
        read_s = []
        for start in starts:
            began = time.perf_counter()
            got = store.read(range(start, min(start + batch, records)))
            read_s.append(time.perf_counter() - began)
            assert len(got) == min(batch, records - start) and got[start].state == state
        began = time.perf_counter()
        store.snapshot("bench")
        snapshot_s = time.perf_counter() - began
        store.drop_snapshot("bench")
        store.client.delete(*[store.record_key(u) for u in range(records)])
        store.client.delete("{" + namespace + "}:users", "{" + namespace + "}:counters", "{" + namespace + "}:snapseq")
    mb = records * state_bytes / 1e6
    return [
        _row("store commit", records, sum(commit_s), mb, f"batches of {batch}, median {statistics.median(commit_s) * 1e3:.1f} ms"),
        _row("store read", records, sum(read_s), mb, f"batches of {batch}, median {statistics.median(read_s) * 1e3:.1f} ms"),
        _row("store snapshot", records, snapshot_s, mb, "one script: the server serves nothing else meanwhile"),
    ]


def bench_stream(url: str, stream_key: str, events: int, batch: int) -> list[dict]:
    """Rows for publishing and consuming ``events`` events (a no-op ``apply``)."""
    from recsys.uic.redis_stream import RedisEventStream

    stream = RedisEventStream(url, stream_key, "bench", "c0")
    payload = [BehaviorEvent(i % 10_000, (i * 7919) % 1_000_000, 1_700_000_000 + i, i, i % 4) for i in range(events)]
    began = time.perf_counter()
    stream.publish(payload)
    publish_s = time.perf_counter() - began
    seen = [0]

    def apply(batch_events):
        seen[0] += len(batch_events)

    began = time.perf_counter()
    while stream.consume(apply, batch_size=batch, block_ms=0):
        pass
    consume_s = time.perf_counter() - began
    assert seen[0] == events and stream.pending() == 0
    stream.client.delete(stream_key)
    stream.close()
    return [_row("stream publish", events, publish_s, None, "pipelines of 1,000 XADD"),
            _row("stream consume", events, consume_s, None, f"batches of {batch}: XREADGROUP, parse, no-op apply, XACK")]


def _row(name: str, items: int, seconds: float, mb: float | None, note: str) -> dict:
    return dict(step=name, items=items, seconds=seconds, items_per_s=items / seconds,
                mb_per_s=None if mb is None else mb / seconds, note=note)


def format_table(rows: list[dict]) -> str:
    head = f"{'step':<16}{'items':>9}{'seconds':>10}{'items/s':>11}{'MB/s':>8}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        mb = "" if r["mb_per_s"] is None else f"{r['mb_per_s']:.0f}"
        lines.append(f"{r['step']:<16}{r['items']:>9}{r['seconds']:>10.3f}{r['items_per_s']:>11,.0f}{mb:>8}  {r['note']}")
    return "\n".join(lines)


def rates_plot(report: dict, path: Path) -> Path:
    """Bars of items/s per step (records for the store, events for the stream)."""
    groups = {row["step"]: {report["server"]: (row["items_per_s"], float("nan"))} for row in report["rows"]}
    return grouped_bars(groups, path, "items/s (records or events)", f"UIC on Redis, batches of {report['batch']:,}")


def run(url: str | None, records: int, state_bytes: int, batch: int, events: int, fsync: str) -> dict:
    """The report: settings, host, and one row per step."""
    with contextlib.ExitStack() as stack:
        target = url or stack.enter_context(throwaway_server(fsync))
        rows = bench_store(target, "uic-bench", records, state_bytes, batch) + bench_stream(target, "uic-bench:events", events, batch)
    return dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), host=platform.node(),
                cpu=platform.processor() or platform.machine(), server="given --url" if url else f"throwaway, appendfsync {fsync}",
                records=records, state_bytes=state_bytes, batch=batch, events=events, rows=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running Redis (default: start a throwaway redis-server)")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--state-bytes", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--fsync", choices=["always", "everysec"], default="always")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/mimn_uic_redis.json"))
    args = parser.parse_args()
    for name in ("records", "state_bytes", "batch", "events"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    report = run(args.url, args.records, args.state_bytes, args.batch, args.events, args.fsync)
    print(format_table(report["rows"]))
    write_json_atomic(args.out, report)
    png = rates_plot(report, png_beside(args.out))
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
