"""Checkpoints of the ranking recipe across world sizes and sharding plans: a run saved on 2 ranks
(table-wise tables) resumes on 1 rank (row-wise), one saved on 1 rank resumes on 2, with the same
per-head metrics; a torchsnapshot checkpoint on another plan is refused with the fix, which works."""

import shutil

import pytest

from recsys.config import load_config
from recsys.errors import CheckpointError
from recsys.train.config import TrainConfig
from recsys.train.ranking import RankingRecipe, run_training

from .torchrun_jobs import CONFIG, ROW_WISE, TABLE_WISE, TINY, assert_same_metrics, model_metrics, torchrun

# On another world size each rank scores its share of every evaluation batch: the same weights,
# other matrix shapes, so logits differ in the last bits (NE by ~1e-7) and a few nearly tied scores
# of this barely trained model swap places (AUC by < 2e-4). A table that lost its weights moves both by far more.
FLOAT_NOISE = {"ne_rel": 1e-6, "auc_abs": 5e-4}


def config(output_dir, *overrides) -> TrainConfig:
    return load_config(TrainConfig, CONFIG, [*TINY, f"output_dir={output_dir}", *overrides])


def metrics_of(results: dict) -> dict:
    return {split: results[f"dlrm {split}"] for split in ("valid", "test")}


def test_saved_on_two_ranks_table_wise_resumes_on_one_rank_row_wise(tmp_path, two_rank_run):
    run_dir = shutil.copytree(two_rank_run, tmp_path / "run")
    results = run_training(config(run_dir, ROW_WISE), resume=True)  # training is done: evaluates the checkpoint
    assert_same_metrics(metrics_of(results), model_metrics(two_rank_run), **FLOAT_NOISE)


def test_saved_on_one_rank_table_wise_resumes_on_two_ranks_row_wise(tmp_path):
    one_rank = run_training(config(tmp_path, TABLE_WISE, "train.epochs=1"))
    done = torchrun("train", tmp_path, ROW_WISE, "train.epochs=1", resume=True)
    assert "resumed from step" in done.stdout and "world size 2" in done.stdout
    assert_same_metrics(model_metrics(tmp_path), metrics_of(one_rank), **FLOAT_NOISE)


def test_torchsnapshot_checkpoint_on_another_plan_is_refused_with_a_fix_that_works(tmp_path):
    snapshot = ["train.checkpoint_backend=torchsnapshot", "train.epochs=1"]
    saved = run_training(config(tmp_path, TABLE_WISE, *snapshot))
    checkpoint = tmp_path / "checkpoints" / (tmp_path / "checkpoints" / "latest").read_text().strip()

    recipe = RankingRecipe(config(tmp_path, ROW_WISE, *snapshot))
    fix = f"cannot reshard with torchsnapshot; use backend dcp .*sharding.plan={checkpoint / 'plan.json'}"
    with pytest.raises(CheckpointError, match=fix):
        try:
            recipe.setup(resume=True)
        finally:
            recipe.cleanup()

    resumed = run_training(config(tmp_path, f"sharding.plan={checkpoint / 'plan.json'}", *snapshot), resume=True)
    assert_same_metrics(metrics_of(resumed), metrics_of(saved))
