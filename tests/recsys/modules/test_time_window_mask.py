"""The time-window mask: padding from lengths, exactly the actions within the last T seconds in
training, nothing but padding and future actions in evaluation, reproducible from a generator."""

import math

import pytest
import torch

from recsys.errors import ConfigError, DataError
from recsys.modules.time_window_mask import key_padding_mask, sample_time_windows, time_window_mask

DAY = 86_400


def test_key_padding_mask_from_lengths():
    mask = key_padding_mask(torch.tensor([3, 0, 5, 1]), 4)
    expected = torch.tensor([
        [False, False, False, True],
        [True, True, True, True],
        [False, False, False, False],  # longer than S: no padding
        [False, True, True, True],
    ])
    assert torch.equal(mask, expected)


def test_docstring_example_in_evaluation():
    times = torch.tensor([[990, 700, 100, 0]])
    mask = time_window_mask(times, torch.tensor([1000]), torch.tensor([3]), DAY, training=False)
    assert mask.tolist() == [[False, False, False, True]]


def test_masks_exactly_the_actions_within_the_last_t_seconds():
    request = torch.tensor([100_000, 200_000, 300_000])
    windows = sample_time_windows(3, DAY, torch.Generator().manual_seed(7))  # [3]
    assert ((windows >= 0) & (windows < DAY)).all() and len(set(windows.tolist())) == 3  # one per request
    inside, outside = windows.floor().long(), windows.floor().long() + 1  # seconds before the request
    seconds_before = torch.stack([torch.zeros(3, dtype=torch.long), inside, outside, torch.full((3,), 2 * DAY)], 1)
    times = request.unsqueeze(1) - seconds_before  # [3, 4]: newest first
    lengths = torch.tensor([4, 3, 2])
    mask = time_window_mask(times, request, lengths, DAY, training=True, generator=torch.Generator().manual_seed(7))
    expected = torch.tensor([
        [True, True, False, False],
        [True, True, False, True],  # position 3 is padding
        [True, True, True, True],  # positions 2, 3 padding; both real actions inside the window
    ])
    assert torch.equal(mask, expected)
    assert not time_window_mask(times, request, lengths, DAY, training=False).any(dim=0)[:2].any()


def test_never_in_evaluation_and_the_generator_is_untouched():
    times = torch.tensor([[999, 998, 1001, 5]])  # one action after the request
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    mask = time_window_mask(times, torch.tensor([1000]), torch.tensor([4]), DAY, training=False, generator=generator)
    assert mask.tolist() == [[False, False, True, False]]  # only the future action
    assert torch.equal(generator.get_state(), state)
    no_window = time_window_mask(times, torch.tensor([1000]), torch.tensor([4]), 0, training=True, generator=generator)
    assert torch.equal(no_window, mask)


def test_reproducible_from_the_generator_and_one_window_per_batch():
    request = torch.full((64,), 10 * DAY)
    times = request.unsqueeze(1) - torch.arange(0, DAY, DAY // 16).unsqueeze(0)  # [64, 16] spread over a day
    lengths = torch.full((64,), 16)

    def mask(seed, one):
        return time_window_mask(times, request, lengths, DAY, True, torch.Generator().manual_seed(seed), one)

    assert torch.equal(mask(1, False), mask(1, False))
    assert not torch.equal(mask(1, False), mask(2, False))
    per_row = mask(1, False).sum(dim=1)
    assert len(set(per_row.tolist())) > 1  # windows differ between requests
    one = mask(1, True)
    assert (one == one[0]).all()  # every row: the same window
    window = sample_time_windows(64, DAY, torch.Generator().manual_seed(1), one_per_batch=True)
    assert torch.equal(window, window[:1].expand(64)) and int(one[0].sum()) == math.ceil(window[0] / (DAY // 16))


def test_bad_inputs():
    with pytest.raises(DataError, match="action_time must be"):
        time_window_mask(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.ones(3), DAY, True)
    with pytest.raises(ConfigError, match="max_window_seconds"):
        sample_time_windows(2, -1.0)
