"""Embedding&MLP ranker: sum pooling of the behaviour sequence (the MIMN and DIN papers' base model).

    v_U    = sum_j e_j over the real events (0 for an empty history)   [B, D]
    logits = MLP([v_U, c, side]) V^T + b                               [B, H]

Inputs and table as every behaviour-sequence model (:mod:`recsys.models.behavior_sequence`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.data.features import FeatureSpec
from recsys.models.behavior_sequence import BehaviorSequenceConfig, BehaviorSequenceRanker, ScoringHead
from recsys.models.dlrm import resolve_heads


@dataclass
class EmbeddingMLPConfig(BehaviorSequenceConfig):
    """Embedding&MLP sizes: only the shared fields of :class:`BehaviorSequenceConfig`."""


class SumPoolingArch(nn.Module):
    """Masked sum pooling + scoring head."""

    def __init__(self, embedding_dim: int, side_dim: int, over_arch_layers: list[int], num_heads: int):
        super().__init__()
        self.head = ScoringHead(2 * embedding_dim + side_dim, over_arch_layers, num_heads)

    def forward(self, events, mask, candidates, side=None) -> torch.Tensor:
        pooled = (events * mask.unsqueeze(-1)).sum(dim=1)  # [B, D]
        parts = [pooled, candidates] + ([side] if side is not None else [])
        return self.head(torch.cat(parts, dim=-1))  # [B, H]


def build_emb_mlp(spec: FeatureSpec, config: EmbeddingMLPConfig, device=None) -> BehaviorSequenceRanker:
    d = config.embedding_dim
    side = d if config.use_dense_features else 0
    arch = SumPoolingArch(d, side, config.over_arch_layers, len(resolve_heads(spec, config.heads)))
    return BehaviorSequenceRanker(spec, config, arch, device=device)
