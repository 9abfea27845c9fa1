"""Random streams keyed by what they generate, so results do not depend on generation order.

The item world draws from ``(seed, WORLD)``; user ``u`` draws from ``(seed, USER, u)``: first its
profile, then its sessions. A user's events therefore depend only on ``(seed, user_id)``: shard
sizes and shard order change nothing, and the ground truth rebuilds any user's profile from the
first draws of its stream without replaying its events.
"""

from __future__ import annotations

import numpy as np

WORLD = 0
USER = 1


def world_rng(seed: int) -> np.random.Generator:
    """The stream that builds the item world."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(WORLD,))))


def user_rng(seed: int, user_id: int) -> np.random.Generator:
    """The stream of user ``user_id``."""
    key = (USER, int(user_id))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))
