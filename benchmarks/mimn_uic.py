"""MIMN User Interest Center: ingest events/s per store, and CTR scoring latency against history length.

    OMP_NUM_THREADS=1 python benchmarks/mimn_uic.py ingest --events 100000 --batch 1000 --stores sqlite redis --out runs/bench/mimn_uic.json
    OMP_NUM_THREADS=1 python benchmarks/mimn_uic.py latency --lengths 100 1000 10000 --out runs/bench/mimn_uic_latency.json
    python benchmarks/mimn_uic.py latency --device cuda ...          # the same on a GPU (scoring on the GPU, store on the host)

Section ``ingest``: a stream of behaviour events of ``--users`` users (drawn uniformly, times
increasing, ``--engaged`` of them with actions) goes through :meth:`UserInterestCenter.apply` in
batches of ``--batch`` events into a fresh store per ``--stores`` entry (SQLite: WAL,
synchronous=FULL, one fsync per batch; Redis: a throwaway redis-server on this host with
``appendfsync always``, one Lua script per batch), for the tiny test dims and the dims of
``configs/mimn/synthetic.yaml`` (weights random: the cost does not depend on them). The first
batches warm up and are not timed. Prints one row per model and store (events/s, ms per batch, mean
MIMN steps per batch, the state's bytes per user and what the store spends per user) and the share
of time of each part of ``apply`` (``--profile``); writes the rows as JSON.

Section ``latency`` (the MIMN paper's point, §3 and Fig. 6 of Pi et al., KDD 2019): scoring cost
against the length L of the user's history. MIMN reads each user's fixed-size state from the UIC's
store (``center.states``: the store read and the decode) and scores the candidates on it
(``model.score``); the states were built from L events each (``arch.encode``, what the UIC's
streaming ingest computes). DIN, the ``din`` zoo model with the dims of ``configs/din/synthetic.yaml``,
runs its forward over the whole L-event history of every row (the batch is built beforehand: DIN's
own fetch of L events per user is not timed, which favours DIN). Two request shapes: 1 user x
``--candidates`` candidates, and ``--users`` users x 1 candidate. p50 / p99 over repeats; writes the
rows as JSON and the flat-versus-linear figure as PNG beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import platform
import pstats
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from recsys.atomic_files import write_json_atomic
from recsys.cli import _quiet_library_noise
from recsys.config import load_yaml
from recsys.data.features import FeatureSpec
from recsys.models import get_model
from recsys.plots import line_plot, png_beside
from recsys.uic.center import UserInterestCenter, model_version_of
from recsys.uic.events import BehaviorEvent
from recsys.uic.sqlite_store import SQLiteStateStore
from recsys.uic.store import UserRecord

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mimn_uic_redis import throwaway_server  # noqa: E402  (the sibling benchmark's redis-server)

TINY = dict(embedding_dim=8, memory_slots=3, memory_dim=6, controller_dim=5, induction_dim=4, induction_top_k=2,
            over_arch_layers=[8])


def dims_of(config: str) -> dict:
    return {k: v for k, v in load_yaml(config)["model"].items() if k != "name"}


def model_of(size: str, num_items: int, max_sequence: int = 20, name: str = "mimn"):
    """The ``name`` model (``mimn`` tiny or synthetic dims; ``din`` of configs/din/synthetic.yaml), eval mode."""
    if name == "din":
        dims = dims_of("configs/din/synthetic.yaml")
    else:
        dims = TINY if size == "tiny" else dims_of("configs/mimn/synthetic.yaml")
    torch.manual_seed(0)
    spec = FeatureSpec(num_users=1, num_items=num_items, content_dim=32, max_sequence=max_sequence)
    return get_model(name, feature_spec=spec, **dims).eval()


@contextlib.contextmanager
def open_store(kind: str, folder: Path, name: str):
    """A fresh store: SQLite in ``folder``, or Redis on a throwaway server (appendfsync always)."""
    if kind == "sqlite":
        with SQLiteStateStore(folder / f"{name}.sqlite") as store:
            yield store
        return
    from recsys.uic.redis_store import RedisStateStore

    with throwaway_server("always") as url, RedisStateStore(url, name) as store:
        yield store


def stored_bytes_per_user(store) -> float:
    """What the store spends per user with a record: SQLite's file pages, Redis's MEMORY USAGE (200 sampled)."""
    users = max(store.count(), 1)
    if isinstance(store, SQLiteStateStore):
        with store._lock:
            store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages, size = (store._db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
        return pages * size / users
    ids = [int(u) for u in store.client.srandmember(store._key("users"), 200)]
    per_key = [store.client.memory_usage(store.record_key(u)) or 0 for u in ids]
    members = (store.client.memory_usage(store._key("users")) or 0) / users
    return float(np.mean(per_key)) + members if per_key else float("nan")


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


def ingest(size: str, kind: str, batches, items: int, warmup: int, folder: Path, profile: bool) -> dict:
    with open_store(kind, folder, f"bench-{size}") as store:
        return ingest_into(store, size, kind, batches, items, warmup, profile)


def ingest_into(store, size: str, kind: str, batches, items: int, warmup: int, profile: bool) -> dict:
    model = model_of(size, items)
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
    row = {"model": size, "store": kind, "events": events, "batches": len(timed), "batch": len(timed[0]), "seconds": seconds,
           "events_per_s": events / seconds, "ms_per_batch": 1000 * seconds / len(timed),
           "mean_steps_per_batch": sum(steps_of(b) for b in timed) / len(timed), "state_bytes": center.codec.nbytes,
           "users_stored": store.count(), "store_bytes_per_user": stored_bytes_per_user(store)}
    if profiler:
        row["profile"] = top_functions(profiler)
    return row


def top_functions(profiler: cProfile.Profile, n: int = 12) -> list[dict]:
    stats = pstats.Stats(profiler)
    total = max(stats.total_tt, 1e-9)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][3], reverse=True)  # by cumulative time
    return [{"function": f"{Path(f).name}:{line}:{name}", "cumulative_share": ct / total}
            for (f, line, name), (_, _, _, ct, _) in rows[:n]]


# ---------------------------------------------------------------------------------------------- latency
def percentiles(seconds: list[float]) -> dict:
    ms = 1000 * np.asarray(seconds)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "repeats": len(ms)}


def timed(fn, repeats: int, budget_s: float, device: torch.device) -> list[float]:
    """Seconds of ``fn()`` per call: 2 warm-up calls, then up to ``repeats`` within about ``budget_s`` (at least 5)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    times: list[float] = []
    while len(times) < repeats and (len(times) < 5 or sum(times) < budget_s):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def history_batch(model, rows_users: list[int], length: int, items: int, seed: int):
    """Random ``length``-event histories of the users of ``rows_users`` (one request row per entry).

    Returns:
        ``sequence`` (KJT ``seq_item_id`` / ``seq_actions``, ``length`` events per row), ``candidates [B]``,
        ``dense [B, C + T]``, and per user its ``[L]`` item ids and action bits.
    """
    from recsys.data.collate import kjt_from_jagged

    gen = torch.Generator().manual_seed(seed)
    users = sorted(set(rows_users))
    item_of = {u: torch.randint(0, items, (length,), generator=gen) for u in users}  # [L] per user
    bits_of = {u: torch.randint(1, 16, (length,), generator=gen) for u in users}
    b = len(rows_users)
    lengths = torch.full((b,), length, dtype=torch.int32)
    sequence = kjt_from_jagged({
        "seq_item_id": (torch.cat([item_of[u] for u in rows_users]), lengths),
        "seq_actions": (torch.cat([bits_of[u] for u in rows_users]), lengths),
    })
    candidates = torch.randint(0, items, (b,), generator=gen)
    dense = torch.randn(b, model.spec.dense_dim, generator=gen)
    return sequence, candidates, dense, item_of, bits_of


def build_states(model, store, item_of, bits_of, length: int) -> None:
    """Each user's state after its ``length`` events (``arch.encode``, what streaming ingest computes), committed."""
    from recsys.uic.state_codec import StateCodec

    users = sorted(item_of)
    with torch.no_grad():
        events = torch.stack([model.event_embeddings(item_of[u], bits_of[u]) for u in users])  # [U, L, D]
        state = model.arch.encode(events, torch.ones(len(users), length, dtype=torch.bool))
    blobs = StateCodec.of(model).encode(state)
    version = model_version_of(model)
    store.commit([UserRecord(u, blob, length, length - 1, length, version) for u, blob in zip(users, blobs)])


def shape_rows(shape: str, args) -> tuple[list[int], str]:
    """The request's user id per row and its label: 1 user x candidates, or users x 1 candidate."""
    if shape == "user_x_candidates":
        return [0] * args.candidates, f"1x{args.candidates}"
    return list(range(args.users)), f"{args.users}x1"


def mimn_rows(kind: str, shape: str, args, folder: Path, device: torch.device) -> list[dict]:
    """MIMN+UIC rows for every L: states of L events in one store per L, requests timed round-robin over L.

    Interleaving the lengths in each round exposes every L to the same load of the (shared) machine,
    so a drift of the load cannot pass for a dependence on L.
    """
    rows_users, label = shape_rows(shape, args)
    requests = {}
    with contextlib.ExitStack() as stack:
        for length in args.lengths:
            mimn = model_of("synthetic", args.items, length)
            _, candidates, dense, item_of, bits_of = history_batch(mimn, rows_users, length, args.items, seed=length)
            store = stack.enter_context(open_store(kind, folder, f"latency-{length}-{shape}"))
            build_states(mimn, store, item_of, bits_of, length)
            center = UserInterestCenter(mimn, store, model_version_of(mimn))  # reads and decodes on the host
            scorer = model_of("synthetic", args.items, length).to(device) if device.type != "cpu" else mimn  # same weights
            requests[length] = _mimn_request(center, scorer, rows_users, candidates.to(device), dense.to(device), device)
        times = {length: [] for length in args.lengths}
        for _ in range(2):  # warm-up
            for request in requests.values():
                request()
        for _ in range(args.repeats):
            for length, request in requests.items():
                times[length].append(_timed_call(request, device))
    return [{"model": f"MIMN+UIC ({kind})", "length": length, "shape": label, **percentiles(times[length])}
            for length in args.lengths]


def _mimn_request(center, scorer, rows_users, candidates, dense, device):
    def request():
        with torch.no_grad():
            state = center.states(rows_users).map(lambda t: t.to(device))  # store read + decode
            return scorer.score(state, candidates, dense)  # [B, H]
    return request


def _timed_call(fn, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def din_row(length: int, shape: str, args, device: torch.device) -> dict:
    """DIN's forward over ``length``-event histories, one row per request row."""
    from recsys.data.batch import RankingBatch

    rows_users, label = shape_rows(shape, args)
    din = model_of("synthetic", args.items, length, name="din").to(device)
    sequence, candidates, dense, _, _ = history_batch(din, rows_users, length, args.items, seed=length)
    b = len(rows_users)
    batch = RankingBatch(sparse_features=None, dense_features=dense, labels=torch.zeros(b, 1), weights=torch.ones(b),
                         user_id=torch.tensor(rows_users), item_id=candidates, request_id=torch.zeros(b, dtype=torch.int64),
                         timestamp=torch.zeros(b, dtype=torch.int64), sequence_features=sequence).to(device)

    def request():
        with torch.no_grad():
            return din(batch)  # [B, H]

    return {"model": "DIN (full sequence)", "length": length, "shape": label,
            **percentiles(timed(request, args.repeats, args.budget_s, device))}


def latency(args) -> None:
    device = torch.device(args.device)
    rows = []

    def show(row):
        rows.append(row)
        print(f"{row['model']:<22} L={row['length']:>6} {row['shape']:>6}  p50 {row['p50_ms']:9.2f} ms"
              f"  p99 {row['p99_ms']:9.2f} ms  ({row['repeats']} repeats)", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        for shape in ("user_x_candidates", "users_x_candidate"):
            for kind in args.stores:
                for row in mimn_rows(kind, shape, args, Path(folder), device):
                    show(row)
            for length in args.lengths:
                show(din_row(length, shape, args, device))
    targets = flatness(rows, args.lengths)
    for line in targets["lines"]:
        print(line)
    series: dict[str, list] = {}
    for r in rows:
        series.setdefault(f"{r['model']} {r['shape']}", []).append((r["length"], r["p50_ms"]))
    png = line_plot(series, png_beside(args.out), "history length L (events)", "p50 latency per request (ms)",
                    f"CTR scoring vs history length ({args.device})", log_x=True, log_y=True)
    write_json_atomic(args.out, {"section": "latency", "args": vars(args), "machine": machine(), "rows": rows,
                                 "targets": targets})
    print(f"wrote {args.out} and {png}")


def flatness(rows: list[dict], lengths: list[int]) -> dict:
    """MIMN+UIC's p50 growth from the shortest to the longest L (target: within 10 %) and DIN's."""
    shortest, longest = min(lengths), max(lengths)
    out = {"lines": [], "growth": {}}
    for key in sorted({(r["model"], r["shape"]) for r in rows}):
        at = {r["length"]: r["p50_ms"] for r in rows if (r["model"], r["shape"]) == key}
        growth = at[longest] / at[shortest] - 1
        out["growth"][f"{key[0]} {key[1]}"] = growth
        verdict = ("met" if abs(growth) <= 0.10 else "NOT met") if key[0].startswith("MIMN") else "grows" if growth > 0.10 else "flat"
        out["lines"].append(f"{key[0]:<22} {key[1]:>6}: p50 L={shortest} -> L={longest}: {growth:+.0%} ({verdict})")
    return out


# ---------------------------------------------------------------------------------------------- main
def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "load_average": os.getloadavg(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def run_ingest(args) -> None:
    batches = stream(args.events, args.users, args.items, args.engaged, args.batch)
    with tempfile.TemporaryDirectory(dir=Path(args.out).parent if Path(args.out).parent.exists() else None) as folder:
        rows = [ingest(size, kind, batches, args.items, args.warmup_batches, Path(folder), args.profile)
                for kind in args.stores for size in args.models]
    print(f"{'model':<10} {'store':<7} {'events/s':>10} {'ms/batch':>9} {'steps/batch':>12} {'state B':>8} "
          f"{'stored B/user':>14} {'users':>7}")
    for r in rows:
        print(f"{r['model']:<10} {r['store']:<7} {r['events_per_s']:>10,.0f} {r['ms_per_batch']:>9.1f} "
              f"{r['mean_steps_per_batch']:>12.1f} {r['state_bytes']:>8} {r['store_bytes_per_user']:>14,.0f} {r['users_stored']:>7}")
        for f in r.get("profile", []):
            print(f"    {100 * f['cumulative_share']:5.1f}%  {f['function']}")
    for r in rows:
        if r["store"] == "sqlite" and r["batch"] == 1000:
            verdict = "met" if r["events_per_s"] >= 20_000 else "NOT met"
            print(f"target >= 20,000 events/s with SQLite, batches of 1,000 ({r['model']}): {verdict}")
    write_json_atomic(args.out, {"section": "ingest", "args": vars(args), "machine": machine(), "rows": rows})
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="section", required=True)
    p = sub.add_parser("ingest", help="center + store ingest throughput")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--engaged", type=float, default=0.8, help="share of events with actions")
    p.add_argument("--warmup-batches", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["tiny", "synthetic"], choices=["tiny", "synthetic"])
    p.add_argument("--stores", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"])
    p.add_argument("--profile", action="store_true", help="add the top functions by cumulative time")
    p.add_argument("--out", default="runs/bench/mimn_uic.json")
    q = sub.add_parser("latency", help="scoring latency vs history length: MIMN reading UIC state vs DIN")
    q.add_argument("--lengths", type=int, nargs="+", default=[100, 1000, 10_000])
    q.add_argument("--candidates", type=int, default=100, help="candidates of the 1-user request")
    q.add_argument("--users", type=int, default=100, help="users of the 1-candidate-each request")
    q.add_argument("--items", type=int, default=2000)
    q.add_argument("--repeats", type=int, default=300, help="timed calls per point (DIN: at most, see --budget-s)")
    q.add_argument("--budget-s", type=float, default=3.0, help="DIN: stop repeating a point after this long (at least 5 calls)")
    q.add_argument("--stores", nargs="+", default=["sqlite"], choices=["sqlite", "redis"])
    q.add_argument("--device", default="cpu", help="where the models score (cpu, cuda); the store is on the host")
    q.add_argument("--out", default="runs/bench/mimn_uic_latency.json")
    args = parser.parse_args()
    _quiet_library_noise(False)
    if args.section == "ingest":
        run_ingest(args)
    else:
        latency(args)


if __name__ == "__main__":
    main()
