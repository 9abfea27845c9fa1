"""The UIC benchmark on tiny settings: ingest into each store, and the latency section's rows, targets and figure."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.recsys.uic.redis_server import require_redis

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mimn_uic.py"
spec = importlib.util.spec_from_file_location("mimn_uic_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules["mimn_uic_benchmark"] = bench
spec.loader.exec_module(bench)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_ingest_rows_count_every_user_and_the_bytes_they_take(kind, tmp_path):
    if kind == "redis":
        require_redis()
    batches = bench.stream(600, users=50, items=40, engaged=0.8, batch=100)
    row = bench.ingest("tiny", kind, batches, items=40, warmup=1, folder=tmp_path, profile=False)
    assert row["store"] == kind and row["events"] == 500 and row["batches"] == 5
    assert row["users_stored"] == len({e.user_id for b in batches for e in b})
    assert row["state_bytes"] == 176 and row["store_bytes_per_user"] > row["state_bytes"]  # the state plus the store's keys


def test_latency_rows_targets_and_figure(tmp_path):
    out = tmp_path / "latency.json"
    args = argparse.Namespace(lengths=[4, 16], candidates=3, users=2, items=40, repeats=4, budget_s=0.05,
                              stores=["sqlite"], device="cpu", out=str(out))
    bench.latency(args)
    report = json.loads(out.read_text())
    keys = {(r["model"], r["shape"], r["length"]) for r in report["rows"]}
    assert keys == {(m, s, n) for m in ("MIMN+UIC (sqlite)", "DIN (full sequence)") for s in ("1x3", "2x1") for n in (4, 16)}
    assert all(r["p99_ms"] >= r["p50_ms"] > 0 for r in report["rows"])
    assert set(report["targets"]["growth"]) == {"MIMN+UIC (sqlite) 1x3", "MIMN+UIC (sqlite) 2x1",
                                                "DIN (full sequence) 1x3", "DIN (full sequence) 2x1"}
    assert out.with_suffix(".png").stat().st_size > 0


def test_the_latency_states_are_what_streaming_ingest_builds(tmp_path):
    """build_states (arch.encode) must store what the UIC computes event by event, or MIMN's rows time the wrong state."""
    import torch

    from recsys.uic.center import UserInterestCenter, model_version_of
    from recsys.uic.events import BehaviorEvent
    from recsys.uic.sqlite_store import SQLiteStateStore

    model = bench.model_of("tiny", 40, 12)
    _, _, _, item_of, bits_of = bench.history_batch(model, [0, 1], 12, 40, seed=3)
    with SQLiteStateStore(tmp_path / "a.sqlite") as built, SQLiteStateStore(tmp_path / "b.sqlite") as streamed:
        bench.build_states(model, built, item_of, bits_of, 12)
        center = UserInterestCenter(model, streamed, model_version_of(model))
        for k in range(12):
            center.apply([BehaviorEvent(u, int(item_of[u][k]), k + 1, 0, int(bits_of[u][k])) for u in (0, 1)])
        a = center.codec.decode([built.read([u])[u].state for u in (0, 1)])
        b = center.codec.decode([streamed.read([u])[u].state for u in (0, 1)])
    for name, _ in center.codec.shapes:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)
