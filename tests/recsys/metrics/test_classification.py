import math

import numpy as np
import pytest
import torch

from recsys.errors import DataError
from recsys.metrics.classification import HeadMetrics, normalized_entropy, roc_auc


def brute_force_auc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=60).astype(np.float64)  # many ties
    labels = (rng.random(60) < 0.3).astype(np.int64)
    expected = brute_force_auc(scores, labels)
    assert roc_auc(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert roc_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(expected, abs=1e-12)


def test_auc_known_values():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([1.0, 1.0, 1.0], [0, 1, 1]) == pytest.approx(0.5)
    assert math.isnan(roc_auc([0.2, 0.3], [1, 1]))
    with pytest.raises(DataError, match="NaN"):
        roc_auc([float("nan"), 0.3], [0, 1])


def test_normalized_entropy_of_base_rate_is_one_and_hand_case():
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0])
    base_logit = math.log(0.25 / 0.75)
    assert normalized_entropy(torch.full((4,), base_logit), labels) == pytest.approx(1.0)
    logits = torch.tensor([2.0, -1.0, 0.0, -3.0])
    p = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    y = labels.numpy()
    log_loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    base = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert normalized_entropy(logits, labels) == pytest.approx(log_loss / base, rel=1e-6)
    assert math.isnan(normalized_entropy(logits, torch.zeros(4)))


def test_head_metrics_accumulates_over_batches():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(50, 2)), dtype=torch.float32)
    labels = torch.tensor(np.c_[rng.random(50) < 0.4, np.zeros(50)], dtype=torch.float32)
    metrics = HeadMetrics(["click", "save"])
    for start in range(0, 50, 16):
        metrics.update(logits[start:start + 16], labels[start:start + 16])
    result = metrics.compute()
    assert result["click"]["auc"] == pytest.approx(brute_force_auc(logits[:, 0].tolist(), labels[:, 0].tolist()))
    assert result["click"]["ne"] == pytest.approx(normalized_entropy(logits[:, 0], labels[:, 0]))
    assert result["click"]["positives"] == int(labels[:, 0].sum())
    assert result["click"]["count"] == 50 and not result["click"]["single_class"]
    assert result["save"]["single_class"] and math.isnan(result["save"]["auc"]) and result["save"]["positives"] == 0
    metrics.reset()
    assert metrics.compute()["click"]["count"] == 0
    with pytest.raises(DataError, match=r"\[B, 2\]"):
        metrics.update(logits[:, :1], labels[:, :1])


def test_head_metrics_states_join_across_ranks():
    torch.manual_seed(0)
    logits, labels = torch.randn(40, 2), (torch.rand(40, 2) > 0.5).float()
    whole = HeadMetrics(["a", "b"])
    whole.update(logits, labels)
    parts = []
    for rank in range(2):
        m = HeadMetrics(["a", "b"])
        m.update(logits[rank::2], labels[rank::2])
        parts.append(m.state())
    joined = HeadMetrics.from_states(["a", "b"], parts).compute()
    for head in ("a", "b"):
        assert joined[head]["auc"] == pytest.approx(whole.compute()[head]["auc"])
        assert joined[head]["count"] == 40
