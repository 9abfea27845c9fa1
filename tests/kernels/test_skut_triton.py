"""The SKUT Triton kernel against the TransAct V2 module's own layers (and the reference).

On a machine without CUDA the kernel runs in the Triton interpreter on CPU tensors:
``TRITON_INTERPRET=1`` is set here, before the kernel module (and its ``@triton.jit``) is first
imported, which happens lazily on the first ``kernel="triton"`` call. Shapes are then kept small.

Tolerance (the flash-attention rule): the kernel's error against the float32 module is at most
twice the error of PyTorch itself computing the same encoder in bfloat16 (the reference with
bfloat16 weights and inputs), per output: the readout and the per-token outputs.
"""

import os

import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from recsys.errors import ConfigError  # noqa: E402
from recsys.modules import transact_v2  # noqa: E402
from recsys.modules.transact_v2 import TransActV2, TransActV2Config  # noqa: E402
from recsys.ops.skut import skut  # noqa: E402
from recsys.ops.skut_reference import skut_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_encoder(layers=2, heads=1, dim=32, ff=16, content=8, readout=None, norm_first=False, activation="relu",
                 max_sequence=64, seed=0, kernel="auto"):
    """A TransActV2 in eval mode; ``norm_first`` / ``activation`` swap in layers built with them."""
    torch.manual_seed(seed)
    config = TransActV2Config(max_sequence=max_sequence, model_dim=dim, num_layers=layers, num_heads=heads,
                              feedforward_dim=ff, readout_dim=readout, inference_kernel=kernel)
    encoder = TransActV2(num_actions=4, num_surfaces=3, content_dim=content, config=config)
    if norm_first or activation != "relu":
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ff, batch_first=True, norm_first=norm_first,
                                           activation=activation)
        encoder.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    for p in encoder.parameters():  # trained-looking weights: biases and norm affines away from 0 / 1
        with torch.no_grad():
            p.add_(torch.randn_like(p) * 0.1)
    return encoder.to(DEVICE).eval()


def make_tokens(lengths, width, token_dim, seed=0):
    """``[B, L, E]`` token vectors (values at padding: noise, which must not matter) and ``[B]`` lengths."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), width, token_dim, generator=g)
    return x.to(DEVICE), torch.tensor(lengths, dtype=torch.int64, device=DEVICE)


@torch.no_grad()
def module_outputs(encoder, x, lengths):
    """The module's own layers on ``x`` (what ``encode_padded`` runs after the token vectors):
    ``[B, F]`` readout and ``[B, L, d]`` outputs."""
    width = x.shape[1]
    real = torch.arange(width, device=x.device) < lengths.unsqueeze(1)  # [B, L]
    causal = nn.Transformer.generate_square_subsequent_mask(width, device=x.device)
    outputs = encoder.encoder(encoder.input_projection(x), mask=causal, is_causal=True)  # [B, L, d]
    return encoder.readout(outputs, real), outputs


def real_rows(outputs, lengths):
    """``[V, d]`` the outputs at real tokens."""
    real = torch.arange(outputs.shape[1], device=outputs.device) < lengths.unsqueeze(1)
    return outputs[real].float()


def err(a, b):
    return float((a.float() - b.float()).detach().abs().max()) if a.numel() else 0.0


# The module's SKUT paths against its PyTorch layers: bfloat16 matmul inputs give errors of about
# 0.02 at these sizes (the rule-based tests above bound them); a wrong row, token or order gives O(1).
PLUMBING_TOLERANCE = 5e-2


def assert_within_rule(encoder, x, lengths, **kernel_options):
    """Kernel vs the float32 module, against the bfloat16 reference vs the same (readout and outputs)."""
    from recsys.kernels.skut_triton import skut_triton

    weights = encoder.skut_weights()
    want, want_out = module_outputs(encoder, x, lengths)
    with torch.no_grad():
        low, low_out = skut_reference(weights, x.bfloat16(), lengths, return_outputs=True)
        got, got_out = skut_triton(weights, x, lengths, return_outputs=True, **kernel_options)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert err(got, want) <= 2 * err(low, want) + 1e-4, (err(got, want), err(low, want))
    got_real, want_real, low_real = (real_rows(t, lengths) for t in (got_out, want_out, low_out))
    assert err(got_real, want_real) <= 2 * err(low_real, want_real) + 1e-4, (err(got_real, want_real),
                                                                             err(low_real, want_real))
    empty = lengths == 0
    assert torch.equal(got[empty], torch.zeros_like(got[empty]))


CASES = [  # (lengths, L, encoder options, (block_m, block_n))
    ([37, 0, 1, 20], 37, dict(), (16, 16)),  # L not a multiple of the block, empty row, one token
    ([16, 5, 33], 40, dict(layers=1), (16, 16)),  # one layer; a row ending exactly on a block edge
    ([12, 3], 12, dict(heads=2), (16, 16)),  # two heads of 16
    ([30, 9, 0], 30, dict(norm_first=True, activation="gelu"), (16, 16)),
    ([25, 25], 25, dict(dim=24, ff=20, content=5, readout=10), (16, 16)),  # sizes that are not powers of two
    ([50, 17], 50, dict(heads=2, dim=64, ff=32, content=32), (32, 16)),  # the paper's widths; key tiles < query tiles
    ([1, 1, 0], 1, dict(), (16, 16)),  # L = 1
]


@pytest.mark.parametrize("lengths, width, options, blocks", CASES)
def test_kernel_matches_module(lengths, width, options, blocks):
    encoder = make_encoder(max_sequence=max(width, 1), **options)
    x, lengths_t = make_tokens(lengths, width, 2 * encoder.content_dim, seed=sum(lengths))
    assert_within_rule(encoder, x, lengths_t, block_m=blocks[0], block_n=blocks[1])


def test_padding_values_do_not_matter():
    """Changing the token vectors at padded slots changes nothing the kernel returns at real ones."""
    from recsys.kernels.skut_triton import skut_triton

    encoder = make_encoder()
    x, lengths = make_tokens([21, 4], 24, 16, seed=3)
    noisy = x.clone()
    noisy[0, 21:] = 1e3
    noisy[1, 4:] = -1e3
    weights = encoder.skut_weights()
    with torch.no_grad():
        a, a_out = skut_triton(weights, x, lengths, return_outputs=True, block_m=16, block_n=16)
        b, b_out = skut_triton(weights, noisy, lengths, return_outputs=True, block_m=16, block_n=16)
    assert torch.equal(a, b)
    assert torch.equal(real_rows(a_out, lengths), real_rows(b_out, lengths))


def test_serving_shape():
    """The paper's encoder (d = 64, 1 head, FFN 32, 2 layers) at L = 192 on a GPU; shorter in the interpreter."""
    width, rows = (192, 64) if DEVICE == "cuda" else (48, 3)
    encoder = make_encoder(dim=64, ff=32, content=32, max_sequence=width)
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(0, width + 1, (rows,), generator=g)
    lengths[:2] = torch.tensor([width, 0])
    x, _ = make_tokens(lengths.tolist(), width, 64, seed=5)
    assert_within_rule(encoder, x, lengths.to(DEVICE))


def module_inputs(encoder, lengths, width, seed=0):
    """encode_padded's inputs for rows of ``lengths`` real tokens (a prefix of each row)."""
    g = torch.Generator().manual_seed(seed)
    rows = len(lengths)
    real = torch.arange(width) < torch.tensor(lengths).unsqueeze(1)
    return [t.to(DEVICE) for t in (
        torch.randint(0, 2**encoder.num_actions, (rows, width), generator=g).int(),
        torch.randint(0, encoder.num_surfaces, (rows, width), generator=g).int(),
        torch.randn(rows, width, encoder.content_dim, generator=g),
        real,
        torch.randn(rows, encoder.content_dim, generator=g),
    )]


def test_encode_padded_runs_skut_in_eval_without_grad(monkeypatch):
    """The request path's encoder call: SKUT when asked for (and on CUDA by default), the module's
    layers when training or when a gradient is needed."""
    calls = []
    real_skut = transact_v2.skut
    monkeypatch.setattr(transact_v2, "skut", lambda *a, **k: calls.append(k["kernel"]) or real_skut(*a, **k))
    encoder = make_encoder(kernel="triton" if DEVICE == "cpu" else "auto", max_sequence=32)
    inputs = module_inputs(encoder, [30, 0, 1, 9], 32, seed=2)
    with torch.no_grad():
        got = encoder.encode_padded(*inputs)
    assert calls == ["triton"]
    want = encoder.encode_padded(*inputs)  # gradient enabled: the module's layers
    assert calls == ["triton"] and want.requires_grad
    assert err(got, want) <= PLUMBING_TOLERANCE
    encoder.train()
    encoder.encode_padded(*inputs)
    assert calls == ["triton"]


def test_encode_jagged_runs_skut_in_eval_without_grad():
    """``encode`` (the offline evaluation path) by SKUT: the same readout and per-token outputs."""
    kernel = make_encoder(kernel="triton" if DEVICE == "cpu" else "auto", max_sequence=32)
    layers = make_encoder(kernel="pytorch", max_sequence=32)
    lengths = [30, 0, 1, 9]
    action_bits, surface, content, real, candidate = module_inputs(kernel, lengths, 32, seed=4)
    args = (torch.tensor(lengths, device=DEVICE), action_bits[real], surface[real], content[real], candidate)
    with torch.no_grad():
        got, want = kernel.encode(*args), layers.encode(*args)
    assert got.features.shape == want.features.shape and got.outputs.shape == want.outputs.shape
    assert err(got.features, want.features) <= PLUMBING_TOLERANCE
    assert err(got.outputs, want.outputs) <= PLUMBING_TOLERANCE
    assert torch.equal(got.features[1], torch.zeros_like(got.features[1]))


def test_weights_follow_parameter_updates():
    """An in-place parameter update (an optimizer step) is seen by the next SKUT call."""
    encoder = make_encoder(kernel="triton" if DEVICE == "cpu" else "auto")
    x, lengths = make_tokens([10, 3], 10, 16, seed=6)
    with torch.no_grad():
        before = skut(encoder.skut_weights(), x, lengths, kernel="triton")
        encoder.readout_projection.bias.add_(1.0)
        after = skut(encoder.skut_weights(), x, lengths, kernel="triton")
    assert torch.allclose(after, before + 1.0, atol=1e-5)


def test_triton_by_name_names_what_it_cannot_run():
    encoder = make_encoder(dim=256, heads=4, ff=16, max_sequence=8)
    x, lengths = make_tokens([3], 8, 16)
    with torch.no_grad(), pytest.raises(ConfigError, match="model_dim=256"):
        skut(encoder.skut_weights(), x, lengths, kernel="triton")
    with torch.no_grad():  # "auto" falls back to the reference
        assert skut(encoder.skut_weights(), x, lengths, kernel="auto").shape == (1, 256)
    small = make_encoder(max_sequence=8)
    with pytest.raises(ConfigError, match="gradient"):
        skut(small.skut_weights(), x, lengths, kernel="triton")
