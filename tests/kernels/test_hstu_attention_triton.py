"""The fused Triton HSTU attention (forward and backward, mask and bias in-kernel) against the
PyTorch reference and against a naive loop, on ragged and empty sequences.

On a machine without CUDA the kernels run in the Triton interpreter on CPU tensors
(``TRITON_INTERPRET=1``, set by tests/conftest.py before triton is first imported); shapes stay
small. Tests that need a GPU (bfloat16, float16, TF32) skip at run time.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from recsys.modules.hstu import HSTUEncoder
from recsys.ops import hstu_attention_layout
from recsys.ops.hstu_attention import hstu_attention
from recsys.ops.hstu_attention_layout import build_hstu_attention_layout
from recsys.ops.relative_bias_index import time_buckets

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def require_gpu(why: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip(f"{why}: needs a GPU")


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


def test_bfloat16_on_gpu():
    require_gpu("bfloat16 tiles (the interpreter computes in numpy)")
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


def test_float32_with_tf32_allowed_on_gpu(monkeypatch):
    require_gpu("TF32 tensor cores")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    lengths = [100, 7, 0, 256]
    case = make_case(lengths, dqk=64, dv=64, max_seq_len=256, seed=4)
    with torch.no_grad():
        got = hstu_attention(**case, num_targets=targets_for(lengths))  # auto: the kernel, in TF32
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        want = hstu_attention(**case, num_targets=targets_for(lengths), kernel="pytorch")
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_float32_without_tf32_keeps_float32_accuracy_on_gpu(monkeypatch):
    """TF32 off (PyTorch's default): auto still takes the kernel, whose three-TF32 products keep the
    float32 tolerances of the CPU tests, forward and backward."""
    require_gpu("float32 tensor-core products")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    lengths = [100, 7, 0, 256]
    case = make_case(lengths, dqk=64, dv=64, max_seq_len=256, seed=4)
    assert_forward_backward_match(case, num_targets=targets_for(lengths))


# ------------------------------------------------------------------------------------------------
# Forward and backward against the reference (torch.autograd through the PyTorch reference)
# ------------------------------------------------------------------------------------------------

TABLES = ("position_bias", "time_bias")


def forward_backward(case, kernel, seed=1, **options):
    """Output and the gradients of q, k, v and the present tables, for one random output gradient."""
    inputs = {name: t.detach().clone().requires_grad_() if t is not None else None for name, t in case.items()
              if name in ("q", "k", "v") + TABLES}
    out = hstu_attention(**{**case, **inputs}, **options, kernel=kernel)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    if out.requires_grad:  # the reference returns a constant when no sequence has a token
        out.backward(grad)
    grads = {name: t.grad if t.grad is not None else torch.zeros_like(t) for name, t in inputs.items() if t is not None}
    return out, grads


def assert_forward_backward_match(case, rtol=2e-4, atol=2e-5, **options):
    want, want_grads = forward_backward(case, "pytorch", **options)
    got, got_grads = forward_backward(case, "triton", **options)
    assert_close(got, want)
    assert got_grads.keys() == want_grads.keys()
    for name, g in got_grads.items():  # tolerances relative to the gradient's scale
        scale = float(want_grads[name].abs().max()) if want_grads[name].numel() else 1.0
        torch.testing.assert_close(g, want_grads[name], rtol=rtol, atol=atol * max(scale, 1.0), msg=name)


CASES = {  # name: (lengths, options)
    "causal": ([5, 0, 37, 1, 20], {}),
    "targets": ([9, 0, 33, 1, 2], {"targets": 3}),
    "non-causal targets length-norm": ([7, 0, 30, 1], {"causal": False, "targets": 2, "normalization": "length"}),
    "window": ([40, 3, 0, 1], {"max_attn_len": 7}),
    "window non-causal length-norm": ([25, 1, 6], {"max_attn_len": 5, "causal": False, "normalization": "length"}),
    "contextual": ([38, 2, 0, 9], {"num_contextual": 3, "normalization": "length"}),
    "contextual window targets": ([45, 4, 1, 0], {"num_contextual": 4, "max_attn_len": 9, "targets": 2}),
    "next_timestamp": ([6, 0, 34, 1], {"next_timestamp": True, "targets": 1}),
}


# every mask option with both tables and with the time table alone; the other bias options on two
# of them (the interpreter's run time stays short)
BIAS_CASES = [(name, bias) for name in CASES for bias in ("both", "time")] + [
    (name, bias) for name in ("causal", "contextual window targets") for bias in ("position", "none")]


@pytest.mark.parametrize("name, bias", BIAS_CASES)
def test_forward_and_backward_match_the_reference(name, bias):
    lengths, options = CASES[name]
    case = make_case(lengths, heads=2, dqk=16, dv=24, max_seq_len=48, seed=len(name))
    if bias in ("position", "none"):
        case["time_bias"] = None
    if bias in ("time", "none"):
        case["position_bias"] = None
    options = dict(options)
    if options.pop("targets", None):
        options["num_targets"] = targets_for(lengths, most=CASES[name][1]["targets"])
    if options.pop("next_timestamp", None):
        options["next_timestamp"] = case["timestamps"].max() + torch.arange(1, len(lengths) + 1, device=DEVICE) * 977
    assert_forward_backward_match(case, **options)


def test_head_dims_that_are_not_powers_of_two():
    """Dqk = 72 and Dv = 40 pad the tiles to 128 and 64 with masked loads."""
    lengths = [21, 0, 1, 13]
    case = make_case(lengths, heads=1, dqk=72, dv=40, max_seq_len=32, seed=9)
    assert_forward_backward_match(case, num_targets=targets_for(lengths, most=2))


def test_empty_and_one_token_sequences_only():
    for lengths in ([0, 0], [1], [1, 0, 1]):
        case = make_case(lengths, max_seq_len=4, seed=len(lengths))
        assert_forward_backward_match(case)


def test_deterministic_backward_is_bitwise_reproducible():
    """deterministic=True: per-program partial tables summed in a fixed order; two runs agree bit for bit,
    and with the reference."""
    lengths = [30, 0, 17, 1]
    case = make_case(lengths, max_seq_len=32, seed=4)
    options = dict(num_targets=targets_for(lengths), deterministic=True)
    first = forward_backward(case, "triton", **options)
    second = forward_backward(case, "triton", **options)
    assert torch.equal(first[0], second[0])
    for name in first[1]:
        assert torch.equal(first[1][name], second[1][name]), name
    assert_forward_backward_match(case, **options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float32_backward_tiles_are_4_warps(dtype):
    """Triton 3.6 on H100 compiles the float32 dK / dV and dQ kernels at 8 warps into a wgmma that
    reads shared memory past its allocation (an illegal memory access the interpreter cannot show):
    float32 inputs get only 4-warp backward tiles, tuned or deterministic; bf16 keeps every tile."""
    from recsys.kernels.hstu_attention_triton import DETERMINISTIC_CONFIGS, DKDV_CONFIGS, DQ_CONFIGS, _prune_backward

    for configs in (DKDV_CONFIGS, DQ_CONFIGS):
        kept = _prune_backward(configs, {"q_ptr": torch.empty(1, dtype=dtype), "BLOCK_DQK": 64, "BLOCK_DV": 64})
        if dtype == torch.float32:
            assert kept and all(c.num_warps <= 4 for c in kept)
        else:
            assert kept == configs
    assert DETERMINISTIC_CONFIGS["dkdv"].num_warps <= 4 and DETERMINISTIC_CONFIGS["dq"].num_warps <= 4


# ------------------------------------------------------------------------------------------------
# Bias and mask semantics against a naive loop (no index builder of the package involved)
# ------------------------------------------------------------------------------------------------


def naive_weights(lengths, timestamps, position_bias, time_bias, num_targets, next_timestamp, causal, max_attn_len,
                  num_contextual, base=0.301):
    """{(b, i, j): SiLU(rab_ij)} of the visible pairs, every rule on scalars in float64."""
    weights, start = {}, 0
    half, top = (len(position_bias) - 1) // 2, len(time_bias) - 1
    for b, n in enumerate(lengths):
        h = n - num_targets[b]
        pos = [min(x, h) for x in range(n)]
        for i in range(n):
            if i + 1 < h:
                t_next = timestamps[start + i + 1]
            elif i + 1 == h and next_timestamp is not None:
                t_next = next_timestamp[b]
            else:
                t_next = timestamps[start + i]
            for j in range(n):
                seen = (not causal or j <= i) and not (i >= h and j >= h and i != j)
                if max_attn_len:
                    seen = seen and (pos[i] - pos[j] if causal else abs(pos[i] - pos[j])) <= max_attn_len
                seen = seen or j < num_contextual
                if not seen:
                    continue
                bucket = min(max(math.floor(math.log(max(abs(t_next - timestamps[start + j]), 1)) / base), 0), top)
                rab = position_bias[max(-half, min(half, pos[j] - pos[i])) + half] + time_bias[bucket]
                weights[b, i, j] = rab / (1 + math.exp(-rab))
        start += n
    return weights


@pytest.mark.parametrize("causal", [True, False])
def test_bias_and_mask_semantics_against_a_naive_loop(causal):
    """q = k = 0 makes every score the bias alone; v = one-hot of the key's position reads each
    weight SiLU(rab_ij) off the output (``"max_len"`` normalization times max_seq_len)."""
    lengths, num_targets, max_seq_len = [7, 1, 0, 9], [2, 0, 0, 3], 10
    g = torch.Generator().manual_seed(3)
    total = sum(lengths)
    timestamps = torch.randint(0, 5 * 10**5, (total,), generator=g).sort().values
    timestamps[3] = timestamps[2]  # a zero time difference
    position_bias = torch.randn(2 * 6 - 1, generator=g)  # P = 6 < max_seq_len: distances clamp
    time_bias = torch.randn(40, generator=g)  # 39 buckets: larger gaps clamp
    next_timestamp = torch.tensor([10**6, 7, 0, 2 * 10**6])
    positions = torch.cat([torch.arange(n) for n in lengths])
    v = F.one_hot(positions, max_seq_len).float().unsqueeze(1)  # [T, 1, max_seq_len]
    q = torch.zeros(total, 1, 16)
    options = dict(causal=causal, max_attn_len=4, num_contextual=2)
    with torch.no_grad():
        out = hstu_attention(
            q.to(DEVICE), q.to(DEVICE), v.to(DEVICE), torch.tensor([0] + lengths).cumsum(0).to(DEVICE), max_seq_len,
            timestamps=timestamps.to(DEVICE), position_bias=position_bias.to(DEVICE), time_bias=time_bias.to(DEVICE),
            num_targets=torch.tensor(num_targets, device=DEVICE), next_timestamp=next_timestamp.to(DEVICE),
            kernel="triton", **options,
        ).cpu()[:, 0] * max_seq_len  # [T, max_seq_len]
    weights = naive_weights(lengths, timestamps.tolist(), position_bias.double().tolist(), time_bias.double().tolist(),
                            num_targets, next_timestamp.tolist(), **options)
    want = torch.zeros(total, max_seq_len, dtype=torch.float64)
    starts = [sum(lengths[:b]) for b in range(len(lengths))]
    for (b, i, j), w in weights.items():
        want[starts[b] + i, j] = w
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)


def test_time_buckets_are_exact_at_every_bucket_edge():
    """One query (the last token, whose t_next is next_timestamp = 0) against keys whose time gap
    is each bucket's first integer, the integer before it and its negative: the kernel's float32
    log plus threshold correction gives the model's float64 bucket at every edge, up to gaps of
    2^53. v = one-hot of the key reads each weight SiLU(time_bias[bucket]) off the output."""
    from recsys.kernels.hstu_attention_triton import time_bucket_thresholds

    num_buckets = 127
    edges = time_bucket_thresholds(num_buckets, 0.301, torch.device("cpu"))[1:]  # [NB]
    wanted = torch.arange(1, num_buckets + 1)[edges < 2**53]
    edges = edges[edges < 2**53]
    # each edge is the first gap of its bucket or above (a bucket can be empty: bucket 1 is)
    assert bool((time_buckets(edges, num_buckets) >= wanted).all() & (time_buckets(edges - 1, num_buckets) < wanted).all())
    gaps = torch.cat([edges, edges - 1, -edges])  # t_next - t_j with t_next = 0
    count = gaps.numel()
    time_bias = torch.linspace(-2.0, 2.0, num_buckets + 1, dtype=torch.float64).float()
    with torch.no_grad():
        out = hstu_attention(
            torch.zeros(1, 1, 16, device=DEVICE), torch.zeros(count, 1, 16, device=DEVICE),
            torch.eye(count, device=DEVICE).unsqueeze(1), torch.tensor([0, count], device=DEVICE), count,
            timestamps=(-gaps).to(DEVICE), time_bias=time_bias.to(DEVICE), next_timestamp=torch.zeros(1, dtype=torch.int64, device=DEVICE),
            query_offsets=torch.tensor([0, 1], device=DEVICE), kernel="triton",
        ).cpu()[0, 0] * count  # [count] weight of each key
    # neighbouring table entries differ by 0.03: one bucket off would show far above the tolerance
    torch.testing.assert_close(out, F.silu(time_bias[time_buckets(gaps, num_buckets)]), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Packaging: no dense layout on the fused path, the module, the custom op
# ------------------------------------------------------------------------------------------------


def test_the_fused_path_builds_no_dense_mask_or_bias_index(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a [B, M, N] tensor was built")

    monkeypatch.setattr(hstu_attention_layout, "attention_mask", refuse)
    monkeypatch.setattr(hstu_attention_layout, "relative_bias_index", refuse)
    lengths = [6, 0, 9]
    case = make_case(lengths, max_seq_len=16, seed=2)
    layout = build_hstu_attention_layout(case["seq_offsets"], 16, num_rows=sum(lengths), timestamps=case["timestamps"],
                                         normalization="length")
    for given in (None, layout):
        forward_backward(case, "triton", layout=given, normalization="length")
    with pytest.raises(AssertionError, match="built"):
        hstu_attention(**case, kernel="pytorch")


def test_hstu_encoder_trains_through_the_kernel():
    """The HSTU encoder with kernel="triton": outputs and every parameter's gradient as with the reference."""
    torch.manual_seed(0)
    encoder = HSTUEncoder(num_layers=2, embedding_dim=16, num_heads=2, attention_dim=16, linear_dim=16,
                          max_seq_len=24, kernel="pytorch").to(DEVICE)
    lengths = [9, 0, 20, 1]
    x = torch.randn(sum(lengths), 16, device=DEVICE)
    offsets = torch.tensor([0] + lengths, device=DEVICE).cumsum(0)
    timestamps = torch.cat([torch.randint(0, 10**6, (n,)).sort().values for n in lengths]).to(DEVICE)
    results = []
    for kernel in ("pytorch", "triton"):
        for layer in encoder.layers:
            layer.kernel = kernel
        encoder.zero_grad()
        out = encoder(x, offsets, timestamps, num_targets=torch.tensor([2, 0, 3, 1], device=DEVICE))
        (out * torch.linspace(-1, 1, out.numel(), device=DEVICE).view_as(out)).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters()}))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_auto_picks_the_fused_kernel_on_gpu_for_training_and_evaluation():
    require_gpu("the CUDA dispatch")
    import recsys.ops.hstu_attention as op

    q = torch.zeros(1, 1, 16, device="cuda", dtype=torch.bfloat16)
    for needs_grad in (True, False):
        assert op._select_backend("auto", q, needs_grad=needs_grad).name == "triton"


def test_custom_op_passes_opcheck():
    """Schema, fake (meta) implementation and autograd registration of the forward op."""
    import recsys.kernels.hstu_attention_triton  # noqa: F401  (registers the ops)

    lengths = [3, 0, 4]
    case = make_case(lengths, max_seq_len=8, seed=6)
    args = (case["q"].requires_grad_(), case["k"], case["v"], case["seq_offsets"], case["seq_offsets"],
            targets_for(lengths, most=1), case["timestamps"], None, case["position_bias"], case["time_bias"],
            8, 0.25, True, False, 0, 0, 0.301, 0, 0, False)
    torch.library.opcheck(torch.ops.recsys.hstu_attention_fwd, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward_and_backward_on_gpu(dtype):
    """Error against a float32 reference at most about twice PyTorch's own at the same precision
    (the flash-attention tolerance rule), forward and every gradient."""
    require_gpu(f"{dtype} tiles")
    lengths = [300, 7, 0, 1, 512]
    case32 = make_case(lengths, dqk=128, dv=128, max_seq_len=512, seed=2)
    low = {n: (t.to(dtype) if n in ("q", "k", "v") else t) for n, t in case32.items()}
    options = dict(num_targets=targets_for(lengths))
    want, want_grads = forward_backward(case32, "pytorch", **options)
    ref, ref_grads = forward_backward(low, "pytorch", **options)
    got, got_grads = forward_backward(low, "triton", **options)

    def err(a, b):
        return float((a.float() - b.float()).abs().max())

    assert err(got, want) <= 2 * err(ref, want) + 1e-5
    for name in want_grads:
        assert err(got_grads[name], want_grads[name]) <= 2 * err(ref_grads[name], want_grads[name]) + 1e-5, name


def test_tiles_within_one_time_bucket():
    """Two bursts of events far apart: the tiles pairing one burst with the other hold a single time
    bucket (taken per tile, one table addition backward), the others one bucket per pair."""
    lengths = [64, 40]
    case = make_case(lengths, max_seq_len=64, seed=8)
    burst = torch.cat([torch.arange(32) * 3, 10**9 + torch.arange(32) * 5, torch.arange(20) * 7,
                       5 * 10**7 + torch.arange(20)])
    case["timestamps"] = burst.to(DEVICE)
    assert_forward_backward_match(case, num_targets=targets_for(lengths, most=1))
    assert_forward_backward_match(case, deterministic=True)


def time_buckets_per_tile(timestamps, block=32, num_buckets=64):
    """How many time buckets each causal (query tile, key tile) of one sequence spans, from the
    tile's extreme gaps ``t_next(i) - t_j`` as the kernel bounds them."""
    following = torch.cat([timestamps[1:], timestamps[-1:]])
    spans = []
    for q0 in range(0, len(timestamps), block):
        for k0 in range(0, q0 + 1, block):
            lowest = int(following[q0:q0 + block].min() - timestamps[k0:k0 + block].max())
            highest = int(following[q0:q0 + block].max() - timestamps[k0:k0 + block].min())
            low_gap = min(abs(lowest), abs(highest)) if lowest > 0 or highest < 0 else 1
            edges = time_buckets(torch.tensor([max(low_gap, 1), max(abs(lowest), abs(highest), 1)]), num_buckets)
            spans.append(int(edges[1] - edges[0]) + 1)
    return spans


def test_tiles_spanning_a_few_time_buckets():
    """Evenly spaced events: far tiles span 2-4 time buckets (one comparison per bucket edge instead
    of a log per pair; backward, one sum per bucket), near tiles many (a log per pair); two bursts
    far apart give one-bucket tiles. All three against the reference, atomics and deterministic."""
    lengths = [256, 128]
    case = make_case(lengths, heads=1, max_seq_len=256, seed=11)
    even = torch.arange(256) * 1000
    bursts = torch.cat([torch.arange(64) * 1000, 10**9 + torch.arange(64) * 1000])
    spans = time_buckets_per_tile(even) + time_buckets_per_tile(bursts)
    assert 1 in spans and any(1 < s <= 4 for s in spans) and any(s > 4 for s in spans)
    case["timestamps"] = torch.cat([even, bursts]).to(DEVICE)
    assert_forward_backward_match(case)
    assert_forward_backward_match(case, deterministic=True)


POSITION_BIAS_BUFFER_SCRIPT = '''
import os, re
os.environ.pop("TRITON_INTERPRET", None)
import recsys.kernels.hstu_attention_triton as K
from tests.kernels.hstu_sm90 import compile_hstu_kernel

FLAGS = dict(CAUSAL=True, HAS_TARGETS=False, HAS_WINDOW=False, HAS_CONTEXT=False, HAS_POS=True, HAS_TIME=True,
             HAS_NEXT_TS=False, BLOCK_DQK=128, BLOCK_DV=128, INPUT_PRECISION=None, FAST_SIGMOID=True)

def buffers(fn, constexprs, config):
    constexprs = dict(FLAGS, **constexprs, **config.kwargs)
    ttgir = compile_hstu_kernel(fn, constexprs, config.num_warps, config.num_stages).asm["ttgir"]
    layouts = dict(re.findall(r"^(#shared\\d*) = (.*)$", ttgir, re.M))
    for name in re.findall(r"local_alloc : \\(\\) -> !ttg.memdesc<\\d+x\\d+x\\d+xf32, (#shared\\d*)", ttgir):
        print(fn.__name__, layouts[name].replace(" ", ""))

buffers(K._hstu_fwd_kernel, dict(LENGTH_NORM=False), K.FWD_CONFIGS[3])
buffers(K._hstu_bwd_dkdv_kernel, dict(BIAS_GRAD=True, DETERMINISTIC=False), K.DKDV_CONFIGS[-1])
buffers(K._hstu_bwd_dq_kernel, {}, K.DQ_CONFIGS[-2])
'''


def test_position_bias_tiles_stage_through_row_major_shared_memory_with_the_time_bias():
    """With both tables, Triton's pipeliner stages each tile's position-bias gather in shared memory.
    It once did so column-major and unswizzled (``order = [0, 1]``, ``vec = 1``) while the warps
    write and read it along rows: 32-way bank conflicts on every element, the likely cause of the forward
    with both tables costing about twice position and time alone together (H100). Compiles each kernel for
    sm_90a (no GPU needed) and checks the staging buffer is row-major."""
    from tests.kernels.sm90_compile import compile_in_subprocess

    lines = compile_in_subprocess(POSITION_BIAS_BUFFER_SCRIPT, timeout=600).splitlines()
    kernels = {line.split()[0] for line in lines}
    assert kernels == {"_hstu_fwd_kernel", "_hstu_bwd_dkdv_kernel", "_hstu_bwd_dq_kernel"}, lines
    for line in lines:
        assert "order=[1,0]" in line, line
def test_few_time_bucket_tiles_with_gaps_beyond_int32():
    """Tiles spanning a few time buckets whose gaps are all above 2^31 (or all below -2^31, keys after
    the query without causality): gaps that int32 cannot hold still find their few buckets' edges
    exactly. Causal and not, atomics and deterministic."""
    lengths = [64, 64]
    case = make_case(lengths, heads=1, max_seq_len=64, seed=12, num_buckets=127)
    early = torch.arange(32) * 1000
    late = 2**31 + torch.arange(32) * 2**24  # gaps of 2^31 .. 2^31 + 2^29: two or three buckets
    spread = torch.cat([early, late])
    spans = time_buckets_per_tile(spread, num_buckets=127)
    assert any(1 < s <= 4 for s in spans)
    case["timestamps"] = torch.cat([spread, 3 * 2**32 + spread]).to(DEVICE)
    for causal in (True, False):
        assert_forward_backward_match(case, causal=causal)
        assert_forward_backward_match(case, causal=causal, deterministic=True)
