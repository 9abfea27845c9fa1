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


def test_the_longest_row_covers_99_percent_of_batches():
    one_in_a_hundred_long = LengthDistribution.from_lengths([10] * 99 + [1000])
    # 48 rows: the chance that none is long is 0.99 ** 48 = 62%, so a batch often pads to 1000
    assert one_in_a_hundred_long.typical_batch(48)[-1] == 1000
    assert one_in_a_hundred_long.typical_batch(48)[:-1].tolist() == [10] * 47
    assert LengthDistribution.from_lengths([10] * 9999 + [1000]).typical_batch(4)[-1] == 10  # 1 in 10^4: rare
