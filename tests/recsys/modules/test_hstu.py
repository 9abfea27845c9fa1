"""HSTULayer / HSTUEncoder on jagged input: padded equivalence, gradients, causality, KV cache, presets."""

import math

import pytest
import torch
import torch.nn.functional as F

from recsys.errors import ConfigError, DataError
from recsys.modules.hstu import HSTU_PRESETS, HSTUEncoder, HSTULayer, append_jagged
from recsys.modules.relative_bias import padded_relative_bias
from recsys.ops.hstu_attention import NORMALIZATIONS

D, H, DQK, DV, L = 6, 2, 3, 4, 10


def jagged_batch(lengths, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    x = torch.randn(total, D, generator=g, dtype=dtype)
    ts = torch.randint(0, 10**6, (total,), generator=g).sort().values
    return x, torch.tensor([0] + lengths).cumsum(0), ts


def pad(values, lengths, n):
    out = values.new_zeros(len(lengths), n, *values.shape[1:])
    start = 0
    for b, m in enumerate(lengths):
        out[b, :m] = values[start : start + m]
        start += m
    return out


def padded_layer(layer, x, lengths, ts, num_targets, normalization="max_len"):
    """The layer's equations on a padded [B, N, D] batch, mask built pair by pair."""
    b, n, _ = x.shape
    uvqk = F.silu(layer.f1(layer.input_norm(x)))  # [B, N, ...]
    u, v, q, k = torch.split(uvqk, [H * DV, H * DV, H * DQK, H * DQK], dim=-1)
    q, k, v = q.view(b, n, H, DQK), k.view(b, n, H, DQK), v.view(b, n, H, DV)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(DQK)
    rab = layer.relative_bias.op_kwargs()
    scores = scores + padded_relative_bias(
        torch.tensor(lengths), n, num_targets, ts, rab["position_bias"], rab["time_bias"]
    ).unsqueeze(1)
    mask = torch.zeros(b, n, n, dtype=x.dtype)
    for s, m in enumerate(lengths):
        history = m - int(num_targets[s])
        for i in range(m):
            for j in range(i + 1):
                mask[s, i, j] = float(not (i >= history and j >= history and i != j))
    norms = mask.sum(dim=2).clamp(min=1) if normalization == "length" else torch.full((b, n), float(L), dtype=x.dtype)
    attn = torch.einsum("bhij,bjhd->bihd", F.silu(scores) * mask.unsqueeze(1), v)
    attn = attn / norms.view(b, n, 1, 1)
    return x + layer.f2(layer.output_norm(attn.flatten(2)) * u)


def small_layer(**kwargs):
    torch.manual_seed(0)
    return HSTULayer(D, H, DQK, DV, max_seq_len=L, **kwargs).double()


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_layer_on_jagged_equals_layer_on_padded(normalization):
    lengths = [4, 1, 0, 7]
    num_targets = torch.tensor([1, 0, 0, 3])
    layer = small_layer(normalization=normalization)
    with torch.no_grad():  # non-trivial norm parameters, so the test sees them
        layer.input_norm.weight.uniform_(0.5, 1.5)
        layer.output_norm.bias.uniform_(-0.1, 0.1)
    x, offsets, ts = jagged_batch(lengths)
    jagged = layer(x, offsets, ts, num_targets)
    padded = padded_layer(layer, pad(x, lengths, 7), lengths, pad(ts, lengths, 7), num_targets, normalization)
    want = torch.cat([padded[b, :m] for b, m in enumerate(lengths)])
    torch.testing.assert_close(jagged, want)


def test_layer_gradcheck_float64():
    layer = HSTULayer(4, 1, 2, 2, max_seq_len=4, num_time_buckets=4).double()
    x, offsets, ts = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 3, 5]), torch.tensor([1, 4, 60, 2, 9])

    def run(x, *params):
        named = dict(zip([n for n, _ in layer.named_parameters()], params))
        return torch.func.functional_call(layer, named, (x, offsets, ts, torch.tensor([1, 0])))

    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    assert torch.autograd.gradcheck(run, (x.requires_grad_(), *params), fast_mode=True)


def test_every_parameter_gets_a_gradient():
    encoder = HSTUEncoder(2, D, H, DQK, DV, max_seq_len=L, dropout=0.1)
    x, offsets, ts = jagged_batch([5, 3], dtype=torch.float32)
    encoder(x.requires_grad_(), offsets, ts, torch.tensor([1, 1])).square().sum().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_encoder_is_causal():
    encoder = HSTUEncoder(3, D, H, DQK, DV, max_seq_len=L).double().eval()
    x, offsets, ts = jagged_batch([8, 4])
    before = encoder(x, offsets, ts)
    x2, ts2 = x.clone(), ts.clone()
    x2[5:8] += 1.0
    ts2[6:8] += 10**7  # token 4's t_next is ts[5]: later timestamps only
    after = encoder(x2, offsets, ts2)
    torch.testing.assert_close(after[:5], before[:5])
    torch.testing.assert_close(after[8:], before[8:])
    assert not torch.allclose(after[5:8], before[5:8])


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_appending_tokens_never_changes_earlier_outputs_in_training(normalization):
    """Causality of a training pass (every token a query, no targets): the outputs of a sequence's
    first tokens are the same whether or not later tokens follow, whatever the normalization."""
    encoder = HSTUEncoder(2, D, H, DQK, DV, max_seq_len=L, normalization=normalization, use_time_bias=False).double()
    encoder.train()
    x, offsets, ts = jagged_batch([7, 3, 9], seed=4)
    full = encoder(x, offsets, ts)
    keep = [4, 1, 9]  # the first tokens of each sequence
    rows = torch.cat([torch.arange(int(offsets[b]), int(offsets[b]) + n) for b, n in enumerate(keep)])
    prefix = encoder(x[rows], torch.tensor([0] + keep).cumsum(0), ts[rows])
    torch.testing.assert_close(prefix, full[rows], rtol=0, atol=1e-12)


@pytest.mark.parametrize("normalization", ["length", "max_len"])
def test_cached_targets_equal_full_pass(normalization):
    encoder = HSTUEncoder(2, D, H, DQK, DV, max_seq_len=L, normalization=normalization).double().eval()
    history, history_offsets, history_ts = jagged_batch([4, 0, 6], seed=1)
    targets, target_offsets, target_ts = jagged_batch([2, 3, 1], seed=2)
    full, full_offsets = append_jagged(history, history_offsets, targets, target_offsets)
    full_ts, _ = append_jagged(history_ts, history_offsets, target_ts, target_offsets)
    out = encoder(full, full_offsets, full_ts, num_targets=torch.tensor([2, 3, 1]))
    encoded_history, cache = encoder.encode_history(history, history_offsets, history_ts)
    cached = encoder.forward_targets(targets, target_offsets, cache, target_ts)
    is_target = torch.tensor([False] * 4 + [True] * 2 + [True] * 3 + [False] * 6 + [True])
    torch.testing.assert_close(cached, out[is_target])
    torch.testing.assert_close(encoded_history, out[~is_target])


def _split_cache(cache, keep):
    """The first ``keep[b]`` tokens of each sequence of an :class:`HSTUKVCache`."""
    from recsys.modules.hstu import HSTUKVCache

    offsets = cache.seq_offsets
    rows = torch.cat([torch.arange(int(offsets[b]), int(offsets[b]) + n) for b, n in enumerate(keep)])
    return HSTUKVCache([k[rows] for k in cache.keys], [v[rows] for v in cache.values],
                       torch.tensor([0] + keep).cumsum(0), cache.timestamps[rows])


def _strong_bias_encoder(normalization="max_len"):
    torch.manual_seed(0)
    encoder = HSTUEncoder(3, D, H, DQK, DV, max_seq_len=L, normalization=normalization).double().eval()
    with torch.no_grad():  # large tables: the time bias must visibly move the outputs
        for layer in encoder.layers:
            layer.relative_bias.time_weights.normal_(0.0, 1.0)
            layer.relative_bias.position_weights.normal_(0.0, 1.0)
    return encoder


@pytest.mark.parametrize("normalization", ["length", "max_len"])
def test_extend_history_equals_encoding_the_whole_history(normalization):
    """Prefix minus its last token (cached from the prefix alone) + the rest == encode_history of it all."""
    encoder = _strong_bias_encoder(normalization)
    lengths = [7, 0, 8, 3]
    x, offsets, ts = jagged_batch(lengths, seed=3)
    out, full = encoder.encode_history(x, offsets, ts)
    prefix_lengths = [3, 0, 5, 3]  # the last sequence gains nothing
    prefix_rows = torch.cat([torch.arange(int(offsets[b]), int(offsets[b]) + n) for b, n in enumerate(prefix_lengths)])
    _, prefix = encoder.encode_history(x[prefix_rows], torch.tensor([0] + prefix_lengths).cumsum(0), ts[prefix_rows])
    keep = [max(n - 1, 0) if n < m else n for n, m in zip(prefix_lengths, lengths)]
    rows = torch.cat([torch.arange(int(offsets[b]) + k, int(offsets[b + 1])) for b, k in enumerate(keep)])
    new_offsets = offsets - torch.tensor([0] + keep).cumsum(0)
    extended, cache = encoder.extend_history(x[rows], new_offsets, _split_cache(prefix, keep), ts[rows])
    torch.testing.assert_close(extended, out[rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(cache.seq_offsets, offsets)
    torch.testing.assert_close(cache.timestamps, ts)
    for a, b in zip(cache.keys + cache.values, full.keys + full.values):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_last_history_token_changes_once_an_event_follows_it():
    """Why a cached prefix drops its last token: its t_next becomes the next event's time, so its
    keys from the second layer on change (the first layer's keys read only its input)."""
    encoder = _strong_bias_encoder()
    x, offsets, ts = jagged_batch([6], seed=4)
    _, whole = encoder.encode_history(x, offsets, ts)
    _, prefix = encoder.encode_history(x[:4], torch.tensor([0, 4]), ts[:4])
    torch.testing.assert_close(prefix.keys[0], whole.keys[0][:4], rtol=0, atol=1e-12)
    for layer in (1, 2):
        torch.testing.assert_close(prefix.keys[layer][:3], whole.keys[layer][:3], rtol=0, atol=1e-12)
        assert not torch.allclose(prefix.keys[layer][3], whole.keys[layer][3], rtol=0, atol=1e-6)
    naive, _ = encoder.extend_history(x[4:], torch.tensor([0, 2]), prefix, ts[4:])
    assert not torch.allclose(naive, encoder.encode_history(x, offsets, ts)[0][4:], rtol=0, atol=1e-6)


def test_extend_history_refuses_a_non_causal_encoder_and_mismatched_batches():
    encoder = HSTUEncoder(1, D, H, DQK, DV, max_seq_len=L).double().eval()
    x, offsets, ts = jagged_batch([3, 2], seed=5)
    _, cache = encoder.encode_history(x, offsets, ts)
    with pytest.raises(DataError, match="one \\(possibly empty\\) list of new tokens per prefix"):
        encoder.extend_history(x[:1], torch.tensor([0, 1]), cache, ts[:1])
    with pytest.raises(ConfigError, match="causal"):
        HSTUEncoder(1, D, H, DQK, DV, max_seq_len=L, causal=False).double().extend_history(
            x[:1], torch.tensor([0, 1, 1]), cache, ts[:1])


def test_presets_match_reference_settings_and_build():
    expected = {  # layers, D, heads, Dqk = Dv, history length, dropout
        "hstu_ml1m": (2, 50, 1, 50, 200, 0.2),
        "hstu_ml1m_large": (8, 50, 2, 25, 200, 0.2),
        "hstu_ml20m": (4, 256, 4, 64, 200, 0.2),
        "hstu_ml20m_large": (16, 256, 8, 32, 200, 0.2),
        "hstu_books": (4, 64, 4, 16, 50, 0.5),
        "hstu_books_large": (16, 64, 8, 8, 50, 0.5),
    }
    assert set(HSTU_PRESETS) == set(expected)
    for name, preset in HSTU_PRESETS.items():
        c = preset()
        assert (c.num_layers, c.embedding_dim, c.num_heads, c.attention_dim, c.max_seq_len, c.dropout) == (
            expected[name][:4] + expected[name][4:]
        )
        assert c.linear_dim == c.attention_dim
    encoder = HSTU_PRESETS["hstu_ml1m"]().build()
    assert len(encoder.layers) == 2 and encoder.layers[0].f1.out_features == 1 * (2 * 50 + 2 * 50)


def test_bad_configuration_and_input_raise_clear_errors():
    with pytest.raises(ConfigError, match="normalization"):
        HSTULayer(D, H, DQK, DV, max_seq_len=L, normalization="softmax")
    with pytest.raises(ConfigError, match="num_layers"):
        HSTUEncoder(0, D, H, DQK, DV, max_seq_len=L)
    encoder = HSTUEncoder(1, D, H, DQK, DV, max_seq_len=L)
    x, offsets, _ = jagged_batch([3], dtype=torch.float32)
    with pytest.raises(DataError, match="timestamps"):
        encoder(x, offsets)
    with pytest.raises(DataError, match=r"\[T, D=6\]"):
        encoder(x[:, :4], offsets)
    no_time = HSTUEncoder(1, D, H, DQK, DV, max_seq_len=L, use_time_bias=False)
    assert no_time(x, offsets).shape == (3, D)


def test_window_and_contextual_prefix_reach_the_attention():
    """max_attn_len and num_contextual: the layer equals its equations with the op called on them, and differs
    from the layer without them; negative values are refused."""
    from recsys.ops.hstu_attention import hstu_attention

    torch.manual_seed(0)
    lengths = [7, 3, 9]
    x, offsets, ts = jagged_batch(lengths, seed=4)
    layer = HSTULayer(D, H, DQK, DV, L, max_attn_len=2, num_contextual=1).double()
    plain = HSTULayer(D, H, DQK, DV, L).double()
    plain.load_state_dict(layer.state_dict())
    u, q, k, v = layer.project(x)
    attn = hstu_attention(q, k, v, offsets, L, timestamps=ts, max_attn_len=2, num_contextual=1,
                          **layer.relative_bias.op_kwargs())
    torch.testing.assert_close(layer(x, offsets, ts), layer.output(x, attn.flatten(1, 2), u))
    assert not torch.allclose(layer(x, offsets, ts), plain(x, offsets, ts))
    with pytest.raises(ConfigError, match="max_attn_len"):
        HSTULayer(D, H, DQK, DV, L, max_attn_len=-1)
