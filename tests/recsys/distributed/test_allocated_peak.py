"""The allocator's peak of a call on CPU, and why it differs from a TorchDispatchMode's count."""

import torch

from recsys.distributed.allocated_peak import allocated_peak_bytes
from recsys.distributed.step_trace import StepTrace


def test_peak_and_end_count_the_bytes_allocated_during_the_call():
    def make():
        a = torch.empty(1000)  # 4,000 bytes
        b = torch.empty(2000)  # 8,000 bytes: 12,000 alive
        del a
        torch.empty(500)  # made and dropped while b lives: 10,000
        return b

    kept = []
    assert allocated_peak_bytes(lambda: kept.append(make())) == (12000, 8000)


def test_a_dispatch_mode_sees_gathers_gradient_made_out_of_place():
    """gather's gradient is zeros [N, U] with the [N, K] gradient scatter_add_-ed in place; under
    a dispatch mode autograd takes the out-of-place scatter_add, one more [N, U] buffer alive."""
    n, u, k = 64, 300, 16
    scores = torch.randn(n, u, requires_grad=True)
    index = torch.randint(0, u, (n, k))

    def step():
        scores.grad = None
        scores.gather(1, index).sum().backward()

    peak, end = allocated_peak_bytes(step)
    assert end == 4 * n * u  # scores.grad
    assert 4 * n * u <= peak <= 4 * n * u + 64  # the [N, U] gradient and a scalar
    with StepTrace() as trace:
        step()
    assert trace.peak_bytes - peak == 4 * n * u
