"""GRU4Rec-style ranker: a GRU reads the behaviour sequence; its last hidden state is the user.

    h_n    = GRU(e_1 .. e_n)[n]  (0 for an empty history)   [B, Dh]
    logits = MLP([h_n, c, side]) V^T + b                    [B, H]

(Hidasi et al., ICLR 2016 use the GRU for next-item retrieval; here, as in the MIMN paper's
comparison, it is the sequence encoder of a ranker.) Padding sits after each row's events, so
the output at a row's last real event does not see it. Inputs and table as every
behaviour-sequence model (:mod:`recsys.models.behavior_sequence`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.data.features import FeatureSpec
from recsys.models.behavior_sequence import BehaviorSequenceConfig, BehaviorSequenceRanker, ScoringHead
from recsys.models.dlrm import resolve_heads


@dataclass
class GRU4RecConfig(BehaviorSequenceConfig):
    """GRU sizes (and the shared fields of :class:`BehaviorSequenceConfig`).

    Args:
        hidden_dim: Dh, the GRU's width.
        num_layers: stacked GRU layers.
    """

    hidden_dim: int = 32
    num_layers: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("hidden_dim", "num_layers")


class GRUArch(nn.Module):
    """GRU over the padded sequence, read at each row's last event, + scoring head."""

    def __init__(self, embedding_dim: int, hidden_dim: int, num_layers: int, side_dim: int, over_arch_layers: list[int], num_heads: int):
        super().__init__()
        self.gru = nn.GRU(embedding_dim, hidden_dim, num_layers=num_layers, batch_first=True)
        self.hidden_dim = hidden_dim
        self.head = ScoringHead(hidden_dim + embedding_dim + side_dim, over_arch_layers, num_heads)

    def last_hidden(self, events: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, L, D]``, ``[B, L]`` (real events first in each row) -> ``[B, Dh]``."""
        b = events.shape[0]
        if events.shape[1] == 0:
            return events.new_zeros(b, self.hidden_dim)
        outputs, _ = self.gru(events)  # [B, L, Dh]
        lengths = mask.sum(dim=1)  # [B]
        last = outputs[torch.arange(b, device=events.device), (lengths - 1).clamp_min(0)]  # [B, Dh]
        return last * (lengths > 0).unsqueeze(-1)

    def forward(self, events, mask, candidates, side=None) -> torch.Tensor:
        parts = [self.last_hidden(events, mask), candidates] + ([side] if side is not None else [])
        return self.head(torch.cat(parts, dim=-1))  # [B, H]


def build_gru4rec(spec: FeatureSpec, config: GRU4RecConfig, device=None) -> BehaviorSequenceRanker:
    d = config.embedding_dim
    side = d if config.use_dense_features else 0
    arch = GRUArch(d, config.hidden_dim, config.num_layers, side, config.over_arch_layers, len(resolve_heads(spec, config.heads)))
    return BehaviorSequenceRanker(spec, config, arch, device=device)
