"""SKUT: the TransAct V2 encoder at inference, one Triton launch against PyTorch eager and torch.compile.

    python benchmarks/skut.py                                   # CUDA: B in {64, 256, 1024}, L = 192
    python benchmarks/skut.py --rows 256 --compile-mode max-autotune
    python benchmarks/skut.py --out runs/bench/skut.json
    python benchmarks/skut.py --cpu                             # CPU smoke run: tiny shapes, kernel interpreted

The paper's encoder (:class:`recsys.modules.transact_v2.TransActV2`: d = 64, 1 head, FFN 32,
2 post-norm layers, token width 2C = 64, readout F = 64), random weights, eval mode, no gradient.
Each shape encodes B rows of L = 192 token vectors (``full``: every row 192 real tokens, the
serving case of an active user; ``ragged``: lengths uniform in 0..192) from ``[B, L, 2C]`` token
vectors to the ``[B, F]`` readout. Providers:

- ``eager``: the module's own layers, float32 as served (``input_projection``, ``nn.TransformerEncoder``
  with the causal mask, ``readout``: what ``encode_padded`` runs after the token vectors);
- ``eager-bf16``: the same on a bfloat16 copy of the module and inputs;
- ``compile`` / ``compile-bf16``: ``torch.compile`` of those (``--compile-mode``), warmed up first;
- ``triton``: :func:`recsys.ops.skut.skut` with ``kernel="triton"`` (weights packed once, as the
  module caches them; default tiles); ``triton[BM,BN,wW,sS]``: query / key tile rows, warps and
  pipeline stages of the sweep (off with ``--no-sweep``), to pick the default from.

Time: median of ``triton.testing.do_bench`` (CUDA), the host clock on CPU. TFLOP/s counts useful
work only, per real token: the input projection ``2 E d``, per layer ``Q K V`` ``6 d^2``, output
``2 d^2``, FFN ``4 d f``, and ``4 d`` per causal (query, key) pair for ``Q K^T`` and ``P V``;
the readout ``2 d F``. ``of peak``: the share of ~790 TFLOP/s, the H100 / H200 bf16 dense matmul
rate. ``max |err|``: the readout against the float32 eager module.

Writes the JSON report and a PNG of the times beside it (``recsys.plots``).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch
from torch import nn

from recsys.atomic_files import write_json_atomic
from recsys.plots import grouped_bars, png_beside

PEAK_TFLOPS = 790.0  # H100 / H200 bf16 dense matmul, the limit quoted beside achieved rates
WIDTH = 192
GPU_ROWS = (64, 256, 1024)
CPU_ROWS, CPU_WIDTH = (4,), 40
SWEEP = [  # (block_m, block_n, num_warps, num_stages) besides the default tiles
    (64, 32, 4, 1), (32, 32, 4, 1), (32, 16, 4, 1), (64, 64, 4, 2), (64, 64, 8, 1), (128, 64, 8, 1),
]


def make_encoder(device: str, width: int):
    """The paper-sized encoder (d = 64, FFN 32, 1 head, 2 layers, C = 32) in eval mode."""
    from recsys.modules.transact_v2 import TransActV2, TransActV2Config

    torch.manual_seed(0)
    config = TransActV2Config(max_sequence=width)
    return TransActV2(num_actions=4, num_surfaces=3, content_dim=32, config=config, device=device).eval()


def make_inputs(rows: int, width: int, token_dim: int, lengths: str, device: str, seed: int = 0):
    """``[B, L, E]`` token vectors and ``[B]`` lengths (``full`` or ``ragged``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, token_dim, generator=g) * 0.5
    if lengths == "full":
        n = torch.full((rows,), width, dtype=torch.int64)
    else:
        n = torch.randint(0, width + 1, (rows,), generator=g)
    return x.to(device), n.to(device)


def useful_flops(encoder, lengths: torch.Tensor) -> float:
    """Multiply-adds x 2 of the real tokens (see the module docstring)."""
    c = encoder.config
    d, f, e, out = c.model_dim, c.feedforward_dim, 2 * encoder.content_dim, encoder.output_dim
    tokens = float(lengths.sum())
    pairs = float((lengths * (lengths + 1) // 2).sum())
    per_token = 2 * e * d + c.num_layers * (8 * d * d + 4 * d * f) + 2 * d * out
    return tokens * per_token + pairs * c.num_layers * 4 * d


def module_layers(encoder):
    """``(x, real) -> [B, F]``: the module's layers after the token vectors, as ``encode_padded``."""
    def run(x, real):
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=x.dtype)
        outputs = encoder.encoder(encoder.input_projection(x), mask=causal, is_causal=True)
        return encoder.readout(outputs, real)
    return run


def provider_calls(encoder, x, lengths, device: str, compile_mode: str, sweep: bool) -> dict:
    """Provider name -> zero-argument call returning the ``[B, F]`` readout."""
    from recsys.ops.skut import skut

    real = torch.arange(x.shape[1], device=device) < lengths.unsqueeze(1)
    low = copy.deepcopy(encoder).to(torch.bfloat16)
    x_low = x.bfloat16()
    calls = {"eager": lambda: module_layers(encoder)(x, real), "eager-bf16": lambda: module_layers(low)(x_low, real)}
    if device == "cuda":
        compiled = torch.compile(module_layers(encoder), mode=compile_mode)
        compiled_low = torch.compile(module_layers(low), mode=compile_mode)
        calls["compile"] = lambda: compiled(x, real)
        calls["compile-bf16"] = lambda: compiled_low(x_low, real)
    weights = encoder.skut_weights()
    calls["triton"] = lambda: skut(weights, x, lengths, kernel="triton", check_lengths=False)
    if sweep and device == "cuda":
        from recsys.kernels.skut_triton import skut_triton

        for bm, bn, warps, stages in SWEEP:
            calls[f"triton[{bm},{bn},w{warps},s{stages}]"] = (
                lambda m=bm, n=bn, w=warps, s=stages: skut_triton(weights, x, lengths, block_m=m, block_n=n,
                                                                  num_warps=w, num_stages=s))
    return calls


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


@torch.no_grad()
def run_shape(encoder, rows: int, width: int, lengths_kind: str, device: str, repeats: int, compile_mode: str,
              sweep: bool) -> list[dict]:
    x, lengths = make_inputs(rows, width, 2 * encoder.content_dim, lengths_kind, device)
    flops = useful_flops(encoder, lengths.cpu())
    calls = provider_calls(encoder, x, lengths, device, compile_mode, sweep)
    want = calls["eager"]().float()
    result = []
    for provider, fn in calls.items():
        for _ in range(3):
            got = fn()  # warm-up: compilation, autotuning, weight packing
        ms = time_ms(fn, device, repeats)
        tflops = flops / (ms * 1e-3) / 1e12
        result.append(dict(rows=rows, width=width, lengths=lengths_kind, tokens=int(lengths.sum()), provider=provider,
                           ms=ms, tflops=tflops, of_peak=tflops / PEAK_TFLOPS,
                           max_abs_error=float((got.float() - want).abs().max())))
    eager = next(r["ms"] for r in result if r["provider"] == "eager")
    for r in result:
        r["speedup_vs_eager"] = eager / r["ms"]
    return result


def format_table(rows: list[dict]) -> str:
    head = (f"{'B':>6}{'L':>5}{'lengths':>8}{'provider':>26}{'ms':>10}{'TFLOP/s':>10}{'of 790':>9}"
            f"{'x eager':>9}{'max |err|':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['rows']:>6}{r['width']:>5}{r['lengths']:>8}{r['provider']:>26}{r['ms']:>10.4f}"
                     f"{r['tflops']:>10.3g}{r['of_peak']:>9.2%}{r['speedup_vs_eager']:>9.2f}{r['max_abs_error']:>11.2e}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    groups: dict[str, dict[str, tuple[float, float]]] = {}
    for r in report["rows"]:
        if "[" not in r["provider"]:  # the sweep's variants stay in the JSON
            groups.setdefault(f"B={r['rows']} {r['lengths']}", {})[r["provider"]] = (r["ms"], float("nan"))
    return grouped_bars(groups, path, "ms (median)",
                        title=f"TransAct V2 encoder, L={report['width']}, on {report['device']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="smoke run on CPU: tiny shapes, the kernel interpreted")
    parser.add_argument("--rows", type=int, nargs="+", help=f"B values (default {GPU_ROWS})")
    parser.add_argument("--width", type=int, default=WIDTH, help="L, the padded S_all length")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (default, max-autotune, ...)")
    parser.add_argument("--no-sweep", action="store_true", help="time only the kernel's default tile")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/skut.json"))
    args = parser.parse_args()
    if args.cpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported
        device, rows, width, repeats = "cpu", args.rows or CPU_ROWS, CPU_WIDTH, min(args.repeats, 3)
    elif torch.cuda.is_available():
        device, rows, width, repeats = "cuda", args.rows or GPU_ROWS, args.width, args.repeats
    else:
        raise SystemExit("no CUDA device: run with --cpu for a smoke run")
    encoder = make_encoder(device, width)
    shapes = [(b, "full") for b in rows] + [(256 if 256 in rows else rows[0], "ragged")]
    results = []
    for b, kind in shapes:
        results += run_shape(encoder, b, width, kind, device, repeats, args.compile_mode, not args.no_sweep)
    print(format_table(results))
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "peak_tflops": PEAK_TFLOPS, "width": width, "compile_mode": args.compile_mode,
              "config": vars(encoder.config), "rows": results}
    write_json_atomic(args.out, report)
    print(f"wrote {args.out} and {plot(report, png_beside(args.out))}")


if __name__ == "__main__":
    main()
