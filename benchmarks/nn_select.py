"""Nearest-neighbour selection (TransAct V2): the PyTorch reference against the fused Triton kernel.

    python benchmarks/nn_select.py                 # CUDA: pytorch and triton, every shape
    python benchmarks/nn_select.py --cpu           # CPU: the reference on small shapes (a smoke run)
    python benchmarks/nn_select.py --out runs/bench/nn_select.json

Progress goes to stdout as it happens: ``# shape / backend: check`` and ``# ... : time`` before each
step, and each table row once measured (the whole table again at the end). CUDA reports a fault at
the next sync, which comes before the next step: the last ``#`` line names the shape and backend
(run with ``CUDA_LAUNCH_BLOCKING=1`` to name the very launch).

Each shape is R requests (one user sequence each, S tokens of C int8 values) with N candidates per
request, keeping k tokens per candidate. The tokens' inverse norms are computed once per shape and
passed in (as ``rank_requests`` does once per batch). Before timing, every backend's output is
checked to equal the reference exactly. Time is the median of ``--repeats`` runs after warm-up
(CUDA events on GPU; the first call also autotunes the kernel). Backends:

- ``pytorch``: the reference through ``nn_select`` (input checks included);
- ``triton``: the kernel through ``nn_select`` (input checks: one device sync);
- ``triton-direct``: ``nn_select_triton`` itself (no input checks; its candidate grouping still
  syncs once);
- ``triton-graph``: the kernels alone: int8 candidates and their grouping prepared once, the
  select and merge launches captured in a CUDA graph and replayed (no host work timed).

GB/s counts the bytes the op must move at least: the int8 sequences once (``R * S * C``), their
float32 inverse norms (``R * S * 4``), the candidates (``B * C * 4``) and the output (``B * k * 8``),
against the HBM limit (3.0 TB/s H100, 4.8 TB/s H200). TOP/s counts the int8 multiply-adds of
scoring every candidate against its sequence (``2 * B * S * C``), against the dense int8
tensor-core peak of the datasheet (1979 TOP/s, H100 and H200 SXM). Shapes with a target (the
serving budget) print it and whether it was met.
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
from recsys.ops.nn_select_reference import token_inverse_norms

HBM_GBPS = {"H200": 4800.0, "H100": 3000.0}  # by device name; H100 SXM HBM3 otherwise
INT8_TOPS = 1979.0  # dense int8 tensor-core peak, H100 / H200 SXM datasheet
GPU_SHAPES = [  # (name, requests R, sequence length S, candidates per request N, content dim C, k, target ms)
    ("serve: 1 x 500 cands, S=16k", 1, 16_000, 500, 32, 64, 0.066),
    ("serve: 16 x 500 cands, S=16k", 16, 16_000, 500, 32, 64, 0.30),
    ("serve: 64 x 4 cands, S=16k", 64, 16_000, 4, 32, 64, 0.105),
    ("train: 1024 x 1 cand, S=10k", 1024, 10_000, 1, 32, 64, 0.238),
    ("serve: 16 x 256 cands, S=10k", 16, 10_000, 256, 32, 96, None),
    ("train: 4096 x 1 cand, S=1k", 4096, 1_000, 1, 32, 32, None),
]
CPU_SHAPES = [
    ("serve: 1 user x 64 cands, S=2k", 1, 2_000, 64, 32, 96, None),
    ("train: 64 rows x 1 cand, S=1k", 64, 1_000, 1, 32, 32, None),
]


def make_inputs(requests: int, length: int, per_request: int, dim: int, device: str, seed: int = 0) -> dict:
    """Unit-norm random embeddings, one sequence per request (no sharing between requests)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.nn.functional.normalize(torch.randn(requests * length, dim, generator=g), dim=1)
    candidates = torch.nn.functional.normalize(torch.randn(requests * per_request, dim, generator=g), dim=1)
    values = quantize_int8(tokens).to(device)
    return dict(
        values=values,
        inverse_norms=token_inverse_norms(values),
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


def hbm_limit(device_name: str) -> float:
    return next((v for key, v in HBM_GBPS.items() if key in device_name), HBM_GBPS["H100"])


def graph_fn(x: dict, k: int, segment_len: int | None = None):
    """The kernels alone: int8 candidates and their grouping prepared once, the two launches
    captured in a CUDA graph (after autotuning) and replayed: no host work is timed."""
    from recsys.kernels.nn_select_triton import candidate_groups, nn_select_triton

    codes = quantize_int8(x["candidates"])
    groups = candidate_groups(x["candidate_seq"], x["seq_lengths"])

    def call():
        return nn_select_triton(x["values"], x["seq_starts"], x["seq_lengths"], codes, x["candidate_seq"], k,
                                inverse_norms=x["inverse_norms"], segment_len=segment_len, groups=groups)

    call()  # autotune and compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()

    def replay():
        graph.replay()
        return out

    # The graph replays its launches at the captured addresses but owns only what the capture
    # allocated (the scratch and the output): the tensors made before it must live as long as the
    # replays. Freed with this function's frame, their memory goes to the next tensors allocated
    # and the replays read garbage candidate indices (an illegal memory access on an H100).
    replay.inputs = (x, codes, groups)
    return replay


def select_fn(backend: str, x: dict, k: int, segment_len: int | None = None):
    """A zero-argument call of one backend on the inputs ``x``."""
    if backend == "triton-graph":
        return graph_fn(x, k, segment_len)
    if backend == "triton-direct":
        from recsys.kernels.nn_select_triton import nn_select_triton

        args = {key: v for key, v in x.items() if key != "inverse_norms"}
        return lambda: nn_select_triton(**args, k=k, inverse_norms=x["inverse_norms"], segment_len=segment_len)
    return lambda: nn_select(**x, k=k, kernel=backend)


def run(shapes, backends: list[str], device: str, repeats: int, segment_len: int | None = None) -> list[dict]:
    hbm = hbm_limit(torch.cuda.get_device_name()) if device == "cuda" else HBM_GBPS["H100"]
    rows = []
    for name, requests, length, per_request, dim, k, target in shapes:
        x = make_inputs(requests, length, per_request, dim, device)
        num_candidates = requests * per_request
        min_bytes = requests * length * (dim + 4) + num_candidates * dim * 4 + num_candidates * k * 8
        ops = 2 * num_candidates * length * dim
        want = nn_select(**x, k=k, kernel="pytorch")
        for backend in backends:
            # Named before each step: a CUDA fault is raised at a later sync (time_ms syncs after every
            # call), so the last line printed says which shape and backend faulted.
            print(f"# {name} / {backend}: check against the reference", flush=True)
            fn = select_fn(backend, x, k, segment_len)
            if not torch.equal(fn(), want):
                raise SystemExit(f"{backend} differs from the reference on shape {name!r}")
            print(f"# {name} / {backend}: time ({repeats} repeats)", flush=True)
            ms = time_ms(fn, device, repeats)
            gbps, tops = min_bytes / (ms * 1e-3) / 1e9, ops / (ms * 1e-3) / 1e12
            rows.append(dict(shape=name, requests=requests, length=length, candidates_per_request=per_request,
                             dim=dim, k=k, backend=backend, ms=ms, target_ms=target,
                             segment_len=segment_len if backend.startswith("triton-") else None,
                             met=None if target is None else ms <= target, gb_per_s=gbps, hbm_gb_per_s=hbm,
                             hbm_share=gbps / hbm, tops=tops, int8_tops=INT8_TOPS, tops_share=tops / INT8_TOPS,
                             min_bytes=min_bytes, int8_ops=ops))
            print(format_row(rows[-1]), flush=True)
    return rows


TABLE_HEAD = (f"{'shape':<32}{'backend':>14}{'ms':>9}{'target':>8}{'met':>5}{'GB/s':>9}{'of HBM':>8}"
              f"{'TOP/s':>8}{'of peak':>8}")


def format_row(r: dict) -> str:
    target = "" if r["target_ms"] is None else f"{r['target_ms']:.3f}"
    met = "" if r["met"] is None else ("yes" if r["met"] else "no")
    return (f"{r['shape']:<32}{r['backend']:>14}{r['ms']:>9.3f}{target:>8}{met:>5}{r['gb_per_s']:>9.1f}"
            f"{r['hbm_share']:>8.1%}{r['tops']:>8.2f}{r['tops_share']:>8.2%}")


def format_table(rows: list[dict]) -> str:
    return "\n".join([TABLE_HEAD, "-" * len(TABLE_HEAD)] + [format_row(r) for r in rows])


def plot(report: dict, path: Path) -> Path:
    """Latency vs the work of a call (candidate-token pairs scored), one line per backend, and the
    serving targets as points."""
    series: dict[str, list] = {}
    targets: dict[int, float] = {}
    for r in report["rows"]:
        pairs = r["requests"] * r["candidates_per_request"] * r["length"]
        series.setdefault(f"{r['backend']} k={r['k']}", []).append((pairs, r["ms"]))
        if r.get("target_ms") is not None:
            targets[pairs] = r["target_ms"]
    if targets:
        series["target"] = sorted(targets.items())
    series = {name: sorted(points) for name, points in series.items()}
    return line_plot(series, path, "candidate x token pairs per call", "ms (median)", log_x=True, log_y=True,
                     title=f"candidate-conditioned NN selection on {report['device']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run the reference on CPU (small shapes)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--segment-len", type=int, default=None,
                        help="triton-direct, triton-graph: tokens per program (default: the kernel's choice); for tuning")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/nn_select.json"))
    args = parser.parse_args()
    if args.cpu:
        device, shapes, backends = "cpu", CPU_SHAPES, ["pytorch"]
    elif torch.cuda.is_available():
        device, shapes, backends = "cuda", GPU_SHAPES, ["pytorch", "triton", "triton-direct", "triton-graph"]
    else:
        raise SystemExit("no CUDA device: run with --cpu for the reference on CPU")
    print(TABLE_HEAD, flush=True)  # each row follows as soon as it is measured; the whole table at the end
    rows = run(shapes, backends, device, max(1, args.repeats), args.segment_len)
    print(format_table(rows))
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    report = {"device": name, "torch": torch.__version__, "hbm_gb_per_s": hbm_limit(name), "int8_tops": INT8_TOPS,
              "rows": rows}
    if device == "cuda":
        import triton

        report["triton"] = triton.__version__
    write_json_atomic(args.out, report)
    print(f"wrote {args.out} and {plot(report, png_beside(args.out))}")


if __name__ == "__main__":
    main()
