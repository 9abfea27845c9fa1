"""Next-action loss: both negative modes against the sampled-softmax formula computed by hand, accidental
hits masked, duplicate impressions counted once, the per-batch caps, empty batches, and the pair helpers."""

import itertools
import math

import pytest
import torch

from recsys.errors import ConfigError, DataError
from recsys.modules.next_action_loss import (
    NextActionLoss,
    NextActionLossConfig,
    first_occurrences,
    jagged_next_pairs,
    next_token_pairs,
    positive_engagement,
)

QUERIES = [[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]
NEXT_CONTENT = [[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]]
NEXT_IDS = [10, 20, 10]  # pairs 0 and 2 share their next item


def identity_loss(negatives: str, temperature: float = 0.5, **caps) -> NextActionLoss:
    loss = NextActionLoss(2, 2, NextActionLossConfig(enabled=True, negatives=negatives, temperature=temperature, **caps))
    with torch.no_grad():  # the projection is the identity: scores are cosines of the raw vectors
        loss.item_projection.weight.copy_(torch.eye(2))
        loss.item_projection.bias.zero_()
    return loss


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def softmax_loss(positive: float, negatives: list[float]) -> float:
    return -positive + math.log(math.exp(positive) + sum(math.exp(n) for n in negatives))


def tensors(*rows):
    return [torch.tensor(r, dtype=torch.float32) if isinstance(r[0], list) else torch.tensor(r) for r in rows]


def test_in_batch_negatives_by_hand_with_accidental_hits_masked():
    t = 0.5
    queries, content, ids = tensors(QUERIES, NEXT_CONTENT, NEXT_IDS)
    expected = []
    for i in range(3):
        negatives = [cosine(QUERIES[i], NEXT_CONTENT[j]) / t for j in range(3) if j != i and NEXT_IDS[j] != NEXT_IDS[i]]
        expected.append(softmax_loss(cosine(QUERIES[i], NEXT_CONTENT[i]) / t, negatives))
    loss = identity_loss("in_batch", t)(queries, content, ids)
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-5)


def test_impression_negatives_by_hand_deduplicated_and_hits_masked():
    t = 0.5
    impressions = [[0.0, 1.0], [5.0, 5.0], [0.0, 3.0], [-1.0, 2.0]]
    impression_ids = [30, 10, 30, 40]  # 30 twice (counted once, first occurrence); 10 is pair 0's and 2's next item
    queries, content, ids, negative_content, negative_ids = tensors(QUERIES, NEXT_CONTENT, NEXT_IDS, impressions,
                                                                    impression_ids)
    unique = {30: impressions[0], 10: impressions[1], 40: impressions[3]}
    expected = []
    for i in range(3):
        negatives = [cosine(QUERIES[i], vector) / t for item, vector in unique.items() if item != NEXT_IDS[i]]
        expected.append(softmax_loss(cosine(QUERIES[i], NEXT_CONTENT[i]) / t, negatives))
    loss = identity_loss("impressions", t)(queries, content, ids, negative_content, negative_ids)
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-5)


def test_impression_negatives_are_the_query_users_own_impressions():
    """Each query is scored against its own user's shown-not-engaged items only; an impression of
    another user (even of the same item) is no negative of it; duplicates count once per user."""
    t = 0.5
    impressions = [[0.0, 1.0], [5.0, 5.0], [0.0, 3.0], [-1.0, 2.0], [0.0, 1.0]]
    impression_ids = [30, 50, 40, 60, 30]
    impression_users = [7, 8, 7, 8, 8]  # item 30 shown to users 7 and 8
    query_users = [7, 8, 7]
    queries, content, ids, negative_content, negative_ids, neg_users, q_users = tensors(
        QUERIES, NEXT_CONTENT, NEXT_IDS, impressions, impression_ids, impression_users, query_users)
    expected = []
    for i in range(3):
        own = {(u, item): vector for vector, item, u in zip(impressions, impression_ids, impression_users)
               if u == query_users[i] and item != NEXT_IDS[i]}
        negatives = [cosine(QUERIES[i], vector) / t for vector in own.values()]
        expected.append(softmax_loss(cosine(QUERIES[i], NEXT_CONTENT[i]) / t, negatives))
    loss = identity_loss("impressions", t)(queries, content, ids, negative_content, negative_ids,
                                           query_users=q_users, negative_users=neg_users)
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-5)


def test_positive_engagement_excludes_hides_and_no_action():
    vocab = ("click", "save", "hide", "long_view")
    actions = torch.tensor([0b0001, 0b0100, 0b0101, 0, 0b1000])
    assert positive_engagement(actions, vocab, ["hide"]).tolist() == [True, False, True, False, True]
    assert positive_engagement(actions, vocab, []).tolist() == [True, True, True, False, True]
    with pytest.raises(ConfigError, match="negative_actions"):
        positive_engagement(actions, vocab, ["dislike"])


def test_the_modes_differ_and_impressions_need_impression_tokens():
    queries, content, ids = tensors(QUERIES, NEXT_CONTENT, NEXT_IDS)
    with pytest.raises(DataError, match="lifelong"):
        identity_loss("impressions")(queries, content, ids)
    empty = identity_loss("impressions")(queries, content, ids, torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))
    assert empty.item() == pytest.approx(0.0)  # no negative: the positive is the only class


def test_query_cap_uses_a_subset_of_the_pairs():
    queries, content, ids = tensors(QUERIES, NEXT_CONTENT, NEXT_IDS)
    capped = identity_loss("in_batch", max_queries=2)(queries, content, ids, generator=torch.Generator().manual_seed(0))
    subsets = [identity_loss("in_batch")(queries[list(s)], content[list(s)], ids[list(s)]).item()
               for s in itertools.combinations(range(3), 2)]
    assert any(capped.item() == pytest.approx(value, rel=1e-6) for value in subsets)
    full = identity_loss("in_batch", max_queries=3)(queries, content, ids)
    assert full.item() == pytest.approx(identity_loss("in_batch")(queries, content, ids).item())


def test_no_pairs_gives_zero_with_every_parameter_in_the_graph():
    loss_fn = identity_loss("in_batch")
    queries = torch.zeros(0, 2, requires_grad=True)
    loss = loss_fn(queries, torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))
    loss.backward()
    assert loss.item() == 0.0
    assert loss_fn.item_projection.weight.grad is not None and not loss_fn.item_projection.weight.grad.any()


def test_gradients_reach_queries_and_projection():
    queries, content, ids = tensors(QUERIES, NEXT_CONTENT, NEXT_IDS)
    queries.requires_grad_(True)
    loss_fn = identity_loss("in_batch")
    loss_fn(queries, content, ids).backward()
    assert queries.grad.abs().sum() > 0 and loss_fn.item_projection.weight.grad.abs().sum() > 0


def test_pair_helpers():
    eligible = torch.tensor([[False, True, True, True], [True, False, True, True]])
    rows, query, following = next_token_pairs(eligible)
    assert rows.tolist() == [0, 0, 1] and query.tolist() == [1, 2, 2] and following.tolist() == [2, 3, 3]
    rows, query, following = next_token_pairs(eligible, newest_first=True)
    assert rows.tolist() == [0, 0, 1] and query.tolist() == [2, 3, 3] and following.tolist() == [1, 2, 2]
    query, following = jagged_next_pairs(torch.tensor([True, True, True, True, False]), torch.tensor([2, 3]))
    assert query.tolist() == [0, 2] and following.tolist() == [1, 3]  # tokens 1 and 2 sit in different rows
    unique, first = first_occurrences(torch.tensor([7, 3, 7, 5, 3]))
    assert unique.tolist() == [3, 5, 7] and first.tolist() == [1, 3, 0]


def test_config_errors():
    with pytest.raises(ConfigError, match="negatives"):
        NextActionLossConfig(negatives="uniform")
    with pytest.raises(ConfigError, match="temperature"):
        NextActionLossConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="max_queries"):
        NextActionLossConfig(max_queries=0)
