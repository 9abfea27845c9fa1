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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "uic", "serve", "--checkpoint", str(run), "--store", f"sqlite:{store}",
         "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {server.stdout.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
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
