"""Learned absolute position embeddings of sequence models, initialised on the item embeddings' scale.

``nn.Embedding``'s default N(0, 1) would drown ``sqrt(D)``-scaled item embeddings of std ~0.02 * sqrt(D)
at the start of training; the table is instead drawn from N(0, 1/D), truncated at two standard
deviations (as the public HSTU / SASRec reference models initialise theirs).
"""

from __future__ import annotations

import math

from torch import nn


def learned_position_table(max_seq_len: int, embedding_dim: int) -> nn.Embedding:
    """``[N, D]`` position table for positions ``0 .. N-1``."""
    table = nn.Embedding(max_seq_len, embedding_dim)
    std = 1.0 / math.sqrt(embedding_dim)
    nn.init.trunc_normal_(table.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
    return table
