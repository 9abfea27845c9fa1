import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys.errors import ConfigError
from recsys.modules.weighted_cross_entropy import (
    LabelWeightConfig,
    WeightedCrossEntropy,
    head_columns,
)

ACTIONS = ("click", "save", "hide")


def _bce(logit: float, y: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_equals_plain_bce_with_unit_weights():
    torch.manual_seed(0)
    heads = ["click", "hide"]
    logits = torch.randn(16, 2)
    labels = (torch.rand(16, 3) < 0.4).float()
    loss_fn = WeightedCrossEntropy(heads, ACTIONS)
    loss, per_head = loss_fn(logits, labels, labels, torch.ones(16))
    expected = torch.stack(
        [F.binary_cross_entropy_with_logits(logits[:, h], labels[:, c]) for h, c in enumerate([0, 2])]
    )
    torch.testing.assert_close(per_head, expected)
    torch.testing.assert_close(loss, expected.sum())


def test_hand_computed_label_weights_and_multi_hot():
    heads = ["click", "save"]
    config = LabelWeightConfig({"click": {"save": 3.0, "none": 0.5}, "save": {"save": 4.0, "hide": 2.0}})
    loss_fn = WeightedCrossEntropy(heads, ACTIONS, config)
    # M (rows click, save; columns click, save, hide, none):
    #   click: [1, 3, 1, 0.5]   save: [1, 4, 2, 1]
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.7, 1.2]])
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    users = torch.tensor([2.0, 1.0, 0.5])
    # e(b): row0 {click, save} -> click head max(1, 3)=3, save head max(1, 4)=4
    #       row1 none          -> 0.5, 1
    #       row2 {click, hide} -> max(1, 1)=1, max(1, 2)=2
    m = [[3.0, 4.0], [0.5, 1.0], [1.0, 2.0]]
    y = [[1, 1], [0, 0], [1, 0]]
    expected = [
        sum(users[b].item() * m[b][h] * _bce(logits[b, h].item(), y[b][h]) for b in range(3)) / 3 for h in range(2)
    ]
    loss, per_head = loss_fn(logits, labels, labels, users)
    torch.testing.assert_close(per_head, torch.tensor(expected))
    torch.testing.assert_close(loss, torch.tensor(sum(expected)))


def test_gradient_flows_and_matches_weights():
    loss_fn = WeightedCrossEntropy(["click"], ACTIONS, LabelWeightConfig({"click": {"none": 0.0}}))
    logits = torch.zeros(2, 1, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss, _ = loss_fn(logits, labels, labels, torch.ones(2))
    loss.backward()
    # d BCE / d logit = sigmoid(0) - y = -0.5 for row 0, scaled by 1/B; row 1 weighs 0.
    torch.testing.assert_close(logits.grad, torch.tensor([[-0.25], [0.0]]))


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="purchase"):
        WeightedCrossEntropy(["purchase"], ACTIONS)
    with pytest.raises(ConfigError, match="heads are"):
        WeightedCrossEntropy(["click"], ACTIONS, LabelWeightConfig({"save": {"save": 2.0}}))
    with pytest.raises(ConfigError, match="share"):
        WeightedCrossEntropy(["click"], ACTIONS, LabelWeightConfig({"click": {"share": 2.0}}))
    with pytest.raises(ConfigError, match=">= 0"):
        WeightedCrossEntropy(["click"], ACTIONS, LabelWeightConfig({"click": {"none": -1.0}}))
    assert head_columns(["hide", "click"], ACTIONS) == [2, 0]


def test_equation_one_with_the_configs_mapping_of_label_weights():
    """L = mean_b w_u(b) sum_h M[h, e(b)] BCE_bh, with M given as loss.label_weights gives it (a mapping)."""
    heads = ["click", "save"]
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.4, 0.1]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # click, save, nothing
    user = torch.tensor([1.5, 1.0, 0.5])
    mapping = {"save": {"save": 2.0, "none": 0.5}, "click": {"click": 3.0}}
    loss, _ = WeightedCrossEntropy(heads, ACTIONS, mapping)(logits, labels, labels, user)
    m = {("click", 0): 3.0, ("click", 1): 1.0, ("click", 2): 1.0, ("save", 0): 1.0, ("save", 1): 2.0, ("save", 2): 0.5}
    expected = sum(float(user[b]) * sum(m[(h, b)] * _bce(float(logits[b, i]), float(labels[b, ACTIONS.index(h)]))
                                        for i, h in enumerate(heads)) for b in range(3)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
