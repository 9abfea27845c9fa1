import math

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG

from recsys.data.collate import jagged_from_lists
from recsys.data.schema import EventLog
from recsys.data.sequences import ITEM_KEY, SequenceExamples
from recsys.data.splits import leave_one_out
from recsys.errors import ConfigError, DataError
from recsys.metrics.retrieval import (
    MISSED,
    RetrievalMetrics,
    describe_protocol,
    excluded_items,
    rank_of_targets,
    topk_items,
)


def brute_force_ranks(users, items, targets, exclude_lists):
    """Reference: score everything, drop the excluded items, count strictly higher; an excluded
    target is a miss."""
    scores = users @ items.T
    ranks = []
    for b in range(users.shape[0]):
        if int(targets[b]) in exclude_lists[b]:
            ranks.append(MISSED)
            continue
        row = scores[b].clone()
        for i in exclude_lists[b]:
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
    exclude_lists[1].append(int(targets[1]))  # the target in its own history: excluded, a miss
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
    assert rank_of_targets(users, items, targets, exclude=exclude).tolist() == [2, 1, MISSED]  # 0 is excluded


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
    for b in range(0, num_users, 7):
        exclude_lists[b].append(int(targets[b]))  # repeats: misses, worth 0 in every metric
    ranks = rank_of_targets(users, items, targets, exclude=jagged_from_lists(exclude_lists), chunk_size=64)
    ours = RetrievalMetrics(ks_hr=(1, 10, 50, 200), ks_ndcg=(10, 50, 200))
    ours.update(ranks[:17])  # two updates accumulate like one
    ours.update(ranks[17:])
    result = ours.compute()

    scores = users @ items.T
    for b, excluded in enumerate(exclude_lists):
        scores[b, excluded] = -1e9  # torchmetrics sorts the excluded items last
    found = torch.tensor([int(targets[b]) not in exclude_lists[b] for b in range(num_users)])
    share = float(found.double().mean())  # misses add 0: the mean over all rows is share x the mean over the others
    scores, kept = scores[found], int(found.sum())
    relevant = torch.zeros(kept, num_items, dtype=torch.bool)
    relevant[torch.arange(kept), targets[found]] = True
    indexes = torch.arange(kept)[:, None].expand(kept, num_items)
    args = (scores.flatten(), relevant.flatten(), indexes.flatten())
    for k in (1, 10, 50, 200):
        assert result[f"hr@{k}"] == pytest.approx(share * RetrievalHitRate(top_k=k)(*args).item(), abs=1e-6)
    for k in (10, 50, 200):
        assert result[f"ndcg@{k}"] == pytest.approx(share * RetrievalNormalizedDCG(top_k=k)(*args).item(), abs=1e-6)
    assert result["mrr"] == pytest.approx(share * RetrievalMRR()(*args).item(), abs=1e-6)
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


# ---------------------------------------------------------------- the protocol (eval.exclude_seen)
def test_an_excluded_target_is_a_miss_and_the_rest_of_its_row_unchanged():
    """The exclusion never spares the target: a repeat of an excluded item is no candidate."""
    items = torch.tensor([[4.0], [3.0], [2.0], [1.0], [0.0]])  # item i scores 4 - i for user [1]
    users = torch.ones(2, 1)
    targets = torch.tensor([3, 3])
    exclude = jagged_from_lists([[0, 1, 2, 3], [0, 1, 2]])  # row 0: the target is a repeat
    assert rank_of_targets(users, items, targets, exclude=exclude).tolist() == [MISSED, 0]
    metrics = RetrievalMetrics(ks_hr=(1, 5), ks_ndcg=(5,))
    metrics.update(torch.tensor([MISSED, 0]))
    assert metrics.compute() == pytest.approx({"hr@1": 0.5, "hr@5": 0.5, "ndcg@5": 0.5, "mrr": 0.5})


def test_excluded_items_chooses_by_protocol_and_names_it():
    last_n, whole = jagged_from_lists([[3, 4]]), jagged_from_lists([[1, 2, 3, 4]])
    assert excluded_items("last_n", last_n, whole) is last_n
    assert excluded_items("all", last_n, whole) is whole
    assert excluded_items("none", last_n, whole) is None
    with pytest.raises(ConfigError, match="exclude_seen"):
        excluded_items("history", last_n, whole)
    with pytest.raises(DataError, match="whole histories"):
        excluded_items("all", last_n, None)
    assert "last 50 history items" in describe_protocol("last_n", 50)
    assert describe_protocol("none", 50).startswith("exclude_seen=none")


REPEAT_N = 4  # history length the model reads (data.max_sequence)


def repeat_heavy_log(num_users: int = 60, num_items: int = 40, seed: int = 0) -> EventLog:
    """Users of 6 to 14 events whose validation and test targets are mostly repeats: of one of the
    last ``REPEAT_N`` items (a third), of an older item (a third), or a fresh item (a third)."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(num_users):
        items = list(rng.choice(num_items, size=int(rng.integers(6, 15)), replace=False))
        for _ in range(2):  # validation target, then test target
            kind = rng.integers(3)
            if kind == 0:
                items.append(items[-1 - int(rng.integers(REPEAT_N))])  # a recent repeat
            elif kind == 1:
                items.append(items[int(rng.integers(len(items) - REPEAT_N))])  # an old repeat
            else:
                items.append(int(rng.choice([i for i in range(num_items) if i not in items])))
        rows += [(user, int(item), t, 1) for t, item in enumerate(items)]
    user, item, time, actions = map(list, zip(*rows))
    return EventLog.from_arrays(user_id=user, item_id=item, timestamp=time, actions=actions, num_items=num_items)


def history_first_scores(batch, num_items: int, seed: int = 0):
    """A scorer that ranks every item of the user's whole history above every other item:
    ``(user vectors [B, I], item vectors [I, I])`` with one-hot items."""
    rng = torch.Generator().manual_seed(seed)
    users = torch.rand(batch.batch_size, num_items, generator=rng)  # [B, I] noise in [0, 1)
    seen = batch.seen_items
    rows = torch.repeat_interleave(torch.arange(batch.batch_size), seen.lengths().long())
    users[rows, seen.values()] += 10.0  # history first
    return users, torch.eye(num_items)


def reference_ranks(users, items, past_ids, targets, k: int):
    """The reference's ``eval_metrics_v2_from_tensors``: the padded ``past_ids [B, N]`` (0 =
    padding, ids shifted by one) are invalid ids (score -inf), the target's 0-based rank is its
    place in the top K, or a miss when it is not among them."""
    scores = users @ items.T  # [B, I]
    padded = torch.cat([torch.full((scores.shape[0], 1), float("-inf")), scores], dim=1)  # id 0 = padding
    padded.scatter_(1, past_ids, float("-inf"))
    top = padded.topk(k, dim=1).indices  # [B, K]
    hit = top == (targets + 1)[:, None]
    return torch.where(hit.any(dim=1), hit.float().argmax(dim=1), torch.full_like(targets, MISSED))


def test_default_protocol_equals_the_reference_and_history_first_gains_nothing_on_repeat_heavy_data():
    log = repeat_heavy_log()
    split = leave_one_out(log)
    for stage in ("valid", "test"):
        rows = SequenceExamples.build(log, split, stage, max_seq_len=REPEAT_N)
        batch = rows.collate(np.arange(len(rows)))
        users, items = history_first_scores(batch, log.num_items)
        sequence = batch.item_ids[ITEM_KEY]
        ranks = {p: rank_of_targets(users, items, batch.target_item, exclude=excluded_items(p, sequence, batch.seen_items))
                 for p in ("last_n", "all", "none")}

        # The target is excluded (a miss) exactly when it lies in the last N history items.
        recent = [int(t) in seq.tolist() for t, seq in zip(batch.target_item, sequence.to_dense())]
        older = [int(t) in hist.tolist() for t, hist in zip(batch.target_item, batch.seen_items.to_dense())]
        assert any(recent) and any(o and not r for o, r in zip(older, recent)) and not all(older)
        assert [int(r) == MISSED for r in ranks["last_n"]] == recent
        assert [int(r) == MISSED for r in ranks["all"]] == older
        assert not (ranks["none"] == MISSED).any()

        # Per row equal to the reference's ranks (cut at its K), which masks the padded last N ids.
        past_ids = torch.zeros(batch.batch_size, REPEAT_N, dtype=torch.long)
        for b, seq in enumerate(sequence.to_dense()):
            past_ids[b, :len(seq)] = seq + 1
        k = 10
        ours = torch.where(ranks["last_n"] < k, ranks["last_n"], torch.full_like(ranks["last_n"], MISSED))
        assert torch.equal(ours, reference_ranks(users, items, past_ids, batch.target_item, k))

        # A scorer that ranks history first gains nothing from the default exclusion.
        scores = {}
        for protocol, r in ranks.items():
            metrics = RetrievalMetrics(ks_hr=(1, 5, 10), ks_ndcg=(5, 10))
            metrics.update(r)
            scores[protocol] = metrics.compute()
        for name in scores["none"]:
            assert scores["last_n"][name] <= scores["none"][name] + 1e-12, (stage, name, scores)
        assert scores["last_n"]["hr@10"] < scores["none"]["hr@10"]  # it loses the recent repeats
