"""The retrieval recipe (HSTU, SASRec) end to end on a tiny learnable event log: training beats
chance by far, test is reported at the best validation epoch and never selected on, patience stops
a run that no longer improves, and a run killed after a checkpoint and resumed ends with the same
report as one that was never interrupted.

The toy log: every user walks the item ids ``s, s+1, s+2, ... (mod I)`` from a random start ``s``,
one event a minute, so the next item is the last one plus one.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from recsys.config import load_config
from recsys.distributed.plan_io import load_plan
from recsys.errors import ConfigError
from recsys.train.config import TrainConfig
from recsys.train.retrieval import RetrievalRecipe, run_retrieval_training

REPO = Path(__file__).resolve().parents[3]
NUM_ITEMS, NUM_USERS = 100, 200
CHANCE_HR10 = 10 / NUM_ITEMS
TINY = {
    "hstu": ["model.num_heads=1", "model.attention_dim=8", "model.linear_dim=8", "model.input_dropout=0.0"],
    "sasrec": ["model.num_heads=1", "model.ffn_dim=16"],
}
COMMON = [
    "data.source=events",
    "data.max_sequence=20",
    "data.num_workers=0",
    "model.embedding_dim=16",
    "model.num_layers=1",
    "model.max_seq_len=20",
    "model.num_negatives=16",
    "model.dropout=0.0",
    "optim.dense.lr=0.01",
    "train.batch_size=32",
    "train.eval_batch_size=512",
    "train.epochs=3",
    "train.progress=false",
    "train.log_every=2",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_walks(path: Path, random_valid_target: bool = False, seed: int = 0) -> Path:
    """A CSV of item walks (module docstring), 8 to 20 events per user.

    With ``random_valid_target`` the second-to-last event (the validation target) jumps to a random
    item outside the user's walk and the last one (the test target) follows it: validation is
    then noise around chance while test stays learnable.
    """
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,timestamp,actions"]
    for user in range(NUM_USERS):
        start, length = int(rng.integers(NUM_ITEMS)), int(rng.integers(8, 21))
        items = [(start + t) % NUM_ITEMS for t in range(length)]
        if random_valid_target:
            jump = int(rng.integers(length, NUM_ITEMS - 1))  # lands outside the walk so far
            items[-2:] = [(start + jump) % NUM_ITEMS, (start + jump + 1) % NUM_ITEMS]
        lines += [f"{user},{item},{1_700_000_000 + 60 * t},click" for t, item in enumerate(items)]
    path.write_text("\n".join(lines) + "\n")
    return path


def retrieval_config(out: Path, model: str, events: Path, *extra: str) -> TrainConfig:
    """The model's Beauty config made tiny, reading ``events``, writing to ``out``."""
    overrides = [*COMMON, *TINY[model], f"data.path={events}", f"output_dir={out}", *extra]
    cfg = load_config(TrainConfig, REPO / "configs" / model / "beauty.yaml", overrides)
    cfg.data.options = {}  # the S3-Rec reader's options do not apply to an event table
    return cfg


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_time(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "train_seconds"}


@pytest.mark.parametrize("model", ["hstu", "sasrec"])
def test_trains_end_to_end_far_above_chance_and_writes_run_files(tmp_path, model, capsys):
    cfg = retrieval_config(tmp_path / "run", model, write_walks(tmp_path / "walks.csv"))
    report = run_retrieval_training(cfg)

    # The protocol (the reference's by default) is stored and printed with every result.
    protocol = "exclude_seen=last_n: the last 20 history items are no candidates"
    assert report["exclude_seen"] == "last_n" and report["protocol"].startswith(protocol)
    printed = capsys.readouterr().out.splitlines()
    epochs = [line for line in printed if line.startswith("epoch ")]
    assert len(epochs) == 3 and all(protocol in line for line in epochs), epochs
    assert any(line.startswith("rows:") and protocol in line for line in printed)
    assert f"protocol: full ranking, {report['protocol']}" in printed  # under the final table

    assert report["model"] == model and report["epochs_run"] == 3 and 1 <= report["best_epoch"] <= 3
    for split in ("valid", "test"):
        assert {"hr@10", "ndcg@10", "mrr"} <= set(report[split]), report[split]
        assert 0 <= report[split]["ndcg@10"] <= report[split]["hr@10"] <= 1
    assert report["test"]["hr@10"] > 4 * CHANCE_HR10, report["test"]
    assert report["test"]["ndcg@10"] > 2 * CHANCE_HR10, report["test"]

    out = tmp_path / "run"
    assert json.loads((out / "results.json").read_text()) == report
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == model and config["data"]["max_sequence"] == 20
    plan = load_plan(out / "plan.json")
    assert plan.world_size == 1 and "t_item_id" in (out / "plan.json").read_text()
    records = read_metrics(out)
    assert any("train/loss" in r for r in records)
    assert sum("valid/ndcg@10" in r for r in records) == 3  # one validation per epoch
    assert any("best/test/ndcg@10" in r for r in records)
    assert (out / "checkpoints" / "latest").is_file()


def test_test_is_reported_at_the_best_validation_epoch_and_never_selected_on(tmp_path, monkeypatch):
    evaluations = []  # (epoch, split, metrics) of every evaluation the recipe makes
    evaluate = RetrievalRecipe.evaluate

    def recording_evaluate(self, split):
        metrics = evaluate(self, split)
        evaluations.append((self.epoch, split, metrics))
        return metrics

    monkeypatch.setattr(RetrievalRecipe, "evaluate", recording_evaluate)
    events = write_walks(tmp_path / "walks.csv", random_valid_target=True)
    out = tmp_path / "run"
    # a high learning rate fits the random validation targets fast, so validation peaks early
    report = run_retrieval_training(retrieval_config(out, "hstu", events, "train.epochs=5", "train.patience=5",
                                                     "optim.dense.lr=0.01", "optim.sparse.lr=0.5"))

    records = read_metrics(out)
    valid = [r["valid/ndcg@10"] for r in records if "valid/ndcg@10" in r]  # epochs 1, 2, ...
    assert len(valid) == report["epochs_run"] == 5
    assert report["best_epoch"] < 5, f"validation (noise on this data) should peak before the last epoch: {valid}"
    assert report["best_epoch"] == 1 + int(np.argmax(valid))  # the first epoch with the best value
    assert report["valid"]["ndcg@10"] == max(valid)

    best_records = [r for r in records if "best/epoch" in r]
    assert best_records[-1]["best/epoch"] == report["best_epoch"]
    assert report["test"] == {k[len("best/test/"):]: v for k, v in best_records[-1].items() if k.startswith("best/test/")}

    # test is evaluated exactly at the epochs where validation improved, and the last of them is reported
    improved = [e + 1 for e, v in enumerate(valid) if v > max(valid[:e], default=-1.0)]
    assert [epoch for epoch, split, _ in evaluations if split == "test"] == improved
    assert [r["best/epoch"] for r in best_records] == improved
    assert [m for epoch, split, m in evaluations if split == "test" and epoch == report["best_epoch"]] == [report["test"]]


def test_patience_stops_a_run_that_does_not_improve(tmp_path):
    events = write_walks(tmp_path / "walks.csv")
    out = tmp_path / "run"
    frozen = ["optim.dense.lr=1.0e-12", "optim.sparse.lr=1.0e-12", "train.epochs=20", "train.patience=2"]
    report = run_retrieval_training(retrieval_config(out, "sasrec", events, *frozen))

    assert report["epochs_run"] == report["best_epoch"] + 2  # stopped after 2 epochs without improvement
    assert report["epochs_run"] <= 5  # of 20
    assert sum("valid/ndcg@10" in r for r in read_metrics(out)) == report["epochs_run"]
    assert report["test"] is not None


class Killed(Exception):
    """Stands for the process dying."""


RESUMABLE = ["train.epochs=4", "train.patience=4", "model.dropout=0.2"]  # dropout: the RNG state must resume too


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """``(events, report, valid mrr per epoch)`` of a 4-epoch HSTU run that was never interrupted."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    events = write_walks(folder / "walks.csv")
    report = run_retrieval_training(retrieval_config(folder / "run", "hstu", events, *RESUMABLE))
    return events, report, valid_mrr(folder / "run")


def valid_mrr(out: Path) -> list[float]:
    return [r["valid/mrr"] for r in read_metrics(out) if "valid/mrr" in r]


def test_a_run_killed_after_a_checkpoint_and_resumed_ends_like_an_uninterrupted_run(tmp_path, monkeypatch, uninterrupted):
    events, straight, straight_valid = uninterrupted
    cfg = retrieval_config(tmp_path / "killed", "hstu", events, *RESUMABLE)
    save_checkpoint = RetrievalRecipe.save_checkpoint

    def save_then_die_after_epoch_2(self):
        save_checkpoint(self)
        if self.epoch == 2:
            raise Killed()

    with monkeypatch.context() as patch:
        patch.setattr(RetrievalRecipe, "save_checkpoint", save_then_die_after_epoch_2)
        with pytest.raises(Killed):
            run_retrieval_training(cfg)
    assert not (tmp_path / "killed" / "results.json").exists()
    resumed = run_retrieval_training(cfg, resume=True)

    assert without_time(resumed) == without_time(straight)
    assert resumed["epochs_run"] == 4
    assert valid_mrr(tmp_path / "killed") == straight_valid  # epochs 1-2 from the killed run, 3-4 from the resumed one


def test_a_finished_run_resumed_with_more_epochs_ends_like_the_longer_run(tmp_path, uninterrupted):
    events, straight, straight_valid = uninterrupted
    shorter = run_retrieval_training(retrieval_config(tmp_path / "extended", "hstu", events, *RESUMABLE, "train.epochs=2"))
    assert shorter["epochs_run"] == 2
    extended = run_retrieval_training(retrieval_config(tmp_path / "extended", "hstu", events, *RESUMABLE), resume=True)
    assert without_time(extended) == without_time(straight)
    assert valid_mrr(tmp_path / "extended") == straight_valid


def test_sequences_longer_than_the_model_reads_are_a_config_error(tmp_path):
    cfg = retrieval_config(tmp_path / "run", "hstu", write_walks(tmp_path / "walks.csv"), "data.max_sequence=30")
    with pytest.raises(ConfigError, match=r"data\.max_sequence=30.*max_seq_len.*data\.max_sequence=20"):
        run_retrieval_training(cfg)
    assert not dist.is_initialized()  # a config error leaves no process group behind


def test_step_options_train_sasrec_end_to_end_and_resume_the_schedule(tmp_path):
    """Warmup + cosine + clipping + bf16 autocast through the retrieval recipe (CPU; compile: the
    ranking recipe's test and test_step_options)."""
    events = write_walks(tmp_path / "walks.csv")
    options = ["optim.schedule.warmup_steps=5", "optim.schedule.decay=cosine", "train.clip_grad_norm=1.0",
               "train.autocast=bf16", "train.epochs=2", "train.eval_every=2"]
    recipe = RetrievalRecipe(retrieval_config(tmp_path / "run", "sasrec", events, *options))
    recipe.setup()
    try:
        report = recipe.train()
        steps, lrs = recipe.step, [group["lr"] for group in recipe.optimizer.param_groups]
    finally:
        recipe.cleanup()
    assert report["test"]["hr@10"] > CHANCE_HR10
    assert lrs == pytest.approx([0.0] * len(lrs), abs=1e-12)  # cosine down to min_lr_ratio=0 at the last step
    resumed = RetrievalRecipe(retrieval_config(tmp_path / "run", "sasrec", events, *options))
    resumed.setup(resume=True)
    try:
        assert resumed.step == steps and resumed.step_options.scheduler.last_epoch == steps
        assert [group["lr"] for group in resumed.optimizer.param_groups] == pytest.approx(lrs, abs=1e-12)
    finally:
        resumed.cleanup()
