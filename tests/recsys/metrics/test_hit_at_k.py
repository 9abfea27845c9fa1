"""HIT@K on hand-made requests: ranks within requests, pessimistic ties, hide ranked lowest first,
requests without positives, and batches / ranks merged before ranking."""

import math

import numpy as np
import pytest
import torch

from recsys.errors import DataError
from recsys.metrics.hit_at_k import HitAtK, hit_at_k, request_ranks

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
    # at 0.4 and is ranked last of them (3, a hit at K=3 but a miss at K=2); request 9: rank 2 (hit).
    value, positives, requests = hit_at_k(REQUESTS, SCORES, labels, k=3)
    assert (value, positives, requests) == (pytest.approx(3 / 4), 4, 3)
    assert hit_at_k(REQUESTS, SCORES, labels, k=2)[0] == pytest.approx(2 / 4)


def test_ties_never_flatter_a_constant_scorer():
    labels = [1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0]
    constant = [0.5] * len(labels)
    assert hit_at_k(REQUESTS, constant, labels, k=3)[0] == pytest.approx(1 / 4)  # only the 2-candidate request hits
    assert hit_at_k(REQUESTS, constant, labels, k=3, negative=True)[0] == pytest.approx(1.0)  # every hide "shown"


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


def test_input_errors():
    with pytest.raises(DataError, match="one value per row"):
        hit_at_k([1, 2], [0.1], [1, 0])
    with pytest.raises(DataError, match="NaN"):
        hit_at_k([1, 1], [0.1, float("nan")], [1, 0])
    with pytest.raises(DataError, match=r"\[B, 2\]"):
        HitAtK(["a", "b"]).update(torch.zeros(3), torch.zeros(3, 1), torch.zeros(3, 1))
