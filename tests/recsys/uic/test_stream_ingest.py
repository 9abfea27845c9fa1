"""StreamIngest: a Redis stream feeds the real center beside the HTTP service; events the model cannot
take are rejected (not retried forever); store errors are retried; the stop waits for the batch."""

import time

import pytest
from fastapi.testclient import TestClient

from recsys.uic.center import UserInterestCenter, model_version_of
from recsys.uic.events import BehaviorEvent
from tests.recsys.uic.conftest import tiny_model
from tests.recsys.uic.redis_server import redis_server


@pytest.fixture
def server(tmp_path):
    with redis_server(tmp_path / "redis") as running:
        yield running


def make_ingest(server, namespace="uic", **kwargs):
    from recsys.uic.redis_store import RedisStateStore
    from recsys.uic.redis_stream import RedisEventStream
    from recsys.uic.stream_ingest import StreamIngest

    model = tiny_model()
    center = UserInterestCenter(model, RedisStateStore(server.url, namespace), model_version_of(model))
    stream = RedisEventStream(server.url, "uic:events", "uic", "uic-0", min_idle_ms=0)
    return StreamIngest(center, stream, block_ms=50, **kwargs)


def events_of(users, per_user, item=lambda u, k: (u + k) % 30):
    return [BehaviorEvent(u, item(u, k), 100 + k, k, 1 + k % 3) for k in range(per_user) for u in range(users)]


def wait_until(condition, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_stream_feeds_the_center_behind_the_http_service_and_stats_show_its_counters(server):
    from recsys.uic.http_service import create_app

    ingest = make_ingest(server, batch_size=40)
    center = ingest.center
    events = events_of(10, 12)
    bad = BehaviorEvent(3, 30, 10_000, 99, 1)  # item 30: beyond the model's 30 items
    with TestClient(create_app(center, stream_ingest=ingest)) as client:
        ingest.stream.publish(events[:60] + [bad] + events[60:])
        wait_until(lambda: client.get("/stats").json()["stream"]["pending"] == 0
                   and client.get("/stats").json()["counters"].get("applied", 0) == len(events))
        stats = client.get("/stats").json()
        assert stats["users"] == 10 and stats["counters"]["applied"] == 120
        stream = stats["stream"]
        assert (stream["events"], stream["rejected"], stream["errors"], stream["running"]) == (121, 1, 0, True)
        assert client.get("/state/3").json()["last_key"] == [111, 11]  # the rejected event did not apply
        assert client.post("/events", json={"events": [{"user_id": 50, "item_id": 1, "timestamp": 1, "event_id": 0,
                                                        "actions": 1}]}).status_code == 200  # besides HTTP ingest
    assert not ingest.running  # the app's shutdown stopped the thread
    assert center.store.read([50])[50].events_applied == 1


def test_http_ingest_off_leaves_the_stream_as_the_only_source(server):
    from recsys.uic.http_service import create_app

    ingest = make_ingest(server)
    with TestClient(create_app(ingest.center, stream_ingest=ingest, http_ingest=False)) as client:
        assert client.post("/events", json={"events": []}).status_code in (404, 405)
        assert client.get("/stats").status_code == 200


def test_a_store_error_is_retried_with_the_failed_batch_first(server):
    ingest = make_ingest(server, batch_size=1000, retry_s=0.05)
    store, failures = ingest.center.store, []
    commit = store.commit

    def flaky_commit(records, counters=None):
        if len(failures) < 2:
            failures.append(1)
            raise OSError("store down")
        commit(records, counters)

    store.commit = flaky_commit
    events = events_of(5, 8)
    ingest.stream.publish(events)
    ingest.start()
    try:
        wait_until(lambda: store.counters().get("applied", 0) == len(events) and ingest.stream.pending() == 0)
    finally:
        ingest.stop()
    assert ingest.errors == 2 and "store down" in ingest.last_error
    assert {u: r.events_applied for u, r in store.read(range(5)).items()} == {u: 8 for u in range(5)}
    assert store.counters()["batches"] == 1  # the whole batch, once, after the store came back


def test_stop_lets_the_batch_in_progress_commit_and_acknowledge(server):
    ingest = make_ingest(server, batch_size=50)
    center, entered = ingest.center, []
    apply = center.apply

    def slow_apply(events):
        entered.append(len(events))
        time.sleep(0.3)
        return apply(events)

    center.apply = slow_apply
    ingest.stream.publish(events_of(5, 20))
    ingest.start()
    wait_until(lambda: entered)
    ingest.stop()
    assert not ingest.running and ingest.stream.pending() == 0
    assert center.store.counters()["applied"] == sum(entered)  # every batch handed over was committed
