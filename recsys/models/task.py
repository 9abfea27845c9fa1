"""The training module: a ranker and its loss in one ``nn.Module``.

DistributedModelParallel wraps this module, so the loss runs inside the wrapped forward and the
train loop only calls ``loss, logits = task(batch)`` and ``loss.backward()``.

A model may add an auxiliary loss (TransAct V2's next-action loss): after its forward it holds a
scalar ``auxiliary_loss`` (None when there is none) and names its weight in
``auxiliary_loss_weight``; the task then returns ``L_CE + w * auxiliary_loss``. Models without
the attribute (DLRM, HSTU) train on ``L_CE`` alone.
"""

from __future__ import annotations

import torch
from torch import nn

from recsys.data.batch import RankingBatch
from recsys.errors import ConfigError
from recsys.modules.weighted_cross_entropy import WeightedCrossEntropy


class RankingTask(nn.Module):
    """Model + weighted cross-entropy (+ the model's auxiliary loss, weighted).

    Args:
        model: maps a RankingBatch to ``[B, H]`` logits and has a ``heads`` list; may hold an
            ``auxiliary_loss`` after each forward.
        loss: a WeightedCrossEntropy over the same heads, in the same order.
        auxiliary_weight: w for the auxiliary loss; None = the model's ``auxiliary_loss_weight``
            (1.0 when it names none).

    Example::

        task = RankingTask(model, WeightedCrossEntropy(model.heads, spec.action_vocab))
        loss, logits = task(batch)
    """

    def __init__(self, model: nn.Module, loss: WeightedCrossEntropy, auxiliary_weight: float | None = None):
        super().__init__()
        model_heads = list(getattr(model, "heads", loss.heads))
        if model_heads != loss.heads:
            raise ConfigError(
                f"the model predicts heads {model_heads} but the loss expects {loss.heads}; "
                "build both from one head list"
            )
        if auxiliary_weight is None:
            auxiliary_weight = getattr(model, "auxiliary_loss_weight", 1.0)
        if not auxiliary_weight >= 0:
            raise ConfigError(f"auxiliary_weight must be >= 0, got {auxiliary_weight!r}")
        self.model = model
        self.loss = loss
        self.auxiliary_weight = float(auxiliary_weight)

    def forward(self, batch: RankingBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(loss, logits)``: a scalar and ``[B, H]`` detached logits for the metrics."""
        logits = self.model(batch)  # [B, H]
        loss, _ = self.loss(logits, batch.labels, batch.labels, batch.weights)
        auxiliary = getattr(self.model, "auxiliary_loss", None)
        if auxiliary is not None:
            loss = loss + self.auxiliary_weight * auxiliary
        return loss, logits.detach()
