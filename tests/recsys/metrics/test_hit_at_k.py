"""HIT@K on hand-made requests: ranks within requests, ties credited as random tie-breaking would,
hide ranked lowest first, requests without positives, the combined (utility) ranking, and batches /
ranks merged before ranking."""

import math

import numpy as np
import pytest
import torch

from recsys.errors import ConfigError, DataError
from recsys.metrics.hit_at_k import HitAtK, expected_hits, head_weights, hit_at_k, request_ranks, utility

# Two requests of 5 candidates and one of 2; scores of one head.
REQUESTS = [7, 7, 7, 7, 7, 3, 3, 3, 3, 3, 9, 9]
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.4, 0.4, 0.4, 0.2, 0.3, 0.1]


def test_ranks_within_each_request_with_ties():
    request, scores = np.array(REQUESTS), np.array(SCORES)
    assert request_ranks(request, scores).tolist() == [1, 2, 3, 4, 5, 5, 3, 3, 3, 4, 1, 2]
    assert request_ranks(request, scores, ties_first=True).tolist() == [1, 2, 3, 4, 5, 5, 1, 1, 1, 4, 1, 2]


def test_hit_at_3_by_hand():
    labels = [1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1]
    # request 7: positives at ranks 1 (hit) and 4 (miss); request 3: the positive ties with two others
    # at 0.4 for ranks 1-3 (a hit at K=3; at K=2 a hit with probability 2/3); request 9: rank 2 (hit).
    value, positives, requests = hit_at_k(REQUESTS, SCORES, labels, k=3)
    assert (value, positives, requests) == (pytest.approx(3 / 4), 4, 3)
    assert hit_at_k(REQUESTS, SCORES, labels, k=2)[0] == pytest.approx((1 + 0 + 2 / 3 + 1) / 4)


def test_ties_get_the_expected_credit_of_random_tie_breaking():
    labels = [1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0]
    constant = [0.5] * len(labels)
    # a constant scorer: 3/5 per positive in the 5-candidate requests, 1 in the 2-candidate one; hide alike
    assert hit_at_k(REQUESTS, constant, labels, k=3)[0] == pytest.approx((3 / 5 + 2 * 3 / 5 + 1) / 4)
    assert hit_at_k(REQUESTS, constant, labels, k=3, negative=True)[0] == pytest.approx((3 / 5 + 2 * 3 / 5 + 1) / 4)
    # the expected credit equals the average over random tie-breaks (a tiny jitter on the scores)
    rng = np.random.default_rng(0)
    for negative in (False, True):
        draws = [hit_at_k(REQUESTS, np.array(SCORES) + 1e-9 * rng.random(12), labels, k=2, negative=negative)[0]
                 for _ in range(4000)]
        assert np.mean(draws) == pytest.approx(hit_at_k(REQUESTS, SCORES, labels, k=2, negative=negative)[0], abs=0.01)


def test_a_repeated_item_scored_equally_is_not_penalised():
    # one page shows item A twice (same true probability 0.9) and three weaker items; the user clicked
    # the second copy. Scoring both copies 0.9 is the best a model can do: expected credit 1 at K=2.
    request, truth, clicked = [1] * 5, [0.9, 0.9, 0.2, 0.1, 0.05], [0, 1, 0, 0, 0]
    assert hit_at_k(request, truth, clicked, k=2)[0] == pytest.approx(1.0)
    assert hit_at_k(request, truth, clicked, k=1)[0] == pytest.approx(0.5)
    assert expected_hits(np.array(request), np.array(truth), 1).tolist() == [0.5, 0.5, 0.0, 0.0, 0.0]


def test_negative_heads_rank_lowest_first():
    hidden = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]  # the lowest hide score of requests 7 and 9: the model missed both
    assert hit_at_k(REQUESTS, SCORES, hidden, k=1, negative=True)[0] == pytest.approx(1.0)  # both shown on top: worst
    assert hit_at_k(REQUESTS, SCORES, hidden, k=1)[0] == pytest.approx(0.0)  # highest first, neither is on top
    found = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]  # the highest hide scores: the model found both
    assert hit_at_k(REQUESTS, SCORES, found, k=1, negative=True)[0] == pytest.approx(0.0)  # kept off the top: best


def test_requests_without_positives_are_skipped_and_no_positive_is_nan():
    labels = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert hit_at_k(REQUESTS, SCORES, labels, k=3) == (1.0, 1, 1)
    value, positives, requests = hit_at_k(REQUESTS, SCORES, [0] * 12, k=3)
    assert math.isnan(value) and positives == 0 and requests == 0


def test_batches_and_ranks_merge_before_ranking():
    heads = ["click", "hide"]
    rng = np.random.default_rng(0)
    request = torch.tensor(REQUESTS)
    scores = torch.from_numpy(rng.normal(size=(12, 2))).float()
    labels = torch.from_numpy(rng.random((12, 2)) < 0.4).float()
    whole = HitAtK(heads)
    whole.update(request, scores, labels)
    # a request's rows end up on two "ranks", each seeing two batches in another order
    order = torch.from_numpy(rng.permutation(12))
    parts = []
    for rank_rows in (order[:7], order[7:]):
        part = HitAtK(heads)
        for rows in (rank_rows[:3], rank_rows[3:]):
            part.update(request[rows], scores[rows], labels[rows])
        parts.append(part.state())
    merged = HitAtK.from_states(heads, parts).compute()
    assert merged == whole.compute()
    assert merged["hide"]["hit@3"] == hit_at_k(REQUESTS, scores[:, 1].numpy(), labels[:, 1].numpy(), 3, negative=True)[0]
    assert whole.negative_heads == ["hide"]


def test_combined_ranking_by_the_utility_of_all_heads():
    heads = ["click", "hide"]
    # one request of 4 candidates: logits of click and hide; the utility p_click - p_hide orders them
    logits = torch.tensor([[2.0, 3.0], [1.0, -3.0], [0.0, -3.0], [-1.0, -3.0]])
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    sigmoid = torch.sigmoid(logits.double()).numpy()
    u = sigmoid[:, 0] - sigmoid[:, 1]
    np.testing.assert_allclose(utility(logits.numpy(), [1.0, -1.0]), u)
    assert np.argsort(-u).tolist() == [1, 2, 3, 0]  # the hidden candidate goes last despite its click logit
    metric = HitAtK(heads, k=2, weights=head_weights(heads))
    metric.update(torch.zeros(4, dtype=torch.int64), logits, labels)
    result = metric.compute()
    assert result["click"]["combined_hit@2"] == pytest.approx(1 / 2)  # click positives at utility ranks 4 and 2
    assert result["hide"]["combined_hit@2"] == pytest.approx(0.0)  # the hide is kept off the top: best
    assert result["click"]["hit@2"] == pytest.approx(1 / 2)  # per-head click ranking: ranks 1 and 3
    assert result["hide"]["hit@2"] == pytest.approx(0.0)  # per-head hide ranking (lowest first): rank 4
    assert "combined_hit@2" not in HitAtK(heads, k=2).compute().get("click", {})


def test_head_weights_default_and_errors():
    assert head_weights(["click", "save", "hide", "long_view"]) == [1.0, 1.0, -1.0, 1.0]
    assert head_weights(["click", "hide"], {"hide": -3, "click": 0.5}) == [0.5, -3.0]
    with pytest.raises(ConfigError, match="not heads"):
        head_weights(["click"], {"clik": 1.0})
    with pytest.raises(ConfigError, match="finite"):
        head_weights(["click"], {"click": float("nan")})
    with pytest.raises(ConfigError, match="all 0"):
        head_weights(["click", "hide"], {"click": 0, "hide": 0})


def test_input_errors():
    with pytest.raises(DataError, match="one value per row"):
        hit_at_k([1, 2], [0.1], [1, 0])
    with pytest.raises(DataError, match="NaN"):
        hit_at_k([1, 1], [0.1, float("nan")], [1, 0])
    with pytest.raises(DataError, match=r"\[B, 2\]"):
        HitAtK(["a", "b"]).update(torch.zeros(3), torch.zeros(3, 1), torch.zeros(3, 1))
