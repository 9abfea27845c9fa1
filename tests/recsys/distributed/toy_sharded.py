"""A small model with TorchRec embedding tables, and batches for it, for the distributed tests."""

from __future__ import annotations

from typing import List

import torch
from torch import nn
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
)

from recsys.distributed.sharding import ShardingConfig

TABLE_ROWS = (40, 30, 20)
DIM = 8
FEATURES = [f"f{i}" for i in range(len(TABLE_ROWS))]
MIXED = ShardingConfig(
    {
        "t0": {"sharding_types": ["row_wise"]},
        "t1": {"sharding_types": ["data_parallel"]},
        "t2": {"sharding_types": ["column_wise"], "compute_kernels": ["fused"]},
    }
)


class ToyRanker(nn.Module):
    """EmbeddingBagCollection of 3 tables (t0, t1, t2) + a dense Linear: [B, 3 * D] -> [B, 1]."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name=f"t{i}",
                    embedding_dim=DIM,
                    num_embeddings=rows,
                    feature_names=[FEATURES[i]],
                )
                for i, rows in enumerate(TABLE_ROWS)
            ],
            device=device,
        )
        self.linear = nn.Linear(len(FEATURES) * DIM, 1, device=device)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(features)
        x = torch.cat([pooled[name] for name in FEATURES], dim=1)  # [B, 3 * D]
        return self.linear(x)  # [B, 1]


class ToySequenceModel(nn.Module):
    """One EmbeddingCollection (sequence) table `s0` and one pooled table `t0`."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.ec = EmbeddingCollection(
            tables=[EmbeddingConfig(name="s0", embedding_dim=DIM, num_embeddings=50,
                                    feature_names=["seq"])],
            device=device,
        )
        self.ebc = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name="t0", embedding_dim=DIM, num_embeddings=10,
                                       feature_names=["f0"])],
            device=device,
        )


def toy_batch(batch_size: int, seed: int) -> KeyedJaggedTensor:
    """A KJT with 1-3 ids per sample for each of FEATURES (ids within each table)."""
    generator = torch.Generator().manual_seed(seed)
    lengths: List[torch.Tensor] = []
    values: List[torch.Tensor] = []
    for rows in TABLE_ROWS:
        feature_lengths = torch.randint(1, 4, (batch_size,), generator=generator)
        lengths.append(feature_lengths)
        values.append(torch.randint(0, rows, (int(feature_lengths.sum()),), generator=generator))
    return KeyedJaggedTensor.from_lengths_sync(
        keys=FEATURES,
        values=torch.cat(values),
        lengths=torch.cat(lengths).to(torch.int32),
    )


def full_state(state_dict: dict) -> dict:
    """A DMP state dict of a world of one as plain tensors (ShardedTensor -> its single shard)."""
    plain = {}
    for name, value in state_dict.items():
        if hasattr(value, "local_shards"):
            shards = value.local_shards()
            full = torch.empty(value.size())
            for shard in shards:
                offsets = shard.metadata.shard_offsets
                sizes = shard.metadata.shard_sizes
                rows = slice(offsets[0], offsets[0] + sizes[0])
                cols = slice(offsets[1], offsets[1] + sizes[1])
                full[rows, cols] = shard.tensor
            value = full
        plain[name] = value.detach().clone()
    return plain
