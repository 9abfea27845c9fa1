"""Jagged HSTU attention against a naive per-sequence, per-pair loop written from the definition."""

import math

import pytest
import torch
import torch.nn.functional as F

from recsys.errors import ConfigError, DataError
from recsys.ops.hstu_attention import NORMALIZATIONS, hstu_attention, hstu_attention_kernels

BASE = 0.301


def naive_hstu_attention(q, k, v, offsets, max_seq_len, timestamps, position_bias, time_bias, num_targets, causal, normalization,
                         max_attn_len=0, num_contextual=0):
    """Loop over sequences, queries and keys; every rule spelled out on scalars."""
    out = torch.zeros(q.size(0), q.size(1), v.size(2), dtype=q.dtype)
    alpha = 1.0 / math.sqrt(q.size(2))
    for b in range(len(offsets) - 1):
        start, n = int(offsets[b]), int(offsets[b + 1] - offsets[b])
        n_targets = 0 if num_targets is None else int(num_targets[b])
        history = n - n_targets
        pos = [min(i, history) for i in range(n)]

        def sees(i, j):  # the attention mask
            seen = not (causal and j > i) and not (i >= history and j >= history and i != j)
            if max_attn_len:  # targets count at position `history`
                distance = pos[i] - pos[j]
                seen = seen and (distance if causal else abs(distance)) <= max_attn_len
            return seen or j < num_contextual  # the contextual prefix: seen by every query

        for i in range(n):
            # "length": the keys query i attends to; "max_len": the reference's constant
            norm = max(sum(sees(i, j) for j in range(n)), 1) if normalization == "length" else max_seq_len
            t_next = None
            if timestamps is not None:
                t_next = int(timestamps[start + i + 1]) if i + 1 < history else int(timestamps[start + i])
            for j in range(n):
                if not sees(i, j):
                    continue
                score = (q[start + i] * k[start + j]).sum(-1) * alpha  # [H]
                if position_bias is not None:
                    half = (position_bias.numel() - 1) // 2
                    score = score + position_bias[max(-half, min(half, pos[j] - pos[i])) + half]
                if time_bias is not None:
                    dt = abs(t_next - int(timestamps[start + j]))
                    bucket = min(int(math.floor(math.log(max(dt, 1)) / BASE)), time_bias.numel() - 1)
                    score = score + time_bias[bucket]
                out[start + i] += F.silu(score).unsqueeze(-1) * v[start + j] / norm
    return out


def make_inputs(lengths, heads=2, dqk=3, dv=4, max_seq_len=8, num_buckets=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    offsets = torch.tensor([0] + lengths).cumsum(0)
    return dict(
        q=torch.randn(total, heads, dqk, generator=g, dtype=dtype),
        k=torch.randn(total, heads, dqk, generator=g, dtype=dtype),
        v=torch.randn(total, heads, dv, generator=g, dtype=dtype),
        seq_offsets=offsets,
        max_seq_len=max_seq_len,
        timestamps=torch.randint(0, 5000, (total,), generator=g).sort().values,
        position_bias=torch.randn(2 * max_seq_len - 1, generator=g, dtype=dtype),
        time_bias=torch.randn(num_buckets + 1, generator=g, dtype=dtype),
    )


LENGTHS = [[3, 1, 0, 5], [1], [0, 0], [4, 4], [8, 2, 7]]


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("normalization", ["length", "max_len"])
@pytest.mark.parametrize("bias", ["none", "position", "time", "both"])
@pytest.mark.parametrize("with_targets", [False, True])
def test_matches_naive_loop(lengths, normalization, bias, with_targets):
    x = make_inputs(lengths)
    position_bias = x["position_bias"] if bias in ("position", "both") else None
    time_bias = x["time_bias"] if bias in ("time", "both") else None
    num_targets = torch.tensor([min(2, n) for n in lengths]) if with_targets else None
    got = hstu_attention(
        x["q"], x["k"], x["v"], x["seq_offsets"], x["max_seq_len"], timestamps=x["timestamps"],
        position_bias=position_bias, time_bias=time_bias, num_targets=num_targets, normalization=normalization,
    )
    want = naive_hstu_attention(
        x["q"], x["k"], x["v"], x["seq_offsets"], x["max_seq_len"], x["timestamps"],
        position_bias, time_bias, num_targets, True, normalization,
    )
    assert got.shape == (sum(lengths), 2, 4)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_appending_tokens_never_changes_earlier_outputs(normalization):
    """A causal training pass: the first tokens' outputs do not depend on the tokens after them
    (their count included), for every normalization."""
    x = make_inputs([6, 8, 3])
    keep = [2, 8, 1]
    rows = torch.cat([torch.arange(int(x["seq_offsets"][b]), int(x["seq_offsets"][b]) + n) for b, n in enumerate(keep)])
    full = hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], 8, position_bias=x["position_bias"], normalization=normalization)
    prefix = hstu_attention(
        x["q"][rows], x["k"][rows], x["v"][rows], torch.tensor([0] + keep).cumsum(0), 8,
        position_bias=x["position_bias"], normalization=normalization,
    )
    torch.testing.assert_close(prefix, full[rows], rtol=0, atol=1e-12)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_a_prefix_with_its_next_timestamp_equals_the_full_pass(normalization):
    """Evaluation reads a history without its target: given the target's time as next_timestamp,
    every history output, time bias included, equals the training pass over history + target."""
    x = make_inputs([6, 8, 3])
    keep = [5, 7, 2]
    offsets = x["seq_offsets"]
    rows = torch.cat([torch.arange(int(offsets[b]), int(offsets[b]) + n) for b, n in enumerate(keep)])
    after = x["timestamps"][offsets[:-1] + torch.tensor(keep)]  # [B] time of the token after each prefix
    bias = dict(position_bias=x["position_bias"], time_bias=x["time_bias"], normalization=normalization)
    full = hstu_attention(x["q"], x["k"], x["v"], offsets, 8, timestamps=x["timestamps"], **bias)
    prefix = hstu_attention(
        x["q"][rows], x["k"][rows], x["v"][rows], torch.tensor([0] + keep).cumsum(0), 8,
        timestamps=x["timestamps"][rows], next_timestamp=after, **bias,
    )
    torch.testing.assert_close(prefix, full[rows], rtol=0, atol=1e-12)
    without = hstu_attention(
        x["q"][rows], x["k"][rows], x["v"][rows], torch.tensor([0] + keep).cumsum(0), 8, timestamps=x["timestamps"][rows], **bias,
    )
    assert not torch.allclose(without, full[rows])  # the last token's own time gives another bias


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("max_attn_len, num_contextual", [(2, 0), (0, 2), (3, 1)])
def test_window_and_contextual_prefix_match_naive_loop(causal, max_attn_len, num_contextual):
    x = make_inputs([8, 2, 0, 7])
    num_targets = torch.tensor([2, 0, 0, 3])
    settings = dict(causal=causal, normalization="length")
    got = hstu_attention(
        x["q"], x["k"], x["v"], x["seq_offsets"], 8, timestamps=x["timestamps"], position_bias=x["position_bias"],
        time_bias=x["time_bias"], num_targets=num_targets, kernel="pytorch", max_attn_len=max_attn_len,
        num_contextual=num_contextual, **settings,
    )
    want = naive_hstu_attention(
        x["q"], x["k"], x["v"], x["seq_offsets"], 8, x["timestamps"], x["position_bias"], x["time_bias"],
        num_targets, causal, "length", max_attn_len, num_contextual,
    )
    torch.testing.assert_close(got, want)


def test_bad_window_or_prefix_raises_a_clear_error():
    x = make_inputs([3, 2])
    with pytest.raises(ConfigError, match="max_attn_len"):
        hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], 8, max_attn_len=-1)
    with pytest.raises(ConfigError, match="num_contextual"):
        hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], 8, num_contextual=1.5)


@pytest.mark.parametrize("with_targets", [False, True])
def test_non_causal_matches_naive_loop(with_targets):
    x = make_inputs([5, 2, 6])
    num_targets = torch.tensor([2, 0, 3]) if with_targets else None
    got = hstu_attention(
        x["q"], x["k"], x["v"], x["seq_offsets"], 8, timestamps=x["timestamps"], position_bias=x["position_bias"],
        time_bias=x["time_bias"], num_targets=num_targets, causal=False, kernel="pytorch", normalization="length",
    )
    want = naive_hstu_attention(
        x["q"], x["k"], x["v"], x["seq_offsets"], 8, x["timestamps"], x["position_bias"], x["time_bias"],
        num_targets, False, "length",
    )
    torch.testing.assert_close(got, want)


def test_float32_matches_float64():
    x = make_inputs([6, 3, 7], dtype=torch.float64)
    args = dict(timestamps=x["timestamps"], position_bias=x["position_bias"], time_bias=x["time_bias"])
    want = hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], 8, **args)
    f32 = {name: t.float() for name, t in args.items() if t.is_floating_point()}
    got = hstu_attention(x["q"].float(), x["k"].float(), x["v"].float(), x["seq_offsets"], 8, timestamps=x["timestamps"], **f32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_causal_output_ignores_the_future():
    x = make_inputs([7, 5])
    args = dict(timestamps=x["timestamps"], position_bias=x["position_bias"], time_bias=x["time_bias"])
    before = hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], 8, **args)
    t = 3  # change every input of sequence 0 after position t (q, k, v and timestamps)
    q, k, v, ts = x["q"].clone(), x["k"].clone(), x["v"].clone(), x["timestamps"].clone()
    q[t + 1 : 7] += 1.0
    k[t + 1 : 7] -= 2.0
    v[t + 1 : 7] *= 3.0
    ts[t + 2 : 7] += 100000  # t_next(t) is ts[t + 1]: token t legitimately reads the next timestamp
    after = hstu_attention(q, k, v, x["seq_offsets"], 8, timestamps=ts, position_bias=x["position_bias"], time_bias=x["time_bias"])
    torch.testing.assert_close(after[: t + 1], before[: t + 1])
    torch.testing.assert_close(after[7:], before[7:])  # the other sequence is untouched
    assert not torch.allclose(after[t + 1 : 7], before[t + 1 : 7])


def test_targets_never_see_each_other():
    x = make_inputs([6, 4])
    num_targets = torch.tensor([3, 2])
    args = dict(timestamps=x["timestamps"], position_bias=x["position_bias"], time_bias=x["time_bias"], num_targets=num_targets)
    before = hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], 8, **args)
    q, k, v, ts = x["q"].clone(), x["k"].clone(), x["v"].clone(), x["timestamps"].clone()
    q[3], k[3], v[3], ts[3] = q[3] + 1, k[3] + 1, v[3] + 1, ts[3] + 999  # target 0 of sequence 0
    after = hstu_attention(q, k, v, x["seq_offsets"], 8, **{**args, "timestamps": ts})
    changed = (after - before).abs().amax(dim=(1, 2)) > 0
    assert changed.tolist() == [False, False, False, True, False, False, False, False, False, False]


def test_query_subset_equals_matching_rows_of_full_pass():
    x = make_inputs([5, 3, 0, 6])
    lengths = [5, 3, 0, 6]
    num_targets = torch.tensor([2, 3, 0, 1])
    args = dict(timestamps=x["timestamps"], position_bias=x["position_bias"], time_bias=x["time_bias"], num_targets=num_targets)
    full = hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], 8, **args)
    last = [int(n) for n in num_targets]
    rows = torch.tensor([int(x["seq_offsets"][b]) + lengths[b] - m + i for b, m in enumerate(last) for i in range(m)])
    query_offsets = torch.tensor([0] + last).cumsum(0)
    subset = hstu_attention(x["q"][rows], x["k"], x["v"], x["seq_offsets"], 8, query_offsets=query_offsets, **args)
    torch.testing.assert_close(subset, full[rows])


def test_gradcheck_float64():
    x = make_inputs([3, 1, 2], heads=1, dqk=2, dv=2, max_seq_len=4, num_buckets=3)
    inputs = tuple(x[n].requires_grad_() for n in ("q", "k", "v", "position_bias", "time_bias"))

    def op(q, k, v, position_bias, time_bias):
        return hstu_attention(
            q, k, v, x["seq_offsets"], 4, timestamps=x["timestamps"], position_bias=position_bias,
            time_bias=time_bias, num_targets=torch.tensor([1, 0, 1]),
        )

    assert torch.autograd.gradcheck(op, inputs, fast_mode=True)


def test_empty_batch_and_reference_kernel_listed():
    x = make_inputs([0])
    assert hstu_attention(x["q"], x["k"], x["v"], x["seq_offsets"], 8).shape == (0, 2, 4)
    assert "pytorch" in hstu_attention_kernels()


def test_bad_arguments_raise_clear_errors():
    x = make_inputs([3, 2])
    q, k, v, offsets = x["q"], x["k"], x["v"], x["seq_offsets"]
    with pytest.raises(ConfigError, match="normalization"):
        hstu_attention(q, k, v, offsets, 8, normalization="softmax")
    with pytest.raises(ConfigError, match="kernel"):
        hstu_attention(q, k, v, offsets, 8, kernel="cuda-magic")
    with pytest.raises(DataError, match="max_seq_len"):
        hstu_attention(q, k, v, offsets, 2)
    with pytest.raises(DataError, match="seq_offsets"):
        hstu_attention(q, k, v, torch.tensor([0, 3, 4]), 8)
    with pytest.raises(DataError, match="timestamps"):
        hstu_attention(q, k, v, offsets, 8, time_bias=x["time_bias"])
    with pytest.raises(DataError, match="num_targets"):
        hstu_attention(q, k, v, offsets, 8, num_targets=torch.tensor([4, 0]))
    with pytest.raises(DataError, match="Dqk"):
        hstu_attention(q, k[:, :, :2], v, offsets, 8)


def test_auto_skips_forward_only_backends_when_a_gradient_is_needed(monkeypatch):
    """A forward-only backend that accepts every input: auto takes it under no_grad only; by name
    it is refused when a gradient is needed; the triton kernel is never auto-picked on CPU."""
    import recsys.ops.hstu_attention as op

    monkeypatch.setattr(op, "_BACKENDS", dict(op._BACKENDS))
    calls = []

    def forward_only(q, k, v, *args, **kwargs):
        calls.append(q.requires_grad)
        return op.hstu_attention_reference(q, k, v, *args, **kwargs)

    op.register_hstu_attention_backend("forward_only", forward_only, lambda q: True, differentiable=False)
    x = make_inputs([3, 2])
    q = x["q"].clone().requires_grad_(True)
    out = hstu_attention(q, x["k"], x["v"], x["seq_offsets"], 8)  # needs a gradient: the reference
    assert calls == [] and out.requires_grad
    with torch.no_grad():
        hstu_attention(q, x["k"], x["v"], x["seq_offsets"], 8)
    assert calls == [True]
    with pytest.raises(ConfigError, match="forward-only"):
        hstu_attention(q, x["k"], x["v"], x["seq_offsets"], 8, kernel="forward_only")
    del op._BACKENDS["forward_only"]
    with torch.no_grad():  # CPU tensors: auto leaves the Triton kernel (and its interpreter) alone
        assert op._select_backend("auto", x["q"], needs_grad=False).name == "pytorch"
    assert {"pytorch", "triton"} <= set(hstu_attention_kernels())
