"""Pinnability's weighted cross-entropy over several action heads (TransAct, equation (1)).

Every head h predicts one action (click, save, hide, ...). Each example b contributes to every
head's binary cross-entropy, weighted by who the user is and by what the user did; per example,
equation (1) of the TransAct paper::

    L_b = w_u(b) * sum_h  -w_h(b) [ y_bh log f(x_b)_h + (1 - y_bh) log(1 - f(x_b)_h) ]     (1)
    w_h(b) = M[h, e(b)],   f(x) = sigmoid(logits),   L = mean_b L_b = sum_h mean_b [ ... ]

- ``y_bh`` is the label of the action the head is named after (``labels[b, a(h)]``).
- ``M`` is the label weight matrix ``[H, A + 1]``: columns are the actions, then ``"none"`` for
  impressions without any action. ``e(b)`` is the example's engagement: for an example with
  several actions the weight is the largest ``M[h, a]`` over its actions; without any action it is
  ``M[h, none]``. A weight of 1 everywhere gives plain BCE.
- ``w_u(b)`` is the example's user weight (the user's type, or activity), which the *data*
  provides with every row (``RankingBatch.weights``, from ``data.user_weights``:
  :mod:`recsys.data.user_weights`); this module only consumes it.

Shape letters: B rows, H heads, A actions, U users.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError

NONE_COLUMN = "none"


@dataclass
class LabelWeightConfig:
    """Entries of the label weight matrix M that differ from 1.

    Args:
        weights: head -> {action or ``"none"`` -> weight}. Missing entries weigh 1.

    Example::

        LabelWeightConfig({"save": {"save": 5.0, "none": 0.5}})  # saves count 5x, non-engaged 0.5x
    """

    weights: dict[str, dict[str, float]] = field(default_factory=dict)

    def matrix(self, heads: list[str], action_vocab: tuple[str, ...] | list[str]) -> torch.Tensor:
        """``[H, A + 1]`` float32 M, rows in ``heads`` order, columns ``action_vocab`` then none."""
        columns = [*action_vocab, NONE_COLUMN]
        m = torch.ones(len(heads), len(columns))
        for head, row in self.weights.items():
            if head not in heads:
                raise ConfigError(f"label_weights names head {head!r}, which the model lacks; heads are {list(heads)}")
            for action, weight in row.items():
                if action not in columns:
                    raise ConfigError(
                        f"label_weights[{head!r}] names action {action!r}; use one of {columns}"
                    )
                if not isinstance(weight, (int, float)) or weight < 0 or not np.isfinite(weight):
                    raise ConfigError(
                        f"label_weights[{head!r}][{action!r}] must be a finite number >= 0, got {weight!r}"
                    )
                m[heads.index(head), columns.index(action)] = float(weight)
        return m


def head_columns(heads: list[str], action_vocab: tuple[str, ...] | list[str]) -> list[int]:
    """The label column of each head: the index of the action the head is named after."""
    missing = [h for h in heads if h not in action_vocab]
    if missing:
        raise ConfigError(f"heads {missing} are not actions; each head must be one of {list(action_vocab)}")
    return [list(action_vocab).index(h) for h in heads]


class WeightedCrossEntropy(nn.Module):
    """Per-head BCE weighted by the label weight matrix and per-user weights.

    Args:
        heads: H head names, each an action of ``action_vocab``.
        action_vocab: A action names, the columns of the labels.
        label_weights: entries of M (a LabelWeightConfig or its ``weights`` mapping, as in
            ``loss.label_weights``); None = all ones (plain BCE).

    Example::

        loss_fn = WeightedCrossEntropy(["click", "save"], ("click", "save", "hide"))
        loss, per_head = loss_fn(logits, batch.labels, batch.labels, batch.weights)
    """

    def __init__(
        self,
        heads: list[str],
        action_vocab: tuple[str, ...] | list[str],
        label_weights: LabelWeightConfig | dict[str, dict[str, float]] | None = None,
    ):
        super().__init__()
        self.heads = list(heads)
        self.action_vocab = tuple(action_vocab)
        self.register_buffer("head_index", torch.tensor(head_columns(self.heads, self.action_vocab)), persistent=False)
        if isinstance(label_weights, dict):  # the config's mapping (loss.label_weights)
            label_weights = LabelWeightConfig(label_weights)
        m = (label_weights or LabelWeightConfig()).matrix(self.heads, self.action_vocab)
        self.register_buffer("label_weight_matrix", m, persistent=False)  # [H, A + 1]

    def head_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``[B, A]`` action labels -> ``[B, H]`` labels of the heads."""
        return labels.index_select(1, self.head_index)  # [B, H]

    def example_weights(self, actions_multi_hot: torch.Tensor) -> torch.Tensor:
        """``[B, A]`` multi-hot -> ``[B, H]`` M[h, e(b)]: max of M[h, a] over b's actions, else M[h, none]."""
        taken = actions_multi_hot.bool()  # [B, A]
        action_weights = self.label_weight_matrix[:, :-1]  # [H, A]
        masked = torch.where(taken[:, None, :], action_weights[None, :, :], float("-inf"))  # [B, H, A]
        best = masked.amax(dim=2)  # [B, H]; -inf where no action was taken
        none_weight = self.label_weight_matrix[:, -1].expand_as(best)  # [B, H]
        return torch.where(taken.any(dim=1, keepdim=True), best, none_weight)  # [B, H]

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        actions_multi_hot: torch.Tensor,
        user_weights: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted loss.

        Args:
            logits: ``[B, H]``.
            labels: ``[B, A]`` multi-hot action labels (head h reads column ``a(h)``).
            actions_multi_hot: ``[B, A]`` the actions of each example (the labels, in a ranking batch).
            user_weights: ``[B]`` w_u of each example's user, as the data provides it (``batch.weights``).

        Returns:
            ``(loss, per_head)``: scalar sum over heads, and ``[H]`` the weighted mean BCE of each head.
        """
        if logits.dim() != 2 or logits.shape[1] != len(self.heads):
            raise ConfigError(
                f"logits must be [B, {len(self.heads)}] for heads {self.heads}, got {tuple(logits.shape)}"
            )
        targets = self.head_labels(labels).to(logits.dtype)  # [B, H]
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # [B, H]
        weights = self.example_weights(actions_multi_hot) * user_weights[:, None].to(logits.dtype)  # [B, H]
        per_head = (weights * bce).mean(dim=0)  # [H]
        return per_head.sum(), per_head
