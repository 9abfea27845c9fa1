"""A testing hook: kill one rank mid-training, on a job's first attempt only.

Fault-tolerance tests (and drills on a cluster) need a rank to die at a known step, the way a
preempted or crashed node does, and the restarted job to run normally. Two environment variables
arm the hook; it fires only while ``TORCHELASTIC_RESTART_COUNT`` (set by torchrun) is ``0``, so
the attempt torchrun restarts trains to the end:

- ``RECSYS_FAIL_AT_STEP=<n>``: after optimizer step n (and after the checkpoint of step n, if
  one is due) the process kills itself with SIGKILL: no exception, no cleanup, no flush.
- ``RECSYS_FAIL_RANK=<r>``: only rank r dies (default 0).

Example::

    RECSYS_FAIL_AT_STEP=7 RECSYS_FAIL_RANK=1 torchrun --standalone --nproc_per_node 2 --max-restarts 1 \\
        -m recsys.cli train --config configs/dlrm/synthetic.yaml --resume train.checkpoint_every=3
"""

from __future__ import annotations

import os
import signal

from recsys.errors import ConfigError

FAIL_AT_STEP = "RECSYS_FAIL_AT_STEP"
FAIL_RANK = "RECSYS_FAIL_RANK"
RESTART_COUNT = "TORCHELASTIC_RESTART_COUNT"


def _int_variable(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} must be an integer; unset it or set e.g. {name}=7") from None


def fail_step(rank: int) -> int | None:
    """The step after which this rank kills itself, or None when the hook is not armed for it.

    Args:
        rank: this process's global rank.
    """
    step = _int_variable(FAIL_AT_STEP, None)
    if step is None or os.environ.get(RESTART_COUNT) != "0":
        return None
    return step if _int_variable(FAIL_RANK, 0) == rank else None


def maybe_fail(step: int, fail_at: int | None) -> None:
    """Kills this process with SIGKILL when ``step == fail_at`` (from :func:`fail_step`)."""
    if fail_at is not None and step == fail_at:
        print(f"{FAIL_AT_STEP}={fail_at}: killing rank process {os.getpid()} after step {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
