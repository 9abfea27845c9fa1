"""The UIC's HTTP service (in-process TestClient): validation, ack after commit, state lookups."""

import base64

import pytest
import torch
from fastapi.testclient import TestClient

from recsys.uic.center import UserInterestCenter, model_version_of
from recsys.uic.sqlite_store import SQLiteStateStore
from tests.recsys.uic.conftest import tiny_model

EVENTS = [
    {"user_id": 1, "item_id": 3, "timestamp": 100, "event_id": 0, "actions": 1},
    {"user_id": 1, "item_id": 4, "timestamp": 101, "event_id": 1, "actions": 2},
    {"user_id": 2, "item_id": 5, "timestamp": 100, "event_id": 0, "actions": 0},
    {"user_id": 2, "item_id": 6, "timestamp": 102, "event_id": 1, "actions": 3},
]


@pytest.fixture
def service(tmp_path):
    from recsys.uic.http_service import create_app

    model = tiny_model()
    center = UserInterestCenter(model, SQLiteStateStore(tmp_path / "uic.sqlite"), model_version_of(model))
    with TestClient(create_app(center), raise_server_exceptions=False) as client:
        yield client, center
    center.store.close()


def test_a_batch_is_acknowledged_with_its_counts_after_it_is_committed(service, tmp_path):
    client, center = service
    response = client.post("/events", json={"events": EVENTS})
    assert response.status_code == 200
    assert response.json() == {"applied": 3, "duplicates": 0, "late": 0, "skipped": 1, "rebuilt": 0, "replayed": 0}
    with SQLiteStateStore(tmp_path / "uic.sqlite") as other:  # another connection sees the batch: it is on disk
        assert {u: r.last_key for u, r in other.read([1, 2]).items()} == {1: (101, 1), 2: (102, 1)}
    again = client.post("/events", json={"events": EVENTS}).json()
    assert again["applied"] == 0 and again["duplicates"] == 2 and again["late"] == 2
    assert client.get("/stats").json()["counters"] == {"applied": 3, "batches": 2, "duplicates": 2, "late": 2, "skipped": 1}


def test_no_acknowledgement_when_the_commit_fails(service):
    client, center = service

    def failing_commit(records, counters=None):
        raise OSError("disk full")

    center.store.commit = failing_commit
    assert client.post("/events", json={"events": EVENTS}).status_code == 500
    assert center.store.read([1, 2]) == {}


@pytest.mark.parametrize("body, status, message", [
    ({"events": [EVENTS[0], {"user_id": 1, "item_id": 3, "event_id": 2}]}, 422, r"events[1].timestamp is missing"),
    ({"events": [{**EVENTS[0], "item_id": "3"}]}, 422, "events[0].item_id must be an integer"),
    ({"events": [{**EVENTS[0], "item_id": 30}]}, 422, "events[0].item_id=30 is outside the model's items 0..29"),
    ({"events": [{**EVENTS[0], "colour": 1}]}, 422, "events[0] has unknown fields ['colour']"),
    ({"events": {"user_id": 1}}, 422, "events must be a list"),
    ([EVENTS[0]], 422, '{"events": [...]}'),
])
def test_bad_batches_are_refused_naming_the_field_and_apply_nothing(service, body, status, message):
    client, center = service
    response = client.post("/events", json=body)
    assert response.status_code == status and message in response.json()["error"]
    assert center.store.counters() == {}


def test_a_body_that_is_not_json_is_a_400(service):
    client, _ = service
    response = client.post("/events", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not JSON" in response.json()["error"]


def test_state_of_one_user_and_the_batched_lookup(service):
    client, center = service
    client.post("/events", json={"events": EVENTS})
    expected = center.states([1, 7])
    one = client.get("/state/1").json()
    assert one["last_key"] == [101, 1] and one["events_applied"] == 2 and one["current_model"]
    torch.testing.assert_close(torch.tensor(one["state"]["memory"]), expected.memory[0])
    assert client.get("/state/7").status_code == 404
    body = client.post("/states", json={"user_ids": [1, 7]}).json()
    assert body["model_version"] == center.model_version and [s["found"] for s in body["states"]] == [True, False]
    blobs = [base64.b64decode(s["state"]) for s in body["states"]]
    decoded = center.codec.decode(blobs)
    for name, _ in center.codec.shapes:
        torch.testing.assert_close(getattr(decoded, name), getattr(expected, name), rtol=0, atol=0)
    lists = client.post("/states", json={"user_ids": [7], "encoding": "lists"}).json()["states"][0]["state"]
    torch.testing.assert_close(torch.tensor(lists["memory"]), tiny_model().init_state(1).memory[0])
    bad = client.post("/states", json={"user_ids": [1, -2]})
    assert bad.status_code == 422 and "user_ids[1]" in bad.json()["error"]


def test_health(service):
    client, center = service
    assert client.get("/health").json()["model_version"] == center.model_version


def test_the_daily_snapshot_thread_takes_the_days_snapshot(tmp_path):
    import datetime as dt
    import time

    from recsys.uic.http_service import create_app

    model = tiny_model()
    center = UserInterestCenter(model, SQLiteStateStore(tmp_path / "uic.sqlite"), model_version_of(model))
    with TestClient(create_app(center, daily_snapshot_keep=7)):
        deadline = time.monotonic() + 10
        while not center.store.snapshots() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert center.store.snapshots() == [f"uic-{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}"]
    center.store.close()
