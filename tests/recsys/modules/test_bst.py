"""BST encoder: latest S history items oldest first, the candidate last, recency positions, pooled
output; empty histories, padding and other rows change nothing."""

import pytest
import torch

from recsys.errors import ConfigError, DataError
from recsys.modules.bst import BSTConfig, BSTEncoder

D, S = 8, 4


def encoder(**overrides) -> BSTEncoder:
    torch.manual_seed(0)
    return BSTEncoder(BSTConfig(embedding_dim=D, max_sequence=S, num_heads=2, dropout=0.0, **overrides)).double().eval()


def inputs(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    history = torch.randn(int(lengths.sum()), D, generator=gen, dtype=torch.float64)
    candidate = torch.randn(len(lengths), D, generator=gen, dtype=torch.float64)
    return history, lengths, candidate


def test_tokens_are_the_latest_history_then_the_candidate_with_recency_positions():
    model = encoder()
    history, lengths, candidate = inputs([6, 0, 2])
    tokens, is_history, is_padding, read = model._tokens(history, lengths, candidate)
    assert tokens.shape == (3, S + 1, D) and read.tolist() == [4, 0, 2]
    positions = model.position_embedding.weight
    torch.testing.assert_close(tokens[0, :4], history[2:6] + positions[[4, 3, 2, 1]])  # latest 4, oldest first
    torch.testing.assert_close(tokens[0, 4], candidate[0] + positions[0])
    torch.testing.assert_close(tokens[1, 0], candidate[1] + positions[0])  # empty history: candidate alone
    torch.testing.assert_close(tokens[2, :2], history[6:8] + positions[[2, 1]])
    torch.testing.assert_close(tokens[2, 2], candidate[2] + positions[0])
    assert is_history.tolist()[2] == [True, True, False, False, False]
    assert is_padding.tolist()[1] == [False, True, True, True, True]


def test_output_shape_empty_rows_and_gradients():
    model = encoder().train()
    history, lengths, candidate = inputs([3, 0, 5])
    history.requires_grad_(True)
    out = model(history, lengths, candidate)
    assert out.shape == (3, 2 * D) == (3, model.output_dim) and torch.isfinite(out).all()
    assert torch.all(out[1, D:] == 0)  # no history: zero mean, the candidate output still informative
    out.sum().backward()
    assert torch.isfinite(history.grad).all() and history.grad.abs().sum() > 0
    empty = model(torch.zeros(0, D, dtype=torch.float64), torch.tensor([0, 0]), candidate[:2])
    assert torch.isfinite(empty).all()


def test_rows_are_independent_and_the_candidate_matters():
    model = encoder()
    history, lengths, candidate = inputs([2, 5])
    both = model(history, lengths, candidate)
    alone = model(history[:2], lengths[:1], candidate[:1])
    torch.testing.assert_close(both[:1], alone)  # row 1's longer history only adds padding to row 0
    other = model(history[:2], lengths[:1], candidate[1:])
    assert not torch.allclose(other, alone)


def test_only_the_latest_s_items_are_read():
    model = encoder()
    history, lengths, candidate = inputs([7])
    torch.testing.assert_close(model(history, lengths, candidate), model(history[-S:], torch.tensor([S]), candidate))


def test_config_and_input_errors():
    with pytest.raises(ConfigError, match="must divide"):
        BSTConfig(embedding_dim=8, num_heads=3)
    with pytest.raises(ConfigError, match="max_sequence"):
        BSTConfig(max_sequence=0)
    model = encoder()
    history, lengths, candidate = inputs([2, 1])
    with pytest.raises(DataError, match="sum\\(lengths\\)"):
        model(history[:2], lengths, candidate)
    with pytest.raises(DataError, match="candidate"):
        model(history, lengths, candidate[:, :4])
