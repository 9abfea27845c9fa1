"""Lifelong batches for the ranking recipe: the store and every split's S_all, built once and cached.

With ``data.lifelong.enabled`` the ranking recipe trains and evaluates on batches whose sequence
is S_all (:mod:`recsys.data.lifelong`) instead of the plain realtime history. S_all depends on the
candidate, so it is computed ahead for every row of train, valid and test and memory-mapped while
training (O(192) tokens per row)::

    <cache_dir>/<log + config key>/store/                the LifelongStore of the whole log
    <cache_dir>/<log + config key>/<split>-<rows key>/   S_all of the split's rows
    <cache_dir>/<log + config key>.lock                  one builder at a time

The key of the first level hashes the event log (users, items, times, actions, impressions,
surfaces, content embeddings) and the :class:`~recsys.data.lifelong.LifelongConfig`; the second
the split's rows. A later run on the same log, config and rows opens the cached directories
instead of building them (runs of several seeds share the store, and ranks of one job, or runs
started together, wait on the lock while one builds). Every directory is written to a staging
folder and renamed when complete, so a stopped build leaves nothing half-written behind.

Example::

    lifelong = prepare_lifelong_data(data, LifelongDataConfig(enabled=True), Path("runs/x/lifelong"))
    loader = make_dataloader(data.train, 512, shuffle=True, seed=0, collate=lifelong.collate(data.train))
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from recsys.data.batch import RankingBatch
from recsys.data.examples import RankingExamples
from recsys.data.lifelong import (
    LifelongConfig,
    LifelongSequences,
    build_lifelong_sequences,
    check_sequences_match,
    collate_lifelong,
    rows_fingerprint,
)
from recsys.data.lifelong_store import LifelongStore
from recsys.data.pipeline import RankingData
from recsys.data.schema import EventLog
from recsys.errors import ConfigError, DataError
from recsys.ops.int8_quantization import DEFAULT_SCALE

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class LifelongDataConfig(LifelongConfig):
    """``data.lifelong``: build S_all for every row and train on lifelong batches.

    Args:
        lifelong_max / realtime_max / impression_max / lifelong_k / realtime_recent / realtime_k /
            impression_k: inherited from :class:`~recsys.data.lifelong.LifelongConfig` (the paper's
            10^4 / 100 / 100 and 96 + 32 + 32 + 32 = 192 tokens by default).
        enabled: use lifelong batches (sequence models read S_all; TransAct V2 needs them).
        scale: int8 scale of the stored content embeddings (the paper's 0.65).
        cache_dir: where store and sequences are cached; None = ``<output_dir>/lifelong``.
        kernel: nearest-neighbour selection backend ("auto", "pytorch" or "triton"; see
            :func:`recsys.ops.nn_select.nn_select_kernels`).
        device: where the selection runs while building ("cpu" or "cuda").
        chunk_rows: rows selected per call while building.
    """

    enabled: bool = False
    scale: float = DEFAULT_SCALE
    cache_dir: str | None = None
    kernel: Literal["auto", "pytorch", "triton"] = "auto"
    device: str = "cpu"
    chunk_rows: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()  # checks the sequence fields
        if self.chunk_rows < 1:
            raise ConfigError(f"data.lifelong.chunk_rows must be >= 1, got {self.chunk_rows}")

    def sequence_config(self) -> LifelongConfig:
        """The plain :class:`LifelongConfig` of these fields (what the cached sequences are keyed by)."""
        names = [f.name for f in dataclasses.fields(LifelongConfig)]
        return LifelongConfig(**{name: getattr(self, name) for name in names})


class LifelongCollate:
    """``collate(rows) -> RankingBatch`` with S_all, for the loaders of one split.

    Args:
        examples: the split's rows.
        sequences: their stored S_all (checked once here, not per batch).
    """

    def __init__(self, examples: RankingExamples, sequences: LifelongSequences):
        check_sequences_match(examples, sequences)
        self.examples, self.sequences = examples, sequences

    def __call__(self, rows: list[int]) -> RankingBatch:
        return collate_lifelong(self.examples, self.sequences, rows, check_rows=False)


@dataclass
class LifelongData:
    """Every split's stored S_all, and where it lives.

    Args:
        config: the selection config the sequences were built with.
        sequences: split name -> :class:`LifelongSequences`.
        examples: split name -> the split's rows.
        directory: the cache directory of this log and config.
    """

    config: LifelongConfig
    sequences: dict[str, LifelongSequences]
    examples: dict[str, RankingExamples]
    directory: Path

    def collate(self, examples: RankingExamples) -> LifelongCollate:
        """The collate function of ``examples`` (one of the splits, by identity)."""
        for split, rows in self.examples.items():
            if rows is examples:
                return LifelongCollate(rows, self.sequences[split])
        raise DataError("these examples are none of the splits the lifelong sequences were built for; "
                        "build them with prepare_lifelong_data on the same RankingData")


def prepare_lifelong_data(
    data: RankingData, config: LifelongDataConfig, cache_dir: str | Path, report=print
) -> LifelongData:
    """Opens the cached store and S_all of every split of ``data``, building what is missing.

    Args:
        data: the recipe's rows (train, valid, test over one log).
        config: ``data.lifelong``.
        cache_dir: the cache root (the directory layout is in the module docstring).
        report: called with one line per build step (None: silent).
    """
    sequence_config = config.sequence_config()
    root = Path(cache_dir)
    directory = root / cache_key(data.log, sequence_config, config.scale)
    report = report or (lambda line: None)
    examples = {split: data.examples(split) for split in SPLITS}
    with _build_lock(root, directory.name):
        sequences = {split: _open_sequences(directory / _split_name(split, rows)) for split, rows in examples.items()}
        missing = [split for split, opened in sequences.items() if opened is None]
        if missing:
            store = _open_or_build_store(directory / "store", data.log, config.scale, report)
            for split in missing:
                started = time.time()
                sequences[split] = build_lifelong_sequences(
                    examples[split], store, directory / _split_name(split, examples[split]), sequence_config,
                    chunk_rows=config.chunk_rows, kernel=config.kernel, device=config.device, overwrite=True,
                )
                report(f"lifelong S_all of {split}: {len(examples[split]):,} rows, "
                       f"{sequences[split].meta['num_tokens']:,} tokens in {time.time() - started:.1f} s")
    return LifelongData(sequence_config, sequences, examples, directory)


def cache_key(log: EventLog, config: LifelongConfig, scale: float) -> str:
    """A hash of what the store and the selection depend on: the log's events and content, the config."""
    digest = hashlib.sha1()
    for array in (log.user_id, log.item_id, log.timestamp, log.actions, log.impression, log.surface):
        digest.update(np.ascontiguousarray(array).tobytes())
    if log.items is not None:
        digest.update(np.ascontiguousarray(log.items.content_embedding).tobytes())
    if log.request_id is not None:  # request starts bound every sequence
        digest.update(np.ascontiguousarray(log.request_id).tobytes())
    digest.update(json.dumps({"config": dataclasses.asdict(config), "scale": scale}, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def _split_name(split: str, examples: RankingExamples) -> str:
    return f"{split}-{rows_fingerprint(examples)[:16]}"


def _open_sequences(path: Path) -> LifelongSequences | None:
    """The sequences at ``path``, or None when absent or unreadable (they are built again)."""
    if not path.exists():
        return None
    try:
        return LifelongSequences.open(path)
    except DataError:
        return None


def _open_or_build_store(path: Path, log: EventLog, scale: float, report) -> LifelongStore:
    if path.exists():
        try:
            return LifelongStore.load(path)
        except DataError:
            pass  # incomplete or from another version: build it again
    started = time.time()
    store = LifelongStore.from_log(log, scale=scale)
    store.save(path, overwrite=True)
    report(f"lifelong store: {len(store.engaged):,} engaged events, {len(store.impressions):,} impressions "
           f"of {store.num_users:,} users in {time.time() - started:.1f} s")
    return LifelongStore.load(path)


@contextmanager
def _build_lock(root: Path, name: str) -> Iterator[None]:
    """An exclusive lock on ``root/<name>.lock`` while the block runs (one builder at a time)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
