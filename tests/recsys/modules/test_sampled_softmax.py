import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError, DataError
from recsys.modules.sampled_softmax import SampledSoftmaxLoss


def test_uniform_equals_a_hand_computed_case():
    # 1 query, 2 negatives, no normalisation, temperature 0.5.
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    query = torch.tensor([[2.0, 1.0]])
    loss_fn = SampledSoftmaxLoss(num_negatives=2, num_items=4, temperature=0.5, l2_normalize=False)
    negatives = torch.randint(0, 4, (1, 2), generator=torch.Generator().manual_seed(7))
    negatives_list = negatives[0].tolist()
    positive = 3 if 3 not in negatives_list else next(i for i in range(4) if i not in negatives_list)
    loss = loss_fn(query, torch.tensor([positive]), lambda ids: table[ids], generator=torch.Generator().manual_seed(7))
    score = lambda i: (2.0 * table[i, 0] + 1.0 * table[i, 1]).item() / 0.5  # noqa: E731
    logits = [score(positive)] + [score(i) for i in negatives_list]
    expected = -logits[0] + math.log(sum(math.exp(x) for x in logits))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_l2_normalisation_and_temperature():
    # With normalisation a score is the cosine; positive and a negative at 90 degrees.
    table = torch.tensor([[3.0, 0.0], [0.0, 5.0]])
    query = torch.tensor([[10.0, 0.0]])
    loss_fn = SampledSoftmaxLoss(num_negatives=1, num_items=2, temperature=0.5, l2_normalize=True)
    seed = next(s for s in range(100) if torch.randint(0, 2, (1, 1), generator=torch.Generator().manual_seed(s)) == 1)
    loss = loss_fn(query, torch.tensor([0]), lambda ids: table[ids], generator=torch.Generator().manual_seed(seed))
    expected = -2.0 + math.log(math.exp(2.0) + math.exp(0.0))  # cosines 1 and 0, over 0.5
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_accidental_hits_are_masked():
    # Only two items: every negative drawn is either the positive (masked) or item 1.
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.5]] * 50)
    positives = torch.zeros(50, dtype=torch.long)
    loss_fn = SampledSoftmaxLoss(num_negatives=4, num_items=2, temperature=1.0, l2_normalize=False)
    negatives = torch.randint(0, 2, (50, 4), generator=torch.Generator().manual_seed(1))
    loss = loss_fn(queries, positives, lambda ids: table[ids], generator=torch.Generator().manual_seed(1))
    real = (negatives == 1).sum(dim=1).double()  # real negatives per query, each scoring 0.5
    expected = (-1.0 + torch.log(math.exp(1.0) + real * math.exp(0.5))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert (negatives == 0).any()  # the case did contain accidental hits


@pytest.mark.parametrize("num_items, num_negatives, dim", [(7, 16, 4), (5000, 3, 2)])
def test_uniform_matches_an_explicit_gather_in_both_scoring_paths(num_items, num_negatives, dim):
    # (7, 16, 4): few distinct ids, scored by one [N, U] matmul; (5000, 3, 2): U > K * D, gathered.
    torch.manual_seed(3)
    table = torch.randn(num_items, dim, dtype=torch.float64)
    queries = torch.randn(40, dim, dtype=torch.float64)
    positives = torch.randint(0, num_items, (40,))
    loss_table, loss_queries = table.clone().requires_grad_(), queries.clone().requires_grad_()
    loss_fn = SampledSoftmaxLoss(num_negatives=num_negatives, num_items=num_items, temperature=0.1)
    loss = loss_fn(loss_queries, positives, lambda ids: loss_table[ids], generator=torch.Generator().manual_seed(5))
    loss.backward()

    ref_table, ref_queries = table.clone().requires_grad_(), queries.clone().requires_grad_()
    negatives = torch.randint(0, num_items, (40, num_negatives), generator=torch.Generator().manual_seed(5))
    q = F.normalize(ref_queries, dim=-1)
    items = F.normalize(ref_table, dim=-1)
    logits = torch.cat([(q * items[positives]).sum(-1, keepdim=True),
                        torch.einsum("nd,nkd->nk", q, items[negatives])], dim=1) / 0.1
    logits[:, 1:] = logits[:, 1:].masked_fill(negatives == positives[:, None], float("-inf"))
    expected = F.cross_entropy(logits, torch.zeros(40, dtype=torch.long))
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(loss_table.grad, ref_table.grad)
    torch.testing.assert_close(loss_queries.grad, ref_queries.grad)


def test_gradients_flow_to_queries_and_items():
    torch.manual_seed(0)
    embedding = nn.Embedding(100, 8)
    queries = torch.randn(30, 8, requires_grad=True)
    positives = torch.randint(0, 100, (30,))
    for mode in ("uniform", "in_batch"):
        loss = SampledSoftmaxLoss(num_negatives=16, num_items=100, negatives=mode)(queries, positives, embedding)
        assert torch.isfinite(loss)
        loss.backward()
        assert queries.grad.abs().sum() > 0
        assert embedding.weight.grad[positives].abs().sum() > 0
        queries.grad, embedding.weight.grad = None, None


def test_in_batch_equals_full_softmax_over_the_batch_positives():
    torch.manual_seed(2)
    table = torch.randn(20, 6)
    queries = torch.randn(5, 6)
    positives = torch.tensor([3, 7, 3, 11, 0])  # rows 0 and 2 share item 3: an accidental hit for each other
    loss_fn = SampledSoftmaxLoss(num_negatives=0, negatives="in_batch", temperature=0.1)
    loss = loss_fn(queries, positives, lambda i: table[i])
    q, p = F.normalize(queries, dim=-1), F.normalize(table[positives], dim=-1)
    logits = q @ p.T / 0.1  # [5, 5]
    expected = []
    for n in range(5):
        others = [m for m in range(5) if m != n and positives[m] != positives[n]]
        row = torch.cat([logits[n, n:n + 1], logits[n, others]])
        expected.append(-row[0] + torch.logsumexp(row, dim=0))
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_errors_and_empty_input():
    with pytest.raises(ConfigError, match="num_items"):
        SampledSoftmaxLoss(num_negatives=4)
    with pytest.raises(ConfigError, match="negatives"):
        SampledSoftmaxLoss(num_negatives=4, num_items=10, negatives="popular")
    loss_fn = SampledSoftmaxLoss(num_negatives=4, num_items=10)
    table = torch.randn(10, 3)
    with pytest.raises(DataError, match="one per query"):
        loss_fn(torch.randn(4, 3), torch.zeros(3, dtype=torch.long), lambda i: table[i])
    with pytest.raises(DataError, match="item_embedding"):
        loss_fn(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), lambda i: table[i])
    empty = loss_fn(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, dtype=torch.long), lambda i: table[i])
    assert empty.item() == 0.0


def test_shared_uniform_negatives_equal_an_explicit_softmax():
    torch.manual_seed(0)
    table = torch.randn(20, 4)
    queries, positives = torch.randn(6, 4), torch.tensor([1, 2, 3, 3, 5, 7])
    loss = SampledSoftmaxLoss(num_negatives=8, num_items=20, temperature=0.5, negatives="uniform_shared")
    generator = torch.Generator().manual_seed(3)
    value = loss(queries, positives, lambda ids: table[ids], generator=generator)
    negatives = torch.randint(0, 20, (8,), generator=torch.Generator().manual_seed(3))
    q, t = F.normalize(queries, dim=-1), F.normalize(table, dim=-1)
    expected = []
    for n in range(6):
        logits = torch.cat([(q[n] * t[positives[n]]).sum()[None], t[negatives] @ q[n]]) / 0.5
        logits[1:][negatives == positives[n]] = float("-inf")  # accidental hits
        expected.append(-torch.log_softmax(logits, 0)[0])
    torch.testing.assert_close(value, torch.stack(expected).mean())
