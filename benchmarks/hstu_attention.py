"""Jagged HSTU attention forward: the PyTorch reference against the Triton kernel.

    python benchmarks/hstu_attention.py                       # CUDA: pytorch and triton, every shape
    python benchmarks/hstu_attention.py --dtype float32 [--tf32]
    python benchmarks/hstu_attention.py --cpu                 # CPU: the reference on small shapes (a smoke run)
    python benchmarks/hstu_attention.py --out runs/bench/hstu_attention.json

Each shape is B sequences of ragged lengths (uniform in [L/2, L], fixed seed), H heads of
dimension D, causal attention with the position and time bias (the HSTU layer's settings), under
``torch.no_grad()``. The layout (mask, bias index) is built once per shape, as an encoder does for
all its layers, and is not timed. Before timing, every backend's output is compared with the
float32 reference (max absolute difference printed and kept).

TFLOP/s counts the useful work: per head, 2 * D multiply-adds for Q K^T and 2 * D for the weights
times V over the causal pairs (n (n + 1) / 2 per sequence), divided by the median time; next to it
the share of 790 TFLOP/s, the bf16 matmul rate measured on the H100 here (float32 runs compare
against the same figure; with ``--tf32`` both backends may use TF32 tensor cores, without it both
compute exact float32 products).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from recsys.atomic_files import write_json_atomic
from recsys.plots import line_plot, png_beside
from recsys.ops.hstu_attention import hstu_attention
from recsys.ops.hstu_attention_layout import build_hstu_attention_layout

PEAK_TFLOPS = 790.0  # bf16 dense matmul, measured on the H100 (docs/benchmarks.md)
GPU_SHAPES = [  # (name, sequences B, longest L, heads H, head dim D)
    ("Beauty-size: B=128, L=50, H=4, D=16", 128, 50, 4, 16),
    ("ML-20M-size: B=128, L=200, H=4, D=64", 128, 200, 4, 64),
    ("long: B=32, L=1024, H=2, D=64", 32, 1024, 2, 64),
    ("long: B=8, L=4096, H=2, D=128", 8, 4096, 2, 128),
]
CPU_SHAPES = [("smoke: B=8, L=64, H=2, D=16", 8, 64, 2, 16)]
NUM_TIME_BUCKETS = 128


def make_inputs(num_seqs: int, longest: int, heads: int, dim: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Ragged jagged inputs, bias tables and their layout (built once, as an encoder does)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(longest // 2, 1), longest + 1, (num_seqs,), generator=g)
    total = int(lengths.sum())
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(device)
    timestamps = torch.cat([torch.randint(0, 10**8, (int(n),), generator=g).sort().values for n in lengths]).to(device)
    x = dict(
        q=(torch.randn(total, heads, dim, generator=g) * 0.5).to(device, dtype),
        k=(torch.randn(total, heads, dim, generator=g) * 0.5).to(device, dtype),
        v=torch.randn(total, heads, dim, generator=g).to(device, dtype),
        seq_offsets=offsets,
        max_seq_len=longest,
        timestamps=timestamps,
        position_bias=(torch.randn(2 * longest - 1, generator=g) * 0.1).to(device),
        time_bias=(torch.randn(NUM_TIME_BUCKETS + 1, generator=g) * 0.1).to(device),
    )
    x["layout"] = build_hstu_attention_layout(offsets, longest, num_rows=total, timestamps=timestamps)
    return x, lengths


def useful_flops(lengths: torch.Tensor, heads: int, dim: int) -> float:
    pairs = float((lengths * (lengths + 1) // 2).sum())
    return 2.0 * pairs * heads * (dim + dim)


def time_ms(fn, device: str, repeats: int) -> float:
    """Median milliseconds: ``triton.testing.do_bench`` on GPU, the host clock on CPU."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, rep=max(repeats, 10), return_mode="median"))
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1e3)
    return sorted(times)[len(times) // 2]


def run(shapes, backends: list[str], dtype: torch.dtype, device: str, repeats: int) -> list[dict]:
    rows = []
    for shape in shapes:
        rows += run_shape(*shape, backends, dtype, device, repeats)
        if device == "cuda":
            torch.cuda.empty_cache()  # the shape's inputs are gone with run_shape's frame
    return rows


@torch.no_grad()
def run_shape(name: str, num_seqs: int, longest: int, heads: int, dim: int, backends: list[str],
              dtype: torch.dtype, device: str, repeats: int) -> list[dict]:
    """One row per backend: time, TFLOP/s and the largest difference to the float32 reference."""
    x, lengths = make_inputs(num_seqs, longest, heads, dim, dtype, device)
    want = hstu_attention(**{**x, **{n: x[n].float() for n in ("q", "k", "v")}}, kernel="pytorch")
    flops = useful_flops(lengths, heads, dim)
    rows = []
    for backend in backends:
        error = float((hstu_attention(**x, kernel=backend).float() - want).abs().max())
        ms = time_ms(lambda: hstu_attention(**x, kernel=backend), device, repeats)
        tflops = flops / (ms * 1e-3) / 1e12
        rows.append(dict(shape=name, sequences=num_seqs, longest=longest, tokens=int(lengths.sum()),
                         heads=heads, dim=dim, dtype=str(dtype).removeprefix("torch."), backend=backend,
                         ms=ms, tflops=tflops, peak_share=tflops / PEAK_TFLOPS, max_abs_error=error))
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'shape':<40}{'dtype':>10}{'backend':>9}{'ms':>10}{'TFLOP/s':>10}{'of 790':>9}{'max |err|':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['shape']:<40}{r['dtype']:>10}{r['backend']:>9}{r['ms']:>10.3f}{r['tflops']:>10.2f}"
                     f"{r['peak_share']:>9.1%}{r['max_abs_error']:>12.2e}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    """Latency vs the longest sequence, one line per backend and dtype."""
    series: dict[str, list] = {}
    for r in report["rows"]:
        series.setdefault(f"{r['backend']} {r['dtype']}", []).append((r["longest"], r["ms"]))
    return line_plot(series, path, "longest sequence (tokens)", "ms (median)", log_x=True, log_y=True,
                     title=f"jagged HSTU attention forward on {report['device']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run the reference on CPU (small shapes)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (torch.backends.cuda.matmul.allow_tf32)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/hstu_attention.json"))
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if args.cpu:
        device, shapes, backends, dtype = "cpu", CPU_SHAPES, ["pytorch"], torch.float32
    elif torch.cuda.is_available():
        device, shapes, backends = "cuda", GPU_SHAPES, ["pytorch", "triton"]
    else:
        raise SystemExit("no CUDA device: run with --cpu for the reference on CPU")
    rows = run(shapes, backends, dtype, device, max(1, args.repeats))
    print(format_table(rows))
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "peak_tflops": PEAK_TFLOPS, "allow_tf32": args.tf32, "rows": rows}
    write_json_atomic(args.out, report)
    print(f"wrote {args.out} and {plot(report, png_beside(args.out))}")


if __name__ == "__main__":
    main()
