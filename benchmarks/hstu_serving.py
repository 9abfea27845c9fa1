"""HSTU ranking ``/rank`` latency with the KV cache across requests: cold, warm, append, cache off.

    python benchmarks/hstu_serving.py --device cuda                                   # 2000 candidates, 4096-event history
    OMP_NUM_THREADS=1 python benchmarks/hstu_serving.py --history-events 512 --candidates 500 \\
        --layers 2 --dim 64 --heads 2 --head-dim 32 --repeats 30 --warmup 3          # a small CPU version

One user with ``--history-events`` engaged events (two tokens each: item and action) asks for
``--candidates`` candidates, scored by M-FALCON (``--microbatch`` candidates per pass, default all
in one pass) through the server's real path: the FastAPI app and its batcher on an in-process ASGI
client (JSON in and out, no socket), and, separately, the engine alone (features + model, on one
worker thread as in the server). The model is an untrained ``hstu_ranking`` of the given sizes
(latency does not depend on the weights).
Modes, each ``--repeats`` requests after ``--warmup`` untimed ones:

- ``cold``: the user's cache entry is dropped before each request: the whole history is encoded;
- ``warm``: the same request again: every history token comes from the cache, nothing is encoded;
- ``append``: each request comes after one more event of the user: 3 tokens are encoded (the new
  event's two and the previous last token, whose time bias changes; see ``recsys/serve/kv_cache.py``);
- ``off``: the KV cache disabled (``kv_cache.enabled=false``): M-FALCON encoding the history per request.

Prints and writes p50 / p99 (ms) per mode for ``/rank`` and for the engine, against the targets
(``/rank`` p99 <= 10 ms warm and <= 30 ms cold on one H200), to the JSON and a PNG beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from recsys.atomic_files import write_json_atomic
from recsys.data.features import FeatureSpec
from recsys.data.schema import EventLog, ItemTable
from recsys.plots import grouped_bars, png_beside

TARGETS_MS = {"warm": 10.0, "cold": 30.0}  # /rank p99 on one H200
MODES = ("cold", "warm", "append", "off")
NUM_ITEMS, CONTENT_DIM, USER = 100_000, 32, 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--history-events", type=int, default=4096, help="engaged events in the history (2 tokens each)")
    p.add_argument("--candidates", type=int, default=2000)
    p.add_argument("--microbatch", type=int, default=0, help="candidates per M-FALCON pass (0: all in one pass)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=256, help="embedding dimension D")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64, help="per-head attention and value width")
    p.add_argument("--page-size", type=int, default=64)
    p.add_argument("--num-pages", type=int, default=0, help="pool pages (0: room for 4 such users)")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--no-tf32", action="store_true", help="CUDA: full float32 matmuls instead of TF32")
    p.add_argument("--out", type=Path, default=Path("runs/bench/hstu_serving.json"))
    return p.parse_args(argv)


def event_log(history_events: int, extra_events: int, seed: int = 0) -> EventLog:
    """One user with ``history_events + extra_events`` engaged events, a minute apart, random items."""
    rng = np.random.default_rng(seed)
    n = history_events + extra_events
    content = rng.standard_normal((NUM_ITEMS, CONTENT_DIM)).astype(np.float32)
    return EventLog.from_arrays(
        np.full(n, USER), rng.integers(0, NUM_ITEMS, n), 1_700_000_000 + 60 * np.arange(n),
        actions=rng.integers(1, 16, n), surface=rng.integers(0, 3, n), num_users=1, num_items=NUM_ITEMS,
        surface_vocab=("home", "search", "related"), items=ItemTable(content),
    )


def build_engine(args, log: EventLog, max_sequence: int, cache: bool):
    from recsys.models.hstu_ranking import HSTURanking, HSTURankingConfig
    from recsys.serve.config import ServeConfig
    from recsys.serve.engine import Engine
    from recsys.serve.features import FeatureStore
    from recsys.serve.kv_cache import KVCacheConfig

    spec = FeatureSpec.from_log(log, max_history=50, max_sequence=max_sequence)
    config = HSTURankingConfig(
        embedding_dim=args.dim, num_layers=args.layers, num_heads=args.heads, attention_dim=args.head_dim,
        linear_dim=args.head_dim, dropout=0.0, over_arch_layers=[args.dim],
        max_candidates_per_pass=args.microbatch or args.candidates,
    )
    torch.manual_seed(0)
    model = HSTURanking(spec, config, device=args.device).eval()
    tokens_per_user = 2 * max_sequence
    pages = args.num_pages or 4 * -(-tokens_per_user // args.page_size)
    kv = KVCacheConfig(enabled=cache, num_pages=pages, page_size=args.page_size)
    return Engine(model, FeatureStore(log, spec), "ranking", "hstu_ranking", ServeConfig(kv))


def request_times(log: EventLog, history_events: int, count: int) -> list[int]:
    """Request times whose histories hold ``history_events``, ``history_events + 1``, ... events."""
    return [int(log.timestamp[history_events + i - 1]) + 1 for i in range(count)]


def percentiles(times_ms: list[float]) -> dict:
    a = np.asarray(times_ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99, method="higher")),
            "mean_ms": float(a.mean()), "n": len(a)}


def run_mode(engine, mode: str, times: list[int], items: np.ndarray, args) -> dict:
    """``--repeats`` timed requests of ``mode`` through the engine, then through the app."""
    from recsys.serve.features import RankingRequest

    cache = getattr(engine.scorer, "cache", None)

    def prepare(i: int) -> int:  # the request time of call i; drops the entry for a cold call
        if mode == "cold":
            cache.clear()
        return times[i] if mode == "append" else times[0]

    def engine_calls() -> list[float]:
        out = []
        for i in range(args.warmup + args.repeats):
            request = RankingRequest(USER, items, prepare(i), 0)
            began = time.perf_counter()
            with torch.inference_mode():
                engine.run([request])  # .tolist() of the scores: synchronizes the device
            out.append((time.perf_counter() - began) * 1e3)
        return out

    with ThreadPoolExecutor(max_workers=1) as worker:  # one model thread, as the server's batcher
        engine_ms = worker.submit(engine_calls).result()
    if cache is not None:
        cache.clear()
    http_ms = asyncio.run(_http(engine, mode, times, items, args, prepare))
    return {"engine": percentiles(engine_ms[args.warmup:]), "rank": percentiles(http_ms[args.warmup:])}


async def _http(engine, mode, times, items, args, prepare) -> list[float]:
    import httpx

    from recsys.serve.app import ServeOptions, create_app

    options = ServeOptions(max_candidates=max(args.candidates, 1), max_batch_candidates=args.candidates,
                           max_wait_ms=0.0, deadline_ms=60_000.0)
    app = create_app(engine, options, warmup=False)
    out = []
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
            for i in range(args.warmup + args.repeats):
                body = {"user_id": USER, "candidates": items.tolist(), "request_time": prepare(i)}
                began = time.perf_counter()
                response = await client.post("/rank", json=body)
                out.append((time.perf_counter() - began) * 1e3)
                if response.status_code != 200:
                    raise SystemExit(f"/rank answered {response.status_code}: {response.text}")
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --device cpu")
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    appends = args.warmup + args.repeats
    log = event_log(args.history_events, appends)
    max_sequence = args.history_events + appends  # the window never slides: an append stays an append
    items = np.random.default_rng(1).choice(NUM_ITEMS, args.candidates, replace=False).astype(np.int64)
    times = request_times(log, args.history_events, appends)
    engines = {True: build_engine(args, log, max_sequence, cache=True),
               False: build_engine(args, log, max_sequence, cache=False)}
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "history_tokens": 2 * args.history_events, "targets_ms": TARGETS_MS, "modes": {},
    }
    for mode in MODES:
        engine = engines[mode != "off"]
        before = lookups(engine)
        report["modes"][mode] = run_mode(engine, mode, times, items, args)
        report["modes"][mode]["lookups"] = {o: n - before[o] for o, n in lookups(engine).items()}
    report["meets_targets"] = {m: report["modes"][m]["rank"]["p99_ms"] <= t for m, t in TARGETS_MS.items()}
    report["max_abs_diff_vs_off"] = agreement(engines, items, times)
    print(table(report))
    print(f"probabilities against the cache off: max |diff| {report['max_abs_diff_vs_off']}")
    write_json_atomic(args.out, report)
    print(f"wrote {args.out} and {plot(report, png_beside(args.out))}")
    return report


def agreement(engines: dict, items: np.ndarray, times: list[int]) -> dict:
    """Max |difference| of the probabilities after an append and on a hit against the cache off (same request)."""
    from recsys.serve.features import RankingRequest

    def scores(engine, time_) -> np.ndarray:
        with torch.inference_mode():
            result = engine.run([RankingRequest(USER, items, time_, 0)])[0]
        return np.array([result[head] for head in engine.heads])  # [H, C]

    cached = engines[True]
    cached.scorer.cache.clear()
    scores(cached, times[-2])  # a miss: the entry holds one event fewer
    reference = scores(engines[False], times[-1])
    append, hit = scores(cached, times[-1]), scores(cached, times[-1])
    return {"append": float(np.abs(append - reference).max()), "hit": float(np.abs(hit - reference).max())}


def lookups(engine) -> dict:
    """Cache lookups so far by outcome (all zero without a cache)."""
    cache = getattr(engine.scorer, "cache", None)
    return {o: 0 if cache is None else int(cache.lookups.value(o)) for o in ("hit", "append", "miss")}


def table(report: dict) -> str:
    s = report["settings"]
    lines = [f"{report['device']}: {s['candidates']} candidates over {s['history_events']} events "
             f"({report['history_tokens']} tokens), {s['layers']} layers, D={s['dim']}, {s['heads']} heads x {s['head_dim']}",
             f"{'mode':<8}{'/rank p50':>11}{'/rank p99':>11}{'engine p50':>12}{'engine p99':>12}{'target p99':>12}"]
    for mode, row in report["modes"].items():
        target = TARGETS_MS.get(mode)
        lines.append(f"{mode:<8}{row['rank']['p50_ms']:>11.2f}{row['rank']['p99_ms']:>11.2f}"
                     f"{row['engine']['p50_ms']:>12.2f}{row['engine']['p99_ms']:>12.2f}"
                     f"{'' if target is None else f'{target:.0f}':>12}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    nan = float("nan")
    groups = {mode: {"/rank p50": (row["rank"]["p50_ms"], nan), "/rank p99": (row["rank"]["p99_ms"], nan),
                     "engine p50": (row["engine"]["p50_ms"], nan), "engine p99": (row["engine"]["p99_ms"], nan)}
              for mode, row in report["modes"].items()}
    s = report["settings"]
    return grouped_bars(groups, path, "milliseconds", title=f"HSTU /rank, {s['candidates']} candidates over "
                        f"{report['history_tokens']} history tokens ({report['device']})")


if __name__ == "__main__":
    main()
