"""The HSTU attention benchmark on CPU: its rows, FLOP count and error check (the Triton kernel in the interpreter)."""

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "hstu_attention.py"
spec = importlib.util.spec_from_file_location("hstu_attention_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules["hstu_attention_benchmark"] = bench
spec.loader.exec_module(bench)


def test_useful_flops_count_the_causal_pairs():
    # lengths 1 and 3: 1 + 6 pairs; 2 heads; (D + D) * 2 flops per pair and head
    assert bench.useful_flops(torch.tensor([1, 3]), heads=2, dim=4) == 7 * 2 * 2 * 8


def test_rows_for_both_backends_agree_with_the_reference():
    shapes = [("tiny", 3, 40, 2, 16)]
    rows = bench.run(shapes, ["pytorch", "triton"], torch.float32, "cpu", repeats=1)
    assert [r["backend"] for r in rows] == ["pytorch", "triton"]
    for r in rows:
        assert r["ms"] > 0 and r["tflops"] > 0 and r["peak_share"] == r["tflops"] / bench.PEAK_TFLOPS
        assert r["max_abs_error"] < 1e-4
    assert "TFLOP/s" in bench.format_table(rows)
