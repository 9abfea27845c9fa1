"""The frame shared by mimn, din, emb_mlp and gru4rec: padding, one lookup, registration, errors."""

import pytest
import torch

from recsys.errors import DataError
from recsys.models import get_model, list_models
from recsys.models.behavior_sequence import pad_jagged
from tests.recsys.models.sequence_batches import CANDIDATES, HISTORIES, SPEC, make_batch

FAMILY = ["din", "emb_mlp", "gru4rec", "mimn"]


def test_pad_jagged_places_each_row_left_aligned():
    values = torch.arange(12, dtype=torch.float32).view(6, 2)  # rows of 3, 0, 2, 1 events
    padded, mask = pad_jagged(values, torch.tensor([3, 0, 2, 1]))
    assert padded.shape == (4, 3, 2)
    assert mask.tolist() == [[True, True, True], [False] * 3, [True, True, False], [True, False, False]]
    torch.testing.assert_close(padded[0], values[:3])
    torch.testing.assert_close(padded[2, :2], values[3:5])
    torch.testing.assert_close(padded[3, 0], values[5])
    assert padded[~mask].abs().sum() == 0
    empty, empty_mask = pad_jagged(torch.zeros(0, 2), torch.tensor([0, 0]))
    assert empty.shape == (2, 0, 2) and empty_mask.shape == (2, 0)


@pytest.mark.parametrize("name", FAMILY)
def test_registered_builds_on_meta_and_scores_every_row(name):
    assert name in list_models()
    meta = get_model(name, feature_spec=SPEC, device="meta")
    assert meta.item_embeddings.embeddings["t_item_id"].weight.is_meta
    assert [c.name for c in meta.embedding_configs()] == ["t_item_id"]
    torch.manual_seed(0)
    model = get_model(name, feature_spec=SPEC, embedding_dim=8, heads=["click", "hide"]).eval()
    logits = model(make_batch())
    assert logits.shape == (4, 2) and torch.isfinite(logits).all()
    all_empty = model(make_batch([[]] * 4))  # a batch without any history (L = 0)
    assert all_empty.shape == (4, 2) and torch.isfinite(all_empty).all()


@pytest.mark.parametrize("name", FAMILY)
def test_rows_are_independent_and_the_history_matters(name):
    torch.manual_seed(0)
    model = get_model(name, feature_spec=SPEC, embedding_dim=8).eval()
    batch = make_batch()
    before = model(batch)
    changed_histories = [HISTORIES[0], [(20, 0b0010)], HISTORIES[2], HISTORIES[3][:2]]
    changed = make_batch(changed_histories, CANDIDATES)
    after = model(changed)
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]])
    assert not torch.allclose(after[1], before[1]) and not torch.allclose(after[3], before[3])


def test_missing_sequence_and_dense_features_are_data_errors():
    model = get_model("din", feature_spec=SPEC, embedding_dim=8)
    batch = make_batch()
    batch.sequence_features = None
    with pytest.raises(DataError, match="data.max_sequence"):
        model(batch)
    batch = make_batch()
    batch.dense_features = batch.dense_features[:, :3]
    with pytest.raises(DataError, match="dense_features"):
        model(batch)
