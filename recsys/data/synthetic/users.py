"""Users: long-term interests that drift over the period, and a heavy-tailed activity level.

A user has K (``min_interests..max_interests``) interests, each a topic with a base weight. The
first is a core interest that lasts the whole period; every other one appears and fades with
smooth sigmoid ramps at its own times, and all weights oscillate slowly. At time ``t`` (a fraction
of the period in [0, 1)) the weights are normalised to a topic mix, and the user's long-term
interest vector is the unit-norm mix of the topics' centroids.

Activity is log-normal across users (mean ``mean_events_per_user``); a fraction
``heavy_user_fraction`` of users, and users ``0..heavy_users-1``, are heavy users with about
``heavy_user_events`` impressions.

Shape letters: K interests, n query times, C content dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.data.synthetic.config import SyntheticConfig
from recsys.data.synthetic.seeding import user_rng
from recsys.data.synthetic.world import ItemWorld

RAMP_WIDTH = 0.03  # interests appear and fade over ~3% of the period (about three weeks of two years)
OSCILLATION = 0.5  # relative amplitude of the slow oscillation of every interest weight


@dataclass
class UserProfile:
    """One user's interests over time and activity.

    Args:
        user_id: the user.
        topics: ``[K]`` int64 distinct interest topics; ``topics[0]`` is the core interest.
        base_weight: ``[K]`` float64 base weights.
        appear / fade: ``[K]`` float64 times (fractions of the period) at which each interest
            appears and fades (``-inf`` / ``inf`` for the core interest).
        frequency / phase: ``[K]`` float64 slow oscillation of each weight (cycles per period).
        num_events: number of impressions the user will see.
        join: time (fraction of the period) of the user's first session.
        heavy: True for a heavy user.
    """

    user_id: int
    topics: np.ndarray
    base_weight: np.ndarray
    appear: np.ndarray
    fade: np.ndarray
    frequency: np.ndarray
    phase: np.ndarray
    num_events: int
    join: float
    heavy: bool

    @property
    def num_interests(self) -> int:
        return int(self.topics.shape[0])

    def interest_weights(self, t: np.ndarray) -> np.ndarray:
        """``[n]`` times (fractions of the period) -> ``[n, K]`` topic-mix weights summing to 1."""
        t = np.asarray(t, dtype=np.float64)[:, None]
        presence = _sigmoid((t - self.appear) / RAMP_WIDTH) * _sigmoid((self.fade - t) / RAMP_WIDTH)
        wave = 1.0 + OSCILLATION * np.sin(2 * np.pi * (self.frequency * t + self.phase))
        weights = self.base_weight * presence * wave + 1e-12
        return weights / weights.sum(axis=1, keepdims=True)

    def interest_vector(self, world: ItemWorld, t: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """``[n]`` times -> ``[n, C]`` float64 unit long-term interest vectors.

        ``weights``: the ``[n, K]`` :meth:`interest_weights` at ``t`` when already computed.
        """
        weights = self.interest_weights(t) if weights is None else weights
        mix = weights @ world.topic_centroids[self.topics].astype(np.float64)
        return mix / np.maximum(np.linalg.norm(mix, axis=1, keepdims=True), 1e-12)


def user_profile(
    config: SyntheticConfig, world: ItemWorld, user_id: int, rng: np.random.Generator | None = None
) -> UserProfile:
    """Draws the profile of ``user_id``: the first draws of the user's stream (seed and id only).

    ``rng``: the user's stream (``user_rng(config.seed, user_id)``); its sessions follow the profile.
    """
    rng = user_rng(config.seed, user_id) if rng is None else rng
    k = int(rng.integers(config.min_interests, config.max_interests + 1))
    topics = _distinct_topics(rng, world.topic_mass, k)
    appear = rng.uniform(-0.3, 0.9, size=k)
    fade = appear + rng.uniform(0.3, 1.2, size=k)
    appear[0], fade[0] = -np.inf, np.inf
    heavy = bool(rng.random() < config.heavy_user_fraction) or user_id < config.heavy_users
    return UserProfile(
        user_id=int(user_id),
        topics=topics,
        base_weight=rng.dirichlet(np.full(k, 1.5)),
        appear=appear,
        fade=fade,
        frequency=rng.uniform(0.5, 2.0, size=k),
        phase=rng.random(k),
        num_events=_num_events(rng, config, heavy),
        join=0.0 if heavy or rng.random() < 0.5 else float(rng.uniform(0.0, 0.75)),
        heavy=heavy,
    )


def _distinct_topics(rng: np.random.Generator, topic_mass: np.ndarray, k: int) -> np.ndarray:
    """``[k]`` distinct topics drawn without replacement, proportionally to ``topic_mass``."""
    keys = np.log(topic_mass + 1e-300) + rng.gumbel(size=topic_mass.shape[0])
    return np.argsort(-keys)[:k].astype(np.int64)


def _num_events(rng: np.random.Generator, config: SyntheticConfig, heavy: bool) -> int:
    if heavy:
        count = config.heavy_user_events * rng.uniform(0.9, 1.1)
    else:
        sigma = config.activity_sigma
        count = config.mean_events_per_user * rng.lognormal(-0.5 * sigma**2, sigma)
    return int(np.clip(round(count), 2, config.max_events_per_user))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
