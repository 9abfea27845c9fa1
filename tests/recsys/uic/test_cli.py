"""``recsys uic warmup|snapshot|rollback|snapshots`` through ``recsys.cli.main`` (serve: test_crash_safety.py)."""

import datetime as dt

import numpy as np
import pytest
import torch

import recsys
from recsys.cli import main
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.uic.center import UserInterestCenter, model_version_of
from recsys.uic.event_log import event_ids
from recsys.uic.snapshots import take_daily_snapshot
from recsys.uic.sqlite_store import SQLiteStateStore
from recsys.uic.state_codec import StateCodec
from recsys.uic.store import UserRecord
from tests.recsys.uic.runs import write_run

WORLD = dict(num_users=60, num_items=30, num_topics=4, max_interests=3, mean_events_per_user=20,
             heavy_user_fraction=0.0, heavy_users=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return write_run(root / "old", seed=0, synthetic=WORLD), write_run(root / "new", seed=1, synthetic=WORLD)


def warmup(run, store, capsys) -> str:
    assert main(["uic", "warmup", "--checkpoint", str(run), "--events", "config", "--store", f"sqlite:{store}",
                 "--users-per-batch", "16"]) == 0
    return capsys.readouterr().out


def streamed(model, log, user: int):
    """Reference: one user's engaged events through ``model.update`` one at a time."""
    state = model.init_state(1)
    with torch.no_grad():
        for item, bits in zip(log.item_id[log.user_id == user], log.actions[log.user_id == user]):
            if bits:
                state = model.update(state, torch.tensor([int(item)]), torch.tensor([int(bits)]), torch.tensor([True]))
    return state


def test_warmup_builds_every_users_state_from_the_configs_world_and_is_idempotent(runs, tmp_path, capsys):
    old, _ = runs
    store = tmp_path / "uic.sqlite"
    out = warmup(old, store, capsys)
    log = generate(SyntheticConfig(**WORLD))
    assert f"from {len(log)} events" in out and f"applied={int((log.actions != 0).sum())}" in out
    model = recsys.load(old)
    center = UserInterestCenter(model, SQLiteStateStore(store), model_version_of(model))
    records = center.store.read(range(log.num_users))
    ids = event_ids(log)
    for user in range(log.num_users):
        last = np.flatnonzero(log.user_id == user)[-1]
        assert records[user].last_key == (int(log.timestamp[last]), int(ids[last]))
        assert records[user].events_applied == int((log.actions[log.user_id == user] != 0).sum())
    for user in (0, 17, 59):
        reference = streamed(model, log, user)
        torch.testing.assert_close(center.states([user]).induction, reference.induction, rtol=1e-5, atol=1e-6)
    center.store.close()
    again = warmup(old, store, capsys)
    assert "applied=0" in again and f"duplicates={log.num_users}" in again


def test_warmup_with_a_new_checkpoint_rebuilds_the_states_from_the_log(runs, tmp_path, capsys):
    old, new = runs
    warmup(old, tmp_path / "a.sqlite", capsys)
    out = warmup(new, tmp_path / "a.sqlite", capsys)  # the store holds the old model's states
    assert "rebuilt=60" in out and "applied=0" in out
    warmup(new, tmp_path / "b.sqlite", capsys)  # a clean warm-up with the new model
    with SQLiteStateStore(tmp_path / "a.sqlite") as rebuilt, SQLiteStateStore(tmp_path / "b.sqlite") as clean:
        a, b = rebuilt.read(range(60)), clean.read(range(60))
    assert {u: (r.last_key, r.events_applied, r.model_version) for u, r in a.items()} == \
           {u: (r.last_key, r.events_applied, r.model_version) for u, r in b.items()}
    codec = StateCodec.of(recsys.load(new))
    torch.testing.assert_close(codec.to_matrix(codec.decode([a[u].state for u in range(60)])),
                               codec.to_matrix(codec.decode([b[u].state for u in range(60)])), rtol=1e-5, atol=1e-6)


def test_a_config_of_another_model_is_refused(runs, tmp_path, capsys):
    old, _ = runs
    assert main(["uic", "warmup", "--checkpoint", str(old), "--config", "configs/mimn/synthetic.yaml", "--events", "config",
                 "--store", f"sqlite:{tmp_path / 'x.sqlite'}"]) == 2
    assert "pass the run's own config" in capsys.readouterr().err


def test_snapshot_keeps_the_last_seven_days_and_rollback_restores(tmp_path, capsys):
    path = tmp_path / "uic.sqlite"
    store = f"sqlite:{path}"
    with SQLiteStateStore(path) as s:
        s.commit([UserRecord(1, b"\x00" * 4, 5, 0, 1, "v")])
        s.snapshot("by-hand")
        for day in range(1, 10):
            name, dropped = take_daily_snapshot(s, dt.datetime(2026, 11, day, 23, tzinfo=dt.timezone.utc))
            assert name == f"uic-2026-11-{day:02d}"
        assert s.snapshots() == ["by-hand"] + [f"uic-2026-11-{d:02d}" for d in range(3, 10)]
        s.commit([UserRecord(1, b"\x01" * 4, 9, 0, 2, "v"), UserRecord(2, b"\x02" * 4, 9, 0, 1, "v")])
    assert main(["uic", "snapshot", "--store", store]) == 0
    today = f"uic-{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}"
    assert f"snapshot {today}" in capsys.readouterr().out
    assert main(["uic", "snapshot", "--store", store]) == 0  # the same day again: replaced, still 7
    out = capsys.readouterr().out
    assert main(["uic", "snapshots", "--store", store]) == 0
    listed = capsys.readouterr().out.split()
    assert listed[0] == "by-hand" and listed[-1] == today and len(listed) == 8, (out, listed)
    assert main(["uic", "rollback", "--to", "uic-2026-11-05", "--store", store]) == 0
    with SQLiteStateStore(path) as s:
        assert {u: r.last_key for u, r in s.read([1, 2]).items()} == {1: (5, 0)}
    assert main(["uic", "rollback", "--to", "uic-2026-11-01", "--store", store]) == 2
    assert "available (oldest first): ['by-hand', 'uic-2026-11-04'" in capsys.readouterr().err


def test_an_unknown_store_scheme_is_a_clear_error(tmp_path, capsys):
    assert main(["uic", "snapshots", "--store", "postgres:x"]) == 2
    assert "is not sqlite:PATH or redis://HOST:PORT/DB[?namespace=NS]" in capsys.readouterr().err


def test_warmup_from_a_log_folder(runs, tmp_path, capsys):
    from recsys.data.log_io import write_log

    old, _ = runs
    log = generate(SyntheticConfig(**WORLD))
    write_log(log, tmp_path / "log")
    assert main(["uic", "warmup", "--checkpoint", str(old), "--events", str(tmp_path / "log"),
                 "--store", f"sqlite:{tmp_path / 'uic.sqlite'}"]) == 0
    assert f"from {len(log)} events" in capsys.readouterr().out
    with SQLiteStateStore(tmp_path / "uic.sqlite") as store:
        assert len(store.read(range(log.num_users))) == log.num_users


def test_warmup_snapshot_and_rollback_on_a_redis_store(runs, tmp_path, capsys):
    from recsys.uic.redis_store import RedisStateStore
    from tests.recsys.uic.redis_server import redis_server

    old, _ = runs
    with redis_server(tmp_path / "redis") as server:
        store = f"{server.url}?namespace=uic.p1"
        assert main(["uic", "warmup", "--checkpoint", str(old), "--events", "config", "--store", store,
                     "--users-per-batch", "16"]) == 0
        log = generate(SyntheticConfig(**WORLD))
        assert f"applied={int((log.actions != 0).sum())}" in capsys.readouterr().out
        with RedisStateStore(server.url, "uic.p1") as redis_store, RedisStateStore(server.url, "uic") as default:
            warmed = redis_store.read(range(log.num_users))
            assert len(warmed) == log.num_users and default.count() == 0  # the namespace of the URL
            assert main(["uic", "snapshot", "--store", store]) == 0
            today = f"uic-{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}"
            redis_store.commit([UserRecord(0, b"\x00", 1, 1, 1, "other")])
            assert main(["uic", "snapshots", "--store", store]) == 0
            assert today in capsys.readouterr().out.split()
            assert main(["uic", "rollback", "--to", today, "--store", store]) == 0
            assert redis_store.read(range(log.num_users)) == warmed
        assert main(["uic", "rollback", "--to", "uic-2026-01-01", "--store", store]) == 2
        assert f"available (oldest first): ['{today}']" in capsys.readouterr().err
        assert main(["uic", "snapshots", "--store", f"{server.url}?namespace=a:b"]) == 2
        assert "namespace 'a:b' must be" in capsys.readouterr().err


def test_serve_flags_are_checked_before_anything_starts(runs, tmp_path, capsys):
    old, _ = runs
    assert main(["uic", "serve", "--checkpoint", str(old), "--no-http-ingest"]) == 2
    assert "--no-http-ingest needs --source" in capsys.readouterr().err
    assert main(["uic", "serve", "--checkpoint", str(old), "--store", f"sqlite:{tmp_path / 'uic.sqlite'}",
                 "--source", "kafka://x"]) == 2
    assert "--source 'kafka://x' must be a Redis URL" in capsys.readouterr().err
