"""The SKUT op: the PyTorch reference against the TransAct V2 module's layers, and the dispatcher's
choices and checks. The Triton kernel itself is tested in tests/kernels/test_skut_triton.py."""

import pytest
import torch
from torch import nn

from recsys.errors import ConfigError, DataError
from recsys.modules.transact_v2 import TransActV2, TransActV2Config
from recsys.ops.skut import skut, skut_backend, skut_unsupported
from recsys.ops.skut_reference import skut_reference


def make_encoder(norm_first=False, activation="relu", heads=1, layers=2, dim=32, ff=16, max_sequence=32):
    torch.manual_seed(0)
    config = TransActV2Config(max_sequence=max_sequence, model_dim=dim, num_layers=layers, num_heads=heads,
                              feedforward_dim=ff)
    encoder = TransActV2(num_actions=3, num_surfaces=2, content_dim=8, config=config)
    if norm_first or activation != "relu":
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ff, batch_first=True, norm_first=norm_first,
                                           activation=activation)
        encoder.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    return encoder.eval()


@pytest.mark.parametrize("options", [dict(), dict(norm_first=True), dict(activation="gelu", heads=4), dict(layers=1)])
def test_reference_equals_the_module(options):
    """skut_reference on token vectors = the module's projection, layers and readout (float32)."""
    encoder = make_encoder(**options)
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([20, 0, 1, 7])
    x = torch.randn(4, 20, 16, generator=g)
    real = torch.arange(20) < lengths.unsqueeze(1)
    with torch.no_grad():
        causal = nn.Transformer.generate_square_subsequent_mask(20)
        outputs = encoder.encoder(encoder.input_projection(x), mask=causal, is_causal=True)
        want = encoder.readout(outputs, real)
        got, got_outputs = skut_reference(encoder.skut_weights(), x, lengths, return_outputs=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_outputs[real], outputs[real], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[1], torch.zeros(32))


def test_encode_padded_by_the_op_equals_the_module_layers():
    """encode_padded is the token vectors, then skut (here the reference) or the layers: equal."""
    encoder = make_encoder()
    g = torch.Generator().manual_seed(2)
    real = torch.arange(10) < torch.tensor([10, 3, 0]).unsqueeze(1)
    args = (torch.randint(0, 8, (3, 10), generator=g), torch.randint(0, 2, (3, 10), generator=g),
            torch.randn(3, 10, 8, generator=g), real, torch.randn(3, 8, generator=g))
    with torch.no_grad():
        want = encoder.encode_padded(*args)
        positions = torch.arange(10).expand(3, 10)
        vectors = encoder._token_vectors(args[2], args[4].unsqueeze(1).expand(-1, 10, -1), args[0], args[1], positions)
        got = skut(encoder.skut_weights(), vectors, real.sum(1), kernel="pytorch")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_zero_width_rows_read_out_zeros():
    encoder = make_encoder()
    with torch.no_grad():
        out = skut(encoder.skut_weights(), torch.zeros(3, 0, 16), torch.zeros(3, dtype=torch.int64))
    assert torch.equal(out, torch.zeros(3, 32))


def test_auto_runs_pytorch_off_cuda(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    encoder = make_encoder()
    x = torch.randn(2, 4, 16)
    with torch.no_grad():
        assert skut_backend(encoder.skut_weights(), x, "auto") == "pytorch"
        with pytest.raises(ConfigError, match="x is on cpu"):
            skut_backend(encoder.skut_weights(), x, "triton")
    with pytest.raises(ConfigError, match="kernel='cuda' is unknown"):
        skut_backend(encoder.skut_weights(), x, "cuda")


def test_unsupported_sizes_are_named():
    encoder = make_encoder(dim=256, heads=2, ff=512)
    with torch.no_grad():
        reasons = skut_unsupported(encoder.skut_weights(), torch.randn(1, 2, 16))
    assert any("model_dim=256" in r for r in reasons) and any("feedforward_dim=512" in r for r in reasons)


def test_bad_inputs_name_the_argument():
    weights = make_encoder().skut_weights()
    with pytest.raises(DataError, match="x must be"):
        skut(weights, torch.randn(2, 4, 15), torch.tensor([1, 2]))
    with pytest.raises(DataError, match="lengths must be"):
        skut(weights, torch.randn(2, 4, 16), torch.tensor([1.0, 2.0]))
    with pytest.raises(DataError, match="lengths must lie in 0..L=4"):
        skut(weights, torch.randn(2, 4, 16), torch.tensor([5, 2]))


def test_config_rejects_an_unknown_kernel():
    with pytest.raises(ConfigError, match="inference_kernel"):
        TransActV2Config(inference_kernel="cuda")
