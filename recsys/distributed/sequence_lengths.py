"""Sequence lengths of a data set, as the dense-memory estimate reads them.

Sequence models pad each batch to its longest row (TransAct, BST, SASRec, the PyTorch HSTU
attention) or work on the jagged tokens (HSTU's linear layers), so their activation memory depends
on the whole length distribution, not only on its maximum: a batch of B rows holds ``sum(lengths)``
tokens and is padded to ``max(lengths)``. :class:`LengthDistribution` keeps a sorted sample of
per-row lengths and answers with the *typical batch*: the B lengths at the quantiles
``(i + 0.5) / B`` (its sum is B times the mean), except its longest row, which is the length the
longest of B rows stays within in 99% of batches (the quantile ``0.99 ** (1 / B)``): memory
must fit the batches that pad to a long row, not only the average one.

Example::

    lengths = LengthDistribution.from_lengths([3, 50, 50, 7, 20], cap=50)
    lengths.typical_batch(4)   # [3, 7, 50, 50]
    LengthDistribution.fixed(1024).typical_batch(2)   # [1024, 1024]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from recsys.errors import ConfigError

_SAMPLE = 4096  # lengths kept: enough quantiles for any batch's shape
BATCH_MAX_CONFIDENCE = 0.99  # share of batches whose longest row the typical batch covers


@dataclass(frozen=True)
class LengthDistribution:
    """Per-row sequence lengths (tokens before the model's own additions), sorted ascending.

    Args:
        lengths: a sorted sample of per-row lengths, each >= 0.
    """

    lengths: Tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.lengths or min(self.lengths) < 0:
            raise ConfigError(f"a length distribution needs lengths >= 0, got {self.lengths[:8]}")

    @classmethod
    def from_lengths(cls, lengths: Sequence[int] | np.ndarray, cap: int | None = None) -> "LengthDistribution":
        """From observed lengths (e.g. events per user), each cut to ``cap`` (the model's maximum)."""
        values = np.sort(np.asarray(lengths, dtype=np.int64))
        if cap is not None:
            values = np.minimum(values, cap)
        if values.size > _SAMPLE:
            values = values[np.linspace(0, values.size - 1, _SAMPLE).round().astype(np.int64)]
        return cls(tuple(int(v) for v in values))

    @classmethod
    def fixed(cls, length: int) -> "LengthDistribution":
        """Every row has ``length`` tokens (the worst case)."""
        return cls((int(length),))

    def typical_batch(self, batch_size: int) -> np.ndarray:
        """``[B]`` int64, ascending: the lengths at quantiles ``(i + 0.5) / B``, the last one at
        ``BATCH_MAX_CONFIDENCE ** (1 / B)`` (the longest row of 99% of batches)."""
        quantiles = (np.arange(batch_size) + 0.5) / batch_size
        quantiles[-1] = max(quantiles[-1], BATCH_MAX_CONFIDENCE ** (1.0 / batch_size))
        index = np.minimum((quantiles * len(self.lengths)).astype(np.int64), len(self.lengths) - 1)
        return np.asarray(self.lengths, dtype=np.int64)[index]

    @property
    def mean(self) -> float:
        return float(np.mean(self.lengths))

    @property
    def max(self) -> int:
        return int(self.lengths[-1])

    def capped(self, cap: int) -> "LengthDistribution":
        """The same rows cut to at most ``cap`` tokens."""
        return LengthDistribution(tuple(min(v, cap) for v in self.lengths))
