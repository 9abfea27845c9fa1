"""Lifelong batches for the recipe: built once per log and config, reopened from the cache, collated
by the loaders, rebuilt when the rows or the config change, and config checks."""

import numpy as np
import pytest

from recsys.config import load_config
from recsys.data.lifelong import SEQUENCE_KEYS, LifelongConfig, collate_lifelong
from recsys.data.lifelong_pipeline import LifelongDataConfig, prepare_lifelong_data
from recsys.data.loader import make_dataloader
from recsys.data.pipeline import build_ranking_data
from recsys.errors import ConfigError, DataError
from recsys.ops.nn_select import nn_select_kernels
from recsys.train.config import DataConfig, TrainConfig

SMALL = dict(lifelong_max=200, realtime_max=20, impression_max=20, lifelong_k=8, realtime_recent=4, realtime_k=4,
             impression_k=4)


@pytest.fixture(scope="module")
def data():
    cfg = load_config(DataConfig, None, [
        "synthetic.num_users=40", "synthetic.num_items=200", "synthetic.mean_events_per_user=60",
        "synthetic.heavy_user_fraction=0.1", "synthetic.heavy_user_events=600", "synthetic.days=60",
    ])
    return build_ranking_data(cfg, seed=0)


def test_built_once_then_reopened_and_collated(tmp_path, data):
    config = LifelongDataConfig(enabled=True, **SMALL)
    lines = []
    built = prepare_lifelong_data(data, config, tmp_path, report=lines.append)
    assert len(lines) == 4 and lines[0].startswith("lifelong store")  # the store, then train, valid, test
    again = []
    reopened = prepare_lifelong_data(data, config, tmp_path, report=again.append)
    assert again == [] and reopened.directory == built.directory
    for split in ("train", "valid", "test"):
        assert len(reopened.sequences[split]) == len(data.examples(split))
        assert reopened.sequences[split].meta == built.sequences[split].meta

    collate = reopened.collate(data.valid)
    rows = list(range(0, len(data.valid), 7))
    batch = collate(rows)
    assert list(batch.sequence_features.keys()) == list(SEQUENCE_KEYS)
    expected = collate_lifelong(data.valid, reopened.sequences["valid"], rows)
    assert batch.sequence_features.values().equal(expected.sequence_features.values())
    assert batch.sequence_content.equal(expected.sequence_content)
    sequence_config = config.sequence_config()  # S_all, then the stored realtime history
    assert int(batch.sequence_features.lengths().max()) <= sequence_config.sequence_length + min(
        sequence_config.realtime_history, sequence_config.realtime_max)

    loader = make_dataloader(data.valid, 64, shuffle=False, seed=0, collate=collate)
    first = next(iter(loader))
    assert first.sequence_features is not None and "seq_source" in first.sequence_features.keys()
    plain = next(iter(make_dataloader(data.valid, 64, shuffle=False, seed=0)))
    assert plain.sequence_features is None  # the default collate: no sequence without data.max_sequence
    with pytest.raises(DataError, match="none of the splits"):
        reopened.collate(data.valid.__class__.build(data.log, data.split.valid, data.spec))


def test_another_config_or_other_rows_build_again(tmp_path, data):
    first = prepare_lifelong_data(data, LifelongDataConfig(enabled=True, **SMALL), tmp_path, report=None)
    other = prepare_lifelong_data(data, LifelongDataConfig(enabled=True, **{**SMALL, "lifelong_k": 6}), tmp_path,
                                  report=None)
    assert other.directory != first.directory and other.config.lifelong_k == 6
    lines = []
    shifted = build_ranking_data(load_config(DataConfig, None, [
        "synthetic.num_users=40", "synthetic.num_items=200", "synthetic.mean_events_per_user=60",
        "synthetic.heavy_user_fraction=0.1", "synthetic.heavy_user_events=600", "synthetic.days=60",
        "valid_fraction=0.2",
    ]), seed=0)
    prepare_lifelong_data(shifted, LifelongDataConfig(enabled=True, **SMALL), tmp_path, report=lines.append)
    # same log: the store is reused; train and valid rows moved, the test rows did not
    assert [line.split(":")[0] for line in lines] == ["lifelong S_all of train", "lifelong S_all of valid"]


def test_a_damaged_cache_entry_is_built_again(tmp_path, data):
    built = prepare_lifelong_data(data, LifelongDataConfig(enabled=True, **SMALL), tmp_path, report=None)
    (built.sequences["test"].path / "meta.json").write_text("{")
    lines = []
    prepare_lifelong_data(data, LifelongDataConfig(enabled=True, **SMALL), tmp_path, report=lines.append)
    assert len(lines) == 1 and "test" in lines[0]
    assert np.array_equal(built.sequences["train"].offsets, prepare_lifelong_data(
        data, LifelongDataConfig(enabled=True, **SMALL), tmp_path, report=None).sequences["train"].offsets)


def test_config_maps_onto_lifelong_config_and_is_checked():
    cfg = load_config(TrainConfig, None, ["data.lifelong.enabled=true", "data.lifelong.lifelong_k=48"])
    sequence = cfg.data.lifelong.sequence_config()
    assert cfg.data.lifelong.enabled and sequence.lifelong_k == 48 and sequence.sequence_length == 48 + 32 + 32 + 32
    assert not TrainConfig().data.lifelong.enabled  # off unless asked for
    with pytest.raises(ConfigError, match="realtime_recent"):
        LifelongDataConfig(realtime_recent=200, realtime_max=100)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(TrainConfig, None, ["data.lifelong.lifelong_kk=4"])
    assert type(sequence) is LifelongConfig  # the cache key: the sequence fields only
    for name in nn_select_kernels():  # every selection backend is a valid data.lifelong.kernel
        assert load_config(TrainConfig, None, [f"data.lifelong.kernel={name}"]).data.lifelong.kernel == name
    with pytest.raises(ConfigError, match="kernel"):
        load_config(TrainConfig, None, ["data.lifelong.kernel=reference"])
