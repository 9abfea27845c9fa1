"""A DataLoader of RankingBatches that runs collation in worker processes and resumes exactly.

The sampler hands out whole batches of row numbers; the dataset turns one such list into one
:class:`~recsys.data.batch.RankingBatch`, so with ``num_workers > 0`` the numpy/KJT work happens in
the workers and only finished batches cross the process boundary::

    ResumableBatchSampler --[row numbers of batch k]--> worker: BatchDataset[rows] --> RankingBatch

Epoch ``e`` visits the rows in a permutation fixed by ``(seed, e)``. The state to checkpoint is
``(epoch, batches consumed)``: a run restored from it yields exactly the batches an uninterrupted
run would have yielded next. Because workers prefetch, the sampler runs ahead of the training loop;
:class:`ResumableDataLoader` therefore counts the batches it has *delivered*, and its
``state_dict()`` (the one to save) reports that count.

Example::

    loader = make_dataloader(examples, batch_size=512, shuffle=True, seed=0, num_workers=2)  # 512 rows per rank
    loader.load_state_dict(saved)               # optional: resume
    for epoch in range(loader.state_dict()["epoch"], num_epochs):
        loader.set_epoch(epoch)                 # keeps a restored position within that epoch
        for batch in loader:
            ...
            saved = loader.state_dict()
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from recsys.data.batch import RankingBatch
from recsys.data.examples import RankingExamples
from recsys.errors import CheckpointError, ConfigError


class ResumableBatchSampler(Sampler[list[int]]):
    """Yields lists of row numbers, one list per batch, in a permutation fixed by (seed, epoch).

    Args:
        num_rows: number of rows to cover each epoch.
        batch_size: rows per batch.
        shuffle: permute the rows each epoch; False visits them in order.
        seed: seed of the permutations.
        drop_last: drop the last, smaller batch.
    """

    def __init__(self, num_rows: int, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if num_rows < 0:
            raise ConfigError(f"num_rows must be >= 0, got {num_rows}")
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
        self.num_rows = int(num_rows)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.batches_consumed = 0  # batches of `epoch` handed out so far
        self._resume_at: int | None = None  # where the next iteration starts, after load_state_dict

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_rows // self.batch_size
        return -(-self.num_rows // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Selects the permutation of ``epoch``. Calling it with the epoch of a restored state keeps
        the restored position, so a resumed loop can call it as usual."""
        if epoch != self.epoch:
            self._resume_at = None
            self.batches_consumed = 0
        self.epoch = int(epoch)

    @property
    def start_position(self) -> int:
        """Index of the batch the next iteration starts from."""
        return self._resume_at or 0

    def permutation(self) -> np.ndarray:
        """``[num_rows]`` int64 row order of the current epoch."""
        if not self.shuffle:
            return np.arange(self.num_rows, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.permutation(self.num_rows).astype(np.int64)

    def __iter__(self):
        # A generator: the restored position is taken when the first batch is drawn, not when
        # iter() is called (DataLoader's worker iterator calls iter() twice and uses the second).
        start = self.start_position
        self._resume_at = None
        self.batches_consumed = start
        order = self.permutation()
        for k in range(start, len(self)):
            rows = order[k * self.batch_size:(k + 1) * self.batch_size]
            self.batches_consumed = k + 1
            yield rows.tolist()

    def state_dict(self) -> dict:
        """``{"epoch", "batches_consumed"}`` plus the settings the state is only valid for."""
        return {
            "epoch": self.epoch,
            "batches_consumed": self.batches_consumed,
            "num_rows": self.num_rows,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores a position: the next iteration yields the batches after ``batches_consumed``."""
        for key in ("epoch", "batches_consumed"):
            if key not in state:
                raise CheckpointError(f"sampler state lacks {key!r}; it must come from ResumableBatchSampler.state_dict()")
        for key in ("num_rows", "batch_size", "shuffle", "seed", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise CheckpointError(
                    f"sampler state was saved with {key}={state[key]!r} but this sampler has {key}={getattr(self, key)!r}; "
                    "resume with the same data and loader settings"
                )
        consumed = int(state["batches_consumed"])
        if not 0 <= consumed <= len(self):
            raise CheckpointError(f"sampler state has batches_consumed={consumed}, outside 0..{len(self)}")
        self.epoch = int(state["epoch"])
        self.batches_consumed = consumed
        self._resume_at = consumed


class BatchDataset(Dataset):
    """Map-style dataset whose items are whole batches: ``dataset[rows]`` is a RankingBatch.

    With several ranks the sampler's batches are global: rank r keeps rows ``r, r + W, ...`` of
    each, so the ranks together see every row exactly once per epoch.

    Args:
        examples: the rows to batch.
        rank / world_size: this process's share of every global batch.
        collate: ``rows -> RankingBatch``; None = ``examples.collate`` (e.g.
            :class:`~recsys.data.lifelong_pipeline.LifelongCollate` for batches with S_all).
    """

    def __init__(
        self,
        examples: RankingExamples,
        rank: int = 0,
        world_size: int = 1,
        collate: Callable[[list[int]], RankingBatch] | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
        self.examples = examples
        self.rank = rank
        self.world_size = world_size
        self.collate = collate if collate is not None else examples.collate

    def __getitem__(self, rows: list[int]) -> RankingBatch:
        return self.collate(rows[self.rank::self.world_size])

    def __len__(self) -> int:
        return len(self.examples)


def _identity(batch: RankingBatch) -> RankingBatch:
    return batch


class ResumableDataLoader(DataLoader):
    """DataLoader over a :class:`ResumableBatchSampler` that counts the batches it delivered.

    ``state_dict()`` is the sampler's state with ``batches_consumed`` = batches this loader has
    yielded to the caller (prefetched batches not yet yielded do not count).
    """

    def __iter__(self):
        sampler: ResumableBatchSampler = self.sampler
        start = sampler.start_position
        for delivered, batch in enumerate(super().__iter__(), start=start + 1):
            sampler.batches_consumed = delivered  # undo the sampler's run-ahead from prefetching
            yield batch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def position_for_sampler(saved: dict, sampler: ResumableBatchSampler) -> dict:
    """A sampler position saved with another global batch (another world size) for ``sampler``.

    Batches are per rank, so a job resumed on another world size draws global batches of another
    size. The position carries over in rows: the new sampler resumes at the first of its batches
    that starts at or after the rows already trained (a partly trained batch is skipped), and a
    finished epoch stays finished. Settings other than the batch size and ``drop_last`` must match
    (``load_state_dict`` checks them).
    """
    same = saved.get("batch_size", sampler.batch_size) == sampler.batch_size
    if same and saved.get("drop_last", sampler.drop_last) == sampler.drop_last:
        return saved
    old_batch = int(saved.get("batch_size", sampler.batch_size))
    old_batches = ResumableBatchSampler(sampler.num_rows, old_batch, drop_last=bool(saved.get("drop_last", False)))
    consumed = int(saved["batches_consumed"])
    if consumed >= len(old_batches):
        position = len(sampler)
    else:
        position = min(-(-consumed * old_batch // sampler.batch_size), len(sampler))
    return {**saved, "batch_size": sampler.batch_size, "drop_last": sampler.drop_last, "batches_consumed": position}


def make_dataloader(
    examples: RankingExamples,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    collate: Callable[[list[int]], RankingBatch] | None = None,
) -> ResumableDataLoader:
    """A resumable DataLoader of RankingBatches over ``examples``.

    Args:
        examples: the rows.
        batch_size: B, rows per rank per batch (TorchRec's convention, and what the sharding
            planner plans for): a step of ``world_size`` ranks trains ``B * world_size`` rows.
        shuffle: permute the rows each epoch (permutation fixed by seed and epoch).
        seed: seed of the permutations.
        num_workers: worker processes that build batches (0 = in this process).
        drop_last: drop the last, smaller batch of each epoch.
        rank / world_size: with several processes the sampler draws global batches of
            ``B * world_size`` rows and each rank collates its ``1 / world_size`` share (B rows).
        collate: ``rows -> RankingBatch``; None = ``examples.collate``.
    """
    dataset = BatchDataset(examples, rank=rank, world_size=world_size, collate=collate)
    return resumable_loader(dataset, batch_size * world_size, shuffle, seed, num_workers, drop_last)


def resumable_loader(
    dataset: BatchDataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    loader_cls: type[ResumableDataLoader] = ResumableDataLoader,
) -> ResumableDataLoader:
    """A ``loader_cls`` over a batch-per-item ``dataset``, driven by a :class:`ResumableBatchSampler`."""
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    sampler = ResumableBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return loader_cls(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_identity,
        persistent_workers=False,
    )
