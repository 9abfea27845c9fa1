"""The ranking recipe end to end on a tiny synthetic feed: training learns, and a run killed
mid-way and resumed from its checkpoint ends with the same weights and metrics as one that was
never interrupted."""

import json

import pytest
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor

from recsys.config import load_config
from recsys.distributed.plan_io import load_plan
from recsys.errors import CheckpointError
from recsys.train.config import TrainConfig
from recsys.train.ranking import RankingRecipe, run_training
from tests.tiny import TINY_SYNTHETIC_DLRM

TINY = [
    *TINY_SYNTHETIC_DLRM,
    "train.batch_size=256",
    "train.eval_batch_size=4096",
    "train.epochs=2",
    "train.progress=false",
    "train.baseline=false",
    "train.log_every=5",
]


def tiny_config(tmp_path, *extra) -> TrainConfig:
    return load_config(TrainConfig, "configs/dlrm/synthetic.yaml", [*TINY, f"output_dir={tmp_path}", *extra])


class Killed(Exception):
    """Stands for the process dying mid-run."""


def weights(recipe: RankingRecipe) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in recipe.model.state_dict().items():
        if isinstance(value, ShardedTensor):
            value = torch.cat([s.tensor for s in value.local_shards()])
        out[key] = value.detach().clone()
    return out


def train_to_end(cfg: TrainConfig, resume: bool = False, kill_at: int | None = None):
    recipe = RankingRecipe(cfg)
    recipe.setup(resume=resume)
    try:
        def on_step(step):
            if kill_at is not None and step == kill_at:
                raise Killed()

        recipe.train(on_step=on_step)
        return weights(recipe), recipe.evaluate("valid"), recipe.step
    finally:
        recipe.cleanup()


# warmup + cosine decay of both optimizers' lr, and dense gradient clipping: the lr schedule must resume too
SCHEDULED = ["optim.schedule.warmup_steps=3", "optim.schedule.decay=cosine", "optim.schedule.min_lr_ratio=0.1",
             "train.clip_grad_norm=0.5"]


@pytest.mark.parametrize(
    "backend, options", [("dcp", []), ("torchsnapshot", []), ("dcp", SCHEDULED)], ids=["dcp", "torchsnapshot", "dcp-scheduled"]
)
def test_resumed_run_equals_uninterrupted_run(tmp_path, backend, options):
    common = [f"train.checkpoint_backend={backend}", "train.checkpoint_every=3", *options]
    straight_weights, straight_metrics, straight_steps = train_to_end(tiny_config(tmp_path / "straight", *common))

    cfg = tiny_config(tmp_path / "killed", *common)
    with pytest.raises(Killed):
        train_to_end(cfg, kill_at=straight_steps // 2 + 1)  # dies after a checkpoint, mid-epoch or later
    resumed_weights, resumed_metrics, resumed_steps = train_to_end(cfg, resume=True)

    assert resumed_steps == straight_steps
    assert resumed_weights.keys() == straight_weights.keys()
    for key in straight_weights:
        torch.testing.assert_close(resumed_weights[key], straight_weights[key], rtol=0, atol=0, msg=key)
    assert resumed_metrics == straight_metrics
    assert _loss_steps(tmp_path / "killed") == _loss_steps(tmp_path / "straight")  # no step logged twice


def _loss_steps(run_dir) -> list[int]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "train/loss" in r]


def test_training_beats_chance_and_writes_run_files(tmp_path):
    cfg = tiny_config(
        tmp_path, "train.baseline=true", "train.epochs=3", "data.synthetic.num_users=400",
        "data.synthetic.mean_events_per_user=100", "optim.dense.lr=0.005",
    )
    results = run_training(cfg)
    for head in ("click", "save", "long_view"):
        assert results["dlrm test"][head]["auc"] > 0.62, results["dlrm test"][head]
    for head in ("click", "save", "hide", "long_view"):
        assert 0.5 < results["truth test"][head]["auc"] <= 1.0  # the generator's own probabilities
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["dlrm test"]["click"]["auc"] == pytest.approx(results["dlrm test"]["click"]["auc"])
    assert (tmp_path / "config.json").is_file()
    assert load_plan(tmp_path / "plan.json").world_size == 1  # the run's plan can be reused exactly
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in records) and any("valid/click/auc" in r for r in records)
    assert (tmp_path / "checkpoints" / "latest").is_file()


def test_resume_refuses_a_corrupted_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, "train.epochs=1")
    train_to_end(cfg)
    latest = (tmp_path / "checkpoints" / "latest").read_text().strip()
    victim = max((p for p in (tmp_path / "checkpoints" / latest).rglob("*") if p.is_file() and p.name != "manifest.json"),
                 key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="corrupt|size|sha256"):
        train_to_end(cfg, resume=True)


def test_matmul_precision_is_set_from_the_config(tmp_path):
    from recsys.errors import ConfigError

    recipe = RankingRecipe(tiny_config(tmp_path, "train.matmul_precision=high"))
    try:
        recipe.setup(write_run_files=False)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        recipe.cleanup()
        torch.set_float32_matmul_precision("highest")
    with pytest.raises(ConfigError, match="matmul_precision"):
        tiny_config(tmp_path, "train.matmul_precision=fast")


def test_bf16_autocast_and_compile_train_dlrm_on_cpu(tmp_path):
    recipe = RankingRecipe(tiny_config(tmp_path, "train.epochs=1", "train.autocast=bf16", "train.compile=true"))
    recipe.setup(write_run_files=False)
    try:
        compiled = recipe.step_options.compiled
        recipe.train()
        metrics = recipe.evaluate("valid")
    finally:
        recipe.cleanup()
    assert compiled and not any("sparse" in name for name in compiled)
    assert all(0.0 <= m["auc"] <= 1.0 and m["ne"] == m["ne"] for m in metrics.values())  # finite: bf16 trained
    assert max(m["auc"] for m in metrics.values()) > 0.5  # above chance after one epoch
