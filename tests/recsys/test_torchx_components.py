"""The TorchX components parse as components, are listed by ``torchx builtins`` beside TorchX's own
builtins, and run a 2-process gloo training and a planner dry run with local_cwd."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from torchx.components.component_test_base import ComponentTestCase

from recsys import torchx_components as components

ROOT = Path(__file__).resolve().parents[2]
TORCHX = [sys.executable, "-m", "torchx.cli.main"]  # this interpreter's torchx (a venv's script may name another)
TINY = [
    "data.synthetic.num_users=120", "data.synthetic.num_items=300", "data.synthetic.mean_events_per_user=60",
    "data.synthetic.heavy_user_fraction=0.0", "data.num_workers=0", "model.embedding_dim=8",
    "model.dense_arch_layers=[16,8]", "model.over_arch_layers=[16]", "model.cross_layers=1",
    "train.batch_size=256", "train.progress=false", "train.baseline=false",
]


def torchx(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([*TORCHX, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


class ComponentsParse(ComponentTestCase):
    def test_train_evaluate_and_plan_are_valid_components(self):
        self.validate(components, "train")
        self.validate(components, "evaluate")
        self.validate(components, "plan")
        self.validate(components, "serve")


def test_torchx_builtins_lists_its_own_components_and_ours():
    done = torchx("builtins")
    assert done.returncode == 0, done.stderr[-3000:]
    listed = {line.split(".", 1)[1].strip() for line in done.stdout.splitlines() if line.strip()[:1].isdigit()}
    assert {"dist.ddp", "dist.torchrun", "utils.echo", "utils.python"} <= listed, done.stdout
    assert {"recsys.train", "recsys.evaluate", "recsys.plan", "recsys.serve"} <= listed, done.stdout
    echo = torchx("run", "--dryrun", "-s", "local_cwd", "utils.echo", "--msg", "hello")
    assert echo.returncode == 0 and "hello" in echo.stdout + echo.stderr, echo.stderr[-3000:]


def test_no_top_level_torchx_components_package():
    assert importlib.util.find_spec("torchx_components") is None


def test_train_component_builds_a_torchrun_job():
    app = components.train("train.epochs=2", config="configs/dlrm/synthetic.yaml", j="2x4", resume=True)
    command = " ".join(app.roles[0].args)
    assert "--nnodes 2" in command and "--nproc_per_node 4" in command
    assert "-m recsys.cli train --config configs/dlrm/synthetic.yaml --resume train.epochs=2" in command
    assert app.roles[0].image == components.DEFAULT_IMAGE


def test_plan_component_runs_recsys_plan_in_one_process():
    app = components.plan("data.synthetic.num_items=1000", topology="configs/plan/h100_64x8.yaml", out="runs/p")
    (role,) = app.roles
    assert role.num_replicas == 1 and role.entrypoint == "python"
    assert role.args == [
        "-m", "recsys.cli", "plan", "--config", "configs/plan/dlrm_1b.yaml",
        "--topology", "configs/plan/h100_64x8.yaml", "--out", "runs/p", "data.synthetic.num_items=1000",
    ]


def test_serve_component_runs_recsys_serve_with_its_http_port():
    app = components.serve(checkpoint="runs/dlrm", host="0.0.0.0", port=9000, token_file="/secrets/token", replicas=2)
    (role,) = app.roles
    assert role.num_replicas == 2 and role.entrypoint == "python" and role.port_map == {"http": 9000}
    assert role.args == [
        "-m", "recsys.cli", "serve", "--checkpoint", "runs/dlrm", "--host", "0.0.0.0", "--port", "9000",
        "--max-batch", "32", "--queue", "256", "--deadline-ms", "100.0", "--device", "cpu", "--token-file", "/secrets/token",
    ]


def test_serve_component_passes_the_serve_config_device_and_overrides():
    app = components.serve("kv_cache.num_pages=8192", checkpoint="runs/hstu", config="configs/serve/hstu_ranking.yaml",
                           device="cuda", gpu=1)
    (role,) = app.roles
    assert role.resource.gpu == 1
    args = role.args
    assert args[args.index("--device") + 1] == "cuda"
    assert args[args.index("--config") + 1] == "configs/serve/hstu_ranking.yaml"
    assert args[-1] == "kv_cache.num_pages=8192"
    from recsys.cli import _parser

    parsed = _parser().parse_args(args[2:])  # what `python -m recsys.cli` parses
    assert parsed.overrides == ["kv_cache.num_pages=8192"] and parsed.device == "cuda"


def test_serve_component_binds_loopback_unless_told_otherwise():
    (role,) = components.serve(checkpoint="runs/dlrm").roles
    assert role.args[role.args.index("--host") + 1] == "127.0.0.1"


def test_two_process_gloo_training_through_torchx_local_cwd(tmp_path):
    done = torchx("run", "-s", "local_cwd", "recsys.train", "--config", "configs/dlrm/synthetic.yaml", "-j", "1x2",
                  *TINY, f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["dlrm test"]) == {"click", "save", "hide", "long_view"}
    assert json.loads((tmp_path / "plan.json").read_text())["world_size"] == 2


def test_plan_through_torchx_local_cwd_writes_the_report(tmp_path):
    done = torchx("run", "-s", "local_cwd", "./recsys/torchx_components.py:plan", "--config", "configs/plan/dlrm_1b.yaml",
                  "--topology", "configs/plan/h100_8x8.yaml", "--out", str(tmp_path))
    assert done.returncode == 0 and "SUCCEEDED" in done.stdout + done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "plan.json").read_text())
    assert report["world_size"] == 64 and report["plan"]["world_size"] == 64
    item_table = next(t for t in report["tables"] if t["name"] == "t_item_id")
    assert item_table["rows"] == 10**9
    assert (tmp_path / "plan.md").read_text().startswith("# Sharding plan: dlrm on 64 ranks")
    assert (tmp_path / "plan_ranks.png").stat().st_size > 0
