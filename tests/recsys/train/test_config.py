"""Range checks of the training config: a value that would silently mean something else is refused."""

import pytest

from recsys.config import load_config
from recsys.errors import ConfigError
from recsys.train.config import DataConfig, TrainConfig, TrainerConfig


@pytest.mark.parametrize("override, field", [
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=-2", "train.epochs"),
    ("train.checkpoint_every=-1", "train.checkpoint_every"),
    ("train.log_every=0", "train.log_every"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.eval_every=0", "train.eval_every"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("train.patience=-1", "train.patience"),
    ("data.max_history=-1", "data.max_history"),
    ("data.max_sequence=-5", "data.max_sequence"),
    ("data.negatives_per_target=-1", "data.negatives_per_target"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.valid_fraction=1.5", "data.valid_fraction"),
    ("data.test_fraction=-0.1", "data.test_fraction"),
])
def test_out_of_range_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=rf"{field}"):
        load_config(TrainConfig, "configs/dlrm/synthetic.yaml", [override])


def test_fractions_leaving_no_training_events_are_refused():
    with pytest.raises(ConfigError, match="below 1"):
        DataConfig(valid_fraction=0.6, test_fraction=0.5)


def test_defaults_and_edge_values_are_accepted():
    TrainerConfig(epochs=1, checkpoint_every=0, log_every=1, patience=0)
    DataConfig(max_history=0, max_sequence=0, valid_fraction=0.0, test_fraction=0.0)
