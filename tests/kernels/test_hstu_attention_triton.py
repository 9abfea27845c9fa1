"""The Triton HSTU attention forward kernel against the PyTorch reference, on ragged and empty sequences.

On a machine without CUDA the kernel runs in the Triton interpreter on CPU tensors
(``TRITON_INTERPRET=1``, set by tests/conftest.py before triton is first imported); shapes stay small.
"""

import pytest
import torch

from recsys.ops.hstu_attention import hstu_attention
from recsys.ops.hstu_attention_layout import build_hstu_attention_layout

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_case(lengths, heads=2, dqk=16, dv=16, max_seq_len=80, num_buckets=64, seed=0, dtype=torch.float32):
    """Jagged q, k, v of ragged sequences, sorted timestamps and both bias tables, on DEVICE (time
    gaps up to 10^6 s span ~46 of the 64 log buckets of width 0.301)."""
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    tensors = dict(
        q=torch.randn(total, heads, dqk, generator=g),
        k=torch.randn(total, heads, dqk, generator=g),
        v=torch.randn(total, heads, dv, generator=g),
        position_bias=torch.randn(2 * max_seq_len - 1, generator=g) * 0.5,
        time_bias=torch.randn(num_buckets + 1, generator=g) * 0.5,
    )
    case = {name: t.to(DEVICE, dtype) for name, t in tensors.items()}
    case["seq_offsets"] = torch.tensor([0] + list(lengths)).cumsum(0).to(DEVICE)
    case["timestamps"] = torch.randint(0, 10**6, (total,), generator=g).sort().values.to(DEVICE)
    case["max_seq_len"] = max_seq_len
    return case


def targets_for(lengths, most=3):
    return torch.tensor([min(most, n) for n in lengths], device=DEVICE)


def both(case, **options):
    """(reference, kernel) outputs for the same arguments."""
    with torch.no_grad():
        want = hstu_attention(**case, **options, kernel="pytorch")
        got = hstu_attention(**case, **options, kernel="triton")
    return want, got


def assert_close(got, want, dtype=torch.float32):
    assert got.shape == want.shape and got.dtype == want.dtype
    tolerance = dict(rtol=2e-4, atol=2e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(got.float(), want.float(), **tolerance)


LENGTHS = [[5, 0, 37, 1, 70], [1], [64, 64], [0, 0, 3], [33, 17, 0, 80]]


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("causal", [True, False])
def test_with_position_and_time_bias_and_targets(lengths, causal):
    case = make_case(lengths, seed=sum(lengths))
    want, got = both(case, num_targets=targets_for(lengths), causal=causal)
    assert_close(got, want)


@pytest.mark.parametrize("normalization", ["length", "max_len"])
def test_next_timestamp_of_the_last_history_token(normalization):
    """Evaluation's time bias (t_next of the last token = the held-out event's time) and both
    normalizations, as the reference computes them."""
    lengths = [5, 0, 37, 1]
    case = make_case(lengths, seed=11)
    next_timestamp = torch.tensor([10**6 + 7, 0, 2 * 10**6, 10**6], device=DEVICE)
    want, got = both(case, next_timestamp=next_timestamp, normalization=normalization)
    assert_close(got, want)
    plain, _ = both(case, normalization=normalization)
    assert not torch.allclose(plain, want)  # the bias did change


@pytest.mark.parametrize("bias", ["none", "position", "time"])
@pytest.mark.parametrize("normalization", ["length", "max_len"])
def test_each_bias_and_normalization_without_targets(bias, normalization):
    lengths = [9, 0, 41, 2]
    case = make_case(lengths, heads=3, dqk=8, dv=40, seed=7)  # head dims below and between tile sizes
    if bias != "position":
        case["position_bias"] = None
    if bias != "time":
        case["time_bias"] = None
    want, got = both(case, normalization=normalization)
    assert_close(got, want)


def test_query_subset_as_in_m_falcon():
    """Only the last tokens query (the targets of M-FALCON) against the cached history."""
    lengths = [12, 5, 0, 40]
    case = make_case(lengths, seed=3)
    num_targets = targets_for(lengths, most=4)
    full_offsets = case["seq_offsets"]
    queries = torch.tensor([min(4, n) for n in lengths], device=DEVICE)
    query_offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=DEVICE), queries.cumsum(0)])
    rows = torch.cat([torch.arange(int(full_offsets[b + 1]) - int(queries[b]), int(full_offsets[b + 1]))
                      for b in range(len(lengths))]).to(DEVICE)
    case["q"] = case["q"][rows]
    want, got = both(case, num_targets=num_targets, query_offsets=query_offsets)
    assert got.shape[0] == int(queries.sum())
    assert_close(got, want)


@pytest.mark.parametrize("block", [16, 32])
def test_tile_sizes_do_not_change_the_result(block):
    from recsys.kernels.hstu_attention_triton import hstu_attention_triton

    lengths = [70, 3, 0, 45]
    case = make_case(lengths, seed=11)
    with torch.no_grad():
        want = hstu_attention(**case, num_targets=targets_for(lengths), kernel="pytorch")
        got = hstu_attention_triton(**case, num_targets=targets_for(lengths), block_m=block, block_n=block)
    assert_close(got, want)


def test_a_given_layout_is_used_as_is():
    lengths = [20, 0, 9]
    case = make_case(lengths, seed=5)
    layout = build_hstu_attention_layout(case["seq_offsets"], case["max_seq_len"], num_rows=sum(lengths),
                                         timestamps=case["timestamps"])
    want, got = both(case, layout=layout)
    assert_close(got, want)


def test_no_rows_at_all():
    case = make_case([0, 0], seed=1)
    want, got = both(case)
    assert got.shape == want.shape == (0, 2, 16)


@pytest.mark.skipif(DEVICE != "cuda", reason="bfloat16 tiles need a GPU (the interpreter computes in numpy)")
def test_bfloat16_on_gpu():
    lengths = [100, 7, 0, 256]
    case = make_case(lengths, dqk=64, dv=64, max_seq_len=256, seed=2, dtype=torch.bfloat16)
    want, got = both(case, num_targets=targets_for(lengths))
    assert_close(got, want, torch.bfloat16)


def test_gradients_flow_through_the_kernel():
    """The kernel has a backward now: asked for by name it trains (it used to refuse)."""
    case = make_case([4, 3], seed=0)
    case["q"].requires_grad_(True)
    hstu_attention(**case, kernel="triton").sum().backward()
    assert case["q"].grad is not None and case["q"].grad.abs().sum() > 0


@pytest.mark.skipif(DEVICE != "cuda", reason="TF32 tensor cores need a GPU")
def test_float32_with_tf32_allowed_on_gpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    lengths = [100, 7, 0, 256]
    case = make_case(lengths, dqk=64, dv=64, max_seq_len=256, seed=4)
    with torch.no_grad():
        got = hstu_attention(**case, num_targets=targets_for(lengths))  # auto: the kernel, in TF32
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        want = hstu_attention(**case, num_targets=targets_for(lengths), kernel="pytorch")
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
