"""``recsys train`` / ``recsys eval`` as torchrun jobs of gloo processes, for the multi-process tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import TINY_SYNTHETIC_DLRM

ROOT = Path(__file__).resolve().parents[3]
CONFIG = "configs/dlrm/synthetic.yaml"
TINY = [
    *TINY_SYNTHETIC_DLRM,
    "train.batch_size=512",
    "train.eval_batch_size=4096",
    "train.epochs=2",
    "train.progress=false",
    "train.baseline=false",
    "train.log_every=1",
]
TABLE_WISE = "sharding.tables={t_item_id: {sharding_types: [table_wise]}, t_user_id: {sharding_types: [table_wise]}}"
ROW_WISE = "sharding.tables={t_item_id: {sharding_types: [row_wise]}, t_user_id: {sharding_types: [row_wise]}}"


def torchrun(
    command: str, output_dir: Path, *overrides: str, nproc: int = 2, max_restarts: int = 0,
    env: dict[str, str] | None = None, resume: bool = False,
) -> subprocess.CompletedProcess:
    """Runs ``recsys <command>`` on ``nproc`` local gloo processes; fails the test on a non-zero exit."""
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
        "--max-restarts", str(max_restarts), "-m", "recsys.cli", command, "--config", CONFIG,
        *(["--resume"] if resume else []), *TINY, f"output_dir={output_dir}", *overrides,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(args, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        first_error = max(done.stderr.find("Traceback"), 0)
        pytest.fail(f"torchrun {command} exited with {done.returncode}:\n{done.stdout[-2000:]}\n"
                    f"{done.stderr[first_error:first_error + 6000]}")
    return done


def model_metrics(output_dir: Path) -> dict:
    """``{"valid": {head: {auc, ne, ...}}, "test": ...}`` of the model in a run's results.json."""
    results = json.loads((output_dir / "results.json").read_text())
    return {split: results[f"dlrm {split}"] for split in ("valid", "test")}


def assert_same_metrics(actual: dict, expected: dict, ne_rel: float = 0.0, auc_abs: float = 0.0) -> None:
    """Every head's NE and AUC equal: exactly by default, else NE within ``ne_rel`` and AUC within
    ``auc_abs`` (float noise can swap a few nearly tied scores, each swap moves AUC by 1 / pairs)."""
    assert actual.keys() == expected.keys()
    for split in expected:
        assert actual[split].keys() == expected[split].keys()
        for head, metrics in expected[split].items():
            assert actual[split][head]["count"] == metrics["count"], (split, head)
            assert actual[split][head]["ne"] == pytest.approx(metrics["ne"], rel=ne_rel, abs=0), (split, head)
            assert actual[split][head]["auc"] == pytest.approx(metrics["auc"], rel=0, abs=auc_abs), (split, head)
