"""MIMN User Interest Center throughput: events/s the center + a store ingest, per model size.

    OMP_NUM_THREADS=1 python benchmarks/mimn_uic.py ingest --events 100000 --batch 1000 --out runs/bench/mimn_uic.json

Section ``ingest``: a stream of behaviour events of ``--users`` users (drawn uniformly, times
increasing, ``--engaged`` of them with actions) goes through :meth:`UserInterestCenter.apply` in
batches of ``--batch`` events into a fresh SQLite store (WAL, synchronous=FULL: one fsync per
batch), for the tiny test dims and the dims of ``configs/mimn/synthetic.yaml`` (weights random:
the cost does not depend on them). The first batches warm up and are not timed. Prints one row per
model (events/s, ms per batch, mean MIMN steps per batch, state bytes) and the share of time of
each part of ``apply`` (``--profile``); writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import random
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from recsys.atomic_files import write_json_atomic
from recsys.cli import _quiet_library_noise
from recsys.config import load_yaml
from recsys.data.features import FeatureSpec
from recsys.models import get_model
from recsys.uic.center import UserInterestCenter, model_version_of
from recsys.uic.events import BehaviorEvent
from recsys.uic.sqlite_store import SQLiteStateStore

TINY = dict(embedding_dim=8, memory_slots=3, memory_dim=6, controller_dim=5, induction_dim=4, induction_top_k=2,
            over_arch_layers=[8])


def model_of(size: str, num_items: int):
    dims = TINY if size == "tiny" else {k: v for k, v in load_yaml("configs/mimn/synthetic.yaml")["model"].items() if k != "name"}
    torch.manual_seed(0)
    spec = FeatureSpec(num_users=1, num_items=num_items, content_dim=32, max_sequence=20)
    return get_model("mimn", feature_spec=spec, **dims).eval()


def stream(num_events: int, users: int, items: int, engaged: float, batch: int, seed: int = 0) -> list[list[BehaviorEvent]]:
    rng = random.Random(seed)
    counts = [0] * users
    events = []
    for n in range(num_events):
        u = rng.randrange(users)
        events.append(BehaviorEvent(u, rng.randrange(items), 1_700_000_000 + n // 10, counts[u],
                                    rng.choice((1, 2, 3, 9)) if rng.random() < engaged else 0))
        counts[u] += 1
    return [events[i:i + batch] for i in range(0, len(events), batch)]


def steps_of(batch: list[BehaviorEvent]) -> int:
    per_user: dict[int, int] = {}
    for e in batch:
        per_user[e.user_id] = per_user.get(e.user_id, 0) + (e.actions != 0)
    return max(per_user.values())


def ingest(size: str, batches, items: int, warmup: int, folder: Path, profile: bool) -> dict:
    model = model_of(size, items)
    store = SQLiteStateStore(folder / f"{size}.sqlite")
    center = UserInterestCenter(model, store, model_version_of(model))
    for batch in batches[:warmup]:
        center.apply(batch)
    timed = batches[warmup:]
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    for batch in timed:
        center.apply(batch)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - start
    events = sum(len(b) for b in timed)
    row = {"model": size, "events": events, "batches": len(timed), "batch": len(timed[0]), "seconds": seconds,
           "events_per_s": events / seconds, "ms_per_batch": 1000 * seconds / len(timed),
           "mean_steps_per_batch": sum(steps_of(b) for b in timed) / len(timed), "state_bytes": center.codec.nbytes,
           "users_stored": store.count()}
    if profiler:
        row["profile"] = top_functions(profiler)
    store.close()
    return row


def top_functions(profiler: cProfile.Profile, n: int = 12) -> list[dict]:
    stats = pstats.Stats(profiler)
    total = max(stats.total_tt, 1e-9)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][3], reverse=True)  # by cumulative time
    return [{"function": f"{Path(f).name}:{line}:{name}", "cumulative_share": ct / total}
            for (f, line, name), (_, _, _, ct, _) in rows[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="section", required=True)
    p = sub.add_parser("ingest", help="center + SQLite ingest throughput")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--engaged", type=float, default=0.8, help="share of events with actions")
    p.add_argument("--warmup-batches", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["tiny", "synthetic"], choices=["tiny", "synthetic"])
    p.add_argument("--profile", action="store_true", help="add the top functions by cumulative time")
    p.add_argument("--out", default="runs/bench/mimn_uic.json")
    args = parser.parse_args()
    _quiet_library_noise(False)

    batches = stream(args.events, args.users, args.items, args.engaged, args.batch)
    with tempfile.TemporaryDirectory(dir=Path(args.out).parent if Path(args.out).parent.exists() else None) as folder:
        rows = [ingest(size, batches, args.items, args.warmup_batches, Path(folder), args.profile) for size in args.models]
    print(f"{'model':<10} {'events/s':>10} {'ms/batch':>9} {'steps/batch':>12} {'state B':>8} {'users':>7}")
    for r in rows:
        print(f"{r['model']:<10} {r['events_per_s']:>10,.0f} {r['ms_per_batch']:>9.1f} {r['mean_steps_per_batch']:>12.1f} "
              f"{r['state_bytes']:>8} {r['users_stored']:>7}")
        for f in r.get("profile", []):
            print(f"    {100 * f['cumulative_share']:5.1f}%  {f['function']}")
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(args.out, {"section": "ingest", "args": vars(args), "machine": machine, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
