"""SASRecEncoder on jagged input: padded equivalence, causality, isolation, targets, gradients, presets."""

import inspect
import math

import pytest
import torch

from recsys.errors import ConfigError, DataError
from recsys.modules.hstu import HSTUEncoder
from recsys.modules.sasrec import SASREC_PRESETS, SASRecConfig, SASRecEncoder

D, H, L = 8, 2, 10


def small_encoder(**kwargs):
    torch.manual_seed(0)
    options = dict(num_layers=2, embedding_dim=D, num_heads=H, max_seq_len=L, dropout=0.0, ffn_dim=12)
    options.update(kwargs)
    enc = SASRecEncoder(**options).double().eval()
    with torch.no_grad():  # non-trivial norm parameters, so the tests see them
        for name, p in enc.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.2, 0.2)
    return enc


def jagged_batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(lengths), D, generator=g, dtype=torch.float64), torch.tensor([0] + lengths).cumsum(0)


def pad(values, lengths, n):
    out = values.new_zeros(len(lengths), n, *values.shape[1:])
    start = 0
    for b, m in enumerate(lengths):
        out[b, :m] = values[start : start + m]
        start += m
    return out


def plain_padded_encoder(enc, x, lengths, num_targets):
    """The encoder's equations on a padded [B, N, D] batch; mask and positions built element by element."""
    b, n, d = x.shape
    dh = d // H
    positions = torch.zeros(b, n, dtype=torch.long)
    allowed = torch.zeros(b, n, n, dtype=torch.bool)
    for s, m in enumerate(lengths):
        history = m - int(num_targets[s])
        for i in range(n):
            positions[s, i] = min(i, history)
            for j in range(n):
                both_targets = i >= history and j >= history and i != j
                allowed[s, i, j] = (j <= i < m and not both_targets) if i < m else j == 0  # padding rows: anything
    x = x + enc.position_embedding.weight[positions]
    for block in enc.layers:
        h = block.attention_norm(x)
        q, k, v = block.qkv(h).split(d, dim=-1)
        q, k, v = (t.view(b, n, H, dh).transpose(1, 2) for t in (q, k, v))  # [B, H, N, dh]
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
        scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + block.attention_output(attn)
        ffn = block.ffn
        x = x + ffn[3](torch.relu(ffn[0](block.ffn_norm(x))))
    return enc.final_norm(x)


@pytest.mark.parametrize("num_targets", [None, [1, 0, 0, 3]])
def test_jagged_equals_plain_padded_computation(num_targets):
    lengths = [4, 1, 0, 7]
    enc = small_encoder()
    x, offsets = jagged_batch(lengths)
    targets = None if num_targets is None else torch.tensor(num_targets)
    got = enc(x, offsets, num_targets=targets)
    padded = plain_padded_encoder(enc, pad(x, lengths, 7), lengths, targets if targets is not None else torch.zeros(4))
    want = torch.cat([padded[b, :m] for b, m in enumerate(lengths)])
    assert got.shape == (sum(lengths), D)
    torch.testing.assert_close(got, want)


def test_output_at_t_ignores_later_inputs():
    enc = small_encoder()
    x, offsets = jagged_batch([6, 5])
    changed = x.clone()
    changed[3:6] = torch.randn(3, D, dtype=torch.float64)  # later tokens of sequence 0
    before, after = enc(x, offsets), enc(changed, offsets)
    torch.testing.assert_close(after[:3], before[:3])
    torch.testing.assert_close(after[6:], before[6:])  # sequence 1 untouched
    assert not torch.allclose(after[3:6], before[3:6])


def test_sequence_output_independent_of_the_batch():
    enc = small_encoder()
    x, offsets = jagged_batch([3, 7, 2])
    together = enc(x, offsets)
    alone = enc(x[3:10], torch.tensor([0, 7]))
    torch.testing.assert_close(together[3:10], alone)
    other = jagged_batch([5, 7, 1], seed=1)[0]
    other[5:12] = x[3:10]
    torch.testing.assert_close(enc(other, torch.tensor([0, 5, 12, 13]))[5:12], alone)


def test_empty_and_length_one_sequences():
    enc = small_encoder()
    x, offsets = jagged_batch([0, 1, 0, 2])
    out = enc(x, offsets)
    assert out.shape == (3, D) and torch.isfinite(out).all()
    torch.testing.assert_close(out[0], enc(x[:1], torch.tensor([0, 1]))[0])
    empty = enc(x[:0], torch.tensor([0, 0, 0]))
    assert empty.shape == (0, D)
    assert enc(x[:0], torch.tensor([0])).shape == (0, D)


def test_gradients_reach_every_parameter_and_the_input():
    torch.manual_seed(0)
    enc = SASRecEncoder(num_layers=2, embedding_dim=D, num_heads=H, max_seq_len=L, dropout=0.1).train()
    x = torch.randn(9, D, requires_grad=True)
    out = enc(x, torch.tensor([0, 4, 4, 9]), num_targets=torch.tensor([1, 0, 2]))
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_eval_is_deterministic_and_train_applies_dropout():
    torch.manual_seed(0)
    enc = SASRecEncoder(num_layers=2, embedding_dim=D, num_heads=H, max_seq_len=L, dropout=0.5)
    x, offsets = torch.randn(7, D), torch.tensor([0, 3, 7])
    enc.eval()
    torch.testing.assert_close(enc(x, offsets), enc(x, offsets), rtol=0, atol=0)
    enc.train()
    assert not torch.allclose(enc(x, offsets), enc(x, offsets))


def test_targets_read_history_and_themselves_only():
    enc = small_encoder()
    x, offsets = jagged_batch([7])
    out = enc(x, offsets, num_targets=torch.tensor([3]))
    history = enc(x[:4], torch.tensor([0, 4]))
    torch.testing.assert_close(out[:4], history)  # targets never change the history's outputs
    for t in range(4, 7):  # each target as if it were the only one
        alone = enc(torch.cat([x[:4], x[t : t + 1]]), torch.tensor([0, 5]), num_targets=torch.tensor([1]))
        torch.testing.assert_close(out[t], alone[4])


def test_timestamps_are_ignored_and_position_embedding_is_optional():
    enc = small_encoder()
    x, offsets = jagged_batch([3, 4])
    torch.testing.assert_close(enc(x, offsets, timestamps=torch.arange(7)), enc(x, offsets))
    no_positions = small_encoder(position_embedding=False)
    assert no_positions.position_embedding is None
    assert not torch.allclose(no_positions(x, offsets), enc(x, offsets))


def test_same_forward_interface_as_hstu():
    sasrec = list(inspect.signature(SASRecEncoder.forward).parameters)
    hstu = list(inspect.signature(HSTUEncoder.forward).parameters)
    assert sasrec == hstu


def test_bad_input_raises_data_error():
    enc = small_encoder()
    x, offsets = jagged_batch([3, 4])
    with pytest.raises(DataError, match="max_seq_len"):
        enc(torch.randn(L + 1, D, dtype=torch.float64), torch.tensor([0, L + 1]))
    with pytest.raises(DataError, match=r"\[T, D=8\]"):
        enc(x[:, :4], offsets)
    with pytest.raises(DataError, match="seq_offsets"):
        enc(x, torch.tensor([0, 3, 6]))
    with pytest.raises(DataError, match="num_targets"):
        enc(x, offsets, num_targets=torch.tensor([4, 0]))


@pytest.mark.parametrize(
    "options",
    [dict(num_heads=3), dict(num_layers=0), dict(dropout=1.0), dict(max_seq_len=0), dict(ffn_dim=0)],
)
def test_bad_config_raises_config_error(options):
    with pytest.raises(ConfigError):
        SASRecConfig(**{**dict(num_layers=1, embedding_dim=D, num_heads=H, max_seq_len=L), **options}).build()


@pytest.mark.parametrize("name", sorted(SASREC_PRESETS))
def test_presets_build_and_encode(name):
    config = SASREC_PRESETS[name]()
    enc = config.build().eval()
    assert len(enc.layers) == config.num_layers and enc.max_seq_len == config.max_seq_len
    assert enc.layers[0].ffn[0].out_features == config.ffn_dim
    out = enc(torch.randn(5, config.embedding_dim), torch.tensor([0, 2, 5]))
    assert out.shape == (5, config.embedding_dim) and torch.isfinite(out).all()


def test_books_and_ml1m_presets_match_the_reference_baselines():
    books, ml1m = SASREC_PRESETS["sasrec_books"](), SASREC_PRESETS["sasrec_ml1m"]()
    assert (books.embedding_dim, books.num_layers, books.num_heads, books.max_seq_len, books.dropout) == (64, 4, 4, 50, 0.5)
    assert (ml1m.embedding_dim, ml1m.num_layers, ml1m.num_heads, ml1m.max_seq_len, ml1m.dropout) == (50, 2, 1, 200, 0.2)
