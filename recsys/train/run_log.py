"""Run log: the scalars of a training run, as JSON lines and as TensorBoard events.

Rank 0 appends one JSON object per `log` call to `<directory>/metrics.jsonl` (flushed at once, so
a crash loses nothing already logged) and writes the same scalars to TensorBoard in `<directory>`.
Every other rank gets a `RunLog` that does nothing, so recipes call it unconditionally.

Example::

    log = RunLog(run_dir, rank=ctx.rank)
    log.log(step=100, values={"train/loss": 0.41, "train/lr": 1e-3})
    log.close()

A resumed run calls `truncate_after(step)` with the step it resumed from, so the records of the
steps it trains again are not in the file twice.

`metrics.jsonl` line::

    {"step": 100, "time": 1763800000.1, "train/loss": 0.41, "train/lr": 0.001}
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import IO, Any, Mapping, Optional

from recsys.atomic_files import write_text_atomic
from recsys.errors import ConfigError

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


class RunLog:
    """Scalar log of one run, written by rank 0 only.

    Args:
        directory (str | Path): run directory (created on rank 0 when missing).
        rank (int): global rank of this process.
        tensorboard (bool): also write TensorBoard events (default True).
    """

    def __init__(self, directory: str | Path, rank: int, tensorboard: bool = True) -> None:
        self.directory = Path(directory)
        self.rank = rank
        self._jsonl: Optional[IO[str]] = None
        self._writer: Any = None
        if rank != 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.directory / METRICS_FILE, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # torch's writer needs the tensorboard package
                logger.warning("tensorboard is not installed: writing metrics.jsonl only (pip install tensorboard)")
                return
            self._writer = SummaryWriter(log_dir=str(self.directory))

    @property
    def metrics_path(self) -> Path:
        return self.directory / METRICS_FILE

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Record scalars at a training step.

        Args:
            step (int): global training step.
            values (Mapping[str, float]): metric name -> value (Python number or 0-d tensor).
        """
        if self._jsonl is None:
            return
        scalars = {name: _to_float(name, value) for name, value in values.items()}
        reserved = {"step", "time"} & set(scalars)
        if reserved:
            raise ConfigError(
                f"metric names {sorted(reserved)} are reserved in {METRICS_FILE}; rename them"
            )
        record = {"step": int(step), "time": time.time(), **scalars}
        self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
        self._jsonl.flush()
        if self._writer is not None:
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, global_step=int(step))
            self._writer.flush()

    def truncate_after(self, step: int) -> None:
        """Drop the records of steps after `step` from metrics.jsonl (a resume at `step` logs them again).

        A last line cut short by a kill is dropped too; the file is rewritten atomically.
        """
        if self._jsonl is None:
            return
        self._jsonl.close()
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line + "\n")
        write_text_atomic(self.metrics_path, "".join(kept))
        self._jsonl = open(self.metrics_path, "a", encoding="utf-8")

    def close(self) -> None:
        """Flush and close the files; further `log` calls do nothing."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _to_float(name: str, value: Any) -> float:
    try:
        result = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"metric {name!r} must be a number, got {value!r}") from error
    return result
