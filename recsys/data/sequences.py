"""Next-item sequences for the sequential recommenders (SASRec, HSTU), by the leave-one-out protocol.

A user's *sequence* is their engaged events (``actions != 0``) in time order, one token per event:
item id, timestamp and action bits. With a :func:`~recsys.data.splits.leave_one_out` split, each
user whose engaged events reach the split's ``min_engaged`` gives one row to every stage::

    engaged events of u     i3  i9  i11  i4  i7          (i4: validation target, i7: test target)
    train  row              i3  i9  i11                  targets: the next item at each position
    valid  row  history     i3  i9  i11          target  i4
    test   row  history     i3  i9  i11  i4      target  i7

Users with fewer engaged events stay wholly in train (their whole sequence is a train row). A train
row needs at least 2 tokens (one next-item target); an eval row at least one history token.

Training targets are implicit: the model reads tokens ``0..L-2`` and predicts token ``t + 1`` at
position ``t`` by shifting the sequence by one (``target_item`` is -1 in training). Evaluation rows
hold the history in the sequence and the held-out item in ``target_item``.

Every sequence is cut to its most recent ``max_seq_len`` tokens. Training rows can instead use the
*stochastic length* rule of HSTU (Zhai et al. 2024, "Actions Speak Louder than Words", section 3.3)
with ``N = max_seq_len`` and ``alpha`` in (1, 2]: a history of ``n`` tokens with
``n <= N^(alpha/2)`` is kept whole; a longer one is, with probability ``1 - N^alpha / n^2``,
subsampled to ``floor(N^(alpha/2))`` tokens (a uniformly drawn subset, kept in time order), and
kept whole otherwise. The draw depends only on ``(seed, epoch, row)``, so an epoch is reproducible
and independent of batching, workers and ranks.

A :class:`SequenceBatch` packs B rows as jagged tensors (T tokens in all)::

    row        0              1
    item_ids   [3, 9, 11]     [5, 2]        KJT key "item_id": values [T] = [3, 9, 11, 5, 2]
    lengths    3              2             seq_offsets [B + 1] = [0, 3, 5]

Example::

    split = leave_one_out(log)
    train = SequenceExamples.build(log, split, "train", max_seq_len=50)
    loader = make_sequence_dataloader(train, batch_size=128, shuffle=True, seed=0)
    for batch in loader:   # SequenceBatch
        ...

Shape letters: B rows of a batch, T tokens of a batch, R rows, E engaged events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys.data.collate import LENGTH_DTYPE, kjt_from_jagged
from recsys.data.loader import BatchDataset, ResumableDataLoader, resumable_loader
from recsys.data.pipelineable import TensorDataclass, pytree_dataclass
from recsys.data.schema import EventLog
from recsys.data.splits import Split
from recsys.errors import ConfigError, DataError

STAGES = ("train", "valid", "test")
ITEM_KEY = "item_id"
NO_TARGET = -1


@pytree_dataclass
@dataclass
class SequenceBatch(TensorDataclass):
    """B user sequences, one per row, as jagged tensors.

    Args:
        item_ids: KJT with the one key ``"item_id"``: values ``[T]`` int64, lengths ``[B]`` int32,
            so a TorchRec EmbeddingCollection can embed it directly.
        seq_offsets: ``[B + 1]`` int64: row b's tokens are ``seq_offsets[b]:seq_offsets[b + 1]``.
        timestamps: ``[T]`` int64 seconds of each token.
        actions: ``[T]`` int32 action bit mask of each token.
        lengths: ``[B]`` int64 tokens per row.
        user_id: ``[B]`` int64.
        target_item: ``[B]`` int64 held-out item of an evaluation row; -1 in training, where the
            targets are the next tokens of the sequence itself.
        target_timestamp: ``[B]`` int64 time of the held-out event; -1 in training.
        seen_items: evaluation only: JaggedTensor of the user's whole engaged history before the
            target (not cut to ``max_seq_len``), the items full-ranking evaluation excludes; None in
            training.
    """

    item_ids: KeyedJaggedTensor
    seq_offsets: torch.Tensor
    timestamps: torch.Tensor
    actions: torch.Tensor
    lengths: torch.Tensor
    user_id: torch.Tensor
    target_item: torch.Tensor
    target_timestamp: torch.Tensor
    seen_items: JaggedTensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.timestamps.shape[0])


@dataclass(repr=False)
class SequenceExamples:
    """The rows of one stage: each row is a span of one user's engaged events. Build with :meth:`build`.

    Args:
        stage: "train", "valid" or "test".
        item_id / timestamp / actions: ``[E]`` the engaged events of the log, grouped by user in
            time order (int64, int64, int32).
        user: ``[R]`` int64 user of each row.
        start / end: ``[R]`` int64: the row's history is events ``start:end`` (before truncation).
        target: ``[R]`` int64 index into the event arrays of the held-out event; -1 in training.
        num_items: I, the item id space.
        max_seq_len: N, tokens kept per row (the most recent).
        stochastic_length_alpha: alpha of the stochastic-length rule (training only), or None.
        seed: seed of the stochastic-length draws.
    """

    stage: str
    item_id: np.ndarray
    timestamp: np.ndarray
    actions: np.ndarray
    user: np.ndarray
    start: np.ndarray
    end: np.ndarray
    target: np.ndarray
    num_items: int
    max_seq_len: int
    stochastic_length_alpha: float | None = None
    seed: int = 0

    def __len__(self) -> int:
        return int(self.user.shape[0])

    # ---------------------------------------------------------------- construction
    @classmethod
    def build(
        cls,
        log: EventLog,
        split: Split,
        stage: str,
        max_seq_len: int,
        stochastic_length_alpha: float | None = None,
        seed: int = 0,
    ) -> "SequenceExamples":
        """The rows of ``stage`` (see the module docstring).

        Args:
            log: the sorted event log the split was made on.
            split: a :func:`~recsys.data.splits.leave_one_out` split of ``log``.
            stage: "train", "valid" or "test".
            max_seq_len: N, tokens kept per row (the most recent), at least 2.
            stochastic_length_alpha: alpha in (1, 2] of HSTU's stochastic length, applied to
                training rows; None (the default) keeps the most recent N tokens.
            seed: seed of the stochastic-length draws.
        """
        if stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
        if max_seq_len < 2:
            raise ConfigError(f"max_seq_len must be at least 2 (a token and its next item), got {max_seq_len}")
        if stochastic_length_alpha is not None and not 1.0 < stochastic_length_alpha <= 2.0:
            raise ConfigError(f"stochastic_length_alpha must be in (1, 2] (the HSTU paper's range) or None, "
                              f"got {stochastic_length_alpha}")
        if stochastic_length_alpha is not None and stage != "train":
            raise ConfigError("stochastic_length_alpha applies to training rows only; pass None for valid/test")
        engaged, label = _engaged_events(log, split)
        user = log.user_id[engaged]
        offsets = np.searchsorted(user, np.arange(log.num_users + 1)).astype(np.int64)  # [U + 1]
        valid_pos = _first_position(label == 1, user, log.num_users)  # [U], -1 without one
        test_pos = _first_position(label == 2, user, log.num_users)
        users, start, end, target = _rows(stage, offsets, valid_pos, test_pos)
        return cls(
            stage=stage,
            item_id=log.item_id[engaged],
            timestamp=log.timestamp[engaged],
            actions=log.actions[engaged].astype(np.int32),
            user=users,
            start=start,
            end=end,
            target=target,
            num_items=log.num_items,
            max_seq_len=int(max_seq_len),
            stochastic_length_alpha=stochastic_length_alpha,
            seed=int(seed),
        )

    # ---------------------------------------------------------------- batches
    def token_index(self, rows: np.ndarray, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(index [T], lengths [B])``: the kept tokens of ``rows`` as indices into the event arrays
        (row after row, time order) and how many each row keeps."""
        if self.stochastic_length_alpha is not None:
            spans = [self._stochastic_length(int(r), epoch) for r in rows]
            lengths = np.fromiter(map(len, spans), dtype=np.int64, count=len(spans))
            return (np.concatenate(spans) if spans else np.zeros(0, np.int64)), lengths
        begin = np.maximum(self.start[rows], self.end[rows] - self.max_seq_len)  # most recent N
        lengths = self.end[rows] - begin
        return _ranges(begin, lengths), lengths

    def _stochastic_length(self, row: int, epoch: int) -> np.ndarray:
        """Event indices of one training row under the stochastic-length rule."""
        start, end = int(self.start[row]), int(self.end[row])
        n = end - start
        n_max = float(self.max_seq_len)
        short = int(n_max ** (self.stochastic_length_alpha / 2) + 1e-9)  # floor(N^(alpha/2))
        if n > short:
            rng = np.random.default_rng([self.seed, epoch, row])
            if rng.random() < 1.0 - n_max ** self.stochastic_length_alpha / n**2:
                return start + np.sort(rng.choice(n, size=short, replace=False))
        return np.arange(max(start, end - self.max_seq_len), end)

    def collate(self, rows, epoch: int = 0) -> SequenceBatch:
        """The :class:`SequenceBatch` of ``rows`` (B row numbers), in the order given.

        Args:
            rows: ``[B]`` row numbers.
            epoch: selects the stochastic-length draws (ignored without stochastic length).
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise DataError(f"row numbers must be in 0..{len(self) - 1}, got {rows.min()}..{rows.max()}")
        index, lengths = self.token_index(rows, epoch)  # [T], [B]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [B + 1]
        item_ids = torch.from_numpy(self.item_id[index])
        kjt = kjt_from_jagged({ITEM_KEY: (item_ids, torch.from_numpy(lengths).to(LENGTH_DTYPE))},
                              num_ids={ITEM_KEY: self.num_items})
        is_eval = self.stage != "train"
        target = self.target[rows]
        return SequenceBatch(
            item_ids=kjt,
            seq_offsets=torch.from_numpy(offsets),
            timestamps=torch.from_numpy(self.timestamp[index]),
            actions=torch.from_numpy(self.actions[index]),
            lengths=torch.from_numpy(lengths),
            user_id=torch.from_numpy(self.user[rows]),
            target_item=torch.from_numpy(self.item_id[target] if is_eval else np.full(len(rows), NO_TARGET)),
            target_timestamp=torch.from_numpy(self.timestamp[target] if is_eval else np.full(len(rows), NO_TARGET)),
            seen_items=self._seen_items(rows) if is_eval else None,
        )

    def _seen_items(self, rows: np.ndarray) -> JaggedTensor:
        """The whole history of each row (before truncation), as a JaggedTensor with int32 lengths."""
        lengths = self.end[rows] - self.start[rows]
        values = self.item_id[_ranges(self.start[rows], lengths)]
        return JaggedTensor(values=torch.from_numpy(values), lengths=torch.from_numpy(lengths).to(LENGTH_DTYPE))


# ---------------------------------------------------------------- building rows
def _engaged_events(log: EventLog, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """``[E]`` indices of the engaged events of ``log`` and ``[E]`` their split label (0/1/2)."""
    labels = np.full(len(log), -1, np.int8)
    for k, part in enumerate((split.train, split.valid, split.test)):
        labels[part] = k
    if (labels < 0).any():
        raise DataError(f"the split does not cover the log ({int((labels < 0).sum())} of {len(log)} events "
                        f"in no part); make the split from this same log")
    engaged = np.flatnonzero(log.engaged())
    return engaged, labels[engaged]


def _first_position(mask: np.ndarray, user: np.ndarray, num_users: int) -> np.ndarray:
    """``[U]`` position in the engaged-event arrays of each user's first event where ``mask`` holds."""
    position = np.full(num_users, -1, np.int64)
    hits = np.flatnonzero(mask)[::-1]  # reversed, so the first position of a user is written last
    position[user[hits]] = hits
    return position


def _rows(stage: str, offsets: np.ndarray, valid_pos: np.ndarray, test_pos: np.ndarray):
    """``(user [R], start [R], end [R], target [R])`` of ``stage``."""
    first = offsets[:-1]
    held_out = (valid_pos >= 0) & (test_pos >= 0)
    if stage == "train":
        end = np.where(held_out, valid_pos, offsets[1:])  # everything before the validation target
        keep = end - first >= 2
        target = np.full(int(keep.sum()), NO_TARGET, np.int64)
    else:
        target_pos = valid_pos if stage == "valid" else test_pos
        end = target_pos
        keep = held_out & (end - first >= 1)
        target = target_pos[keep]
    users = np.flatnonzero(keep).astype(np.int64)
    return users, first[keep].astype(np.int64), end[keep].astype(np.int64), target.astype(np.int64)


def _ranges(begin: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(begin[b], begin[b] + lengths[b])`` over b, without a Python loop."""
    total = int(lengths.sum())
    row_start = np.cumsum(lengths) - lengths  # [B] where row b starts in the output
    return np.repeat(begin - row_start, lengths) + np.arange(total, dtype=np.int64)


# ---------------------------------------------------------------- loading
class SequenceBatchDataset(BatchDataset):
    """``dataset[rows]`` is the :class:`SequenceBatch` of this rank's share of ``rows``; ``epoch``
    selects the stochastic-length draws (set by :class:`SequenceDataLoader` before each epoch)."""

    def __init__(self, examples: SequenceExamples, rank: int = 0, world_size: int = 1):
        super().__init__(examples, rank=rank, world_size=world_size)
        self.epoch = 0

    def __getitem__(self, rows: list[int]) -> SequenceBatch:
        return self.examples.collate(rows[self.rank::self.world_size], epoch=self.epoch)


class SequenceDataLoader(ResumableDataLoader):
    """:class:`~recsys.data.loader.ResumableDataLoader` that hands the sampler's epoch to the dataset
    when an epoch starts. Workers are started per epoch (``persistent_workers=False``), so they
    receive the dataset with that epoch."""

    def __iter__(self):
        self.dataset.epoch = self.sampler.epoch
        yield from super().__iter__()


def make_sequence_dataloader(
    examples: SequenceExamples,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> SequenceDataLoader:
    """A resumable DataLoader of :class:`SequenceBatch` over ``examples``.

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
    """
    dataset = SequenceBatchDataset(examples, rank=rank, world_size=world_size)
    return resumable_loader(dataset, batch_size * world_size, shuffle, seed, num_workers, drop_last, loader_cls=SequenceDataLoader)
