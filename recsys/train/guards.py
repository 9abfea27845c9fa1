"""Checks a recipe runs before training, so a run that cannot mean anything stops with a clear error.

- :func:`check_splits_not_empty`: a split with no rows would train on nothing or report NaN metrics.
- :func:`check_batch_memory`: a batch whose activations would not fit in memory is refused with the
  estimate and the knob to turn, instead of the OOM killer ending the process without a message.
"""

from __future__ import annotations

from typing import Mapping

from recsys.errors import ConfigError, DataError

GIB = 1 << 30


def check_splits_not_empty(rows: Mapping[str, int], fix: str) -> None:
    """Raises DataError naming every split of ``rows`` (split -> row count) that has no rows.

    Args:
        rows: e.g. ``{"train": 900, "valid": 0, "test": 50}``.
        fix: what the user can change (the config fields that size the splits).
    """
    empty = [split for split, count in rows.items() if count == 0]
    if empty:
        sizes = ", ".join(f"{split} {count}" for split, count in rows.items())
        raise DataError(f"the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} has no rows ({sizes}); "
                        f"its metrics would be NaN. {fix}")
