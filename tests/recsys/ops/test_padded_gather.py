"""gather_padded: the padded gather with zeros at padding equals advanced indexing, forward and
backward, and its backward adds rows with index_add_ (no sort-based serial accumulation)."""

import pytest
import torch

from recsys.distributed.step_trace import StepTrace
from recsys.ops.padded_gather import gather_padded


def reference(values, index, real):
    """The obvious gather: padding slots read one appended zero row."""
    with_zero_row = torch.cat([values, values.new_zeros((1, *values.shape[1:]))])
    return with_zero_row[torch.where(real, index, values.shape[0])]


def case(lengths, width, features, overlap=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    starts = torch.zeros_like(lengths) if overlap else torch.cumsum(lengths, 0) - lengths
    total = int(lengths.max()) if overlap else int(lengths.sum())
    values = torch.randn(total, *features, generator=g, dtype=torch.float64, requires_grad=True)
    positions = torch.arange(width)
    real = positions < lengths.unsqueeze(1)
    index = torch.where(real, starts.unsqueeze(1) + positions, -7)  # garbage at padding
    return values, index, real


@pytest.mark.parametrize("lengths, width, features, overlap", [
    ([3, 0, 5, 1], 5, (4,), False),  # ragged, an empty row
    ([2, 2], 6, (3, 2), False),  # more padding than values, 2-d features
    ([4, 2, 4], 4, (5,), True),  # overlapping windows: real rows read more than once
    ([0, 0], 3, (2,), False),  # only padding
])
def test_equals_advanced_indexing_forward_and_backward(lengths, width, features, overlap):
    values, index, real = case(lengths, width, features, overlap)
    got, want = gather_padded(values, index, real), reference(values, index, real)
    assert got.shape == (len(lengths), width, *features)
    assert torch.equal(got, want)
    assert torch.all(got[~real] == 0)
    grad = torch.randn_like(got)
    (got_grad,) = torch.autograd.grad(got, values, grad)
    (want_grad,) = torch.autograd.grad(want, values, grad)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)


def test_backward_adds_rows_with_index_add_not_an_accumulating_index_put():
    values, index, real = case([3, 1, 0, 2], 6, (4,))
    out = gather_padded(values, index, real)
    with StepTrace() as trace:
        out.sum().backward()
    ops = set(trace.by_op)
    assert any(op.startswith("aten.index_add") for op in ops), ops
    assert not any(op.startswith("aten.index_put") or op.startswith("aten._index_put_impl") for op in ops), ops
