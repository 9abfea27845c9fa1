"""The training module: a ranker and its loss in one ``nn.Module``.

DistributedModelParallel wraps this module, so the loss runs inside the wrapped forward and the
train loop only calls ``loss, logits = task(batch)`` and ``loss.backward()``.
"""

from __future__ import annotations

import torch
from torch import nn

from recsys.data.batch import RankingBatch
from recsys.errors import ConfigError
from recsys.modules.weighted_cross_entropy import WeightedCrossEntropy


class RankingTask(nn.Module):
    """Model + weighted cross-entropy.

    Args:
        model: maps a RankingBatch to ``[B, H]`` logits and has a ``heads`` list.
        loss: a WeightedCrossEntropy over the same heads, in the same order.

    Example::

        task = RankingTask(model, WeightedCrossEntropy(model.heads, spec.action_vocab))
        loss, logits = task(batch)
    """

    def __init__(self, model: nn.Module, loss: WeightedCrossEntropy):
        super().__init__()
        model_heads = list(getattr(model, "heads", loss.heads))
        if model_heads != loss.heads:
            raise ConfigError(
                f"the model predicts heads {model_heads} but the loss expects {loss.heads}; "
                "build both from one head list"
            )
        self.model = model
        self.loss = loss

    def forward(self, batch: RankingBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(loss, logits)``: a scalar and ``[B, H]`` detached logits for the metrics."""
        logits = self.model(batch)  # [B, H]
        loss, _ = self.loss(logits, batch.labels, batch.labels, batch.weights)
        return loss, logits.detach()
