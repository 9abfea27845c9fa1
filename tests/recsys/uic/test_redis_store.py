"""RedisStateStore against a throwaway redis-server: the StateStore contract, all-or-nothing commits
(a failing commit, a server crash), consistent snapshots, and clear errors for a dead server."""

import threading

import pytest

from recsys.errors import ConfigError, DataError
from recsys.uic.redis_connection import RedisUnavailable
from recsys.uic.store import UserRecord
from tests.recsys.uic.redis_server import RedisServer, ReplyDroppingProxy, free_port, redis_server, redis_store_factory, require_redis


@pytest.fixture
def server(tmp_path):
    with redis_server(tmp_path / "redis") as running:
        yield running


@pytest.fixture
def store(server):
    from recsys.uic.redis_store import RedisStateStore

    with RedisStateStore(server.url, "uic-test") as opened:
        yield opened


def record(user_id, applied=1, state=None, version="v1"):
    return UserRecord(user_id, state if state is not None else bytes([user_id % 256]) * 16,
                      last_timestamp=100 + applied, last_event_id=applied, events_applied=applied, model_version=version)


def test_read_returns_committed_records_and_omits_absent_users(store):
    assert store.read([1, 2]) == {}
    store.commit([record(1), record(2, applied=3, state=b"\x00\xffbinary\x00")], {"applied": 4})
    got = store.read([2, 1, 9])
    assert got == {1: record(1), 2: record(2, applied=3, state=b"\x00\xffbinary\x00")}
    assert got[2].last_key == (103, 3)
    assert store.counters() == {"applied": 4}


def test_commit_overwrites_records_and_adds_counters(store):
    store.commit([record(1)], {"applied": 1, "late": 0})
    store.commit([record(1, applied=5, version="v2"), record(7)], {"applied": 5, "duplicates": 2})
    store.commit([], {"late": 3})
    assert store.read([1, 7]) == {1: record(1, applied=5, version="v2"), 7: record(7)}
    assert store.counters() == {"applied": 6, "late": 3, "duplicates": 2}


def test_reopened_store_and_namespaces(tmp_path):
    with redis_store_factory(tmp_path) as make_store:
        first = make_store()
        first.commit([record(3)], {"applied": 1})
        first.close()
        assert make_store().read([3]) == {3: record(3)}
        other = make_store("uic-other")
        assert other.read([3]) == {} and other.counters() == {}


def test_invalid_batches_are_refused_before_anything_is_written(store):
    store.commit([record(1)], {"applied": 1})
    bad_batches = [
        ([record(2), record(1, applied=2), record(2, applied=3)], "appears twice"),
        ([record(2), UserRecord(3, "text", 1, 1, 1, "v1")], "records[1].state must be bytes"),
        ([record(2), UserRecord(3, b"", 1, 2**64, 1, "v1")], "records[1].last_event_id"),
        ([record(2)], "counters['applied']"),
    ]
    for batch, message in bad_batches:
        counters = {"applied": 1.5} if "counters" in message else {"applied": len(batch)}
        with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
            store.commit(batch, counters)
    assert store.read([1, 2, 3]) == {1: record(1)}
    assert store.counters() == {"applied": 1}


def test_commit_failing_midway_leaves_nothing(store, server):
    """A command that fails at run time (a key of ours overwritten by another program) must not leave the
    batch's earlier writes behind, as MULTI/EXEC would: the commit script checks before it writes."""
    store.commit([record(1), record(2)], {"applied": 2})
    raw = server.client()
    raw.set(store.record_key(3), "not a hash")  # the 3rd record's key, in the middle of the batch
    with pytest.raises(DataError, match=r"holds a string, not a hash.*Nothing was written"):
        store.commit([record(1, applied=2), record(3, applied=2), record(4, applied=2)], {"applied": 3})
    raw.delete(store.record_key(3))
    raw.hset("{uic-test}:counters", "late", "seven")  # a counter that HINCRBY cannot add to
    with pytest.raises(DataError, match="counter late .* not an integer"):
        store.commit([record(1, applied=2), record(4, applied=2)], {"applied": 2, "late": 1})
    assert store.read([1, 2, 3, 4]) == {1: record(1), 2: record(2)}
    assert raw.hget("{uic-test}:counters", "applied") == b"2"
    assert raw.smembers("{uic-test}:users") == {b"1", b"2"}


def test_server_crash_keeps_every_acknowledged_batch_and_no_partial_one(tmp_path):
    """kill -9 of redis-server while a writer commits 50-record batches, then a restart from the AOF:
    every user holds the same batch number, it is at least the last acknowledged one, and the counters
    count exactly the batches whose records are there."""
    from recsys.uic.redis_store import RedisStateStore

    server = RedisServer(tmp_path / "redis").start()
    try:
        store = RedisStateStore(server.url, "crash")
        acknowledged, stop = [0], threading.Event()

        def writer():
            for batch in range(1, 100_000):
                if stop.is_set():
                    return
                try:
                    store.commit([record(u, applied=batch, state=bytes(4096)) for u in range(50)],
                                 {"batches": 1, "records": 50})
                except RedisUnavailable:
                    return
                acknowledged[0] = batch

        thread = threading.Thread(target=writer)
        thread.start()
        while acknowledged[0] < 20:
            threading.Event().wait(0.01)
        server.kill()
        stop.set()
        thread.join(timeout=30)
        server.start()
        with RedisStateStore(server.url, "crash") as reopened:
            batches = {r.events_applied for r in reopened.read(range(50)).values()}
            assert len(batches) == 1 and len(reopened.read(range(50))) == 50
            survived = batches.pop()
            assert survived >= acknowledged[0]
            assert reopened.counters() == {"batches": survived, "records": 50 * survived}
    finally:
        server.stop()


def test_a_commit_whose_reply_is_lost_is_not_sent_again(server):
    """The commit ran once on the server; re-sending it (as a retrying client does) would add its
    counters twice. The caller gets the error instead (and does not acknowledge its events)."""
    from recsys.uic.redis_store import RedisStateStore

    proxy = ReplyDroppingProxy(server.port)
    store = RedisStateStore(proxy.url, "uic")
    store.commit([record(1)], {"applied": 1})  # loads the script
    proxy.drop_reply_of(b"EVALSHA")
    with pytest.raises(RedisUnavailable, match=f"cannot reach Redis at {proxy.url}"):
        store.commit([record(1, applied=2)], {"applied": 1})
    assert store.counters() == {"applied": 2}
    assert store.read([1]) == {1: record(1, applied=2)}
    store.close()
    proxy.close()


def test_snapshots_restore_and_drop(store):
    store.commit([record(1), record(2)], {"applied": 2})
    store.snapshot("before")
    store.commit([record(1, applied=9, version="v2"), record(3)], {"applied": 2})
    store.snapshot("after")
    assert store.snapshots() == ["before", "after"]
    store.restore("before")
    assert store.read([1, 2, 3]) == {1: record(1), 2: record(2)}
    assert store.counters() == {"applied": 4}  # counters are ingest totals: a restore leaves them
    store.restore("after")
    assert store.read([1, 2, 3]) == {1: record(1, applied=9, version="v2"), 2: record(2), 3: record(3)}
    store.snapshot("before")  # overwriting makes it the newest
    assert store.snapshots() == ["after", "before"]
    store.drop_snapshot("after")
    assert store.snapshots() == ["before"]
    with pytest.raises(DataError, match=r"no snapshot 'after' in namespace 'uic-test'.*available \(oldest first\): \['before'\]"):
        store.restore("after")
    with pytest.raises(DataError, match="no snapshot 'gone'"):
        store.drop_snapshot("gone")
    with pytest.raises(DataError, match="snapshot name 'a:b'"):
        store.snapshot("a:b")
    store.commit([record(4)])
    store.restore("before")
    assert set(store.read(range(10))) == {1, 2, 3}
    store.drop_snapshot("before")
    assert store.snapshots() == [] and store.client.keys("{uic-test}:snap:*") == []


def test_empty_snapshot_restores_to_no_records(store):
    store.snapshot("empty")
    store.commit([record(1)])
    store.restore("empty")
    assert store.read([1]) == {} and store.snapshots() == ["empty"]


def test_snapshots_taken_during_commits_are_consistent_cuts(store):
    """Each commit sets all 30 users to one batch number; every snapshot taken meanwhile must hold a
    single batch number (never half a batch)."""
    done = threading.Event()

    def writer():
        for batch in range(1, 400):
            store.commit([record(u, applied=batch, state=bytes(512)) for u in range(30)], {"batches": 1})
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    names = []
    while not done.is_set() and len(names) < 20:
        names.append(f"s{len(names)}")
        store.snapshot(names[-1])
    thread.join()
    assert len(names) >= 2
    for name in names:
        store.restore(name)
        held = {r.events_applied for r in store.read(range(30)).values()}
        assert len(held) <= 1, f"snapshot {name} holds batches {sorted(held)}"


def test_dead_server_is_a_clear_error_naming_the_url(server):
    from recsys.uic.redis_store import RedisStateStore

    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailable, match=rf"cannot reach Redis at {url} .*Start a server"):
        RedisStateStore(url, "uic")
    with pytest.raises(RedisUnavailable, match="must start with redis://"):
        RedisStateStore("127.0.0.1:6379", "uic")
    store = RedisStateStore(server.url, "uic")
    server.kill()
    with pytest.raises(RedisUnavailable, match=rf"cannot reach Redis at {server.url} "):
        store.commit([record(1)], {"applied": 1})
    with pytest.raises(RedisUnavailable, match=rf"cannot reach Redis at {server.url} "):
        store.read([1])


def test_password_is_not_printed_and_decoded_clients_are_refused(server):
    import redis

    from recsys.uic.redis_store import RedisStateStore

    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailable) as error:
        RedisStateStore(url)
    assert "s3cret" not in str(error.value) and ":***@" in str(error.value)
    with pytest.raises(RedisUnavailable, match="decode_responses=False"):
        RedisStateStore(server.client(decode_responses=True))
    require_redis()


def test_clients_that_resend_commands_are_refused_and_given_ones_are_not_closed(server):
    import redis

    from recsys.uic.redis_store import RedisStateStore

    with pytest.raises(ConfigError, match=r"re-sends commands .*\(\d+ retries\).*Retry\(redis.backoff.NoBackoff\(\), 0\)"):
        RedisStateStore(redis.Redis(port=server.port))  # redis-py's default retries
    client = server.client()
    with RedisStateStore(client, "uic") as store:
        store.commit([record(1)])
        assert store.address == f"{server.url}"
    assert client.ping()  # the caller's client stays open
