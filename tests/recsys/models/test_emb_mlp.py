"""The emb_mlp zoo model: its arch's own invariants, it overfits a tiny batch, it trains through the recipe."""

import torch

from recsys.models import get_model
from tests.recsys.models.sequence_batches import SPEC, make_batch, overfit_loss, train_tiny


def test_sum_pooling_ignores_padding():
    torch.manual_seed(0)
    model = get_model("emb_mlp", feature_spec=SPEC, embedding_dim=8).eval()
    batch = make_batch()
    events, mask, candidates = model.embed(batch.sequence_features, batch.item_id, batch.batch_size)
    poisoned = events.masked_fill(~mask.unsqueeze(-1), 1e6)
    side = model.side(batch.dense_features)
    torch.testing.assert_close(model.arch(poisoned, mask, candidates, side), model(batch))


def test_overfits_a_tiny_batch():
    first, last = overfit_loss("emb_mlp")
    assert last < 0.3 * first


def test_trains_under_the_ranking_recipe(tmp_path):
    click = train_tiny("emb_mlp", tmp_path)
    assert click["auc"] > 0.6 and click["ne"] < 1.0, click
