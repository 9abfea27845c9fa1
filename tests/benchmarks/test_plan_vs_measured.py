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


def test_per_model_processes_pass_every_option_but_models_and_out():
    argv = ["--out", "runs/x", "--models", "dlrm", "hstu", "--steps", "3", "--models=sasrec", "--max-len", "20"]
    kept = bench._without_option(bench._without_option(argv, "--models"), "--out")
    assert kept == ["--steps", "3", "--max-len", "20"]


REPLAY = Path(__file__).resolve().parents[2] / "benchmarks" / "replay_plan_vs_measured.py"


def test_replay_plans_a_model_as_the_run_trained_it(tmp_path):
    """A file's model_overrides reach the plan: HSTU with the reference attention (the padded
    [B, H, N, N] tensors) plans more memory than with the fused kernel CUDA now takes."""
    spec = importlib.util.spec_from_file_location("replay_plan_vs_measured_benchmark", REPLAY)
    replay = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("plan_vs_measured", bench)
    spec.loader.exec_module(replay)
    row = {"model": "hstu", "batch_size": 8, "max_len": 20, "measured_peak_gb": 0.2, "measured_step_ms": 10.0,
           "planned_gb": 0.1, "planned_step_ms": 1.0}
    run = {"peak_tflops": 67.0, "efficiency": 0.4, "rows": [row]}
    (tmp_path / "now.json").write_text(json.dumps(run))
    (tmp_path / "then.json").write_text(json.dumps({**run, "model_overrides": {"hstu": {"attention_kernel": "pytorch"}}}))
    fused, reference = (replay.replay([str(tmp_path / name)], str(tmp_path / "out"))[0] for name in ("now.json", "then.json"))
    assert reference["planned_gb"] > fused["planned_gb"]
    assert reference["measured_peak_gb"] == fused["measured_peak_gb"] == 0.2
    assert reference["old_planned_gb"] == 0.1
