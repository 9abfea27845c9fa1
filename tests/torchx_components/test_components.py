"""The TorchX components parse as components and run a 2-process gloo training with local_cwd."""

import json
import os
import subprocess
import sys
from pathlib import Path

from torchx.components.component_test_base import ComponentTestCase

from torchx_components import evaluate, train

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "data.synthetic.num_users=120", "data.synthetic.num_items=300", "data.synthetic.mean_events_per_user=60",
    "data.synthetic.heavy_user_fraction=0.0", "data.num_workers=0", "model.embedding_dim=8",
    "model.dense_arch_layers=[16,8]", "model.over_arch_layers=[16]", "model.cross_layers=1",
    "train.batch_size=256", "train.progress=false", "train.baseline=false",
]


class ComponentsParse(ComponentTestCase):
    def test_train_and_evaluate_are_valid_components(self):
        self.validate(train, "train")
        self.validate(evaluate, "evaluate")


def test_train_component_builds_a_torchrun_job():
    app = train.train("train.epochs=2", config="configs/dlrm/synthetic.yaml", j="2x4", resume=True)
    command = " ".join(app.roles[0].args)
    assert "--nnodes 2" in command and "--nproc_per_node 4" in command
    assert "-m recsys.cli train --config configs/dlrm/synthetic.yaml --resume train.epochs=2" in command


def test_two_process_gloo_training_through_torchx_local_cwd(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = [
        str(Path(sys.executable).parent / "torchx"), "run", "-s", "local_cwd", "./torchx_components/train.py:train",
        "--config", "configs/dlrm/synthetic.yaml", "-j", "1x2", *TINY, f"output_dir={tmp_path}",
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["dlrm test"]) == {"click", "save", "hide", "long_view"}
    assert json.loads((tmp_path / "plan.json").read_text())["world_size"] == 2
