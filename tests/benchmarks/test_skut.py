"""The SKUT benchmark on CPU: its FLOP count, rows and error check (the Triton kernel in the interpreter)."""

import importlib.util
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "skut.py"
spec = importlib.util.spec_from_file_location("skut_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules["skut_benchmark"] = bench
spec.loader.exec_module(bench)


def test_useful_flops_count_tokens_and_causal_pairs():
    encoder = bench.make_encoder("cpu", 8)  # d = 64, f = 32, E = 64, F = 64, 2 layers
    per_token = 2 * 64 * 64 + 2 * (8 * 64 * 64 + 4 * 64 * 32) + 2 * 64 * 64
    # lengths 1 and 3: 4 tokens, 1 + 6 causal pairs, 4 d flops per pair and layer
    assert bench.useful_flops(encoder, torch.tensor([1, 3])) == 4 * per_token + 7 * 2 * 4 * 64


def test_rows_for_every_provider_agree_with_the_module(tmp_path):
    encoder = bench.make_encoder("cpu", 12)
    rows = bench.run_shape(encoder, 3, 12, "ragged", "cpu", repeats=1, compile_mode="default", sweep=True)
    assert [r["provider"] for r in rows] == ["eager", "eager-bf16", "triton"]  # no compile or sweep on CPU
    for r in rows:
        assert r["ms"] > 0 and r["tflops"] > 0 and r["of_peak"] == r["tflops"] / bench.PEAK_TFLOPS
    assert rows[0]["max_abs_error"] == 0 and rows[0]["speedup_vs_eager"] == 1
    assert rows[2]["max_abs_error"] < 5e-2  # bfloat16 matmul inputs
    assert "TFLOP/s" in bench.format_table(rows)
    report = {"device": "cpu", "width": 12, "rows": rows}
    assert bench.plot(report, tmp_path / "skut.png").stat().st_size > 0
