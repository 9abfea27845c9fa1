"""Per-head classification metrics: ROC AUC and normalized entropy.

- ROC AUC is the probability that a random positive scores above a random negative (ties count
  one half). It is computed from ranks (the Mann-Whitney U statistic): with average ranks r_i
  over all examples, P positives and N negatives::

      AUC = (sum_{i positive} r_i - P (P + 1) / 2) / (P N)

- Normalized entropy (He et al. 2014, "Practical Lessons from Predicting Clicks on Ads at
  Facebook") is the mean log loss divided by the entropy of the base rate p::

      NE = mean_b BCE(logit_b, y_b) / -(p log p + (1 - p) log(1 - p))

  1.0 means no better than always predicting the base rate; lower is better.

Both are undefined (NaN) when the labels hold a single class.

Shape letters: B rows, H heads.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from recsys.errors import DataError


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def roc_auc(scores, labels) -> float:
    """Tie-aware ROC AUC.

    Args:
        scores: ``[B]`` numpy array or tensor; any monotone score (logits, probabilities).
        labels: ``[B]`` 0/1.

    Returns:
        AUC in [0, 1]; NaN when ``labels`` hold a single class.
    """
    s, y = _as_numpy(scores).reshape(-1), _as_numpy(labels).reshape(-1)
    if s.shape != y.shape:
        raise DataError(f"scores and labels must have the same length, got {s.shape[0]} and {y.shape[0]}")
    if np.isnan(s).any():
        raise DataError("scores hold NaN values; the model diverged or its inputs hold NaN")
    positive = y > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    group_end = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    average_rank = group_end - (counts - 1) / 2.0  # mean of ranks end-count+1 .. end
    rank_sum = average_rank[inverse][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def normalized_entropy(logits, labels) -> float:
    """Mean BCE of ``logits`` ``[B]`` against 0/1 ``labels`` ``[B]``, over the base-rate entropy.

    Returns NaN when the labels hold a single class (the base-rate entropy is 0).
    """
    z = torch.as_tensor(_as_numpy(logits)).reshape(-1)
    y = torch.as_tensor(_as_numpy(labels)).reshape(-1)
    if z.numel() == 0:
        return float("nan")
    p = float(y.mean())
    if p <= 0.0 or p >= 1.0:
        return float("nan")
    log_loss = float(F.binary_cross_entropy_with_logits(z, y))
    base_entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    return log_loss / base_entropy


class HeadMetrics:
    """Accumulates logits and labels over batches and scores every head.

    Args:
        heads: H head names, the columns of the logits and labels.

    Example::

        metrics = HeadMetrics(["click", "save"])
        metrics.update(logits, labels)  # [B, H] each, repeated per batch
        metrics.compute()  # {"click": {"auc": 0.71, "ne": 0.93, "positives": 12, ...}, ...}
    """

    def __init__(self, heads: list[str]):
        self.heads = list(heads)
        self.reset()

    def reset(self) -> None:
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds a batch: ``logits`` and ``labels`` ``[B, H]`` (labels of the heads, 0/1)."""
        h = len(self.heads)
        if logits.dim() != 2 or logits.shape[1] != h or labels.shape != logits.shape:
            raise DataError(
                f"HeadMetrics.update needs logits and labels of shape [B, {h}] for heads {self.heads}, "
                f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
            )
        self._logits.append(logits.detach().float().cpu())
        self._labels.append(labels.detach().float().cpu())

    def state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, labels)`` ``[N, H]`` seen so far: what ranks exchange to score all rows."""
        h = len(self.heads)
        if not self._logits:
            return torch.zeros(0, h), torch.zeros(0, h)
        return torch.cat(self._logits), torch.cat(self._labels)

    @classmethod
    def from_states(cls, heads: list[str], states: list[tuple[torch.Tensor, torch.Tensor]]) -> "HeadMetrics":
        """Joins the :meth:`state` of several ranks into one accumulator."""
        merged = cls(heads)
        for logits, labels in states:
            merged.update(logits, labels)
        return merged

    def compute(self) -> dict[str, dict]:
        """Per head: ``auc``, ``ne``, ``positives``, ``count`` and ``single_class`` (True when the
        labels seen hold one class only, which makes ``auc`` and ``ne`` NaN)."""
        logits, labels = self.state()  # [N, H]
        results = {}
        for h, head in enumerate(self.heads):
            positives = int((labels[:, h] > 0.5).sum())
            count = int(labels.shape[0])
            results[head] = {
                "auc": roc_auc(logits[:, h], labels[:, h]) if count else float("nan"),
                "ne": normalized_entropy(logits[:, h], labels[:, h]),
                "positives": positives,
                "count": count,
                "single_class": positives == 0 or positives == count,
            }
        return results
