import math

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG

from recsys.data.collate import jagged_from_lists
from recsys.errors import ConfigError, DataError
from recsys.metrics.retrieval import RetrievalMetrics, rank_of_targets, topk_items


def brute_force_ranks(users, items, targets, exclude_lists):
    """Reference: score everything, drop the excluded items (not the target), count strictly higher."""
    scores = users @ items.T
    ranks = []
    for b in range(users.shape[0]):
        row = scores[b].clone()
        for i in exclude_lists[b]:
            if i != targets[b]:
                row[i] = float("-inf")
        target_score = row[targets[b]].item()
        row[targets[b]] = float("-inf")
        ranks.append(int((row > target_score).sum()))
    return torch.tensor(ranks)


def test_ranks_match_brute_force_for_any_chunk_size():
    torch.manual_seed(0)
    users, items = torch.randn(7, 5), torch.randn(103, 5)
    targets = torch.randint(0, 103, (7,))
    exclude_lists = [torch.randint(0, 103, (n,)).tolist() for n in (0, 3, 10, 1, 0, 20, 5)]
    exclude_lists[1].append(int(targets[1]))  # the target in its own history: never excluded
    expected = brute_force_ranks(users, items, targets, exclude_lists)
    for chunk_size in (1, 10, 64, 103, 1000):
        got = rank_of_targets(users, items, targets, exclude=jagged_from_lists(exclude_lists), chunk_size=chunk_size)
        assert torch.equal(got, expected), chunk_size


def test_hand_computed_ranks_and_exclusion():
    items = torch.tensor([[4.0], [3.0], [2.0], [1.0], [0.0]])  # item i scores 4 - i for user [1]
    users = torch.tensor([[1.0], [1.0], [1.0]])
    targets = torch.tensor([2, 2, 0])
    exclude = jagged_from_lists([[], [0], [0, 1]])
    assert rank_of_targets(users, items, targets).tolist() == [2, 2, 0]
    assert rank_of_targets(users, items, targets, exclude=exclude).tolist() == [2, 1, 0]


def test_ties_count_only_strictly_higher_scores_by_default():
    items = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # 0, 1, 2 identical
    users = torch.tensor([[0.5, 0.0]])
    target = torch.tensor([1])
    assert rank_of_targets(users, items, target).tolist() == [1]  # only item 3 is strictly higher
    assert rank_of_targets(users, items, target, ties="pessimistic").tolist() == [3]
    # Identical random vectors tie exactly whatever the chunking.
    torch.manual_seed(3)
    items = torch.randn(50, 16)
    items[[7, 30, 41]] = items[12].clone()
    users = torch.randn(4, 16)
    for chunk_size in (8, 50):
        optimistic = rank_of_targets(users, items, torch.full((4,), 12), chunk_size=chunk_size)
        pessimistic = rank_of_targets(users, items, torch.full((4,), 12), chunk_size=chunk_size, ties="pessimistic")
        assert torch.equal(pessimistic - optimistic, torch.full((4,), 3))
    with pytest.raises(ConfigError, match="ties"):
        rank_of_targets(users, items, torch.full((4,), 12), ties="average")


def test_metrics_hand_computed():
    metrics = RetrievalMetrics(ks_hr=(1, 10), ks_ndcg=(10,))
    metrics.update(torch.tensor([0, 3, 20]))
    result = metrics.compute()
    assert result["hr@1"] == pytest.approx(1 / 3)
    assert result["hr@10"] == pytest.approx(2 / 3)
    assert result["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(5)) / 3)
    assert result["mrr"] == pytest.approx((1.0 + 1 / 4 + 1 / 21) / 3)
    assert metrics.names == ["hr@1", "hr@10", "ndcg@10", "mrr"] and metrics.count == 3
    metrics.reset()
    assert math.isnan(metrics.compute()["mrr"])


def test_metrics_match_torchmetrics_on_random_cases():
    torch.manual_seed(1)
    num_users, num_items = 40, 300
    users, items = torch.randn(num_users, 8), torch.randn(num_items, 8)
    targets = torch.randint(0, num_items, (num_users,))
    exclude_lists = [torch.randint(0, num_items, (int(n),)).tolist() for n in torch.randint(0, 30, (num_users,))]
    ranks = rank_of_targets(users, items, targets, exclude=jagged_from_lists(exclude_lists), chunk_size=64)
    ours = RetrievalMetrics(ks_hr=(1, 10, 50, 200), ks_ndcg=(10, 50, 200))
    ours.update(ranks[:17])  # two updates accumulate like one
    ours.update(ranks[17:])
    result = ours.compute()

    scores = users @ items.T
    for b, excluded in enumerate(exclude_lists):
        for i in excluded:
            if i != targets[b]:
                scores[b, i] = -1e9  # torchmetrics sorts the excluded items last
    relevant = torch.zeros(num_users, num_items, dtype=torch.bool)
    relevant[torch.arange(num_users), targets] = True
    indexes = torch.arange(num_users)[:, None].expand(num_users, num_items)
    args = (scores.flatten(), relevant.flatten(), indexes.flatten())
    for k in (1, 10, 50, 200):
        assert result[f"hr@{k}"] == pytest.approx(RetrievalHitRate(top_k=k)(*args).item(), abs=1e-6)
    for k in (10, 50, 200):
        assert result[f"ndcg@{k}"] == pytest.approx(RetrievalNormalizedDCG(top_k=k)(*args).item(), abs=1e-6)
    assert result["mrr"] == pytest.approx(RetrievalMRR()(*args).item(), abs=1e-6)
    assert 0 < result["hr@10"] < 1  # a case where the cut-offs matter


def test_metrics_states_merge_across_processes():
    ranks = torch.tensor([0, 5, 9, 300, 2, 1])
    whole = RetrievalMetrics()
    whole.update(ranks)
    parts = [RetrievalMetrics(), RetrievalMetrics()]
    parts[0].update(ranks[:2])
    parts[1].update(ranks[2:])
    merged = RetrievalMetrics.from_states((1, 10, 50, 200), (10, 50, 200), [p.state() for p in parts])
    assert merged.compute() == pytest.approx(whole.compute())
    with pytest.raises(DataError, match=">= 0"):
        whole.update(torch.tensor([-1]))


def test_topk_matches_a_full_sort():
    torch.manual_seed(2)
    users, items = torch.randn(6, 4), torch.randn(90, 4)
    exclude_lists = [[0, 1, 2], [], [5], list(range(80)), [], [89]]
    scores, ids = topk_items(users, items, k=12, exclude=jagged_from_lists(exclude_lists), chunk_size=25)
    full = users @ items.T
    for b, excluded in enumerate(exclude_lists):
        full[b, excluded] = float("-inf")
    expected_scores, expected_ids = full.topk(12, dim=1)
    assert torch.allclose(scores, expected_scores)
    found = torch.isfinite(expected_scores)
    assert found.sum() == 6 * 12 - 2  # user 3 has only 10 items left: two places stay -inf
    assert torch.equal(ids[found], expected_ids[found])
    assert ids[3, 10:].tolist() == [-1, -1]
    with pytest.raises(ConfigError, match="k must be"):
        topk_items(users, items, k=91)


def test_bad_inputs_raise_clear_errors():
    users, items = torch.randn(2, 4), torch.randn(10, 4)
    with pytest.raises(DataError, match="item ids in 0..9"):
        rank_of_targets(users, items, torch.tensor([0, 10]))
    with pytest.raises(DataError, match="one row per user"):
        rank_of_targets(users, items, torch.tensor([0, 1]), exclude=jagged_from_lists([[1]]))
    with pytest.raises(DataError, match="share D"):
        rank_of_targets(users, torch.randn(10, 3), torch.tensor([0, 1]))
