"""TransAct V2: token features against a restatement of the formula, shapes, causality, padding and
grouping invariance, empty rows, and input checks."""

import pytest
import torch
from torch import nn

from recsys.errors import ConfigError, DataError
from recsys.modules.transact_v2 import TransActV2, TransActV2Config, jagged_index, length_groups

A, SURFACES, C = 4, 3, 4
SMALL = TransActV2Config(max_sequence=12, model_dim=8, num_layers=2, num_heads=1, feedforward_dim=16, dropout=0.0)


def encoder(**overrides) -> TransActV2:
    torch.manual_seed(0)
    config = TransActV2Config(**{**SMALL.__dict__, **overrides})
    return TransActV2(A, SURFACES, C, config).double().eval()


def inputs(lengths=(5, 0, 3, 1, 7), seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    total = int(lengths.sum())
    return dict(
        lengths=lengths,
        action_bits=torch.randint(0, 2**A, (total,), generator=gen),
        surface=torch.randint(0, SURFACES, (total,), generator=gen),
        content=torch.randn(total, C, generator=gen, dtype=torch.float64),
        candidate_content=torch.randn(len(lengths), C, generator=gen, dtype=torch.float64),
    )


def row_inputs(x, row):
    """Row ``row`` of ``x`` alone, as a batch of one."""
    start = int(x["lengths"][:row].sum())
    end = start + int(x["lengths"][row])
    return dict(
        lengths=x["lengths"][row:row + 1], action_bits=x["action_bits"][start:end], surface=x["surface"][start:end],
        content=x["content"][start:end], candidate_content=x["candidate_content"][row:row + 1],
    )


def reference_row(model: TransActV2, x, row) -> tuple[torch.Tensor, torch.Tensor]:
    """One row written from the module docstring's formula: ``([F], [L, d])``."""
    r = row_inputs(x, row)
    length = int(r["lengths"][0])
    if length == 0:
        return torch.zeros(model.output_dim, dtype=torch.float64), torch.zeros(0, model.model_dim, dtype=torch.float64)
    tokens = []
    for t in range(length):
        x_t = torch.cat([r["content"][t], r["candidate_content"][0]])
        for a in range(A):
            if (int(r["action_bits"][t]) >> a) & 1:
                x_t = x_t + model.action_embedding.weight[a]
        x_t = x_t + model.surface_embedding.weight[int(r["surface"][t])] + model.position_embedding.weight[t]
        tokens.append(x_t)
    z = model.input_projection(torch.stack(tokens)).unsqueeze(0)  # [1, L, d]
    causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)  # True = may not read
    h = model.encoder(z, mask=causal)[0]  # [L, d]
    return model.readout_projection(h).max(dim=0).values, h


def test_matches_the_formula_row_by_row_with_empty_rows_as_zeros():
    model = encoder()
    x = inputs()
    with torch.no_grad():
        encoding = model.encode(**x)
        assert encoding.features.shape == (5, model.output_dim) and encoding.outputs.shape == (16, 8)
        start = 0
        for row, length in enumerate(x["lengths"].tolist()):
            features, outputs = reference_row(model, x, row)
            torch.testing.assert_close(encoding.features[row], features)
            torch.testing.assert_close(encoding.outputs[start:start + length], outputs)
            start += length
        assert torch.equal(encoding.features[1], torch.zeros(model.output_dim, dtype=torch.float64))


def test_causal_the_output_at_t_ignores_every_later_token():
    model = encoder()
    x = inputs(lengths=(7,))
    changed = {k: v.clone() for k, v in x.items()}
    changed["content"][4:] += 5.0
    changed["action_bits"][4:] = (changed["action_bits"][4:] + 3) % 2**A
    changed["surface"][4:] = (changed["surface"][4:] + 1) % SURFACES
    with torch.no_grad():
        before, after = model.encode(**x).outputs, model.encode(**changed).outputs
    torch.testing.assert_close(after[:4], before[:4])  # tokens 0..3 read only tokens 0..3
    assert not torch.allclose(after[4:], before[4:])


def test_padding_and_neighbours_do_not_change_a_row():
    model = encoder()
    x = inputs()
    with torch.no_grad():
        together = model.encode(**x)
        start = 0
        for row, length in enumerate(x["lengths"].tolist()):
            alone = model.encode(**row_inputs(x, row))  # padded to its own length only
            torch.testing.assert_close(together.features[row], alone.features[0])
            torch.testing.assert_close(together.outputs[start:start + length], alone.outputs)
            start += length


@pytest.mark.parametrize("groups", [1, 2, 4, 9])
def test_length_groups_give_the_same_outputs(groups):
    x = inputs()
    with torch.no_grad():
        reference = encoder(length_groups=1).encode(**x)
        grouped = encoder(length_groups=groups).encode(**x)
    torch.testing.assert_close(grouped.features, reference.features)
    torch.testing.assert_close(grouped.outputs, reference.outputs)


def test_training_mode_dropout_free_equals_eval_and_gradients_are_finite():
    model = encoder()
    x = inputs()
    model.train()
    features = model(**x)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**x), features)
    features.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)  # every parameter takes part
    assert float(model.position_embedding.weight.grad[7:].abs().sum()) == 0.0  # no row is longer than 7


def test_all_rows_empty():
    model = encoder()
    x = inputs(lengths=(0, 0))
    encoding = model.encode(**x)
    assert encoding.features.shape == (2, 8) and not encoding.features.any() and encoding.outputs.shape == (0, 8)


def test_helpers():
    index, real = jagged_index(torch.tensor([2, 0, 1]), 2)
    assert index.tolist() == [[0, 1], [2, 3], [2, 3]] and real.tolist() == [[True, True], [False, False], [True, False]]
    assert [g.tolist() for g in length_groups(torch.tensor([5, 1, 3, 2]), 2)] == [[1, 3], [2, 0]]
    assert [g.tolist() for g in length_groups(torch.tensor([4]), 3)] == [[0]]


def test_config_and_input_errors():
    with pytest.raises(ConfigError, match="num_heads"):
        TransActV2Config(model_dim=10, num_heads=3)
    with pytest.raises(ConfigError, match="content_dim"):
        TransActV2(A, SURFACES, 0)
    model = encoder()
    x = inputs()
    with pytest.raises(DataError, match="max_sequence"):
        model(**inputs(lengths=(13,)))
    with pytest.raises(DataError, match="action bit masks"):
        model(**{**x, "action_bits": x["action_bits"] + 2**A})
    with pytest.raises(DataError, match="surfaces"):
        model(**{**x, "surface": x["surface"] + SURFACES})
    with pytest.raises(DataError, match="candidate_content"):
        model(**{**x, "candidate_content": x["candidate_content"][:2]})


def test_paper_sizes():
    model = TransActV2(num_actions=4, num_surfaces=3, content_dim=32)
    layer = model.encoder.layers[0]
    assert model.input_projection.in_features == 64 and model.model_dim == 64 and model.output_dim == 64
    assert len(model.encoder.layers) == 2 and layer.self_attn.num_heads == 1 and layer.linear1.out_features == 32
    assert model.position_embedding.num_embeddings == 192 and isinstance(layer, nn.TransformerEncoderLayer)


def test_encode_padded_equals_the_jagged_forward():
    """Rows padded to the position table's width (static shapes, the request path) read as the jagged rows."""
    model = encoder()
    x = inputs()
    lengths = x["lengths"]
    width = model.max_sequence
    index, real = jagged_index(lengths, width, torch.cumsum(lengths, 0) - lengths)  # [B, L] each
    safe = torch.where(real, index, 0)
    with torch.no_grad():
        padded = model.encode_padded(x["action_bits"][safe] * real, x["surface"][safe] * real,
                                     x["content"][safe] * real.unsqueeze(-1), real, x["candidate_content"])
        torch.testing.assert_close(padded, model(**x))
