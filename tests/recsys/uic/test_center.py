"""The UIC center: streamed states equal the training forward, idempotence, model-version rebuilds."""

import random

import pytest
import torch

from recsys.data.collate import kjt_from_jagged
from recsys.errors import DataError
from recsys.uic.center import ApplyResult, UserInterestCenter, model_version_of
from recsys.uic.events import BehaviorEvent
from recsys.uic.sqlite_store import SQLiteStateStore
from tests.recsys.models.sequence_batches import SPEC, make_batch
from tests.recsys.uic.conftest import tiny_model

FIELDS = ("memory", "utilisation", "controller", "read", "induction")


def user_streams(num_users: int = 6, seed: int = 0) -> dict[int, list[BehaviorEvent]]:
    """Per user a time-ordered stream with ties of timestamp and unengaged impressions mixed in."""
    rng = random.Random(seed)
    streams = {}
    for user in range(num_users):
        t, events = rng.randrange(20), []  # users' times overlap
        for event_id in range(rng.randrange(0, 9)):
            t += rng.choice([0, 0, 3, 7])  # ties of timestamp apply in event_id order
            events.append(BehaviorEvent(user, rng.randrange(SPEC.num_items), t, event_id, rng.choice([0, 1, 2, 5, 8, 15])))
        streams[user] = events
    return streams


def training_state(model, streams):
    """The reference: the training forward (``embed`` + ``arch.encode``) over each user's engaged events."""
    engaged = [[(e.item_id, e.actions) for e in streams[u] if e.actions] for u in sorted(streams)]
    lengths = torch.tensor([len(h) for h in engaged], dtype=torch.int32)
    items = torch.tensor([i for h in engaged for i, _ in h], dtype=torch.int64)
    bits = torch.tensor([a for h in engaged for _, a in h], dtype=torch.int64)
    history = kjt_from_jagged({"seq_item_id": (items, lengths), "seq_actions": (bits, lengths)})
    with torch.no_grad():
        events, mask, _ = model.embed(history, torch.zeros(len(engaged), dtype=torch.int64), len(engaged))
        return model.arch.encode(events, mask)


def make_center(tmp_path, model, **kwargs):
    return UserInterestCenter(model, SQLiteStateStore(tmp_path / "uic.sqlite"), model_version_of(model), **kwargs)


def assert_states_equal(state, reference):
    for name in FIELDS:
        torch.testing.assert_close(getattr(state, name), getattr(reference, name), rtol=1e-5, atol=1e-6, msg=name)


def test_streaming_one_event_at_a_time_equals_the_training_forward(store_factory):
    """Through the HTTP service, one event per request, on every store of ``conftest.STORE_FACTORIES``."""
    import base64

    from fastapi.testclient import TestClient

    from recsys.uic.http_service import create_app

    model = tiny_model()
    streams = user_streams()
    center = UserInterestCenter(model, store_factory(), model_version_of(model))
    arrivals = sorted((e for s in streams.values() for e in s), key=lambda e: (e.order_key, e.user_id))
    assert len({e.user_id for e in arrivals[:10]}) > 1  # users interleave
    with TestClient(create_app(center)) as client:
        for event in arrivals:
            assert client.post("/events", json={"events": [event.__dict__]}).status_code == 200
        served = client.post("/states", json={"user_ids": sorted(streams)}).json()["states"]
    reference = training_state(model, streams)
    assert_states_equal(center.states(sorted(streams)), reference)
    assert_states_equal(center.codec.decode([base64.b64decode(row["state"]) for row in served]), reference)
    engaged = {u: sum(1 for e in s if e.actions) for u, s in streams.items()}
    assert {row["user_id"]: row["events_applied"] for row in served} == engaged


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_batch_splits_and_shuffled_batches_give_the_same_states(tmp_path, seed):
    model = tiny_model()
    streams = user_streams(seed=seed)
    center = make_center(tmp_path, model)
    rng = random.Random(seed)
    cursors = {u: 0 for u in streams}
    while any(cursors[u] < len(streams[u]) for u in streams):
        batch = []
        for u in streams:  # each batch takes the next few events of some users, in shuffled order
            take = rng.randrange(0, 4)
            batch += streams[u][cursors[u]:cursors[u] + take]
            cursors[u] += take
        rng.shuffle(batch)
        center.apply(batch)
    assert_states_equal(center.states(sorted(streams)), training_state(model, streams))
    records = center.store.read(sorted(streams))
    for u, events in streams.items():
        if events:
            assert records[u].last_key == events[-1].order_key
            assert records[u].events_applied == sum(1 for e in events if e.actions)


def test_scores_from_the_center_equal_the_ranker_on_the_whole_history(tmp_path):
    model = tiny_model()
    histories = [[(3, 1), (7, 3), (9, 8)], [], [(1, 5), (2, 1)], [(4, 1), (5, 2), (6, 4), (8, 9), (9, 1), (11, 15)]]
    center = make_center(tmp_path, model)
    center.apply([BehaviorEvent(u, item, 10 * k, k, bits) for u, h in enumerate(histories) for k, (item, bits) in enumerate(h)])
    batch = make_batch(histories)
    with torch.no_grad():
        expected = model(batch)
    torch.testing.assert_close(center.score(range(4), batch.item_id, batch.dense_features), expected)


def test_a_redelivered_batch_applies_nothing(tmp_path):
    model = tiny_model()
    streams = user_streams()
    center = make_center(tmp_path, model)
    batch = [e for s in streams.values() for e in s]
    first = center.apply(batch)
    assert first.applied == sum(1 for e in batch if e.actions) and first.skipped == sum(1 for e in batch if not e.actions)
    before = center.states(sorted(streams))
    again = center.apply(batch)
    users = sum(1 for s in streams.values() if s)
    # the rule of events.py: each user's last event is a duplicate, the earlier ones are older than it (late)
    assert again == ApplyResult(duplicates=users, late=len(batch) - users)
    assert_states_equal(center.states(sorted(streams)), before)
    counters = center.store.counters()
    assert counters["applied"] == first.applied and counters["duplicates"] == users and counters["batches"] == 2


def test_late_events_are_rejected_and_counted(tmp_path):
    center = make_center(tmp_path, tiny_model())
    center.apply([BehaviorEvent(0, 1, 100, 5, 1)])
    after_first = center.states([0])
    result = center.apply([BehaviorEvent(0, 2, 100, 4, 1), BehaviorEvent(0, 3, 99, 9, 1), BehaviorEvent(0, 4, 100, 5, 1),
                           BehaviorEvent(0, 5, 100, 6, 1)])
    assert result == ApplyResult(applied=1, duplicates=1, late=2)
    assert center.store.read([0])[0].last_key == (100, 6)
    assert not torch.equal(center.states([0]).memory, after_first.memory)
    twin = make_center(tmp_path / "twin", tiny_model())  # only the accepted events count
    twin.apply([BehaviorEvent(0, 1, 100, 5, 1), BehaviorEvent(0, 5, 100, 6, 1)])
    assert_states_equal(center.states([0]), twin.states([0]))


def test_a_duplicate_inside_one_batch_is_applied_once(tmp_path):
    center = make_center(tmp_path, tiny_model())
    event = BehaviorEvent(3, 1, 100, 0, 1)
    assert center.apply([event, event]) == ApplyResult(applied=1, duplicates=1)
    assert center.store.read([3])[3].events_applied == 1


def test_another_model_version_is_rebuilt_from_init_state(tmp_path):
    store = SQLiteStateStore(tmp_path / "uic.sqlite")
    old = UserInterestCenter(tiny_model(seed=0), store, "v-old")
    old.apply([BehaviorEvent(0, 1, 10, 0, 1), BehaviorEvent(0, 2, 20, 1, 1), BehaviorEvent(1, 2, 20, 0, 1)])
    new_model = tiny_model(seed=1)
    new = UserInterestCenter(new_model, store, model_version_of(new_model))
    assert new.states([0]).memory.equal(new_model.init_state(1).memory)  # an old-version record is not read
    result = new.apply([BehaviorEvent(0, 3, 30, 2, 1), BehaviorEvent(0, 9, 15, 7, 1)])
    assert result == ApplyResult(applied=1, late=1, rebuilt=1)
    record = store.read([0])[0]
    assert record.model_version == new.model_version and record.events_applied == 1 and record.last_key == (30, 2)
    fresh = make_center(tmp_path / "fresh", new_model)
    fresh.apply([BehaviorEvent(0, 3, 30, 2, 1)])  # only the event after the switch
    assert_states_equal(new.states([0]), fresh.states([0]))
    assert store.read([1])[1].model_version == "v-old"  # users without events stay until they get one


def test_with_a_history_a_rebuild_replays_the_logged_events(tmp_path):
    streams = user_streams(seed=4)
    logged = {u: s[:-2] for u, s in streams.items()}
    store = SQLiteStateStore(tmp_path / "uic.sqlite")
    UserInterestCenter(tiny_model(seed=0), store, "v-old").apply([e for s in logged.values() for e in s])
    new_model = tiny_model(seed=1)
    new = UserInterestCenter(new_model, store, model_version_of(new_model), history=lambda u: streams[u])
    result = new.apply([e for s in streams.values() for e in s[-2:]])
    users_with_log = sum(1 for s in logged.values() if s)
    assert result.rebuilt == users_with_log
    assert result.replayed == sum(1 for s in logged.values() for e in s if e.actions)  # the log after the last key is not replayed
    assert_states_equal(new.states(sorted(streams)), training_state(new_model, streams))


def test_bad_events_are_refused_naming_the_field_and_apply_nothing(tmp_path):
    center = make_center(tmp_path, tiny_model())
    with pytest.raises(DataError, match=r"events\[1\]\.item_id=30 is outside the model's items 0..29"):
        center.apply([BehaviorEvent(0, 1, 10, 0, 1), BehaviorEvent(0, 30, 11, 1, 1)])
    with pytest.raises(DataError, match=r"events\[0\]\.actions=16"):
        center.apply([BehaviorEvent(0, 1, 10, 0, 16)])
    with pytest.raises(DataError, match=r"events\[0\]\.event_id"):
        center.apply([BehaviorEvent(0, 1, 10, 2**63, 1)])
    assert center.store.read([0]) == {} and center.store.counters() == {}


def test_unengaged_events_step_the_state_when_asked(tmp_path):
    model = tiny_model()
    streams = user_streams(seed=5)
    center = make_center(tmp_path, model, apply_unengaged=True)
    center.apply([e for s in streams.values() for e in s])
    with torch.no_grad():  # reference: every event, actions as they are (0 adds no action embedding)
        expected = model.init_state(len(streams))
        for u, s in streams.items():
            for e in s:
                mask = torch.arange(len(streams)) == u
                expected = model.update(expected, torch.full((len(streams),), e.item_id), torch.full((len(streams),), e.actions), mask)
    assert_states_equal(center.states(sorted(streams)), expected)
