"""Open-loop load test of ``recsys serve`` on loopback: latency vs offered load, soak, overload.

::

    python benchmarks/serve_load.py --checkpoint runs/dlrm-synthetic --candidates 500 \\
        --rates 10 25 50 75 100 --step-seconds 10 --soak-seconds 60 --out runs/bench/serve-dlrm.json

Starts ``recsys serve`` on a free loopback port (or uses ``--url``), then sends requests at Poisson
arrival times (open loop: a slow answer does not delay the next request), each ``POST /rank``
with ``--candidates`` random items for a random user of the run (a fixed seed: the same mix every
run). Modes, in order:

1. sweep: each offered rate for ``--step-seconds``; the highest one with p99 <= ``--p99-ms``,
   errors + 503s <= 1% and achieved QPS >= 90% of offered is the sustainable QPS;
2. soak: 80% of it for ``--soak-seconds``;
3. overload: 3x it for ``--step-seconds``: accepted requests should keep p99 under 2x the server's
   deadline, the rest get 503; the server's RSS before and after shows whether memory stays bounded.

Writes the JSON (every step: offered and achieved QPS, p50/p95/p99 of accepted requests, 503s,
errors) and a PNG beside it (p50/p99 vs offered load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="the run the server loads (and whose users/items the mix draws)")
    p.add_argument("--url", default=None, help="a running server (default: start `recsys serve` on loopback)")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--rates", type=float, nargs="+", default=[10, 25, 50, 75, 100, 150])
    p.add_argument("--step-seconds", type=float, default=10.0)
    p.add_argument("--soak-seconds", type=float, default=60.0)
    p.add_argument("--p99-ms", type=float, default=30.0, help="the sustainable load's p99 target")
    p.add_argument("--deadline-ms", type=float, default=100.0, help="the server's --deadline-ms (when started here)")
    p.add_argument("--server-args", default="", help="extra `recsys serve` flags, e.g. '--max-batch 8'")
    p.add_argument("--max-requests", type=int, default=100_000, help="most requests of one step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench/serve-load.json")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "recsys.cli", "serve", "--checkpoint", args.checkpoint, "--port", str(port),
               "--deadline-ms", str(args.deadline_ms), *args.server_args.split()]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return server, f"http://127.0.0.1:{port}"


async def wait_ready(client, url: str, timeout_s: float = 300) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if (await client.get(f"{url}/ready")).status_code == 200:
                return
        except Exception:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit(f"the server at {url} was not ready within {timeout_s} s")


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


# ---------------------------------------------------------------------------------------------- the load
def request_mix(checkpoint: str, candidates: int, seed: int, count: int = 512) -> list[dict]:
    """``count`` fixed bodies: a random user of the run and ``candidates`` distinct random items each."""
    from recsys.data.features import FEATURE_SPEC_FILE, load_feature_spec
    from recsys.inference import _locate

    spec = load_feature_spec(_locate(Path(checkpoint), None)[0] / FEATURE_SPEC_FILE)
    rng = np.random.default_rng(seed)
    return [{"user_id": int(rng.integers(spec.num_users)),
             "candidates": rng.choice(spec.num_items, size=min(candidates, spec.num_items), replace=False).tolist()}
            for _ in range(count)]


async def open_loop(client, url: str, bodies: list[dict], rate: float, seconds: float, max_requests: int,
                    seed: int) -> dict:
    """Poisson arrivals at ``rate`` per second for ``seconds``; the step's figures."""
    rng = random.Random(seed)
    latencies, statuses = [], {}

    async def one(body):
        start = time.perf_counter()
        try:
            status = (await client.post(f"{url}/rank", json=body)).status_code
        except Exception:
            status = "exception"
        elapsed = time.perf_counter() - start
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            latencies.append(elapsed)

    tasks, start, next_at, sent = [], time.perf_counter(), 0.0, 0
    while next_at < seconds and sent < max_requests:
        delay = start + next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(bodies[sent % len(bodies)])))
        sent += 1
        next_at += rng.expovariate(rate)
    await asyncio.wait(tasks, timeout=30)
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    pct = {f"p{q}_ms": (float(np.percentile(ms, q)) if len(ms) else None) for q in (50, 95, 99)}
    ok = statuses.get(200, 0)
    return {"offered_qps": rate, "seconds": seconds, "sent": sent, "ok": ok, "achieved_qps": ok / wall, **pct,
            "status_503": statuses.get(503, 0), "errors": sent - ok - statuses.get(503, 0), "statuses": {str(k): v for k, v in statuses.items()}}


def sustainable(step: dict, p99_ms: float) -> bool:
    bad = step["status_503"] + step["errors"]
    return (step["p99_ms"] is not None and step["p99_ms"] <= p99_ms and bad <= 0.01 * step["sent"]
            and step["achieved_qps"] >= 0.9 * step["offered_qps"])  # Poisson counts of a short step vary


async def main_async(args) -> dict:
    import httpx

    server, url = (None, args.url) if args.url else start_server(args)
    pid = server.pid if server else None
    bodies = request_mix(args.checkpoint, args.candidates, args.seed)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    try:
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            await wait_ready(client, url)
            await open_loop(client, url, bodies, 5, 2, 10, args.seed)  # warm the connections
            sweep = []
            for rate in args.rates:
                step = await open_loop(client, url, bodies, rate, args.step_seconds, args.max_requests, args.seed)
                sweep.append(step)
                print(json.dumps(step), flush=True)
            ok = [s["offered_qps"] for s in sweep if sustainable(s, args.p99_ms)]
            best = max(ok) if ok else None
            result = {"candidates": args.candidates, "p99_target_ms": args.p99_ms, "deadline_ms": args.deadline_ms,
                      "sweep": sweep, "sustainable_qps": best, "cpu_count": os.cpu_count(),
                      "server_args": args.server_args}
            if best is not None:
                result["rss_mb_before_soak"] = rss_mb(pid)
                result["soak"] = await open_loop(client, url, bodies, 0.8 * best, args.soak_seconds, args.max_requests, args.seed)
                print(json.dumps(result["soak"]), flush=True)
                result["rss_mb_before_overload"] = rss_mb(pid)
                result["overload"] = await open_loop(client, url, bodies, 3 * best, args.step_seconds, args.max_requests, args.seed)
                result["rss_mb_after_overload"] = rss_mb(pid)
                print(json.dumps(result["overload"]), flush=True)
            return result
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def main() -> None:
    args = _parse()
    result = asyncio.run(main_async(args))
    from recsys.atomic_files import write_json_atomic
    from recsys.plots import line_plot, png_beside

    write_json_atomic(args.out, result)
    sweep = result["sweep"]
    line_plot({q: [(s["offered_qps"], s[f"{q}_ms"]) for s in sweep if s[f"{q}_ms"] is not None] for q in ("p50", "p99")},
              png_beside(args.out), "offered load (requests/s)", "latency of accepted requests (ms)",
              title=f"recsys serve /rank, {args.candidates} candidates")
    print(f"sustainable QPS {result['sustainable_qps']} (p99 <= {args.p99_ms} ms); wrote {args.out} and its PNG")


if __name__ == "__main__":
    main()
