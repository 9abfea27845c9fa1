"""Guards run before training: empty splits are refused instead of reporting NaN metrics."""

import pytest

from recsys.config import load_config
from recsys.errors import DataError
from recsys.train.config import TrainConfig
from recsys.train.guards import check_splits_not_empty
from recsys.train.ranking import run_training
from tests.tiny import TINY_SYNTHETIC_DLRM


def test_an_empty_split_is_named():
    with pytest.raises(DataError, match=r"the valid split has no rows \(train 5, valid 0, test 2\)"):
        check_splits_not_empty({"train": 5, "valid": 0, "test": 2}, "fix it")
    check_splits_not_empty({"train": 1, "valid": 1, "test": 1}, "fix it")


def test_ranking_run_with_an_empty_validation_split_stops_before_training(tmp_path):
    cfg = load_config(TrainConfig, "configs/dlrm/synthetic.yaml", [
        *TINY_SYNTHETIC_DLRM, "train.progress=false", "train.baseline=false",
        "data.split=time", "data.valid_fraction=0.0", f"output_dir={tmp_path}",
    ])
    with pytest.raises(DataError, match="valid split has no rows"):
        run_training(cfg)
    assert not (tmp_path / "results.json").exists()
