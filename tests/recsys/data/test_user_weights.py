"""User weights w_u: provided by the data (training events only), consumed by the loss."""

import numpy as np
import pytest

from recsys.config import load_config
from recsys.data.pipeline import build_ranking_data
from recsys.data.schema import EventLog
from recsys.data.user_weights import UserWeightConfig, user_types, user_weights
from recsys.errors import ConfigError
from recsys.train.config import TrainConfig
from tests.tiny import TINY_SYNTHETIC_DATA

# user 0: 4 events, user 1: 1 event, user 2: none
LOG = EventLog.from_arrays(user_id=[0, 0, 0, 0, 1], item_id=[0, 1, 2, 3, 0], timestamp=[1, 2, 3, 4, 1],
                           num_users=3, num_items=4)


def test_user_weights_schemes():
    np.testing.assert_array_equal(user_weights(LOG), np.ones(3, np.float32))
    w = user_weights(LOG, "inverse_sqrt_activity")
    # raw 1/2, 1, 1; scale = 5 / (4 * 1/2 + 1 * 1) = 5/3
    np.testing.assert_allclose(w, [5 / 6, 5 / 3, 5 / 3], rtol=1e-6)
    counts = np.bincount(LOG.user_id, minlength=3)
    assert (counts * w).sum() / counts.sum() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="inverse_sqrt_activity"):
        user_weights(LOG, "log")


def test_user_type_weights_by_activity():
    assert user_types(np.array([0, 1, 2, 3, 9]), [2, 4]).tolist() == [0, 0, 1, 1, 2]
    config = UserWeightConfig(scheme="user_type", type_bounds=[2], type_weights=[3.0, 1.0])
    w = user_weights(LOG, config)  # user 0 (4 events) core: 1; users 1, 2 new: 3; scale 5 / (4 + 3) = 5/7
    np.testing.assert_allclose(w, [5 / 7, 15 / 7, 15 / 7], rtol=1e-6)
    only_first = user_weights(LOG, config, events=np.array([0, 4]))  # counted on these events: all new
    np.testing.assert_allclose(only_first, [1.0, 1.0, 1.0], rtol=1e-6)
    with pytest.raises(ConfigError, match="type_weights needs 2"):
        UserWeightConfig(scheme="user_type", type_bounds=[2], type_weights=[1.0])
    with pytest.raises(ConfigError, match="increasing"):
        UserWeightConfig(type_bounds=[5, 2], type_weights=[1.0, 1.0, 1.0])


def test_the_pipeline_gives_every_row_its_users_weight_from_the_training_events():
    overrides = [*TINY_SYNTHETIC_DATA, "data.user_weights.scheme=user_type", "data.user_weights.type_bounds=[30]",
                 "data.user_weights.type_weights=[2.0, 0.5]"]
    cfg = load_config(TrainConfig, "configs/transact/pinnability_synthetic.yaml", overrides)
    data = build_ranking_data(cfg.data, seed=0)
    expected = user_weights(data.log, cfg.data.user_weights, events=data.split.train)
    batch = data.train.collate(np.arange(64))
    np.testing.assert_array_equal(batch.weights.numpy(), expected[batch.user_id.numpy()])
    assert len(np.unique(expected)) == 2  # both types occur


def test_the_old_loss_key_sets_the_data_scheme():
    cfg = load_config(TrainConfig, "configs/dlrm/synthetic.yaml", ["loss.user_weighting=inverse_sqrt_activity"])
    assert cfg.data.user_weights.scheme == "inverse_sqrt_activity"
    with pytest.raises(ConfigError, match="disagree"):
        load_config(TrainConfig, "configs/dlrm/synthetic.yaml",
                    ["loss.user_weighting=inverse_sqrt_activity", "data.user_weights.scheme=user_type"])
