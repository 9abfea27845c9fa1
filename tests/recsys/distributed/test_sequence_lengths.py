import numpy as np
import pytest

from recsys.distributed.sequence_lengths import LengthDistribution
from recsys.errors import ConfigError


def test_typical_batch_takes_the_quantiles():
    lengths = LengthDistribution.from_lengths([3, 50, 50, 7, 20], cap=50)
    assert lengths.typical_batch(4).tolist() == [3, 7, 50, 50]
    assert lengths.typical_batch(5).tolist() == [3, 7, 20, 50, 50]  # a batch of the sample's size is the sample
    assert LengthDistribution.fixed(1024).typical_batch(2).tolist() == [1024, 1024]


def test_cap_mean_and_max():
    lengths = LengthDistribution.from_lengths([1, 2, 3, 1000], cap=10)
    assert lengths.max == 10 and lengths.mean == pytest.approx(4.0)
    assert lengths.capped(2).lengths == (1, 2, 2, 2)


def test_large_samples_are_thinned_to_quantiles_and_bad_lengths_refused():
    lengths = LengthDistribution.from_lengths(np.arange(100_000))
    assert len(lengths.lengths) == 4096 and lengths.lengths[0] == 0 and lengths.max == 99_999
    with pytest.raises(ConfigError, match="lengths >= 0"):
        LengthDistribution((-1,))
