"""MIMN memory: addressing and write math by hand, masked updates, streaming == whole sequence, the regulariser."""

import pytest
import torch

from recsys.errors import ConfigError, DataError
from recsys.modules.mimn import MIMN, content_address, erase_add, utilisation_loss, utilisation_share


def small(**overrides) -> MIMN:
    torch.manual_seed(0)
    kwargs = dict(event_dim=6, candidate_dim=6, side_dim=3, num_heads=2, memory_slots=4, memory_dim=5,
                  controller_dim=7, induction_dim=4, induction_top_k=2, over_arch_layers=(8,))
    return MIMN(**{**kwargs, **overrides}).double()


def test_content_address_is_a_sharpened_cosine_softmax():
    memory = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]], dtype=torch.float64)  # [1, 3, 2]
    key = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    weights = content_address(key, torch.tensor([[3.0]], dtype=torch.float64), memory)
    cos = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    expected = torch.exp(3 * cos) / torch.exp(3 * cos).sum()
    torch.testing.assert_close(weights[0], expected)
    sharper = content_address(key, torch.tensor([[10.0]], dtype=torch.float64), memory)
    assert sharper[0, 0] > weights[0, 0]


def test_erase_add_against_a_hand_computed_example():
    memory = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # [1, 2, 2]
    weights = torch.tensor([[0.25, 0.75]])
    erase = torch.tensor([[1.0, 0.5]])
    add = torch.tensor([[2.0, -4.0]])
    # slot 0: [1 * (1 - 0.25), 2 * (1 - 0.125)] + 0.25 * [2, -4] = [0.75 + 0.5, 1.75 - 1]
    # slot 1: [3 * (1 - 0.75), 4 * (1 - 0.375)] + 0.75 * [2, -4] = [0.75 + 1.5, 2.5 - 3]
    expected = torch.tensor([[[1.25, 0.75], [2.25, -0.5]]])
    torch.testing.assert_close(erase_add(memory, weights, erase, add), expected)


def test_utilisation_loss_equals_its_definition():
    g = torch.tensor([[3.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    share = torch.tensor([[0.75, 0.25, 0.0, 0.0], [0.25] * 4, [0.0] * 4])
    torch.testing.assert_close(utilisation_share(g), share)
    per_user = ((share - share.mean(dim=1, keepdim=True)) ** 2).sum(dim=1)  # sum_i (u(i) - mean_j u(j))^2
    torch.testing.assert_close(per_user, torch.tensor([0.375, 0.0, 0.0]))  # no writes yet: no penalty
    torch.testing.assert_close(utilisation_loss(g), per_user.mean())
    torch.testing.assert_close(utilisation_loss(g, torch.tensor([1.0, 1.0, 0.0])), torch.tensor(0.375 / 2))


def test_state_shapes_and_score_shape():
    mimn = small()
    state = mimn.init_state(3)
    assert state.memory.shape == (3, 4, 5) and state.utilisation.shape == (3, 4)
    assert state.controller.shape == (3, 7) and state.read.shape == (3, 5) and state.induction.shape == (3, 4, 4)
    state = mimn.update(state, torch.randn(3, 6, dtype=torch.float64), torch.tensor([True, True, False]))
    logits = mimn.score(state, torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64))
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    with pytest.raises(DataError, match="rows"):
        mimn.update(state, torch.randn(2, 6, dtype=torch.float64), torch.tensor([True, True]))
    with pytest.raises(ConfigError, match="induction_top_k"):
        small(induction_top_k=5)


def test_an_update_writes_one_unit_of_utilisation_and_masked_rows_keep_their_state():
    mimn = small()
    state = mimn.init_state(3)
    state = mimn.update(state, torch.randn(3, 6, dtype=torch.float64), torch.ones(3, dtype=torch.bool))
    after = mimn.update(state, torch.randn(3, 6, dtype=torch.float64), torch.tensor([True, False, True]))
    torch.testing.assert_close(after.utilisation.sum(dim=1), torch.tensor([2.0, 1.0, 2.0], dtype=torch.float64))
    for name in ("memory", "utilisation", "controller", "read", "induction"):
        assert torch.equal(getattr(after, name)[1], getattr(state, name)[1]), name
        assert not torch.equal(getattr(after, name)[0], getattr(state, name)[0]), name


def test_the_miu_steps_only_the_top_k_read_slots():
    mimn = small(induction_top_k=1)
    state = mimn.init_state(2)
    state = mimn.update(state, torch.randn(2, 6, dtype=torch.float64), torch.ones(2, dtype=torch.bool))
    changed = (state.induction != 0).any(dim=-1).sum(dim=1)
    assert changed.tolist() == [1, 1]


def test_rebalancing_keeps_write_weights_a_distribution_and_can_be_switched_off():
    mimn = small()
    w = torch.softmax(torch.randn(5, 4, dtype=torch.float64), dim=-1)
    g = torch.rand(5, 4, dtype=torch.float64) * 10
    with torch.no_grad():
        mimn.rebalance.weight.normal_()
    balanced = mimn.rebalanced(w, g)
    torch.testing.assert_close(balanced.sum(dim=-1), torch.ones(5, dtype=torch.float64))
    assert not torch.allclose(balanced, w)
    assert torch.equal(small(utilisation_regularization=False).rebalanced(w, g), w)


def test_streaming_events_one_at_a_time_equals_the_whole_sequence():
    mimn = small()
    gen = torch.Generator().manual_seed(1)
    lengths = [5, 0, 2, 3]
    events = torch.randn(4, 5, 6, generator=gen, dtype=torch.float64)
    mask = torch.arange(5).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # [4, 5]
    whole = mimn.encode(events, mask)
    for b, n in enumerate(lengths):  # a UIC serving one user: one event per call, batch of one
        state = mimn.init_state(1)
        for t in range(n):
            state = mimn.update(state, events[b:b + 1, t], torch.ones(1, dtype=torch.bool))
        for name in ("memory", "utilisation", "controller", "read", "induction"):
            torch.testing.assert_close(getattr(state, name)[0], getattr(whole, name)[b], msg=name)
    # gaps (masked steps in the middle) are skipped, not fed as zero events
    gapped = torch.stack([events[:, 0], torch.zeros_like(events[:, 0]), events[:, 1]], dim=1)
    gap_mask = torch.tensor([[True, False, True]] * 4)
    two = mimn.encode(events[:, :2], torch.ones(4, 2, dtype=torch.bool))
    torch.testing.assert_close(mimn.encode(gapped, gap_mask).memory, two.memory)


def test_gradients_reach_every_parameter():
    mimn = small()
    events = torch.randn(3, 4, 6, dtype=torch.float64)
    state = mimn.encode(events, torch.ones(3, 4, dtype=torch.bool))
    loss = mimn.score(state, torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)).sum()
    (loss + utilisation_loss(state.utilisation)).backward()
    missing = [n for n, p in mimn.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
