"""int8 quantisation: the paper's formula on known values, the error bound, clipping, scale choice."""

import numpy as np
import pytest
import torch

from recsys.errors import ConfigError, DataError
from recsys.ops.int8_quantization import (
    DEFAULT_SCALE,
    choose_scale,
    dequantize_int8,
    quantize_int8,
)


def test_known_codes_with_the_paper_scale():
    e = torch.tensor([0.0, 0.65, -0.65, 0.325, 1.3, -2.0, 0.65 / 127 * 0.5, 0.65 / 127 * 1.5])
    assert DEFAULT_SCALE == 0.65
    # 0.325 -> 63.5 -> 64 (half to even); beyond +-s clips to +-127; half steps round to even.
    assert quantize_int8(e).tolist() == [0, 127, -127, 64, 127, -127, 0, 2]
    assert quantize_int8(e).dtype == torch.int8


def test_error_is_at_most_half_a_step_inside_the_range():
    scale = 0.8
    e = torch.linspace(-scale, scale, 100_001)
    err = (dequantize_int8(quantize_int8(e, scale), scale) - e).abs()
    assert float(err.max()) <= scale / 254 * (1 + 1e-5)
    assert float(err.max()) > scale / 254 * 0.99  # the bound is attained, not loose


def test_values_beyond_the_scale_clip_to_plus_minus_scale():
    scale = 0.5
    e = torch.tensor([0.51, 3.0, -0.7, -100.0])
    assert torch.allclose(dequantize_int8(quantize_int8(e, scale), scale), torch.tensor([0.5, 0.5, -0.5, -0.5]))


def test_round_trip_of_codes_is_exact_and_minus_128_never_appears():
    codes = torch.arange(-127, 128, dtype=torch.int8)
    for scale in (0.65, 0.1, 3.0):
        assert torch.equal(quantize_int8(dequantize_int8(codes, scale), scale), codes)
    assert int(quantize_int8(torch.tensor([-1e9])).item()) == -127


def test_numpy_input_gives_the_same_codes():
    x = np.random.default_rng(0).normal(0, 0.3, (50, 8)).astype(np.float32)
    assert torch.equal(quantize_int8(x), quantize_int8(torch.from_numpy(x)))
    assert torch.equal(dequantize_int8(quantize_int8(x).numpy()), dequantize_int8(quantize_int8(x)))


def test_choose_scale_minimises_reconstruction_error():
    x = torch.from_numpy(np.random.default_rng(1).normal(0, 0.2, (1000, 32)).astype(np.float32))
    x[0, :4] = torch.tensor([1.5, -1.4, 1.3, 1.2])  # a few outliers: the maximum wastes resolution on them
    s = choose_scale(x)
    assert 0.5 < s < 1.5

    def mse(scale):
        return float(((dequantize_int8(quantize_int8(x, scale), scale) - x) ** 2).mean())

    grid = [0.3 + 0.02 * i for i in range(61)]  # 0.3 .. 1.5
    assert mse(s) < mse(1.5)
    assert mse(s) <= min(mse(q) for q in grid) * 1.02


def test_choose_scale_of_a_single_magnitude_is_that_magnitude():
    x = torch.tensor([[0.4, -0.4], [0.4, 0.4]])
    assert choose_scale(x) == pytest.approx(0.4)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="scale"):
        quantize_int8(torch.zeros(2), scale=0.0)
    with pytest.raises(DataError, match="float"):
        quantize_int8(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DataError, match="int8"):
        dequantize_int8(torch.zeros(2))
    with pytest.raises(DataError, match="0"):
        choose_scale(torch.zeros(3, 3))
    with pytest.raises(DataError, match="finite"):
        choose_scale(torch.tensor([1.0, float("nan")]))
