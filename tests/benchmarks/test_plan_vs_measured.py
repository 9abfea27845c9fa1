"""The plan-vs-measured benchmark's CPU smoke path: planned and measured rows, JSON and PNG."""

import importlib.util
import json
import sys
from pathlib import Path

import matplotlib.image
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "plan_vs_measured.py"
spec = importlib.util.spec_from_file_location("plan_vs_measured_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules["plan_vs_measured_benchmark"] = bench
spec.loader.exec_module(bench)


def test_cpu_smoke_run_writes_planned_and_measured_rows(tmp_path):
    result = bench.main(["--device", "cpu", "--tiny", "--models", "dlrm", "hstu", "--batch-sizes", "4", "8", "16",
                         "--max-len", "12", "--warmup", "1", "--steps", "2", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "plan_vs_measured.json").read_text())["rows"]
    assert rows == json.loads(json.dumps(result["rows"]))
    assert [(r["model"], r["batch_size"]) for r in rows] == [(m, b) for m in ("dlrm", "hstu") for b in (4, 8, 16)]
    for r in rows:
        assert r["planned_gb"] > 0 and r["planned_step_ms"] > 0 and r["measured_step_ms"] > 0
        assert r["measured_peak_gb"] is None  # no allocator statistics off the GPU
        parts = r["planned_parts_gb"]
        assert r["planned_gb"] == pytest.approx(sum(parts.values()))
    hstu = [r["planned_parts_gb"]["activations"] for r in rows if r["model"] == "hstu"]
    assert hstu == sorted(hstu) and hstu[0] < hstu[-1]
    assert matplotlib.image.imread(tmp_path / "plan_vs_measured.png").shape[0] > 100
