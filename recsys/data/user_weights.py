"""Per-user loss weights: the ``w_u`` of Pinnability's weighted cross-entropy, provided by the data.

TransAct's equation (1) weighs every example by its user's type (``w_u``) and every head by what
the user did (``w_h``, the label weight matrix of the loss). The user side is a property of the
data, not of the loss: the pipeline computes one weight per user here, every row carries its
user's (``RankingBatch.weights``), and :class:`~recsys.modules.weighted_cross_entropy.WeightedCrossEntropy`
only consumes it.

Schemes (``data.user_weights.scheme``):

- ``"uniform"``: every user 1;
- ``"inverse_sqrt_activity"``: ``w_u ∝ 1 / sqrt(n_u)``, so a user with 100x the events carries
  10x, not 100x, of the loss;
- ``"user_type"``: users are typed by their activity (``n_u`` events, cut at ``type_bounds``: with
  the default ``[20, 200]``, new < 20 <= casual < 200 <= core) and each type has its weight
  (``type_weights``, one per type), as the paper weighs user types.

Activity is counted on the events given (the training split's: no row's weight depends on what
happens after the training period). Weights are normalised so that ``sum_u n_u w_u / sum_u n_u = 1``:
the loss keeps the scale of unweighted BCE. Users without events count as one event.

Shape letters: U users, N events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from recsys.data.schema import EventLog
from recsys.errors import ConfigError

USER_WEIGHT_SCHEMES = ("uniform", "inverse_sqrt_activity", "user_type")


@dataclass
class UserWeightConfig:
    """``data.user_weights``: how each user's rows weigh in the loss.

    Args:
        scheme: "uniform", "inverse_sqrt_activity" or "user_type" (see the module docstring).
        type_bounds: increasing event counts that cut users into ``len(type_bounds) + 1`` types
            (a user with n events is of type ``#{bounds <= n}``); "user_type" only.
        type_weights: one weight >= 0 per type, lightest type first; "user_type" only.
    """

    scheme: Literal["uniform", "inverse_sqrt_activity", "user_type"] = "uniform"
    type_bounds: list[int] = field(default_factory=lambda: [20, 200])
    type_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])

    def __post_init__(self) -> None:
        if self.scheme not in USER_WEIGHT_SCHEMES:
            raise ConfigError(f"data.user_weights.scheme={self.scheme!r} is unknown; use one of {list(USER_WEIGHT_SCHEMES)}")
        bounds = list(self.type_bounds)
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bounds) or bounds != sorted(set(bounds)):
            raise ConfigError(f"data.user_weights.type_bounds={self.type_bounds!r} must be increasing integers >= 1")
        weights = list(self.type_weights)
        if len(weights) != len(bounds) + 1:
            raise ConfigError(f"data.user_weights.type_weights needs {len(bounds) + 1} weights (one per type: "
                              f"{len(bounds)} bounds cut {len(bounds) + 1} types), got {len(weights)}")
        if any(not isinstance(w, (int, float)) or isinstance(w, bool) or not np.isfinite(w) or w < 0 for w in weights):
            raise ConfigError(f"data.user_weights.type_weights={self.type_weights!r} must be finite numbers >= 0")


def user_types(activity: np.ndarray, bounds: list[int]) -> np.ndarray:
    """``[U]`` int64 type of each user: how many of ``bounds`` its event count reaches."""
    return np.searchsorted(np.asarray(bounds, dtype=np.int64), activity, side="right").astype(np.int64)


def user_weights(log: EventLog, scheme: str | UserWeightConfig = "uniform", events: np.ndarray | None = None) -> np.ndarray:
    """Per-user loss weights ``[U]`` float32, normalised to mean 1 over the counted events.

    Args:
        log: the event log.
        scheme: a scheme name (its default parameters) or a :class:`UserWeightConfig`.
        events: ``[N']`` indices of the events that count as activity (the training split's);
            None = every event of ``log``.
    """
    config = scheme if isinstance(scheme, UserWeightConfig) else UserWeightConfig(scheme=scheme)
    users = log.user_id if events is None else log.user_id[np.asarray(events, dtype=np.int64)]
    activity = np.bincount(users, minlength=log.num_users).astype(np.float64)  # [U]
    if config.scheme == "uniform":
        return np.ones(log.num_users, dtype=np.float32)
    if config.scheme == "inverse_sqrt_activity":
        raw = 1.0 / np.sqrt(np.maximum(activity, 1.0))  # [U]
    else:
        raw = np.asarray(config.type_weights, dtype=np.float64)[user_types(activity, config.type_bounds)]  # [U]
    total, weighted = activity.sum(), (activity * raw).sum()
    if total == 0:
        return np.ones(log.num_users, dtype=np.float32)
    if weighted == 0:
        raise ConfigError("data.user_weights gives every active user weight 0; give some user type a weight > 0")
    return (raw * total / weighted).astype(np.float32)
