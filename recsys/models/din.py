"""DIN ranker: the candidate attends over the user's whole behaviour sequence (the MIMN paper's baseline).

    v_U(c) = DINAttention(events, mask, c)                 [B, D]   (recsys.modules.din)
    logits = MLP([v_U(c), c, side]) V^T + b                [B, H]

Inputs and table as every behaviour-sequence model (:mod:`recsys.models.behavior_sequence`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from recsys.data.features import FeatureSpec
from recsys.errors import ConfigError
from recsys.models.behavior_sequence import BehaviorSequenceConfig, BehaviorSequenceRanker, ScoringHead
from recsys.models.dlrm import resolve_heads
from recsys.modules.din import DINAttention


@dataclass
class DINConfig(BehaviorSequenceConfig):
    """DIN sizes (and the shared fields of :class:`BehaviorSequenceConfig`).

    Args:
        attention_layers: hidden widths of the local activation unit.
    """

    attention_layers: list[int] = field(default_factory=lambda: [32])

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.attention_layers or not all(isinstance(w, int) and w > 0 for w in self.attention_layers):
            raise ConfigError(f"DINConfig.attention_layers must be a non-empty list of positive ints, got {self.attention_layers!r}")


class DINArch(nn.Module):
    """Target attention pooling + scoring head."""

    def __init__(self, embedding_dim: int, attention_layers: list[int], side_dim: int, over_arch_layers: list[int], num_heads: int):
        super().__init__()
        self.attention = DINAttention(embedding_dim, attention_layers)
        self.head = ScoringHead(2 * embedding_dim + side_dim, over_arch_layers, num_heads)

    def forward(self, events, mask, candidates, side=None) -> torch.Tensor:
        interest = self.attention(events, mask, candidates)  # [B, D]
        parts = [interest, candidates] + ([side] if side is not None else [])
        return self.head(torch.cat(parts, dim=-1))  # [B, H]


def build_din(spec: FeatureSpec, config: DINConfig, device=None) -> BehaviorSequenceRanker:
    d = config.embedding_dim
    side = d if config.use_dense_features else 0
    arch = DINArch(d, config.attention_layers, side, config.over_arch_layers, len(resolve_heads(spec, config.heads)))
    return BehaviorSequenceRanker(spec, config, arch, device=device)
