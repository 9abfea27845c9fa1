"""The state codec: bytes round trip, the fixed little-endian layout, a clear error on a wrong length."""

import numpy as np
import pytest
import torch

from recsys.errors import DataError
from recsys.uic.state_codec import StateCodec
from tests.recsys.uic.conftest import tiny_model


def random_state(model, b: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return model.init_state(b).map(lambda t: torch.randn(t.shape, generator=gen))


def test_round_trip_of_a_batch_and_of_one_row():
    model = tiny_model()
    codec = StateCodec.of(model)
    state = random_state(model, 5)
    blobs = codec.encode(state)
    assert [len(b) for b in blobs] == [codec.nbytes] * 5
    back = codec.decode(blobs)
    for name, _ in codec.shapes:
        torch.testing.assert_close(getattr(back, name), getattr(state, name), rtol=0, atol=0)
    one = codec.decode_row(codec.encode_row(state, row=3))
    torch.testing.assert_close(one.induction, state.induction[3:4], rtol=0, atol=0)


def test_layout_is_the_fields_in_order_as_float32_little_endian():
    model = tiny_model()  # m=3, Dm=6, Dc=5, Ds=4
    codec = StateCodec.of(model)
    assert codec.describe()["fields"] == [["memory", [3, 6]], ["utilisation", [3]], ["controller", [5]], ["read", [6]],
                                          ["induction", [3, 4]]]
    assert codec.nbytes == 4 * (18 + 3 + 5 + 6 + 12)
    state = random_state(model, 1)
    values = np.frombuffer(codec.encode(state)[0], dtype="<f4")
    np.testing.assert_array_equal(values[:18], state.memory[0].flatten().numpy())
    np.testing.assert_array_equal(values[18:21], state.utilisation[0].numpy())
    np.testing.assert_array_equal(values[-12:], state.induction[0].flatten().numpy())
    assert codec.as_lists(codec.encode(state)[0])["controller"] == state.controller[0].tolist()


def test_a_state_of_other_dims_is_a_clear_error():
    small, wide = StateCodec.of(tiny_model()), StateCodec.of(tiny_model(memory_dim=7))
    blob = wide.encode(random_state(tiny_model(memory_dim=7), 1))[0]
    with pytest.raises(DataError, match="state 0 has 192 bytes.*needs 176"):
        small.decode([blob])


def test_a_model_without_mimn_arch_is_refused():
    with pytest.raises(DataError, match="MIMN"):
        StateCodec.of(torch.nn.Linear(2, 2))
