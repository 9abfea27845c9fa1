"""HSTU for next-item retrieval (Zhai et al. 2024, "Actions Speak Louder than Words").

The encoder is :class:`~recsys.modules.hstu.HSTUEncoder` (pointwise aggregated attention with
relative position and time bias, no feed-forward block); the frame around it -- item table,
inputs, L2-normalised outputs and the sampled softmax -- is
:class:`~recsys.models.sequential_retrieval.SequentialRetrieval`, shared with SASRec.

Defaults are the paper's public Amazon Books setting (D=64, 4 blocks x 4 heads, Dqk = Dv = 16,
history 50, 512 uniform negatives, temperature 0.05).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recsys.data.features import FeatureSpec
from recsys.models.sequential_retrieval import RetrievalLossConfig, SequentialRetrieval
from recsys.modules.hstu import HSTUEncoder


@dataclass
class HSTURetrievalConfig:
    """HSTU retrieval hyper-parameters (see :class:`~recsys.modules.hstu.HSTULayer`).

    Args:
        num_layers / num_heads / attention_dim / linear_dim / embedding_dim: the encoder's shape.
        max_seq_len: longest history (tokens) the model reads.
        dropout: dropout inside the HSTU layers.
        input_dropout: dropout on the input embeddings.
        normalization: "max_len" (attention output divided by max_seq_len, as the reference code
            does) or "length" (each query's output divided by the number of keys it attends to).
        use_position_bias / use_time_bias: the relative attention bias rab^{p,t}.
        position_embedding: also add a learned absolute position embedding to the input.
        final_norm: LayerNorm the encoder's output before the L2 normalisation (the reference
            model has none: its user vector is the L2-normalised residual stream).
        item_init_std: std of the item table's initial weights.
        num_negatives / temperature / negatives: the sampled softmax.
        attention_kernel: the attention backend (``kernel`` of :class:`~recsys.modules.hstu.HSTUEncoder`):
            "auto" (the fused Triton kernel on CUDA, the PyTorch reference elsewhere), "pytorch"
            or "triton".
    """

    embedding_dim: int = 64
    num_layers: int = 4
    num_heads: int = 4
    attention_dim: int = 16
    linear_dim: int = 16
    max_seq_len: int = 50
    dropout: float = 0.5
    input_dropout: float = 0.5
    normalization: str = "max_len"
    use_position_bias: bool = True
    use_time_bias: bool = True
    position_embedding: bool = True
    final_norm: bool = False
    item_init_std: float = 0.02
    num_negatives: int = 512
    temperature: float = 0.05
    negatives: str = "uniform"
    attention_kernel: str = "auto"


def build_hstu_retrieval(spec: FeatureSpec, config: HSTURetrievalConfig, device: torch.device | str | None) -> SequentialRetrieval:
    encoder = HSTUEncoder(
        num_layers=config.num_layers,
        embedding_dim=config.embedding_dim,
        num_heads=config.num_heads,
        attention_dim=config.attention_dim,
        linear_dim=config.linear_dim,
        max_seq_len=config.max_seq_len,
        dropout=config.dropout,
        normalization=config.normalization,
        use_position_bias=config.use_position_bias,
        use_time_bias=config.use_time_bias,
        final_norm=config.final_norm,
        kernel=config.attention_kernel,
    )
    return SequentialRetrieval(
        num_items=spec.num_items,
        embedding_dim=config.embedding_dim,
        encoder=encoder,
        max_seq_len=config.max_seq_len,
        loss=RetrievalLossConfig(config.num_negatives, config.temperature, config.negatives),
        input_dropout=config.input_dropout,
        position_embedding=config.position_embedding,
        item_init_std=config.item_init_std,
        device=device,
    )
