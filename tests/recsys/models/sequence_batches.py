"""Hand-built RankingBatches with behaviour sequences for the behaviour-sequence models
(mimn, din, emb_mlp, gru4rec), and the checks every one of them passes."""

from __future__ import annotations

import torch

from recsys.config import load_config
from recsys.data.batch import RankingBatch
from recsys.data.collate import kjt_from_jagged
from recsys.data.features import FeatureSpec
from recsys.models import get_model
from recsys.train.config import TrainConfig
from tests.tiny import TINY_SYNTHETIC_DATA, TINY_TRAINER, train_and_evaluate

SPEC = FeatureSpec(num_users=7, num_items=30, content_dim=4, max_sequence=6)

# (item, action bits) per event, oldest first; row 1 has no history
HISTORIES = [
    [(3, 0b0001), (7, 0b0011), (9, 0b1000)],
    [],
    [(1, 0b0101), (2, 0b0001)],
    [(4, 0b0001), (5, 0b0010), (6, 0b0100), (8, 0b1001), (9, 0b0001), (11, 0b1111)],
]
CANDIDATES = [12, 13, 14, 15]


def make_batch(histories=HISTORIES, candidates=CANDIDATES, seed: int = 0) -> RankingBatch:
    """One row per candidate, with its history as ``sequence_features``."""
    gen = torch.Generator().manual_seed(seed)
    b = len(candidates)
    lengths = torch.tensor([len(h) for h in histories], dtype=torch.int32)
    items = [e[0] for h in histories for e in h]
    bits = [e[1] for h in histories for e in h]
    sequence = kjt_from_jagged({
        "seq_item_id": (torch.tensor(items, dtype=torch.int64), lengths),
        "seq_actions": (torch.tensor(bits, dtype=torch.int64), lengths),
        "seq_surface": (torch.zeros(len(items), dtype=torch.int64), lengths),
        "seq_timestamp": (torch.arange(len(items), dtype=torch.int64), lengths),
    })
    one = torch.ones(b, dtype=torch.int32)
    sparse = kjt_from_jagged({key: (torch.tensor(candidates) if key == "item_id" else torch.zeros(b, dtype=torch.int64), one)
                              for key in SPEC.sparse_features})
    return RankingBatch(
        sparse_features=sparse,
        dense_features=torch.randn(b, SPEC.dense_dim, generator=gen),
        labels=torch.randint(0, 2, (b, SPEC.num_actions), generator=gen).float(),
        weights=torch.ones(b),
        user_id=torch.arange(b),
        item_id=torch.tensor(candidates),
        request_id=torch.zeros(b, dtype=torch.int64),
        timestamp=torch.full((b,), 10_000),
        sequence_features=sequence,
    )


def overfit_loss(name: str, steps: int = 60, **overrides) -> tuple[float, float]:
    """(first, last) BCE of model ``name`` trained with Adam on one tiny batch."""
    torch.manual_seed(0)
    model = get_model(name, feature_spec=SPEC, embedding_dim=8, over_arch_layers=[16], **overrides)
    batch = make_batch(seed=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


TINY_RECIPE = [
    *TINY_SYNTHETIC_DATA,
    "data.max_sequence=20",
    *TINY_TRAINER,
]


def train_tiny(name: str, output_dir, *overrides: str) -> dict:
    """Trains ``configs/<name>/synthetic.yaml`` (its model sizes) on the tiny world; the test split's click metrics."""
    cfg = load_config(TrainConfig, f"configs/{name}/synthetic.yaml", [*TINY_RECIPE, *overrides, f"output_dir={output_dir}"])
    return train_and_evaluate(cfg)["click"]
