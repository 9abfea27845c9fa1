import random

import numpy as np
import pytest
import torch

from recsys.errors import CheckpointError
from recsys.train.reproducibility import capture_rng_state, restore_rng_state, seed_everything


def _draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_same_seed_same_numbers():
    seed_everything(7)
    first = _draw()
    seed_everything(7)
    assert _draw() == first
    seed_everything(8)
    assert _draw() != first


def test_restored_state_replays_the_draws_after_a_save_and_load(tmp_path):
    seed_everything(3)
    _draw()
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    expected = _draw()
    _draw()
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draw() == expected


def test_incomplete_state_is_refused():
    with pytest.raises(CheckpointError, match="numpy"):
        restore_rng_state({"python": random.getstate()})
