"""The din zoo model: its arch's own invariants, it overfits a tiny batch, it trains through the recipe."""

import torch

from recsys.modules.din import DINAttention, masked_softmax
from tests.recsys.models.sequence_batches import SPEC, make_batch, overfit_loss, train_tiny


def test_attention_weights_sum_to_one_over_real_events_and_zero_for_empty_histories():
    torch.manual_seed(0)
    attention = DINAttention(4, [8])
    events = torch.randn(3, 5, 4)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    weights = attention.weights(events, mask, torch.randn(3, 4))
    torch.testing.assert_close(weights.sum(dim=1), torch.tensor([1.0, 1.0, 0.0]))
    assert (weights[~mask] == 0).all() and (weights[mask] > 0).all()
    events2 = events.clone()
    events2[1, 2:] = 100.0  # padding content never matters
    torch.testing.assert_close(attention.weights(events2, mask, torch.randn(3, 4))[1, :2].sum(), torch.tensor(1.0))
    interest = attention(events, mask, torch.randn(3, 4))
    assert torch.equal(interest[2], torch.zeros(4))
    assert torch.isfinite(weights).all()


def test_masked_softmax_matches_softmax_over_the_real_entries():
    scores = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 9.0]])
    mask = torch.tensor([[True, False, True], [True, True, False]])
    expected = torch.stack([torch.softmax(torch.tensor([1.0, 3.0]), 0), torch.softmax(torch.tensor([0.5, -1.0]), 0)])
    weights = masked_softmax(scores, mask)
    torch.testing.assert_close(weights[mask].view(2, 2), expected)
    empty = masked_softmax(scores.requires_grad_(), torch.zeros(2, 3, dtype=torch.bool))
    empty.sum().backward()
    assert torch.equal(empty.detach(), torch.zeros(2, 3)) and torch.isfinite(scores.grad).all()


def test_overfits_a_tiny_batch():
    first, last = overfit_loss("din")
    assert last < 0.3 * first


def test_trains_under_the_ranking_recipe(tmp_path):
    click = train_tiny("din", tmp_path)
    assert click["auc"] > 0.6 and click["ne"] < 1.0, click
