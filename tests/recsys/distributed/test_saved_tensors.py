import torch
from torch import nn

from recsys.distributed.saved_tensors import saved_activation_bytes


class TwoUses(nn.Module):
    """Linear -> ReLU, and the ReLU output multiplied by itself (saved twice, counted once)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 16)

    def forward(self, x):
        h = torch.relu(self.linear(x))  # saves x (Linear) and h (ReLU)
        return (h * h).sum()  # saves h again


def test_distinct_storages_are_counted_once_and_parameters_not_at_all():
    model = TwoUses()
    x = torch.randn(4, 8)
    total, by_module = saved_activation_bytes(model, lambda: model(x))
    assert total == 4 * (4 * 8 + 4 * 16)
    assert by_module == {"linear": 4 * 4 * 8, "<root>": 4 * 4 * 16}
    assert not model.linear._forward_hooks and not model._forward_pre_hooks  # hooks removed
