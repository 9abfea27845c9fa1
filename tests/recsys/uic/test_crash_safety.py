"""``recsys uic serve`` killed with SIGKILL mid-ingestion loses no acknowledged event and applies none twice.

Two producers send their users' events in batches (at-least-once: a batch counts as delivered only
on its 200); the server is killed while they are sending, restarted, and the producers replay their
whole source from the start. Every user's final state, last key and event count must equal a
clean run's.
"""

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch

import recsys
from recsys.uic.center import UserInterestCenter, model_version_of
from recsys.uic.events import BehaviorEvent
from recsys.uic.sqlite_store import SQLiteStateStore
from tests.recsys.uic.runs import write_run

ROOT = Path(__file__).resolve().parents[3]
USERS, EVENTS_PER_USER, BATCH = 60, 40, 60


def source(producer: int) -> list[list[BehaviorEvent]]:
    """Producer ``producer``'s batches: its users' events (even or odd users), interleaved, in time order per user."""
    rng = random.Random(producer)
    events = [BehaviorEvent(u, rng.randrange(30), 1000 + 10 * k + rng.randrange(3), k, rng.choice([0, 1, 2, 3, 9]))
              for u in range(producer, USERS, 2) for k in range(EVENTS_PER_USER)]
    events.sort(key=lambda e: (e.timestamp, e.user_id, e.event_id))
    return [events[i:i + BATCH] for i in range(0, len(events), BATCH)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, store: Path, port: int) -> subprocess.Popen:
    """``recsys uic serve`` on the SQLite file ``store``."""
    return serve(run, port, "--store", f"sqlite:{store}")


def serve(run: Path, port: int, *flags: str) -> subprocess.Popen:
    """``recsys uic serve --checkpoint run --port port *flags``, once it answers ``/health``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "uic", "serve", "--checkpoint", str(run), "--port", str(port), *flags],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {server.stdout.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.05)
    server.kill()
    raise AssertionError("the server did not answer /health within 60 s")


def produce(port: int, batches, acked: list, stop: threading.Event) -> None:
    """Sends ``batches`` in order; appends each acknowledged batch's events to ``acked``; stops on the first failure."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for batch in batches:
            if stop.is_set():
                return
            body = {"events": [e.__dict__ for e in batch]}
            try:
                response = client.post("/events", json=body)
            except httpx.HTTPError:
                return  # the server died: this batch is not acknowledged
            assert response.status_code == 200, response.text
            acked.extend(batch)


def test_kill_mid_ingestion_then_replay_equals_a_clean_run(tmp_path):
    run = write_run(tmp_path / "run")
    store_path, port = tmp_path / "uic.sqlite", free_port()
    sources = [source(0), source(1)]

    server = start_server(run, store_path, port)
    acked: list[BehaviorEvent] = []
    stop = threading.Event()
    producers = [threading.Thread(target=produce, args=(port, s, acked, stop)) for s in sources]
    try:
        for p in producers:
            p.start()
        total = sum(len(b) for s in sources for b in s)
        while len(acked) < total // 3 and server.poll() is None:
            time.sleep(0.005)
        server.send_signal(signal.SIGKILL)  # mid-ingestion: both producers are sending
        server.wait(timeout=30)
        for p in producers:
            p.join(timeout=30)
    finally:
        stop.set()
        if server.poll() is None:
            server.kill()
    assert total // 3 <= len(acked) < total, "the kill must land while events are being sent"

    with SQLiteStateStore(store_path) as after_kill:  # every acknowledged event survived the kill
        records = after_kill.read(range(USERS))
        for event in acked:
            assert records[event.user_id].last_key >= event.order_key

    server = start_server(run, store_path, port)
    try:
        replayed = []
        producers = [threading.Thread(target=produce, args=(port, s, replayed, threading.Event())) for s in sources]
        for p in producers:
            p.start()
        for p in producers:
            p.join(timeout=120)
        assert len(replayed) == total
        counters = httpx.get(f"http://127.0.0.1:{port}/stats").json()["counters"]
    finally:
        server.kill()
        server.wait(timeout=30)

    model = recsys.load(run)  # the clean run: every batch once, in process
    clean = UserInterestCenter(model, SQLiteStateStore(tmp_path / "clean.sqlite"), model_version_of(model))
    for batches in zip(*sources):
        for batch in batches:
            clean.apply(batch)
    with SQLiteStateStore(store_path) as served:
        got, want = served.read(range(USERS)), clean.store.read(range(USERS))
        assert {u: (r.last_key, r.events_applied) for u, r in got.items()} == \
               {u: (r.last_key, r.events_applied) for u, r in want.items()}
        served_states, clean_states = clean.codec.decode([got[u].state for u in range(USERS)]), clean.states(range(USERS))
    for name, _ in clean.codec.shapes:
        torch.testing.assert_close(getattr(served_states, name), getattr(clean_states, name), rtol=1e-5, atol=1e-6)
    engaged = sum(1 for s in sources for b in s for e in b if e.actions)
    assert counters["applied"] == engaged  # over both server lives: each event applied exactly once
    clean.store.close()


def stream_events(resent: int = 120) -> list[BehaviorEvent]:
    """Both producers' events in publish order, then ``resent`` of them again (a producer's retries)."""
    events = [e for batches in zip(*(source(p) for p in (0, 1))) for batch in batches for e in batch]
    return events + random.Random(5).sample(events, resent)


def start_stream_server(run: Path, redis_url: str, port: int) -> subprocess.Popen:
    """``recsys uic serve`` with its state in namespace ``served`` and its events from stream ``events``."""
    return serve(run, port, "--store", f"{redis_url}?namespace=served",
                 "--source", f"{redis_url}?stream=events&group=uic&consumer=uic-0&batch=40&min_idle_ms=0")


def acknowledged(raw, parse_entry) -> list[BehaviorEvent]:
    """The events of the entries the group delivered and acknowledged (delivered, no longer pending)."""
    group = raw.xinfo_groups("events")[0]
    pending = {p["message_id"] for p in raw.xpending_range("events", "uic", "-", "+", 10_000)}
    return [parse_entry(fields, entry_id) for entry_id, fields in raw.xrange("events", "-", group["last-delivered-id"])
            if entry_id not in pending]


def test_kill_mid_stream_ingestion_on_redis_then_restart_equals_a_clean_run(tmp_path):
    """``recsys uic serve --source redis://... --store redis://...`` (the real center) is killed with
    SIGKILL while a producer publishes; restarted with the same consumer name it takes its pending
    entries back first. Every user's state, last key and count must equal a clean in-process run."""
    from recsys.uic.redis_store import RedisStateStore
    from recsys.uic.redis_stream import RedisEventStream, parse_entry
    from tests.recsys.uic.redis_server import redis_server

    run = write_run(tmp_path / "run")
    events, port = stream_events(), free_port()
    engaged = sum(1 for e in events[:USERS * EVENTS_PER_USER] if e.actions)
    with redis_server(tmp_path / "redis") as redis:
        raw = redis.client()
        publisher = RedisEventStream(redis.url, "events", "uic", "producer")
        publisher.publish(events[:600])

        def publish_rest():  # under load: the stream grows while the server consumes it
            for start in range(600, len(events), 100):
                publisher.publish(events[start:start + 100])
                time.sleep(0.02)

        producer = threading.Thread(target=publish_rest)
        served = RedisStateStore(redis.url, "served")
        applied = lambda: served.counters().get("applied", 0)  # noqa: E731
        server = start_stream_server(run, redis.url, port)
        producer.start()
        try:
            while applied() < engaged // 3 and server.poll() is None:
                time.sleep(0.005)
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
        at_kill, pending_at_kill = applied(), publisher.pending()
        assert engaged // 3 <= at_kill < engaged, "the kill must land while events are being consumed"
        records = served.read(range(USERS))  # every acknowledged event survived the kill
        for event in acknowledged(raw, parse_entry):
            assert records[event.user_id].last_key >= event.order_key

        producer.join(timeout=60)
        server = start_stream_server(run, redis.url, port)
        try:
            end = raw.xinfo_stream("events")["last-generated-id"]
            deadline = time.monotonic() + 60
            while not (raw.xinfo_groups("events")[0]["last-delivered-id"] == end and publisher.pending() == 0):
                assert time.monotonic() < deadline and server.poll() is None, "the restarted server did not finish"
                time.sleep(0.02)
            stats = httpx.get(f"http://127.0.0.1:{port}/stats").json()
            server.send_signal(signal.SIGTERM)  # graceful: the batch in progress is committed and acknowledged
            assert server.wait(timeout=30) == 0, server.stdout.read().decode()
        finally:
            if server.poll() is None:
                server.kill()
        assert stats["stream"]["pending"] == 0 and stats["stream"]["errors"] == 0
        assert stats["stream"]["redelivered"] == pending_at_kill  # its own pending entries came back first

        model = recsys.load(run)  # the clean run: the same stream, in order, in process
        clean = UserInterestCenter(model, RedisStateStore(redis.url, "clean"), model_version_of(model))
        for start in range(0, len(events), 40):
            clean.apply(events[start:start + 40])
        got, want = served.read(range(USERS)), clean.store.read(range(USERS))
        assert {u: (r.last_key, r.events_applied) for u, r in got.items()} == \
               {u: (r.last_key, r.events_applied) for u, r in want.items()}
        served_states = clean.codec.decode([got[u].state for u in range(USERS)])
        clean_states = clean.states(range(USERS))
        counters = served.counters()
        assert counters["applied"] == clean.store.counters()["applied"] == engaged  # none applied twice
        assert counters.get("duplicates", 0) + counters.get("late", 0) >= 120  # the producer's retries were dropped
        served.close()
        clean.store.close()
    for name, _ in clean.codec.shapes:
        torch.testing.assert_close(getattr(served_states, name), getattr(clean_states, name), rtol=1e-5, atol=1e-6)
