"""The gru4rec zoo model: its arch's own invariants, it overfits a tiny batch, it trains through the recipe."""

import torch

from recsys.models.gru4rec import GRUArch
from tests.recsys.models.sequence_batches import SPEC, make_batch, overfit_loss, train_tiny


def test_last_hidden_is_the_gru_state_at_each_rows_last_event():
    torch.manual_seed(0)
    arch = GRUArch(4, 6, 1, 0, [8], 1)
    events = torch.randn(3, 5, 4)
    mask = torch.arange(5).unsqueeze(0) < torch.tensor([[5], [2], [0]])
    last = arch.last_hidden(events, mask)
    _, alone = arch.gru(events[1:2, :2])
    torch.testing.assert_close(last[1], alone[0, 0])
    _, whole = arch.gru(events[0:1])
    torch.testing.assert_close(last[0], whole[0, 0])
    assert torch.equal(last[2], torch.zeros(6))


def test_overfits_a_tiny_batch():
    first, last = overfit_loss("gru4rec")
    assert last < 0.3 * first


def test_trains_under_the_ranking_recipe(tmp_path):
    click = train_tiny("gru4rec", tmp_path)
    assert click["auc"] > 0.6 and click["ne"] < 1.0, click
