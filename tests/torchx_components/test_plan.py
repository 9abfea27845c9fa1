"""The plan component parses as a TorchX component and, run with local_cwd, writes the plan report."""

import json
import os
import subprocess
import sys
from pathlib import Path

from torchx.components.component_test_base import ComponentTestCase

from torchx_components import plan

ROOT = Path(__file__).resolve().parents[2]


class PlanParses(ComponentTestCase):
    def test_plan_is_a_valid_component(self):
        self.validate(plan, "plan")


def test_plan_component_runs_recsys_plan_in_one_process():
    app = plan.plan("data.synthetic.num_items=1000", topology="configs/plan/h100_64x8.yaml", out="runs/p")
    (role,) = app.roles
    assert role.num_replicas == 1 and role.entrypoint == "python"
    assert role.args == [
        "-m", "recsys.cli", "plan", "--config", "configs/plan/dlrm_1b.yaml",
        "--topology", "configs/plan/h100_64x8.yaml", "--out", "runs/p", "data.synthetic.num_items=1000",
    ]


def test_plan_through_torchx_local_cwd_writes_the_report(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = [
        str(Path(sys.executable).parent / "torchx"), "run", "-s", "local_cwd", "./torchx_components/plan.py:plan",
        "--config", "configs/plan/dlrm_1b.yaml", "--topology", "configs/plan/h100_8x8.yaml", "--out", str(tmp_path),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "SUCCEEDED" in done.stdout + done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "plan.json").read_text())
    assert report["world_size"] == 64 and report["plan"]["world_size"] == 64
    item_table = next(t for t in report["tables"] if t["name"] == "t_item_id")
    assert item_table["rows"] == 10**9
    assert (tmp_path / "plan.md").read_text().startswith("# Sharding plan: dlrm on 64 ranks")
    assert (tmp_path / "plan_ranks.png").stat().st_size > 0
