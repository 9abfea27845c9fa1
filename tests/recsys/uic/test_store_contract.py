"""The StateStore contract, run on every store of ``conftest.STORE_FACTORIES``."""

import pytest

from recsys.errors import DataError
from recsys.uic.store import UserRecord


def record(user_id: int, key: int = 1, version: str = "v1", state: bytes = b"\x00\x01\x02\x03") -> UserRecord:
    return UserRecord(user_id=user_id, state=state, last_timestamp=key, last_event_id=key + 1, events_applied=key,
                      model_version=version)


def test_read_returns_what_commit_wrote_and_omits_unknown_users(store_factory):
    store = store_factory()
    assert store.read([1, 2]) == {}
    store.commit([record(1, state=bytes(range(256))), record(2**62, key=2**62)])
    got = store.read([1, 2**62, 3, 1])
    assert got == {1: record(1, state=bytes(range(256))), 2**62: record(2**62, key=2**62)}
    assert got[1].last_key == (1, 2)


def test_commit_replaces_records_and_adds_counters(store_factory):
    store = store_factory()
    store.commit([record(1)], {"applied": 2, "late": 1})
    store.commit([record(1, key=5, version="v2")], {"applied": 3})
    store.commit([], {"duplicates": 4})
    assert store.read([1])[1] == record(1, key=5, version="v2")
    assert store.counters() == {"applied": 5, "late": 1, "duplicates": 4}


def test_records_and_counters_survive_closing(store_factory):
    store = store_factory()
    store.commit([record(7, key=3)], {"applied": 1})
    store.close()
    again = store_factory()
    assert again.read([7]) == {7: record(7, key=3)} and again.counters() == {"applied": 1}


def test_a_failed_commit_leaves_nothing(store_factory):
    store = store_factory()
    store.commit([record(1)], {"applied": 1})
    with pytest.raises(Exception):  # the second record's id does not fit a signed 64-bit integer
        store.commit([record(1, key=9), record(2**64)], {"applied": 10})
    assert store.read([1]) == {1: record(1)} and store.counters() == {"applied": 1}


def test_many_users_read_in_one_call(store_factory):
    store = store_factory()
    store.commit([record(u, key=u) for u in range(2500)])
    got = store.read(list(range(0, 3000)))
    assert len(got) == 2500 and got[2499] == record(2499, key=2499)


def test_snapshot_restore_and_drop(store_factory):
    store = store_factory()
    store.commit([record(1), record(2)])
    store.snapshot("day-1")
    store.commit([record(1, key=8), record(3)])
    store.snapshot("day-2")
    store.commit([record(4)])
    assert store.snapshots() == ["day-1", "day-2"]
    store.restore("day-1")
    assert store.read([1, 2, 3, 4]) == {1: record(1), 2: record(2)}
    store.restore("day-2")
    assert store.read([1, 2, 3, 4]) == {1: record(1, key=8), 2: record(2), 3: record(3)}
    store.snapshot("day-1")  # overwriting a name makes it the newest
    assert store.snapshots() == ["day-2", "day-1"]
    store.drop_snapshot("day-2")
    assert store.snapshots() == ["day-1"]
    with pytest.raises(DataError, match=r"no snapshot 'day-2'.*\['day-1'\]"):
        store.restore("day-2")
    assert store.read([3])[3] == record(3)  # a failed restore changes nothing


def test_snapshots_survive_closing(store_factory):
    store = store_factory()
    store.commit([record(1)])
    store.snapshot("s")
    store.commit([record(1, key=4)])
    store.close()
    again = store_factory()
    assert again.snapshots() == ["s"]
    again.restore("s")
    assert again.read([1]) == {1: record(1)}


def test_dropping_or_restoring_a_missing_snapshot_is_a_clear_error_that_changes_nothing(store_factory):
    store = store_factory()
    store.commit([record(1)], {"applied": 1})
    store.snapshot("kept")
    for action in (store.drop_snapshot, store.restore):
        with pytest.raises(DataError, match=r"no snapshot 'gone' in .*available \(oldest first\): \['kept'\]"):
            action("gone")
    assert store.snapshots() == ["kept"] and store.read([1]) == {1: record(1)}


def test_snapshot_names_follow_one_rule(store_factory):
    store = store_factory()
    for bad in ("", "a:b", "x" * 129, "a b", "snap/1", 7):
        for action in (store.snapshot, store.restore, store.drop_snapshot):
            with pytest.raises(DataError, match="must be 1-128 letters, digits or ._-"):
                action(bad)
    store.snapshot("uic-2026-12-04")
    store.snapshot("v3.model_A-" + "x" * 117)  # 128 characters
    assert store.snapshots() == ["uic-2026-12-04", "v3.model_A-" + "x" * 117]


def test_overwriting_a_snapshot_makes_it_the_newest_and_holds_the_new_records(store_factory):
    store = store_factory()
    for name in ("a", "b", "c"):
        store.snapshot(name)
    store.commit([record(5)])
    store.snapshot("a")
    assert store.snapshots() == ["b", "c", "a"]
    store.restore("b")
    assert store.read([5]) == {}
    store.restore("a")
    assert store.read([5]) == {5: record(5)}


def test_restore_leaves_the_counters_and_an_empty_snapshot_restores_to_no_records(store_factory):
    store = store_factory()
    store.snapshot("empty")
    store.commit([record(1), record(2)], {"applied": 2})
    assert store.count() == 2
    store.restore("empty")
    assert store.read([1, 2]) == {} and store.count() == 0
    assert store.counters() == {"applied": 2}  # ingest totals, not state
