"""Loading the Triton kernels of ``recsys.kernels`` on first use, for the ops' dispatchers.

The package installs the top-level ``kernels/`` folder as ``recsys.kernels``; importing a kernel
module imports triton and compiles nothing until the kernel is first launched. On a machine
without CUDA, ``TRITON_INTERPRET=1`` (set before triton is first imported) runs the kernels on
CPU tensors in Triton's interpreter: how the tests check them against the references.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

from recsys.errors import ConfigError


def triton_interpret_requested() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set: Triton kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def load_kernel(module: str, function: str, op: str) -> Callable:
    """``recsys.kernels.<module>.<function>``, with an error naming the fix when the package's
    kernels are not installed (a checkout put on ``PYTHONPATH`` has ``kernels/`` but no
    ``recsys.kernels``)."""
    name = f"recsys.kernels.{module}"
    try:
        return getattr(importlib.import_module(name), function)
    except ModuleNotFoundError as e:
        if e.name not in ("recsys.kernels", name):
            raise
        raise ConfigError(
            f"{op}: kernel 'triton' needs recsys.kernels, which the package installs from the top-level "
            "kernels/ folder; a checkout on PYTHONPATH alone lacks it: run `pip install -e .` in the "
            "checkout, or use kernel='pytorch'"
        ) from e
