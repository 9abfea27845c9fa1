"""Guards run before training: empty splits are refused instead of reporting NaN metrics, and a
training step that would not fit in memory is refused with the numbers and the knobs to turn."""

import re
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from recsys.config import load_config
from recsys.data.pipeline import build_ranking_data, load_events
from recsys.distributed.plan_lengths import plan_lengths
from recsys.errors import ConfigError, DataError
from recsys.models import get_model
from recsys.train import guards
from recsys.train.config import TrainConfig
from recsys.train.guards import (
    GIB, MEMORY_HEADROOM, check_batch_memory, check_splits_not_empty, largest_fitting_batch, step_memory,
)
from recsys.train.ranking import RankingRecipe, run_training
from recsys.train.retrieval import RetrievalRecipe
from tests.recsys.train.test_retrieval_recipe import retrieval_config, write_walks
from tests.tiny import TINY_SYNTHETIC_DATA, TINY_SYNTHETIC_DLRM

HSTU_RANKING = "configs/hstu/synthetic_ranking.yaml"
REFUSAL = re.compile(r"would need about ([\d,.]+) GiB per rank .* only ([\d,.]+) GiB is available .* "
                     r"set train\.batch_size=(\d+) \(the largest that fits\), lower data\.max_sequence")


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


# ------------------------------------------------------------------------------ batch memory
def hstu_ranking_config(tmp_path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, HSTU_RANKING, [*TINY_SYNTHETIC_DATA, "train.progress=false",
                                                   f"output_dir={tmp_path / 'run'}", *extra])


@pytest.fixture
def available(monkeypatch):
    """Sets the memory the guard sees as available (bytes) through ``available.set(n)``."""
    class Available:
        def set(self, nbytes: int) -> None:
            monkeypatch.setattr(guards, "available_memory_bytes", lambda device: nbytes)
    return Available()


@pytest.fixture(scope="module")
def tiny_ranking():
    """The hstu_ranking example on the tiny synthetic feed: (cfg, data) with data.max_sequence=100000."""
    cfg = load_config(TrainConfig, HSTU_RANKING, [*TINY_SYNTHETIC_DATA, "data.max_sequence=100000"])
    return cfg, build_ranking_data(cfg.data, seed=0, log=load_events(cfg.data))


def memory_at(cfg, data, batch_size: int, max_sequence: int):
    cfg.data.max_sequence, cfg.train.batch_size = max_sequence, batch_size
    spec = data.spec
    model = get_model(cfg.model_name, feature_spec=spec, device=torch.device("meta"), **cfg.model_overrides)
    return step_memory(model, cfg, spec, plan_lengths(cfg, model, log=data.log), batch_size, "cpu")


def test_hstu_ranking_with_max_sequence_100000_is_refused_in_seconds_with_the_numbers(tmp_path, available):
    """The example as shipped (2,000 users, whose longest histories reach ~2,000 events)."""
    available.set(20 * GIB)  # the machine whose OOM killer ended this run without a message
    cfg = load_config(TrainConfig, HSTU_RANKING, ["data.max_sequence=100000", "train.batch_size=4096",
                                                  "data.num_workers=0", f"output_dir={tmp_path / 'run'}"])
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        run_training(cfg)
    assert time.monotonic() - started < 60  # the example's data (seconds), then the estimate: no model, no step
    message = str(refused.value)
    match = REFUSAL.search(message)
    assert match, message
    need, have, fits = float(match[1].replace(",", "")), float(match[2]), int(match[3])
    assert have == 20.0 and need > have
    assert 1 <= fits < 4096
    assert "more ranks" in message and "train.batch_size=4096" in message
    assert not dist.is_initialized()  # refused before the process group and the model
    assert not (tmp_path / "run").exists()


def test_the_suggested_batch_size_is_the_largest_that_fits(tmp_path, available, tiny_ranking):
    available.set(2 * GIB)
    cfg, data = tiny_ranking
    cfg = hstu_ranking_config(tmp_path, "data.max_sequence=100000", "train.batch_size=2048")
    spec = data.spec
    model = get_model(cfg.model_name, feature_spec=spec, device=torch.device("meta"), **cfg.model_overrides)
    with pytest.raises(ConfigError) as refused:
        check_batch_memory(model, cfg, spec, train_rows=len(data.train), log=data.log)
    fits = int(REFUSAL.search(str(refused.value))[3])
    budget = 2 * GIB * (1 - MEMORY_HEADROOM)
    lengths = plan_lengths(cfg, model, log=data.log)
    assert step_memory(model, cfg, spec, lengths, fits, "cpu").total <= budget
    assert step_memory(model, cfg, spec, lengths, fits + 1, "cpu").total > budget
    cfg.train.batch_size = fits  # and the recipe's check accepts it
    assert check_batch_memory(model, cfg, spec, train_rows=len(data.train), log=data.log).total <= budget


def test_a_small_config_passes_and_trains(tmp_path):
    cfg = hstu_ranking_config(tmp_path, "train.batch_size=256", "train.eval_batch_size=512")
    recipe = RankingRecipe(cfg)
    recipe.setup()  # real available memory: the example's step is a few MiB
    try:
        assert recipe.train_step(iter(recipe.loader)) is not None
    finally:
        recipe.cleanup()


def test_the_estimate_grows_with_batch_size_and_sequence_length(tiny_ranking):
    cfg, data = tiny_ranking
    small = memory_at(cfg, data, 64, 10)
    assert memory_at(cfg, data, 256, 10).activations > small.activations
    assert memory_at(cfg, data, 256, 10).inputs > small.inputs
    longer = memory_at(cfg, data, 64, 100)
    assert longer.activations > small.activations and longer.inputs > small.inputs
    assert longer.dense >= small.dense  # the relative-position bias grows with the sequence, nothing else
    assert small.total == small.activations + small.dense + small.inputs > 0


def test_the_batch_is_capped_at_the_training_rows(tmp_path, available, tiny_ranking):
    """A batch_size beyond the training split trains on the whole split: that is what is estimated."""
    cfg, data = tiny_ranking
    cfg = hstu_ranking_config(tmp_path, "data.max_sequence=10", "train.batch_size=100000000")
    spec = data.spec
    model = get_model(cfg.model_name, feature_spec=spec, device=torch.device("meta"), **cfg.model_overrides)
    available.set(64 * GIB)
    memory = check_batch_memory(model, cfg, spec, train_rows=len(data.train), log=data.log)
    assert memory.batch_size == len(data.train)


def test_largest_fitting_batch():
    assert largest_fitting_batch(lambda b: 10 * b, budget=95, upper=1000) == 9
    assert largest_fitting_batch(lambda b: 10 * b, budget=5, upper=1000) == 0
    assert largest_fitting_batch(lambda b: 10 * b, budget=10**6, upper=7) == 7


@pytest.mark.parametrize("model", ["hstu", "sasrec"])
def test_retrieval_recipe_refuses_a_step_that_does_not_fit(tmp_path, available, model):
    available.set(1 << 20)  # 1 MiB
    cfg = retrieval_config(tmp_path / "run", model, write_walks(tmp_path / "walks.csv"), "train.batch_size=128")
    with pytest.raises(ConfigError, match=r"only 0\.00 GiB is available .* set train\.batch_size=\d+ \(the largest"):
        RetrievalRecipe(cfg).setup()
    assert not dist.is_initialized() and not Path(cfg.output_dir).exists()
