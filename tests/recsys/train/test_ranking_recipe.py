"""The ranking recipe end to end on a tiny synthetic feed: training learns, and a run killed
mid-way and resumed from its checkpoint ends with the same weights and metrics as one that was
never interrupted."""

import json

import numpy as np
import pytest
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor

from recsys.config import load_config
from recsys.distributed.plan_io import load_plan
from recsys.errors import CheckpointError
from recsys.metrics.classification import roc_auc
from recsys.metrics.hit_at_k import expected_hits, hit_at_k, utility
from recsys.train.config import TrainConfig
from recsys.train.ranking import RankingRecipe, format_metrics_table, run_training
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
        assert 0.5 < results["oracle test"][head]["auc"] <= 1.0  # the generator's exact probabilities
        for row in ("dlrm test", "popularity test", "oracle test"):
            assert 0.0 <= results[row][head]["combined_hit@3"] <= 1.0, (row, head)
    assert "truth test" not in results
    table = format_metrics_table("dlrm", {k: v for k, v in results.items() if k.endswith("test")})
    assert "oracle test AUC" in table and "oracle test comb. HIT@3" in table
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


# ---------------------------------------------------------------- the oracle is a ceiling
BOOTSTRAPS = 100
MARGIN_SE = 3.0  # "beyond noise": a gain over the oracle of more than 3 bootstrap standard errors


def _request_bootstrap(request_id: np.ndarray, rng: np.random.Generator):
    """Yields (rows, request ids) of ``BOOTSTRAPS`` resamples of whole requests with replacement."""
    _, inverse = np.unique(request_id, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # rows grouped by request
    counts = np.bincount(inverse)
    starts = np.cumsum(counts) - counts
    for _ in range(BOOTSTRAPS):
        pick = rng.integers(0, len(counts), len(counts))
        lengths = counts[pick]
        offsets = np.cumsum(lengths) - lengths
        flat = np.repeat(starts[pick] - offsets, lengths) + np.arange(int(lengths.sum()))
        yield order[flat], np.repeat(np.arange(len(pick)), lengths)


def _gains(request_id, model, oracle, labels, heads, weights) -> np.ndarray:
    """``[3H + 1]`` how far ``model`` scores beat ``oracle`` scores (positive = model better): per head
    AUC, per-head-ranking HIT@3 (hide: lower is better), then the top-3 utility of the combined
    ranking, sum_h w_h * (hits of h), per request; the oracle maximises every one in expectation."""
    gains = []
    for h, head in enumerate(heads):
        gains.append(roc_auc(model[:, h], labels[:, h]) - roc_auc(oracle[:, h], labels[:, h]))
        negative = head == "hide"
        m, o = (hit_at_k(request_id, s[:, h], labels[:, h], 3, negative=negative)[0] for s in (model, oracle))
        gains.append(o - m if negative else m - o)
    top = [sum(w * expected_hits(request_id, utility(s, weights), 3)[labels[:, h] > 0].sum()
               for h, w in enumerate(weights)) for s in (model, oracle)]
    gains.append((top[0] - top[1]) / len(np.unique(request_id)))
    return np.array(gains)


def _beats_oracle(request_id, model, oracle, labels, heads, weights) -> list[str]:
    """The metrics on which ``model`` beats ``oracle`` by more than ``MARGIN_SE`` paired standard errors."""
    names = [f"{head} {m}" for head in heads for m in ("auc", "hit@3")] + ["combined top-3 utility"]
    full = _gains(request_id, model, oracle, labels, heads, weights)
    draws = np.array([_gains(r, model[rows], oracle[rows], labels[rows], heads, weights)
                      for rows, r in _request_bootstrap(request_id, np.random.default_rng(0))])
    se = draws.std(axis=0)
    return [f"{name}: +{g:.4f} (se {s:.4f})" for name, g, s in zip(names, full, se) if g > MARGIN_SE * s]


def test_no_trained_model_beats_the_oracle(tmp_path):
    cfg = tiny_config(tmp_path, "data.synthetic.num_users=300", "data.synthetic.mean_events_per_user=100",
                      "optim.dense.lr=0.005")
    recipe = RankingRecipe(cfg)
    recipe.setup(write_run_files=False)
    try:
        recipe.train()
        request_id, logits, labels = recipe.predict("test")
        oracle = recipe.oracle_scores("test")
    finally:
        recipe.cleanup()
    examples = recipe.data.test
    assert request_id.tolist() == examples.request_id.tolist()  # one rank: row order
    request_id, logits, labels, oracle = request_id.numpy(), logits.numpy(), labels.numpy(), oracle.numpy()
    heads, weights = recipe.heads, recipe.utility_weights
    assert roc_auc(logits[:, 0], labels[:, 0]) > 0.6  # the model learned something
    assert _beats_oracle(request_id, logits, oracle, labels, heads, weights) == []
    # the check has teeth: a scorer that peeks at the labels is flagged on every head's AUC and on
    # the combined ranking (per-head HIT@3 of the rarer heads has too few positives to be sure)
    cheat = oracle + 5.0 * (2 * labels - 1)
    flagged = {line.split(":")[0] for line in _beats_oracle(request_id, cheat, oracle, labels, heads, weights)}
    assert {f"{head} auc" for head in heads} | {"click hit@3", "combined top-3 utility"} <= flagged, flagged


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
