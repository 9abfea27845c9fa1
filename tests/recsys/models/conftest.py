"""Small hand-built RankingBatches that follow recsys/data/batch.py's layout."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import RankingBatch
from recsys.data.features import FeatureSpec


def small_spec() -> FeatureSpec:
    return FeatureSpec(
        num_users=7, num_items=20, item_attributes={"category": 5}, content_dim=4, max_history=5
    )


def build_batch(spec: FeatureSpec, rows: list[dict], seed: int = 0) -> RankingBatch:
    """One row per dict: ``user``, ``item``, optional ``surface``, ``attrs`` (name -> id),
    ``history`` (action -> list of items), ``labels`` (list of actions taken)."""
    gen = torch.Generator().manual_seed(seed)
    lengths, values = [], []
    for key in spec.sparse_features:  # KJT layout: key-major, then rows
        for row in rows:
            ids = _row_ids(key, row)
            lengths.append(len(ids))
            values.extend(ids)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=spec.sparse_features,
        values=torch.tensor(values, dtype=torch.int64),
        lengths=torch.tensor(lengths, dtype=torch.int32),
    )
    b = len(rows)
    labels = torch.zeros(b, spec.num_actions)
    for i, row in enumerate(rows):
        for action in row.get("labels", []):
            labels[i, spec.action_vocab.index(action)] = 1.0
    return RankingBatch(
        sparse_features=kjt,
        dense_features=torch.randn(b, spec.dense_dim, generator=gen),
        labels=labels,
        weights=torch.ones(b),
        user_id=torch.tensor([r["user"] for r in rows]),
        item_id=torch.tensor([r["item"] for r in rows]),
        request_id=torch.zeros(b, dtype=torch.int64),
        timestamp=torch.arange(b, dtype=torch.int64),
    )


def _row_ids(key: str, row: dict) -> list[int]:
    if key == "user_id":
        return [row["user"]]
    if key == "item_id":
        return [row["item"]]
    if key == "surface":
        return [row.get("surface", 0)]
    if key.startswith("history_"):
        return list(row.get("history", {}).get(key[len("history_"):], []))
    return [row.get("attrs", {}).get(key[len("item_"):], 0)]


def _sample_rows() -> list[dict]:
    return [
        {"user": 1, "item": 3, "attrs": {"category": 2}, "history": {"click": [4, 5, 6]}, "labels": ["click"]},
        {"user": 1, "item": 8, "surface": 1, "history": {"click": [4, 5, 6], "hide": [9]}, "labels": []},
        {"user": 2, "item": 5, "surface": 2, "labels": ["click", "save"]},  # empty histories
        {"user": 6, "item": 19, "attrs": {"category": 4}, "history": {"save": [1], "long_view": [2, 3]},
         "labels": ["hide"]},
    ]


@pytest.fixture
def spec() -> FeatureSpec:
    return small_spec()


@pytest.fixture
def sample_rows() -> list[dict]:
    """Four candidate rows; row 2 has empty histories."""
    return _sample_rows()


@pytest.fixture
def make_batch():
    """``make_batch(spec, rows, seed=0) -> RankingBatch``."""
    return build_batch


@pytest.fixture
def batch(spec) -> RankingBatch:
    return build_batch(spec, _sample_rows())
