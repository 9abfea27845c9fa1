"""The HSTU attention benchmark on CPU: its FLOP count, rows and error check (the Triton kernel in the interpreter)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "hstu_attention.py"
spec = importlib.util.spec_from_file_location("hstu_attention_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules["hstu_attention_benchmark"] = bench
spec.loader.exec_module(bench)


def test_useful_flops_count_the_causal_pairs():
    # lengths 1 and 3: 1 + 6 pairs; 2 heads; (D + D) * 2 flops per pair and head
    assert bench.useful_flops(torch.tensor([1, 3]), heads=2, dim=4) == 7 * 2 * 2 * 8


def test_rows_for_every_provider_pass_and_bias_agree_with_the_reference():
    rows = bench.run_length(32, ["triton", "pytorch", "sdpa"], ["fwd", "fwd+bwd"], list(bench.BIASES), torch.float32,
                            "cpu", repeats=1, heads=2, dim=16, tokens=64, peak=1.0)
    # no SDPA on CPU; 2 providers x 2 passes x 4 bias options
    assert [(r["provider"], r["pass"], r["bias"]) for r in rows] == [
        (p, n, b) for b in bench.BIASES for p in ("triton", "pytorch") for n in ("fwd", "fwd+bwd")]
    for r in rows:
        assert r["ms"] > 0 and r["tflops"] > 0 and r["of_matmul"] == r["tflops"]
        assert (r["max_abs_error"] is None) == (r["pass"] == "fwd+bwd")
        if r["pass"] == "fwd":
            assert r["max_abs_error"] < 1e-4
    fwd, both = rows[0], rows[1]
    assert both["tflops"] * both["ms"] == pytest.approx(3.5 * fwd["tflops"] * fwd["ms"])
    assert "TFLOP/s" in bench.format_table(rows, 1.0)


def test_a_reference_that_does_not_fit_is_skipped(monkeypatch):
    monkeypatch.setattr(bench, "reference_fits", lambda *args: False)
    rows = bench.run_length(16, ["pytorch"], ["fwd"], ["none"], torch.float32, "cpu", repeats=1, heads=1, dim=16,
                            tokens=32, peak=1.0)
    assert rows[0]["skipped"].startswith("the padded reference does not fit")
    assert "skipped" in bench.format_table(rows, 1.0)
