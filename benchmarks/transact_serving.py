"""The TransAct V2 request path (``recsys.ranking.rank_requests``): H2D bytes and latency.

    OMP_NUM_THREADS=1 python benchmarks/transact_serving.py --repeats 20     # CPU: bytes + latency
    python benchmarks/transact_serving.py --device cuda --repeats 200          # GPU: + CUDA graphs + NN-select grid
    python benchmarks/transact_serving.py --out runs/bench/transact_serving.json

Sections:

- ``h2d``: host-to-device bytes per request for one user with S lifelong tokens (engaged
  records) and N candidates (:meth:`recsys.ranking.HostArena.transfer_bytes`): deduplicated (the
  sequence once per request), replicated (every candidate row with its own copy of the sequence,
  selection on the device) and host S_all (every row with its S_all selected on the host, at most
  192 tokens: the training layout), for N in {1, 4, 100, 500, 1000} and S in {1k, 4k, 16k}.
  Pure arithmetic over the arena's layout: the same on every machine.
- ``latency``: end-to-end ``rank_requests`` for 1 request x 500 candidates with 10^4 engaged
  records and 100 impressions, the paper-sized ``transact_v2`` (192-token S_all, d = 64): build
  the batch, pack the reused arena, one copy, NN selection, lookups, encoder, heads; p50 and p99
  over ``--repeats`` calls after warm-up (on CUDA with a synchronize per call, and CUDA graphs
  for the dense stage unless ``--no-graphs``).
- ``nn_select`` (CUDA only): the NN-selection op over an S x N x R grid at k = 64, then the
  serving targets of ``benchmarks/nn_select.py`` (whose ``run`` it calls): the fused Triton kernel
  against PyTorch, with achieved GB/s and int8 TOP/s next to the HBM and tensor-core limits.

Writes the JSON report and a PNG of the bytes beside it (``recsys.plots``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from recsys.atomic_files import write_json_atomic
from recsys.data.features import FeatureSpec
from recsys.data.lifelong import LifelongConfig
from recsys.data.schema import ItemTable
from recsys.models import get_model
from recsys.plots import line_plot, png_beside
from recsys.ranking import HostArena, RankRequest, RankRequestBatch, UserSequence, rank_requests

CANDIDATES = (1, 4, 100, 500, 1000)
SEQUENCE_LENGTHS = (1_000, 4_000, 16_000)
LATENCY_SHAPE = (10_000, 100, 500)  # engaged records, impressions, candidates
NN_GRID = [(s, n, r) for s in (1_000, 4_000, 16_000) for n in (100, 500) for r in (1, 16)]  # S x N x R
NN_K = 64  # tokens kept per candidate in the NN-selection grid
CONFIG = LifelongConfig(lifelong_max=20_000)  # the paper's split (96 + 32 + 32 + 32), room for S = 16k


def feature_spec() -> FeatureSpec:
    return FeatureSpec(num_users=1_000, num_items=10_000, item_attributes={"category": 32}, content_dim=32)


def item_table(spec: FeatureSpec, seed: int = 0) -> ItemTable:
    rng = np.random.default_rng(seed)
    content = rng.standard_normal((spec.num_items, spec.content_dim)).astype(np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    return ItemTable(content, {"category": rng.integers(0, 32, spec.num_items)}, {"category": 32})


def user_request(spec: FeatureSpec, engaged: int, impressions: int, candidates: int, seed: int = 0) -> RankRequest:
    """One user with ``engaged`` records then ``impressions`` impressions (random int8 content)."""
    rng = np.random.default_rng(seed)
    size = engaged + impressions
    actions = np.concatenate([rng.integers(1, 2**spec.num_actions, engaged), np.zeros(impressions)])
    timestamp = np.concatenate([np.arange(engaged), np.arange(impressions)])
    sequence = UserSequence(rng.integers(0, spec.num_items, size), actions, rng.integers(0, 3, size), timestamp,
                            rng.integers(-127, 128, (size, spec.content_dim)).astype(np.int8), engaged, 0.65)
    history = {key: rng.integers(0, spec.num_items, spec.max_history) for key in spec.history_features}
    return RankRequest(7, size + 1, sequence, rng.integers(0, spec.num_items, candidates), surface=0, history=history)


def h2d_rows(spec: FeatureSpec, items: ItemTable) -> list[dict]:
    rows = []
    for length in SEQUENCE_LENGTHS:
        for n in CANDIDATES:
            batch = RankRequestBatch.build([user_request(spec, length, 0, n)], spec, items)
            arena = HostArena(spec, 1, n, length)
            b = arena.transfer_bytes(batch, CONFIG)
            rows.append(dict(tokens=length, candidates=n, dedup_bytes=b.payload, copied_bytes=b.copied,
                             replicated_bytes=b.replicated, host_s_all_bytes=b.s_all,
                             replicated_over_dedup=b.replicated / b.payload, s_all_over_dedup=b.s_all / b.payload))
    return rows


def latency(spec: FeatureSpec, items: ItemTable, device: str, repeats: int, graphs_on: bool) -> dict:
    torch.manual_seed(0)
    model = get_model("transact_v2", feature_spec=spec, device=device).eval()
    engaged, impressions, n = LATENCY_SHAPE
    requests = [user_request(spec, engaged, impressions, n)]
    arena = HostArena(spec, 1, n, engaged + impressions, device=device)
    graphs = None
    if graphs_on and device == "cuda":
        from recsys.ranking.graphs import DenseStageGraphs

        graphs = DenseStageGraphs(model)

    def call():
        out = rank_requests(model, requests, items, lifelong=CONFIG, arena=arena, graphs=graphs)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    for _ in range(3):
        call()  # warm-up: kernels, graph capture
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1e3)
    times.sort()
    return dict(requests=1, candidates=n, engaged=engaged, impressions=impressions, repeats=repeats,
                cuda_graphs=graphs is not None, p50_ms=statistics.median(times),
                p99_ms=times[min(len(times) - 1, int(np.ceil(0.99 * len(times))) - 1)],
                h2d_bytes=arena.last_bytes.payload, h2d_copied_bytes=arena.last_bytes.copied)


def nn_select_rows(repeats: int) -> list[dict]:
    from nn_select import GPU_SHAPES, run  # benchmarks/nn_select.py, beside this file

    shapes = [(f"S={s} N={n} R={r}", r, s, n, 32, NN_K, None) for s, n, r in NN_GRID]
    return run(shapes + GPU_SHAPES[:4], ["pytorch", "triton", "triton-graph"], "cuda", repeats)


def format_h2d(rows: list[dict]) -> str:
    head = f"{'S':>7}{'N':>6}{'dedup':>12}{'replicated':>14}{'host S_all':>13}{'repl/dedup':>12}{'S_all/dedup':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['tokens']:>7}{r['candidates']:>6}{r['dedup_bytes']:>12,}{r['replicated_bytes']:>14,}"
                     f"{r['host_s_all_bytes']:>13,}{r['replicated_over_dedup']:>12.1f}{r['s_all_over_dedup']:>12.1f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    series: dict[str, list] = {}
    for r in rows:
        series.setdefault(f"dedup S={r['tokens']}", []).append((r["candidates"], r["dedup_bytes"]))
        series.setdefault(f"replicated S={r['tokens']}", []).append((r["candidates"], r["replicated_bytes"]))
        if r["tokens"] == rows[0]["tokens"]:  # S_all is at most 192 tokens whatever S: one line
            series.setdefault("host S_all (any S)", []).append((r["candidates"], r["host_s_all_bytes"]))
    return line_plot(series, path, "candidates per request", "H2D bytes per request", log_x=True, log_y=True,
                     title="TransAct V2 request: bytes moved host -> device")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-graphs", action="store_true", help="CUDA: run the dense stage eagerly")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/transact_serving.json"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu")
    spec, items = feature_spec(), item_table(feature_spec())
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    report["h2d"] = h2d_rows(spec, items)
    print(format_h2d(report["h2d"]))
    report["latency"] = latency(spec, items, args.device, max(1, args.repeats), not args.no_graphs)
    lat = report["latency"]
    print(f"rank_requests 1 x {lat['candidates']} candidates, {lat['engaged']:,} + {lat['impressions']} tokens on "
          f"{report['device']}: p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms ({lat['repeats']} calls, "
          f"CUDA graphs {'on' if lat['cuda_graphs'] else 'off'})")
    if args.device == "cuda":
        from nn_select import format_table

        report["nn_select"] = nn_select_rows(max(1, args.repeats // 10))
        print(format_table(report["nn_select"]))
    write_json_atomic(args.out, report)
    print(f"wrote {args.out} and {plot(report['h2d'], png_beside(args.out))}")


if __name__ == "__main__":
    main()
