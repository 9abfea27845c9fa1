"""A 2-process gloo training run shared by the fault-tolerance and world-size tests."""

import pytest

from .torchrun_jobs import TABLE_WISE, torchrun


@pytest.fixture(scope="session")
def two_rank_run(tmp_path_factory):
    """Output folder of an uninterrupted 2-rank pipelined run (table-wise tables, checkpoints every 3 steps)."""
    output_dir = tmp_path_factory.mktemp("two-rank-run")
    torchrun("train", output_dir, TABLE_WISE, "train.checkpoint_every=3", "train.pipeline=sparse_dist")
    return output_dir
