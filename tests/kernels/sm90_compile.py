"""Runs a script that compiles Triton kernels for Hopper through Triton's CUDA backend, without a GPU.

The script runs in a subprocess with ``TRITON_INTERPRET`` unset (``@triton.jit`` then builds
compilable functions instead of interpreted ones); the caller's test skips where Triton has no CUDA
backend or ``ptxas``.
"""

import os
import subprocess
import sys

import pytest


def compile_in_subprocess(script: str, timeout: int = 900) -> str:
    """The script's stdout; fails the test with its stderr's end when it exits non-zero."""
    triton = pytest.importorskip("triton")
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    if not os.path.isdir(bin_dir):
        pytest.skip("this Triton has no CUDA backend (ptxas) to compile with")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts import tests.*
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=timeout,
                            cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout
