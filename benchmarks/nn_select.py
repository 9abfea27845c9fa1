"""Nearest-neighbour selection (TransAct V2): the PyTorch reference against the Triton kernel.

    python benchmarks/nn_select.py                 # CUDA: pytorch and triton, every shape
    python benchmarks/nn_select.py --cpu           # CPU: the reference on small shapes (a smoke run)
    python benchmarks/nn_select.py --out runs/bench/nn_select.json

Each shape is R requests (one user sequence each, L tokens of C int8 values) with N candidates per
request, keeping k tokens per candidate. Before timing, every backend's output is checked to equal
the reference exactly. Time is the median of ``--repeats`` runs after warm-up (CUDA events on GPU).

GB/s counts the bytes the op must move at least: the int8 sequences once (``R * L * C``), the
candidates (``B * C * 4``) and the output (``B * k * 8``), divided by the time; next to it the share
of the H100's 3.0 TB/s HBM bandwidth. (The kernel re-reads each sequence once per pass from L2,
and the reference also writes float copies and [B, L] scores: the figure is what the op achieves,
not what the memory system carried. The op is compute- and latency-bound, so the share is small.)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from recsys.atomic_files import write_json_atomic
from recsys.plots import line_plot, png_beside
from recsys.ops.int8_quantization import quantize_int8
from recsys.ops.nn_select import nn_select

HBM_GBPS = 3000.0  # H100 SXM HBM3
GPU_SHAPES = [  # (name, requests R, sequence length L, candidates per request N, content dim C, k)
    ("serve: 1 user x 512 cands, L=10k", 1, 10_000, 512, 32, 96),
    ("serve: 16 users x 256 cands, L=10k", 16, 10_000, 256, 32, 96),
    ("serve: 64 users x 64 cands, L=2k", 64, 2_000, 64, 32, 96),
    ("train: 1024 rows x 1 cand, L=10k", 1024, 10_000, 1, 32, 96),
    ("train: 4096 rows x 1 cand, L=1k", 4096, 1_000, 1, 32, 32),
]
CPU_SHAPES = [
    ("serve: 1 user x 64 cands, L=2k", 1, 2_000, 64, 32, 96),
    ("train: 64 rows x 1 cand, L=1k", 64, 1_000, 1, 32, 32),
]


def make_inputs(requests: int, length: int, per_request: int, dim: int, device: str, seed: int = 0) -> dict:
    """Unit-norm random embeddings, one sequence per request (no sharing between requests)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.nn.functional.normalize(torch.randn(requests * length, dim, generator=g), dim=1)
    candidates = torch.nn.functional.normalize(torch.randn(requests * per_request, dim, generator=g), dim=1)
    return dict(
        values=quantize_int8(tokens).to(device),
        seq_starts=(torch.arange(requests) * length).to(device),
        seq_lengths=torch.full((requests,), length).to(device),
        candidates=candidates.to(device),
        candidate_seq=torch.arange(requests).repeat_interleave(per_request).to(device),
    )


def time_ms(fn, device: str, repeats: int) -> float:
    fn()  # warm-up (compiles the kernel)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            fn()
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


def run(shapes, backends: list[str], device: str, repeats: int) -> list[dict]:
    rows = []
    for name, requests, length, per_request, dim, k in shapes:
        x = make_inputs(requests, length, per_request, dim, device)
        num_candidates = requests * per_request
        min_bytes = requests * length * dim + num_candidates * dim * 4 + num_candidates * k * 8
        want = nn_select(**x, k=k, kernel="pytorch")
        for backend in backends:
            got = nn_select(**x, k=k, kernel=backend)
            if not torch.equal(got, want):
                raise SystemExit(f"{backend} differs from the reference on shape {name!r}")
            ms = time_ms(lambda: nn_select(**x, k=k, kernel=backend), device, repeats)
            gbps = min_bytes / (ms * 1e-3) / 1e9
            rows.append(dict(shape=name, requests=requests, length=length, candidates_per_request=per_request,
                             dim=dim, k=k, backend=backend, ms=ms, gb_per_s=gbps, hbm_share=gbps / HBM_GBPS,
                             min_bytes=min_bytes))
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'shape':<40}{'backend':>9}{'ms':>10}{'GB/s':>10}{'of 3.0 TB/s':>13}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['shape']:<40}{r['backend']:>9}{r['ms']:>10.3f}{r['gb_per_s']:>10.2f}{r['hbm_share']:>12.1%}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    """Latency vs the lifelong sequence length, one line per backend and k."""
    series: dict[str, list] = {}
    for r in report["rows"]:
        series.setdefault(f"{r['backend']} k={r['k']}", []).append((r["length"], r["ms"]))
    return line_plot(series, path, "lifelong sequence length", "ms (median)", log_x=True, log_y=True,
                     title=f"candidate-conditioned NN selection on {report['device']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run the reference on CPU (small shapes)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/nn_select.json"))
    args = parser.parse_args()
    if args.cpu:
        device, shapes, backends = "cpu", CPU_SHAPES, ["pytorch"]
    elif torch.cuda.is_available():
        device, shapes, backends = "cuda", GPU_SHAPES, ["pytorch", "triton"]
    else:
        raise SystemExit("no CUDA device: run with --cpu for the reference on CPU")
    rows = run(shapes, backends, device, max(1, args.repeats))
    print(format_table(rows))
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "hbm_gb_per_s": HBM_GBPS, "rows": rows}
    write_json_atomic(args.out, report)
    print(f"wrote {args.out} and {plot(report, png_beside(args.out))}")


if __name__ == "__main__":
    main()
