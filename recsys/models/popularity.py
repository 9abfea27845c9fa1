"""Popularity baseline: score a candidate by how often the training events took each action on it.

For head h (an action a) and item i, with c_{a,i} the training events on i that carry a, and
C_a = sum_i c_{a,i}::

    share_h(i) = (c_{a,i} + 1) / (C_a + I)        (add-one smoothing over I items)
    score_h(i) = log share_h(i)

The score ignores the user, which is what makes it the bar every personalised model must clear.
It is monotone in the smoothed share, so ranking metrics (AUC) apply as they do to DLRM logits;
it is not a calibrated probability, so normalized entropy is not meaningful for it.

Shape letters: B rows, H heads, I items.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys.data.batch import RankingBatch
from recsys.data.schema import EventLog
from recsys.errors import ConfigError, DataError
from recsys.modules.weighted_cross_entropy import head_columns


class PopularityModel:
    """Per-head item popularity from training events; no parameters to train.

    Example::

        model = PopularityModel().fit(log, train_index, heads=["click", "save"])
        model.scores(batch.item_id)  # [B, 2] log smoothed shares
    """

    def __init__(self) -> None:
        self.heads: list[str] = []
        self.log_share: torch.Tensor | None = None  # [I, H]

    def fit(self, log: EventLog, train_index: np.ndarray, heads: list[str] | None = None) -> "PopularityModel":
        """Counts the actions per item over the training events.

        Args:
            log: the event log.
            train_index: ``[N_train]`` event indices (or an ``[N]`` bool mask) of the training events.
            heads: actions to score; None = every action of the log.
        """
        heads = list(log.action_vocab) if heads is None else list(heads)
        columns = head_columns(heads, log.action_vocab)
        train = log.take(np.asarray(train_index))
        taken = train.action_matrix()[:, columns]  # [N_train, H] bool
        counts = np.zeros((log.num_items, len(heads)), dtype=np.float64)  # [I, H]
        np.add.at(counts, train.item_id, taken.astype(np.float64))
        share = (counts + 1.0) / (counts.sum(axis=0, keepdims=True) + log.num_items)  # [I, H]
        self.heads = heads
        self.log_share = torch.from_numpy(np.log(share)).float()
        return self

    def scores(self, item_id: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[B]`` candidate items -> ``[B, H]`` scores (log smoothed share), DLRM's logit layout."""
        if self.log_share is None:
            raise ConfigError("PopularityModel.scores called before fit(log, train_index)")
        ids = torch.as_tensor(item_id, dtype=torch.int64).reshape(-1)
        num_items = self.log_share.shape[0]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_items):
            raise DataError(f"item ids must lie in 0..{num_items - 1} (the items of the fitted log)")
        return self.log_share.index_select(0, ids)  # [B, H]

    def __call__(self, batch: RankingBatch) -> torch.Tensor:
        """Scores a RankingBatch by its candidates: ``[B, H]``."""
        return self.scores(batch.item_id)
