"""Reproducibility: seed every random generator, and save / restore their states.

A resumed run must draw the same random numbers as the run it continues: the trainer stores
`capture_rng_state()` in each checkpoint and calls `restore_rng_state` after loading. Covers
Python's `random`, NumPy's global generator, torch's CPU generator and, when CUDA is available,
every CUDA device's generator (CUDA is only queried when these functions run, never at import).

Example::

    seed_everything(1234)
    state = capture_rng_state()
    a = torch.rand(3)
    restore_rng_state(state)
    assert torch.equal(torch.rand(3), a)
"""

from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

from recsys.errors import CheckpointError

_REQUIRED_KEYS = ("python", "numpy", "torch")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch (CPU and every CUDA device).

    Args:
        seed (int): the seed, 0 <= seed < 2**32.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def capture_rng_state() -> Dict[str, Any]:
    """The state of every random generator, as a dict `torch.save` can store.

    Returns:
        dict: keys "python", "numpy", "torch" and, with CUDA, "cuda" (one state per device).
    """
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Put every random generator back to a state from `capture_rng_state`.

    Args:
        state (dict): from `capture_rng_state` (possibly after a `torch.save` / `torch.load`).
    """
    missing = [key for key in _REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"random generator state lacks {missing}; it must come from capture_rng_state()"
        )
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
