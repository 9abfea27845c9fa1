"""The training-throughput benchmark on CPU: tiny DLRM (ranking recipe) and HSTU (retrieval recipe)
runs in one process, a 2-process torchrun (gloo) DLRM run through the sparse-dist pipeline, and the
summary's arithmetic over ranks."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny import TINY_SYNTHETIC_DLRM

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"
spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
throughput = importlib.util.module_from_spec(spec)
sys.modules["train_throughput"] = throughput  # its dataclass looks its module up there
spec.loader.exec_module(throughput)

WARMUP, STEPS = 2, 3
DLRM_TINY = [  # 5,836 training rows: 12 batches of 512 an epoch
    *TINY_SYNTHETIC_DLRM,
    "train.batch_size=512",
]
HSTU_TINY = [  # Beauty's HSTU on the synthetic feed: 73 training sequences, 9 batches of 8 an epoch
    "data.source=synthetic",
    "data.synthetic.num_users=120",
    "data.synthetic.num_items=300",
    "data.synthetic.mean_events_per_user=30",
    "data.synthetic.heavy_user_fraction=0.0",
    "data.num_workers=0",
    "data.max_sequence=20",
    "model.max_seq_len=20",
    "model.embedding_dim=16",
    "model.num_layers=1",
    "model.num_heads=1",
    "model.attention_dim=8",
    "model.linear_dim=8",
    "model.num_negatives=16",
    "train.batch_size=8",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def args(config: str, out: Path, overrides: list[str]) -> list[str]:
    return ["--config", config, "--warmup", str(WARMUP), "--steps", str(STEPS), "--out", str(out), *overrides]


def assert_report(report: dict, world_size: int, batch_size: int, model: str) -> None:
    """Both phases timed ``STEPS`` steps of ``batch_size`` rows per rank on every rank, at a positive rate."""
    assert report["model"] == model and report["world_size"] == world_size
    assert report["steps"] == STEPS and report["warmup"] == WARMUP
    assert report["global_batch_size"] == batch_size * world_size and report["batch_per_rank"] == batch_size
    assert report["versions"]["torch"] == torch.__version__ and report["device_type"] == "cpu"
    for phase in ("loader", "in_memory"):
        result = report[phase]
        assert result["examples"] == STEPS * batch_size * world_size  # no epoch ends within the timed steps
        assert result["examples_per_s"] > 0 and result["seconds"] > 0
        assert result["examples_per_s"] == pytest.approx(result["examples"] / result["seconds"])
        assert 0 < result["step_ms_p50"] <= result["step_ms_p90"]
        assert [r["rank"] for r in result["per_rank"]] == list(range(world_size))
        assert sum(r["examples"] for r in result["per_rank"]) == result["examples"]
        assert result["seconds"] == max(r["seconds"] for r in result["per_rank"])


def test_dlrm_one_process(tmp_path, capsys):
    out = tmp_path / "dlrm.json"
    argv = args("configs/dlrm/synthetic.yaml", out, DLRM_TINY)
    assert throughput.main(["--profile-steps", "2", *argv]) == 0
    report = json.loads(out.read_text())
    assert_report(report, world_size=1, batch_size=512, model="dlrm")
    assert report["task"] == "ranking" and report["train_step"] == "none"  # auto on CPU: the plain step
    printed = capsys.readouterr().out
    assert "in-mem ex/s" in printed and "top ops of 2 profiled steps by self CPU time" in printed
    top = report["profile"]["top_ops"]
    assert report["profile"]["steps"] == 2 and 0 < len(top) <= 15
    assert [op["self_ms"] for op in top] == sorted((op["self_ms"] for op in top), reverse=True)
    assert any("addmm" in op["op"] or "mm" in op["op"] for op in top)  # the dense layers' matmuls
    assert sorted(tmp_path.iterdir()) == [out, out.with_suffix(".png")]  # the figure beside it, no temporary file


def test_hstu_one_process_on_the_synthetic_feed(tmp_path):
    out = tmp_path / "hstu.json"
    assert throughput.main(args("configs/hstu/beauty_cpu.yaml", out, HSTU_TINY)) == 0
    report = json.loads(out.read_text())
    assert_report(report, world_size=1, batch_size=8, model="hstu")
    assert report["task"] == "retrieval"


def test_dlrm_two_processes_under_torchrun_with_the_sparse_dist_pipeline(tmp_path):
    out = tmp_path / "dlrm2.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
               *args("configs/dlrm/synthetic.yaml", out, [*DLRM_TINY, "train.pipeline=sparse_dist", "train.batch_size=256"])]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert_report(report, world_size=2, batch_size=256, model="dlrm")  # per rank: the same 512 rows a step
    assert report["train_step"] == "sparse_dist" and report["backend"] == "gloo"
    assert [r["examples"] for r in report["loader"]["per_rank"]] == [STEPS * 256] * 2
    assert report["command"].startswith("torchrun --nproc_per_node 2 ")


def test_summary_takes_all_examples_over_the_slowest_rank():
    fast = throughput.Timing(seconds=2.0, examples=300, step_ms=[1.0, 3.0])
    slow = throughput.Timing(seconds=4.0, examples=100, step_ms=[2.0, 2.0])
    summary = throughput.summarise_phase([fast, slow], steps=2)
    assert summary["examples"] == 400 and summary["seconds"] == 4.0
    assert summary["examples_per_s"] == 100.0 and summary["step_ms_mean"] == 2000.0
    assert summary["step_ms_p50"] == 2.5  # per step, the slowest rank: [2, 3]
    assert [r["examples_per_s"] for r in summary["per_rank"]] == [150.0, 25.0]


def test_bad_arguments_are_reported_without_a_traceback(tmp_path, capsys):
    argv = ["--config", "configs/dlrm/synthetic.yaml", "--steps", "0", "--out", str(tmp_path / "x.json")]
    assert throughput.main(argv) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
