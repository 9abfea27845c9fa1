"""Jagged HSTU attention, forward and forward + backward: the fused Triton kernel against the padded
PyTorch reference and padded causal SDPA (flash attention).

    python benchmarks/hstu_attention.py                                  # CUDA: every L, both passes, bias and none
    python benchmarks/hstu_attention.py --lengths 4096 --passes fwd     # one length, forward only
    python benchmarks/hstu_attention.py --lengths 4096 --biases position time   # each table's cost alone
    python benchmarks/hstu_attention.py --out runs/bench/hstu_attention.json
    python benchmarks/hstu_attention.py --cpu                            # CPU smoke run: tiny shapes, kernel interpreted

Each length L runs B = 2^17 / L sequences (the same 2^17-token budget) of jagged lengths uniform
in [L/2, L] (fixed seed), H = 4 heads of dimension D = 128, bfloat16, causal attention, with the
position + time bias (the HSTU layer's settings: tables of 2L - 1 and 129 entries, sorted random
timestamps) or without any bias. Providers:

- ``triton``: :func:`recsys.ops.hstu_attention.hstu_attention` with ``kernel="triton"`` (mask,
  normalizer and bias computed in-kernel from offsets, timestamps and the tables);
- ``pytorch``: the padded reference, its layout (mask, bias index) built once and not timed, as an
  encoder does for all its layers; only where its ``[B, H, N, N]`` tensors fit in memory;
- ``sdpa``: ``scaled_dot_product_attention`` on the padded ``[B, H, L, D]`` batch, ``is_causal``,
  flash backend: softmax attention, no bias, the speed reference of a tuned attention kernel.

Time: median of ``triton.testing.do_bench`` (CUDA), the host clock on CPU. TFLOP/s counts useful
work only: forward ``4 H D sum_b n_b (n_b + 1) / 2`` (Q K^T and weights x V over the causal pairs),
forward + backward 3.5 times that (backward = 2.5 x forward), for every provider (SDPA's padded
work is larger). ``of matmul``: the share of the bf16 matmul rate measured at the start with a
large ``torch.matmul``. ``max |err|``: forward output against the float32 reference, where that fits.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from recsys.atomic_files import write_json_atomic
from recsys.plots import line_plot, png_beside

TOKENS = 2**17
GPU_LENGTHS = [256, 1024, 4096, 8192, 16384]
CPU_LENGTHS = [32, 64]
HEADS, DIM = 4, 128
CPU_HEADS, CPU_DIM, CPU_TOKENS = 2, 16, 2**8
NUM_TIME_BUCKETS = 128
PASSES = ("fwd", "fwd+bwd")
BACKWARD_FACTOR = 2.5  # useful backward FLOPs per forward FLOP


def make_inputs(num_seqs: int, longest: int, heads: int, dim: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Jagged q, k, v ``[T, H, D]``, offsets, sorted timestamps and both bias tables; ``[B]`` lengths."""
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
    return x, lengths


def useful_flops(lengths: torch.Tensor, heads: int, dim: int) -> float:
    """Forward: 2 * D multiply-adds for Q K^T and 2 * D for weights x V, per causal pair and head."""
    pairs = float((lengths * (lengths + 1) // 2).sum())
    return 2.0 * pairs * heads * (dim + dim)


def time_ms(fn, device: str, repeats: int, grad_to_none=None) -> float:
    """Median milliseconds: ``triton.testing.do_bench`` on GPU, the host clock on CPU."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, rep=max(repeats, 10), grad_to_none=grad_to_none,
                                             return_mode="median"))
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1e3)
    return sorted(times)[len(times) // 2]


def matmul_tflops(device: str, size: int = 8192) -> float:
    """The bf16 (float32 on CPU) matmul rate of this device, from one large ``torch.matmul``."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    size = size if device == "cuda" else 256
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    ms = time_ms(lambda: a @ b, device, repeats=50 if device == "cuda" else 5)
    return 2.0 * size**3 / (ms * 1e-3) / 1e12


def reference_fits(num_seqs: int, longest: int, heads: int, backward: bool, device: str) -> bool:
    """Whether the padded reference's ``[B, H, N, N]`` tensors (scores, SiLU, weights, their
    gradients) and ``[B, N, N]`` layout (mask, int64 bias index, gathered bias) fit in 80% of the
    free device memory."""
    if device != "cuda":
        return True
    square = num_seqs * longest * longest
    needed = square * (heads * 4 * (8 if backward else 3) + 8 + 4 + 1)
    return needed < 0.8 * torch.cuda.mem_get_info()[0]


BIASES = ("both", "position", "time", "none")  # which relative-bias tables the attention adds


def _bias(x: dict, bias: str) -> dict:
    """``x`` with the tables that ``bias`` leaves out set to None."""
    return {**x, "position_bias": x["position_bias"] if bias in ("both", "position") else None,
            "time_bias": x["time_bias"] if bias in ("both", "time") else None}


def provider_call(provider: str, x: dict, bias: str, backward: bool):
    """A zero-argument call running one pass of one provider, and the tensors whose gradients it sets."""
    from recsys.ops.hstu_attention import hstu_attention

    args = _bias(x, bias)
    leaves = [args[n] for n in ("q", "k", "v", "position_bias", "time_bias") if args.get(n) is not None]
    if provider == "sdpa":
        return _sdpa_call(x, backward)
    kernel = "triton" if provider == "triton" else "pytorch"
    if provider == "pytorch":  # the reference's sequence-only layout, built once as an encoder does
        from recsys.ops.hstu_attention_layout import build_hstu_attention_layout

        args = {**args, "layout": build_hstu_attention_layout(
            args["seq_offsets"], args["max_seq_len"], num_rows=args["q"].size(0), timestamps=args["timestamps"])}
    if not backward:
        def forward():
            with torch.no_grad():
                return hstu_attention(**args, kernel=kernel)
        return forward, []
    inputs = {n: (args[n].detach().requires_grad_() if args.get(n) is not None else None)
              for n in ("q", "k", "v", "position_bias", "time_bias")}
    grad = torch.randn_like(args["v"])

    def forward_backward():
        hstu_attention(**{**args, **inputs}, kernel=kernel).backward(grad)
    return forward_backward, [t for t in inputs.values() if t is not None]


def _sdpa_call(x: dict, backward: bool):
    """Padded causal flash attention on ``[B, H, L, D]``: the speed of a tuned softmax-attention kernel."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    num_seqs, longest = x["seq_offsets"].numel() - 1, x["max_seq_len"]
    heads, dim = x["q"].shape[1:]
    padded = [torch.randn(num_seqs, heads, longest, dim, device=x["q"].device, dtype=x["q"].dtype,
                          requires_grad=backward) for _ in range(3)]
    grad = torch.randn_like(padded[0])

    def run():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(*padded, is_causal=True)
        if backward:
            out.backward(grad)
    return (run if backward else torch.no_grad()(run)), padded if backward else []


def run_length(longest: int, providers: list[str], passes: list[str], biases: list[str], dtype: torch.dtype,
               device: str, repeats: int, heads: int, dim: int, tokens: int, peak: float) -> list[dict]:
    """Rows of one length L: every provider, pass and bias option that applies."""
    from recsys.ops.hstu_attention import hstu_attention

    num_seqs = max(tokens // longest, 1)
    x, lengths = make_inputs(num_seqs, longest, heads, dim, dtype, device)
    forward_flops = useful_flops(lengths, heads, dim)
    rows = []
    for bias in biases:
        want = None
        if reference_fits(num_seqs, longest, heads, False, device):
            x32 = {**_bias(x, bias), **{n: x[n].float() for n in ("q", "k", "v")}}
            with torch.no_grad():
                want = hstu_attention(**x32, kernel="pytorch")
        for provider in providers:
            if provider == "sdpa" and (bias != "none" or device != "cuda"):
                continue  # no relative bias in SDPA; flash needs CUDA
            for name in passes:
                backward = name == "fwd+bwd"
                row = {"longest": longest, "sequences": num_seqs, "tokens": int(lengths.sum()), "heads": heads,
                       "dim": dim, "dtype": str(dtype).removeprefix("torch."), "bias": bias, "provider": provider,
                       "pass": name}
                if provider == "pytorch" and not reference_fits(num_seqs, longest, heads, backward, device):
                    rows.append({**row, "skipped": "the padded reference does not fit in memory"})
                    continue
                rows.append({**row, **measure(provider, x, bias, backward, want, device, repeats,
                                              forward_flops * (1 + BACKWARD_FACTOR * backward), peak)})
        del want
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def measure(provider, x, bias, backward, want, device, repeats, flops, peak) -> dict:
    """Time, TFLOP/s, share of the matmul rate and the forward error of one provider and pass."""
    try:
        fn, leaves = provider_call(provider, x, bias, backward)
        error = None
        if not backward and want is not None and provider != "sdpa":
            error = float((fn().float() - want).abs().max())
        ms = time_ms(fn, device, repeats, grad_to_none=leaves or None)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"skipped": "out of memory"}
    tflops = flops / (ms * 1e-3) / 1e12
    return dict(ms=ms, tflops=tflops, of_matmul=tflops / peak, max_abs_error=error)


def format_table(rows: list[dict], peak: float) -> str:
    head = (f"{'L':>6}{'B':>6}{'bias':>9}{'pass':>9}{'provider':>9}{'ms':>10}{'TFLOP/s':>10}"
            f"{'of ' + format(peak, '.3g'):>12}{'max |err|':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        start = f"{r['longest']:>6}{r['sequences']:>6}{r['bias']:>9}{r['pass']:>9}{r['provider']:>9}"
        if "skipped" in r:
            lines.append(f"{start}  skipped: {r['skipped']}")
            continue
        error = f"{r['max_abs_error']:.2e}" if r["max_abs_error"] is not None else "-"
        lines.append(f"{start}{r['ms']:>10.3f}{r['tflops']:>10.3g}{r['of_matmul']:>12.1%}{error:>11}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    """TFLOP/s (useful) vs L, one line per provider, pass and bias option."""
    series: dict[str, list] = {}
    for r in report["rows"]:
        if "skipped" not in r:
            label = f"{r['provider']} {r['pass']}{'' if r['bias'] == 'none' else ' bias: ' + r['bias']}"
            series.setdefault(label, []).append((r["longest"], r["tflops"]))
    return line_plot(series, path, "longest sequence L (tokens)", "useful TFLOP/s (median)", log_x=True,
                     title=f"jagged HSTU attention, {report['matmul_tflops']:.0f} TFLOP/s bf16 matmul, on {report['device']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="smoke run on CPU: tiny shapes, the kernel interpreted")
    parser.add_argument("--lengths", type=int, nargs="+", help=f"L values (default {GPU_LENGTHS})")
    parser.add_argument("--passes", nargs="+", choices=PASSES, default=list(PASSES))
    parser.add_argument("--providers", nargs="+", choices=["triton", "pytorch", "sdpa"],
                        default=["triton", "pytorch", "sdpa"])
    parser.add_argument("--biases", nargs="+", choices=BIASES, default=["both", "none"],
                        help="relative-bias tables: both (the HSTU layer's), position or time alone, none")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/hstu_attention.json"))
    args = parser.parse_args()
    if args.cpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported
        device, dtype, heads, dim, tokens = "cpu", torch.float32, CPU_HEADS, CPU_DIM, CPU_TOKENS
        lengths = args.lengths or CPU_LENGTHS
    elif torch.cuda.is_available():
        device, dtype, heads, dim, tokens = "cuda", torch.bfloat16, HEADS, DIM, TOKENS
        lengths = args.lengths or GPU_LENGTHS
    else:
        raise SystemExit("no CUDA device: run with --cpu for a smoke run")
    peak = matmul_tflops(device)
    print(f"matmul: {peak:.3g} TFLOP/s ({'bf16' if device == 'cuda' else 'float32'}, measured)")
    rows = []
    for longest in lengths:
        rows += run_length(longest, args.providers, args.passes, args.biases, dtype, device, max(1, args.repeats),
                           heads, dim, tokens, peak)
    print(format_table(rows, peak))
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "matmul_tflops": peak, "heads": heads, "dim": dim, "tokens_per_length": tokens, "rows": rows}
    write_json_atomic(args.out, report)
    print(f"wrote {args.out} and {plot(report, png_beside(args.out))}")


if __name__ == "__main__":
    main()
