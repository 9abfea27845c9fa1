"""Full-ranking retrieval evaluation: every user's target is ranked against ALL items.

The protocol of the sequential-recommendation literature (SASRec, S3-Rec, HSTU): score every item
``<user vector, item vector>``, remove the user's seen items from the candidates (their score set
to -inf), and take the target's rank: the number of candidates scoring above it (0 = top). With one
relevant item per user, per user::

    HR@K   = 1[rank < K]
    NDCG@K = 1[rank < K] / log2(rank + 2)
    MRR    = 1 / (rank + 1)

and each metric is the mean over users.

Which seen items leave the candidates is the *protocol* (``eval.exclude_seen``, see
:func:`excluded_items`); it is decided from the history alone, never from the target:

- ``"last_n"`` (default, the reference's ``data/eval.py``): the last N history items, the ones the
  model reads (N = the history length, ``data.max_sequence``);
- ``"all"``: the user's whole history, however long;
- ``"none"``: nothing; every item is a candidate.

A target that is itself among the excluded items (a repeat of a recent item) is no candidate: the
row counts as a miss (rank :data:`MISSED`, 0 in every metric), as in the reference, where the
masked target never enters the top K. So HR@K cannot reach 1 on data with repeats. Excluding more
history is not stricter: it removes competitors of every other target.

Ties: by default an item ties with the target does not count (``ties="optimistic"``, the rank is
the number of items with a strictly higher score), as in the common protocol. Beware that a model
scoring every item alike then ranks every target first; ``ties="pessimistic"`` counts tied items
above the target instead.

Scores are computed one chunk of items at a time, so memory stays at ``B x chunk_size`` however
large the corpus.

Example::

    exclude = excluded_items("last_n", batch.item_ids["item_id"], batch.seen_items)
    ranks = rank_of_targets(user_vectors, item_table, batch.target_item, exclude=exclude)
    metrics = RetrievalMetrics()
    metrics.update(ranks)
    metrics.compute()   # {"hr@1": ..., "hr@10": ..., "ndcg@10": ..., "mrr": ...}

Shape letters: B users, I items, D embedding dimension, H excluded ids in all, K cut-off.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torchrec.sparse.jagged_tensor import JaggedTensor

from recsys.errors import ConfigError, DataError

TIE_RULES = ("optimistic", "pessimistic")
EXCLUDE_SEEN = ("last_n", "all", "none")
DEFAULT_CHUNK_SIZE = 65536
MISSED = torch.iinfo(torch.int64).max
"""Rank of a target that is no candidate (it was excluded): a miss in every metric."""


def excluded_items(
    protocol: str, last_n: JaggedTensor | None, whole_history: JaggedTensor | None
) -> JaggedTensor | None:
    """The items each row removes from the candidates under ``protocol`` (see the module docstring).

    Args:
        protocol: one of :data:`EXCLUDE_SEEN`.
        last_n: per row, the last N history items (the sequence the model reads), B rows.
        whole_history: per row, the whole history before the target, B rows (needed by ``"all"``).

    Returns:
        A JaggedTensor of B rows for :func:`rank_of_targets`, or None (``"none"``).
    """
    if protocol not in EXCLUDE_SEEN:
        raise ConfigError(f"eval.exclude_seen={protocol!r}; use one of {EXCLUDE_SEEN}")
    chosen = {"last_n": last_n, "all": whole_history, "none": None}[protocol]
    if protocol != "none" and chosen is None:
        raise DataError(f"eval.exclude_seen={protocol!r} needs the rows' "
                        f"{'history sequences' if protocol == 'last_n' else 'whole histories (batch.seen_items)'}")
    return chosen


def describe_protocol(protocol: str, n: int) -> str:
    """One line naming ``protocol`` for reports, e.g. ``"exclude_seen=last_n: the last 50 history
    items are no candidates (a target among them is a miss)"``; ``n``: N of ``"last_n"``."""
    if protocol not in EXCLUDE_SEEN:
        raise ConfigError(f"eval.exclude_seen={protocol!r}; use one of {EXCLUDE_SEEN}")
    if protocol == "none":
        return "exclude_seen=none: every item is a candidate"
    excluded = f"the last {n} history items are" if protocol == "last_n" else "the whole history is"
    return f"exclude_seen={protocol}: {excluded} no candidates (a target among them is a miss)"


@torch.no_grad()
def rank_of_targets(
    user_vectors: torch.Tensor,
    item_embeddings: torch.Tensor,
    targets: torch.Tensor,
    exclude: JaggedTensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ties: str = "optimistic",
) -> torch.Tensor:
    """Rank of each target among the candidates (0 = top): all items less ``exclude``.

    Args:
        user_vectors: ``[B, D]``.
        item_embeddings: ``[I, D]``, row i the vector of item i.
        targets: ``[B]`` int64 target item of each user.
        exclude: per-user item ids that are no candidates (B rows, H ids in all), e.g. from
            :func:`excluded_items`. A row whose target is among them is a miss (rank
            :data:`MISSED`): the target's presence never changes the candidate set. None
            excludes nothing.
        chunk_size: items scored at once.
        ties: "optimistic" (items tied with the target do not count) or "pessimistic" (they do).

    Returns:
        ``[B]`` int64 ranks, :data:`MISSED` for an excluded target.
    """
    _check_scoring_inputs(user_vectors, item_embeddings, exclude, chunk_size)
    if ties not in TIE_RULES:
        raise ConfigError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    num_items = item_embeddings.shape[0]
    if targets.shape != (user_vectors.shape[0],):
        raise DataError(f"targets must be [B] = [{user_vectors.shape[0]}], got {tuple(targets.shape)}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_items):
        raise DataError(f"targets must be item ids in 0..{num_items - 1}, "
                        f"got {int(targets.min())}..{int(targets.max())}")
    rows, ids = _exclusion_pairs(exclude, user_vectors.shape[0], user_vectors.device)
    target_vectors = item_embeddings[targets]  # [B, D]
    ranks = torch.zeros(user_vectors.shape[0], dtype=torch.long, device=user_vectors.device)
    missed = torch.zeros(user_vectors.shape[0], dtype=torch.bool, device=user_vectors.device)
    missed[rows[ids == targets[rows]]] = True  # [B] the target is excluded: no candidate
    for lo in range(0, num_items, chunk_size):
        hi = min(lo + chunk_size, num_items)
        # The target's score comes out of the same matrix product as the chunk's scores, so items
        # with the target's exact vector tie with it exactly.
        both = user_vectors @ torch.cat([item_embeddings[lo:hi], target_vectors]).T  # [B, C + B]
        scores, target_score = both[:, :hi - lo], both[:, hi - lo:].diagonal()  # [B, C], [B]
        _mask(scores, rows, ids, lo, hi)
        own = (targets >= lo) & (targets < hi)
        scores[own, targets[own] - lo] = float("-inf")  # the target is not above itself
        above = scores >= target_score[:, None] if ties == "pessimistic" else scores > target_score[:, None]
        ranks += above.sum(dim=1)
    return ranks.masked_fill(missed, MISSED)


@torch.no_grad()
def topk_items(
    user_vectors: torch.Tensor,
    item_embeddings: torch.Tensor,
    k: int,
    exclude: JaggedTensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The K best-scoring items of every user over the whole corpus, excluded items left out.

    Args:
        user_vectors: ``[B, D]``.
        item_embeddings: ``[I, D]``.
        k: K, items returned per user (at most I).
        exclude: per-user item ids never returned (B rows), or None.
        chunk_size: items scored at once.

    Returns:
        ``(scores [B, K], ids [B, K])``, best first. A user with fewer than K items left gets
        score -inf and id -1 in the places left over.
    """
    _check_scoring_inputs(user_vectors, item_embeddings, exclude, chunk_size)
    num_items = item_embeddings.shape[0]
    if not 1 <= k <= num_items:
        raise ConfigError(f"k must be in 1..{num_items} (the number of items), got {k}")
    rows, ids = _exclusion_pairs(exclude, user_vectors.shape[0], user_vectors.device)
    best_scores = user_vectors.new_full((user_vectors.shape[0], 0), float("-inf"))
    best_ids = torch.zeros((user_vectors.shape[0], 0), dtype=torch.long, device=user_vectors.device)
    for lo in range(0, num_items, chunk_size):
        hi = min(lo + chunk_size, num_items)
        scores = user_vectors @ item_embeddings[lo:hi].T  # [B, C]
        _mask(scores, rows, ids, lo, hi)
        chunk_ids = torch.arange(lo, hi, device=scores.device).expand_as(scores)
        merged_scores = torch.cat([best_scores, scores], dim=1)
        merged_ids = torch.cat([best_ids, chunk_ids], dim=1)
        best_scores, index = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)  # [B, <=K]
        best_ids = merged_ids.gather(1, index)
    best_ids[best_scores == float("-inf")] = -1  # places left without an item
    return best_scores, best_ids


class RetrievalMetrics:
    """Accumulates target ranks into HR@K, NDCG@K and MRR (means over all users seen).

    Args:
        ks_hr: cut-offs of the hit rate.
        ks_ndcg: cut-offs of the NDCG.

    Across ranks, merge with ``RetrievalMetrics.from_states(ks_hr, ks_ndcg, [m.state() ...])`` after
    an all-gather of ``state()``, or all-reduce (sum) ``state()`` and call ``load_state``.
    """

    def __init__(self, ks_hr: Sequence[int] = (1, 10, 50, 200), ks_ndcg: Sequence[int] = (10, 50, 200)):
        for k in (*ks_hr, *ks_ndcg):
            if int(k) != k or k < 1:
                raise ConfigError(f"cut-offs must be positive integers, got {k}")
        self.ks_hr = tuple(int(k) for k in ks_hr)
        self.ks_ndcg = tuple(int(k) for k in ks_ndcg)
        self.reset()

    @property
    def names(self) -> list[str]:
        """Metric names in ``compute()`` order: ``hr@K``..., ``ndcg@K``..., ``mrr``."""
        return [f"hr@{k}" for k in self.ks_hr] + [f"ndcg@{k}" for k in self.ks_ndcg] + ["mrr"]

    def reset(self) -> None:
        self._sums = torch.zeros(len(self.names), dtype=torch.float64)
        self._count = 0

    def update(self, ranks: torch.Tensor) -> None:
        """Adds ``[B]`` int ranks (0 = top; :data:`MISSED` a miss), e.g. from :func:`rank_of_targets`."""
        if ranks.ndim != 1 or ranks.is_floating_point():
            raise DataError(f"ranks must be a 1-D integer tensor, got {ranks.dtype} {tuple(ranks.shape)}")
        if ranks.numel() and int(ranks.min()) < 0:
            raise DataError("ranks must be >= 0 (0 = the top item)")
        ranks = ranks.detach().cpu()
        found = ranks != MISSED  # [B]
        r = ranks.double()  # [B]
        discount = 1.0 / torch.log2(r + 2.0)  # [B]
        columns = [(found & (r < k)).double() for k in self.ks_hr]
        columns += [torch.where(found & (r < k), discount, torch.zeros_like(r)) for k in self.ks_ndcg]
        columns.append(torch.where(found, 1.0 / (r + 1.0), torch.zeros_like(r)))
        self._sums += torch.stack(columns).sum(dim=1)
        self._count += int(r.numel())

    @property
    def count(self) -> int:
        """Users accumulated."""
        return self._count

    def state(self) -> torch.Tensor:
        """``[M + 1]`` float64: the metric sums, then the count (sum these across ranks)."""
        return torch.cat([self._sums, torch.tensor([float(self._count)], dtype=torch.float64)])

    def load_state(self, state: torch.Tensor) -> None:
        """Restores (or takes the all-reduced) ``state()``."""
        if state.shape != (len(self.names) + 1,):
            raise DataError(f"state must have {len(self.names) + 1} entries (sums and count), got {tuple(state.shape)}")
        self._sums = state[:-1].detach().cpu().double().clone()
        self._count = int(round(float(state[-1])))

    @classmethod
    def from_states(cls, ks_hr, ks_ndcg, states: Sequence[torch.Tensor]) -> "RetrievalMetrics":
        """Merges the states of several processes."""
        merged = cls(ks_hr, ks_ndcg)
        merged.load_state(torch.stack([s.detach().cpu().double() for s in states]).sum(dim=0))
        return merged

    def compute(self) -> dict[str, float]:
        """``{"hr@K": ..., "ndcg@K": ..., "mrr": ...}``; NaN before any update."""
        if self._count == 0:
            return {name: math.nan for name in self.names}
        return {name: float(s) / self._count for name, s in zip(self.names, self._sums)}


# ---------------------------------------------------------------- helpers
def _check_scoring_inputs(user_vectors, item_embeddings, exclude, chunk_size) -> None:
    if user_vectors.ndim != 2 or item_embeddings.ndim != 2:
        raise DataError(f"user_vectors must be [B, D] and item_embeddings [I, D], got "
                        f"{tuple(user_vectors.shape)} and {tuple(item_embeddings.shape)}")
    if user_vectors.shape[1] != item_embeddings.shape[1]:
        raise DataError(f"user and item vectors must share D, "
                        f"got {user_vectors.shape[1]} and {item_embeddings.shape[1]}")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be positive, got {chunk_size}")
    if exclude is not None:
        num_rows = exclude.lengths().numel()
        if num_rows != user_vectors.shape[0]:
            raise DataError(f"exclude must have one row per user ({user_vectors.shape[0]}), got {num_rows}")
        values = exclude.values()
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= item_embeddings.shape[0]):
            raise DataError(f"exclude holds ids outside 0..{item_embeddings.shape[0] - 1}; pass item ids")


def _exclusion_pairs(exclude: JaggedTensor | None, num_rows: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows [H], ids [H])``: user row and item id of every excluded pair."""
    if exclude is None:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    lengths = exclude.lengths().to(device=device, dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(num_rows, device=device), lengths)  # [H]
    return rows, exclude.values().to(device=device, dtype=torch.long)


def _mask(scores, rows, ids, lo: int, hi: int) -> None:
    """Sets the excluded items of chunk ``[lo, hi)`` to -inf in ``scores [B, hi - lo]``, in place."""
    keep = (ids >= lo) & (ids < hi)
    scores[rows[keep], ids[keep] - lo] = float("-inf")
