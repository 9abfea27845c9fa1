"""Open-loop load test of ``recsys serve`` on loopback: latency vs offered load, soak, overload.

::

    python benchmarks/serve_load.py --checkpoint runs/dlrm-synthetic --candidates 500 \\
        --rates 10 25 50 75 100 --step-seconds 10 --soak-seconds 60 --out runs/bench/serve-dlrm.json
    # soak and overload only, around a sustainable QPS known from an earlier sweep:
    python benchmarks/serve_load.py --checkpoint runs/dlrm-synthetic --modes soak overload --qps 50

Starts ``recsys serve`` on a free loopback port (or uses ``--url``), then sends requests at Poisson
arrival times (open loop: a slow answer does not delay the next request), each ``POST /rank``
with ``--candidates`` random items for a random user of the run (a fixed seed: the same mix every
run; bodies are encoded once, so the client spends its CPU on HTTP, not on JSON). Modes, in order:

1. ``sweep``: each offered rate for ``--step-seconds``; the highest one with p99 <= ``--p99-ms`` and
   at most 1% of its requests not answered 200 is the sustainable QPS (or ``--qps``);
2. ``soak``: 80% of it for ``--soak-seconds``;
3. ``overload``: 3x it for ``--step-seconds``: accepted requests should keep p99 under 2x the
   server's deadline, the rest get 503 with Retry-After promptly (their p99 is reported too).

Every step is bounded: at most ``--max-requests`` sent, and at most ``--drain-seconds`` waited for
answers after the last send (requests still open then are cancelled and counted as ``unanswered``).
Each step records the server's 503s by reason (``late``: refused at arrival, the work ahead would
end after the deadline; ``deadline``: accepted, then not scored in time; ``queue_full``), the
server's RSS (sampled every 0.5 s: the largest value, and the values at the start and the end) and
the server's own latency histogram over the step (``server_p99_le_ms``: the bucket bound holding
its p99; on a shared machine the client's event loop adds its own delay).

Writes the JSON (every step: offered and achieved QPS, p50/p95/p99 of accepted requests, 503s with
their Retry-After, errors) and a PNG beside it (p50/p99 vs offered load; soak and overload marked).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.plots import line_plot, png_beside  # noqa: E402  (after the path: runs from a checkout)
MODES = ("sweep", "soak", "overload")


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="the run the server loads (and whose users/items the mix draws)")
    p.add_argument("--url", default=None, help="a running server (default: start `recsys serve` on loopback)")
    p.add_argument("--candidates", type=int, nargs="+", default=[500],
                   help="candidates per request: N, or LO HI for sizes drawn uniformly in [LO, HI] "
                        "(MLPerf DLRM v2-like requests: 100 700)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--rates", type=float, nargs="+", default=[10, 25, 50, 75, 100, 150])
    p.add_argument("--qps", type=float, default=None,
                   help="the sustainable QPS soak and overload start from (default: the sweep's)")
    p.add_argument("--step-seconds", type=float, default=10.0)
    p.add_argument("--soak-seconds", type=float, default=60.0)
    p.add_argument("--drain-seconds", type=float, default=10.0, help="most time waited for answers after a step")
    p.add_argument("--p99-ms", type=float, default=30.0, help="the sustainable load's p99 target")
    p.add_argument("--deadline-ms", type=float, default=100.0, help="the server's --deadline-ms (when started here)")
    p.add_argument("--server-args", default="", help="extra `recsys serve` flags, e.g. '--max-batch 8'")
    p.add_argument("--max-requests", type=int, default=20_000, help="most requests of one step")
    p.add_argument("--machine", default="", help="what ran it, for the JSON (e.g. '2-core CPU shared')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench/serve-load.json")
    args = p.parse_args(argv)
    if ("soak" in args.modes or "overload" in args.modes) and "sweep" not in args.modes and args.qps is None:
        p.error("soak and overload without a sweep need --qps (the sustainable QPS)")
    return args


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


async def wait_ready(client, url: str, server: subprocess.Popen | None, timeout_s: float = 300) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode} before it was ready")
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


_BUCKET = re.compile(r'^recsys_serve_request_seconds_bucket\{route="/rank",le="([^"]+)"\} (\S+)$')
_SHED = re.compile(r'^recsys_serve_shed_total\{route="/rank",reason="([^"]+)"\} (\S+)$')


async def server_counts(client, url: str) -> tuple[dict[float, float], dict[str, float]]:
    """The server's cumulative ``/rank`` latency buckets (upper bound s -> count) and 503s by reason."""
    text = (await client.get(f"{url}/metrics")).text
    buckets, shed = {}, {}
    for line in text.splitlines():
        if m := _BUCKET.match(line):
            buckets[float(m.group(1))] = float(m.group(2))
        elif m := _SHED.match(line):
            shed[m.group(1)] = float(m.group(2))
    return buckets, shed


def histogram_quantile_le_ms(before: dict, after: dict, q: float) -> float | None:
    """The bucket bound (ms) that holds quantile ``q`` of the requests between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]  # cumulative
    if not counts or counts[-1] <= 0:
        return None
    for bound, count in zip(bounds, counts):
        if count >= q * counts[-1]:
            return bound * 1000
    return None


# ---------------------------------------------------------------------------------------------- the load
def request_mix(checkpoint: str, candidates: list[int], seed: int, count: int = 512) -> list[tuple[bytes, int]]:
    """``count`` fixed ``(JSON body, its number of candidates)``: a random user of the run and distinct random
    items each, ``candidates[0]`` of them, or a number drawn uniformly in ``[candidates[0], candidates[-1]]``."""
    from recsys.data.features import FEATURE_SPEC_FILE, load_feature_spec
    from recsys.inference import _locate

    spec = load_feature_spec(_locate(Path(checkpoint), None)[0] / FEATURE_SPEC_FILE)
    rng = np.random.default_rng(seed)
    low, high = candidates[0], candidates[-1]
    bodies = []
    for _ in range(count):
        size = min(int(rng.integers(low, high + 1)), spec.num_items)
        items = rng.choice(spec.num_items, size=size, replace=False).tolist()
        bodies.append((json.dumps({"user_id": int(rng.integers(spec.num_users)), "candidates": items}).encode(), size))
    return bodies


def _percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {f"p{q}_ms": (float(np.percentile(ms, q)) if len(ms) else None) for q in (50, 95, 99)}


async def open_loop(client, url: str, bodies: list[bytes], rate: float, seconds: float, args, pid=None) -> dict:
    """Poisson arrivals at ``rate`` per second for ``seconds`` (at most ``args.max_requests``); the step's figures."""
    rng = random.Random(args.seed)
    latencies, shed_latencies, statuses, retry_after = [], [], {}, set()
    headers = {"content-type": "application/json"}

    scored = [0]  # candidates of the requests answered 200

    async def one(body, size):
        start = time.perf_counter()
        try:
            response = await client.post(f"{url}/rank", content=body, headers=headers)
            status = response.status_code
            if status == 503:
                retry_after.add(response.headers.get("retry-after"))
        except Exception:
            status = "exception"
        elapsed = time.perf_counter() - start
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            scored[0] += size
        (latencies if status == 200 else shed_latencies if status == 503 else []).append(elapsed)

    rss = [rss_mb(pid)]

    async def sample_rss():
        while True:
            await asyncio.sleep(0.5)
            rss.append(rss_mb(pid))

    sampler = asyncio.create_task(sample_rss()) if pid is not None else None
    before, shed_before = await server_counts(client, url)
    tasks, start, next_at, sent = [], time.perf_counter(), 0.0, 0
    while next_at < seconds and sent < args.max_requests:
        delay = start + next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(*bodies[sent % len(bodies)])))
        sent += 1
        next_at += rng.expovariate(rate)
    send_seconds = time.perf_counter() - start
    _, pending = await asyncio.wait(tasks, timeout=args.drain_seconds) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - start
    if sampler is not None:
        sampler.cancel()
    rss.append(rss_mb(pid))
    after, shed_after = await server_counts(client, url)
    ok, shed = statuses.get(200, 0), statuses.get(503, 0)
    step = {"offered_qps": rate, "seconds": seconds, "sent": sent, "send_seconds": send_seconds, "ok": ok,
            "sent_qps": sent / seconds,
            "achieved_qps": ok / max(wall, seconds), "scored_candidates_per_s": scored[0] / max(wall, seconds),
            **_percentiles(latencies),
            "status_503": shed, "p50_503_ms": _percentiles(shed_latencies)["p50_ms"],
            "p99_503_ms": _percentiles(shed_latencies)["p99_ms"],
            "server_503_by_reason": {k: v - shed_before.get(k, 0.0) for k, v in shed_after.items()
                                     if v > shed_before.get(k, 0.0)},
            "retry_after": sorted(str(r) for r in retry_after), "unanswered": len(pending),
            "errors": sent - ok - shed - len(pending), "statuses": {str(k): v for k, v in statuses.items()},
            "server_p50_le_ms": histogram_quantile_le_ms(before, after, 0.50),
            "server_p99_le_ms": histogram_quantile_le_ms(before, after, 0.99)}
    if pid is not None:
        values = [r for r in rss if r is not None]
        step.update(rss_mb_start=values[0], rss_mb_end=values[-1], rss_mb_max=max(values))
    return step


def sustainable(step: dict, p99_ms: float) -> bool:
    """p99 within the target and at most 1% of the sent requests not answered 200 (503s, errors, unanswered)."""
    bad = step["status_503"] + step["errors"] + step["unanswered"]
    return step["p99_ms"] is not None and step["p99_ms"] <= p99_ms and bad <= 0.01 * step["sent"]


async def main_async(args) -> dict:
    import httpx

    server, url = (None, args.url) if args.url else start_server(args)
    pid = server.pid if server else None
    bodies = request_mix(args.checkpoint, args.candidates, args.seed)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    result = {"candidates": args.candidates, "p99_target_ms": args.p99_ms, "deadline_ms": args.deadline_ms,
              "cpu_count": os.cpu_count(), "server_args": args.server_args, "machine": args.machine,
              "date": datetime.date.today().isoformat(), "command": shlex.join(sys.argv), "sweep": []}
    try:
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            await wait_ready(client, url, server)
            await open_loop(client, url, bodies, 5, 2, args)  # warm the connections
            if "sweep" in args.modes:
                for rate in args.rates:
                    step = await open_loop(client, url, bodies, rate, args.step_seconds, args, pid)
                    result["sweep"].append(step)
                    print(json.dumps(step), flush=True)
                ok = [s["offered_qps"] for s in result["sweep"] if sustainable(s, args.p99_ms)]
                result["sustainable_qps"] = max(ok) if ok else None
            base = args.qps if args.qps is not None else result.get("sustainable_qps")
            result["base_qps"] = base
            for mode, factor, seconds in (("soak", 0.8, args.soak_seconds), ("overload", 3.0, args.step_seconds)):
                if mode in args.modes and base:
                    result[mode] = await open_loop(client, url, bodies, factor * base, seconds, args, pid)
                    print(mode, json.dumps(result[mode]), flush=True)
            return result
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def plot(result: dict, path):
    """The PNG of a report: p50/p99 of accepted requests vs offered load, soak and overload p99 as points."""

    series = {q: [(s["offered_qps"], s[f"{q}_ms"]) for s in result["sweep"] if s[f"{q}_ms"] is not None]
              for q in ("p50", "p99")}
    for mode in ("soak", "overload"):
        step = result.get(mode)
        if step and step["p99_ms"] is not None:
            series[f"{mode} p99"] = [(step["offered_qps"], step["p99_ms"])]
    return line_plot(series, path, "offered load (requests/s)", "latency of accepted requests (ms)",
              title=", ".join(filter(None, ["recsys serve /rank", _candidates_label(result["candidates"]),
                                                 result.get("machine")])))


def _candidates_label(candidates) -> str:
    sizes = candidates if isinstance(candidates, list) else [candidates]
    return f"{sizes[0]} candidates" if sizes[0] == sizes[-1] else f"{sizes[0]}-{sizes[-1]} candidates"


def main(argv=None) -> None:
    args = _parse(argv)
    if len(args.candidates) > 2 or args.candidates[0] < 1 or args.candidates[0] > args.candidates[-1]:
        raise SystemExit(f"--candidates takes N or LO HI with 1 <= LO <= HI, got {args.candidates}")
    result = asyncio.run(main_async(args))
    from recsys.atomic_files import write_json_atomic

    write_json_atomic(args.out, result)
    plot(result, png_beside(args.out))
    print(f"sustainable QPS {result.get('sustainable_qps')} (p99 <= {args.p99_ms} ms); wrote {args.out} and its PNG")


if __name__ == "__main__":
    main()
