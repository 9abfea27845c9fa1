"""SASRec for next-item retrieval (Kang & McAuley 2018), the baseline HSTU is compared with.

Same frame, data, loss and evaluation as :mod:`recsys.models.hstu`
(:class:`~recsys.models.sequential_retrieval.SequentialRetrieval`); only the encoder differs:
:class:`~recsys.modules.sasrec.SASRecEncoder` (causal softmax self-attention + point-wise FFN, with
its own learned absolute positions and embedding dropout, so the frame adds neither).

Defaults follow the Books setting of the public SASRec baseline configs (D=64, 4 blocks x 4 heads,
FFN 64, dropout 0.5, history 50, 512 uniform negatives, temperature 0.05).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recsys.data.features import FeatureSpec
from recsys.models.sequential_retrieval import RetrievalLossConfig, SequentialRetrieval
from recsys.modules.sasrec import SASRecEncoder


@dataclass
class SASRecRetrievalConfig:
    """SASRec retrieval hyper-parameters (see :class:`~recsys.modules.sasrec.SASRecEncoder`)."""

    embedding_dim: int = 64
    num_layers: int = 4
    num_heads: int = 4
    ffn_dim: int = 64
    max_seq_len: int = 50
    dropout: float = 0.5
    item_init_std: float = 0.02
    num_negatives: int = 512
    temperature: float = 0.05
    negatives: str = "uniform"


def build_sasrec_retrieval(spec: FeatureSpec, config: SASRecRetrievalConfig, device: torch.device | str | None) -> SequentialRetrieval:
    encoder = SASRecEncoder(
        num_layers=config.num_layers,
        embedding_dim=config.embedding_dim,
        num_heads=config.num_heads,
        max_seq_len=config.max_seq_len,
        dropout=config.dropout,
        ffn_dim=config.ffn_dim,
        position_embedding=True,
    )
    return SequentialRetrieval(
        num_items=spec.num_items,
        embedding_dim=config.embedding_dim,
        encoder=encoder,
        max_seq_len=config.max_seq_len,
        loss=RetrievalLossConfig(config.num_negatives, config.temperature, config.negatives),
        input_dropout=0.0,
        position_embedding=False,
        item_init_std=config.item_init_std,
        device=device,
    )
