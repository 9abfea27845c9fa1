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
    """The state of every random generator, as tensors and plain Python values only, so a
    checkpoint holding it loads with ``torch.load(weights_only=True)`` (no pickled objects).

    Returns:
        dict: keys "python" (``random.getstate()``: a tuple of ints), "numpy" (NumPy's MT19937
        state as ``[name, key [624] int64 tensor, pos, has_gauss, cached_gaussian]``), "torch"
        and, with CUDA, "cuda" (one state per device).
    """
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [str(name), torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
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
    random.setstate(_python_state(state["python"]))
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state(state: Any) -> tuple:
    """``random.setstate`` needs tuples; a state that went through lists is turned back."""
    version, internal, gauss = state
    return int(version), tuple(int(x) for x in internal), gauss


def _numpy_state(state: Any) -> tuple:
    """NumPy's legacy state tuple from ours (key as a tensor) or NumPy's own (key as an array)."""
    name, key, pos, has_gauss, cached = state
    key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    return str(name), key.astype(np.uint32), int(pos), int(has_gauss), float(cached)
