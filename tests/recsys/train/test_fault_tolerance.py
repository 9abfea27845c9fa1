"""A rank killed mid-training: torchrun restarts the job, which resumes from the last checkpoint
and ends with the same per-head metrics as a run that was never interrupted."""

from .torchrun_jobs import TABLE_WISE, assert_same_metrics, model_metrics, torchrun


def test_killed_rank_restarts_and_reaches_the_uninterrupted_metrics(tmp_path, two_rank_run):
    done = torchrun(
        "train", tmp_path, TABLE_WISE, "train.checkpoint_every=3", "train.pipeline=sparse_dist",
        resume=True, max_restarts=1, env={"RECSYS_FAIL_AT_STEP": "7", "RECSYS_FAIL_RANK": "1"},
    )
    log = done.stdout + done.stderr
    assert "RECSYS_FAIL_AT_STEP=7: killing rank" in log
    assert "resumed from step 6" in log  # the restarted attempt, from the checkpoint before the kill
    assert_same_metrics(model_metrics(tmp_path), model_metrics(two_rank_run))
