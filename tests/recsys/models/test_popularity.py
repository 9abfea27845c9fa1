import numpy as np
import pytest
import torch

from recsys.data.schema import EventLog
from recsys.errors import ConfigError, DataError
from recsys.models.popularity import PopularityModel

ACTIONS = ("click", "save", "hide")


def _log() -> EventLog:
    # bits: click=1, save=2, hide=4
    return EventLog.from_arrays(
        user_id=[0, 0, 0, 1, 1, 2, 2],
        item_id=[0, 1, 0, 0, 2, 1, 0],
        timestamp=[1, 2, 3, 1, 2, 1, 2],
        actions=[1, 3, 0, 1, 4, 1, 2],
        num_items=4,
        action_vocab=ACTIONS,
    )


def test_counts_smoothed_shares_on_training_events():
    log = _log()
    train = np.array([0, 1, 2, 3, 4, 5])  # the last event (user 2 saves item 0) is held out
    model = PopularityModel().fit(log, train, heads=["click", "save"])
    # click: item0 2, item1 2, item2 0, item3 0 (total 4); save: item1 1 (total 1)
    click = (np.array([2, 2, 0, 0]) + 1) / (4 + 4)
    save = (np.array([0, 1, 0, 0]) + 1) / (1 + 4)
    expected = torch.tensor(np.log(np.c_[click, save]), dtype=torch.float32)
    torch.testing.assert_close(model.scores(torch.arange(4)), expected)
    out = model.scores(np.array([3, 1]))
    assert out.shape == (2, 2)
    torch.testing.assert_close(out, expected[[3, 1]])


def test_bool_mask_default_heads_and_errors():
    log = _log()
    model = PopularityModel().fit(log, np.ones(len(log), bool))
    assert model.heads == list(ACTIONS)
    hide = model.scores(torch.tensor([2, 0]))[:, 2]
    assert hide[0] > hide[1]  # item 2 is the only hidden one
    with pytest.raises(DataError, match="0..3"):
        model.scores(torch.tensor([4]))
    with pytest.raises(ConfigError, match="purchase"):
        PopularityModel().fit(log, np.arange(3), heads=["purchase"])
    with pytest.raises(ConfigError, match="before fit"):
        PopularityModel().scores(torch.tensor([0]))
