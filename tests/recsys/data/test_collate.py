import pickle

import numpy as np
import pytest
import torch

from recsys.data.collate import jagged_from_lists, kjt_from_jagged, kjt_from_lists
from recsys.errors import DataError


def _rows(kjt, key):
    return [row.tolist() for row in kjt[key].to_dense()]


def test_kjt_from_lists_keeps_keys_rows_and_dtypes():
    features = {"user_id": [[7], [2], [5]], "history_click": [[3, 9], [], [4]], "surface": [[0], [1], [0]]}
    kjt = kjt_from_lists(features)
    assert kjt.keys() == ["user_id", "history_click", "surface"]
    assert kjt.stride() == 3
    assert kjt.values().dtype == torch.int64
    assert kjt.lengths().dtype == torch.int32
    assert kjt.values().tolist() == [7, 2, 5, 3, 9, 4, 0, 1, 0]
    assert kjt.lengths().tolist() == [1, 1, 1, 2, 0, 1, 1, 1, 1]
    for key, rows in features.items():
        assert _rows(kjt, key) == rows
    assert kjt.weights_or_none() is None


def test_kjt_from_lists_with_weights():
    kjt = kjt_from_lists({"a": [[1, 2], []], "b": [[3], [4]]}, weights={"a": [[0.5, 1.5], []], "b": [[2.0], [3.0]]})
    assert kjt.weights().dtype == torch.float32
    assert kjt.weights().tolist() == [0.5, 1.5, 2.0, 3.0]
    assert kjt["a"].weights().tolist() == [0.5, 1.5]


def test_kjt_from_lists_rejects_ragged_batch_sizes():
    with pytest.raises(DataError, match="'b' has 1 rows but the first feature has 2"):
        kjt_from_lists({"a": [[1], [2]], "b": [[3]]})


@pytest.mark.parametrize(
    "features, weights, message",
    [
        ({"a": [[1.5]]}, None, "integer ids"),
        ({"a": [1, 2]}, None, "list of lists"),
        ({"a": [["x"]]}, None, "numbers"),
        ({"a": [[1]]}, {"b": [[1.0]]}, "exactly the keys"),
        ({"a": [[1, 2]]}, {"a": [[1.0]]}, "one weight per id"),
        ({}, None, "at least one feature"),
    ],
)
def test_kjt_from_lists_bad_input(features, weights, message):
    with pytest.raises(DataError, match=message):
        kjt_from_lists(features, weights=weights)


def test_jagged_from_lists():
    jt = jagged_from_lists([[1, 2, 3], [], [4]])
    assert jt.values().dtype == torch.int64 and jt.lengths().dtype == torch.int32
    assert [row.tolist() for row in jt.to_dense()] == [[1, 2, 3], [], [4]]
    assert jagged_from_lists([]).lengths().numel() == 0


def test_kjt_from_jagged_accepts_numpy_and_tensors():
    kjt = kjt_from_jagged({
        "a": (np.array([5, 6, 7], dtype=np.int32), np.array([2, 0, 1])),
        "b": (torch.tensor([1, 2, 3]), torch.tensor([1, 1, 1])),
    })
    assert kjt.keys() == ["a", "b"]
    assert kjt.values().dtype == torch.int64 and kjt.lengths().dtype == torch.int32
    assert _rows(kjt, "a") == [[5, 6], [], [7]]
    assert _rows(kjt, "b") == [[1], [2], [3]]
    assert kjt.length_per_key() == [3, 3]


@pytest.mark.parametrize(
    "features, message",
    [
        ({"a": (np.array([1, 2]), np.array([1]))}, "sum to 1 but it has 2 values"),
        ({"a": (np.array([1]), np.array([2, -1]))}, "non-negative"),
        ({"a": (np.array([1.0]), np.array([1]))}, "must be integers"),
        ({"a": (np.array([[1]]), np.array([1]))}, "must be 1-D"),
        ({"a": (np.array([1]), np.array([1])), "b": (np.array([1]), np.array([1]), np.array([1.0]))}, "same form"),
        ({"a": (np.array([1, 2]), np.array([1, 1]), np.array([1.0]))}, "one weight per value"),
    ],
)
def test_kjt_from_jagged_bad_input(features, message):
    with pytest.raises(DataError, match=message):
        kjt_from_jagged(features)


def test_kjt_survives_pickling():
    kjt = kjt_from_lists({"a": [[1, 2], []], "b": [[3], [4]]}, weights={"a": [[0.5, 1.5], []], "b": [[2.0], [3.0]]})
    back = pickle.loads(pickle.dumps(kjt))
    assert back.keys() == kjt.keys()
    assert torch.equal(back.values(), kjt.values())
    assert torch.equal(back.lengths(), kjt.lengths())
    assert torch.equal(back.weights(), kjt.weights())


@pytest.mark.parametrize("bad", [5, 7, -1])
def test_ids_outside_their_table_name_the_feature_id_and_size(bad):
    features = {"user_id": (np.array([0, 1]), np.array([1, 1])), "item_id": (np.array([2, bad]), np.array([1, 1]))}
    with pytest.raises(DataError, match=rf"feature 'item_id' has id {bad}, outside its table of 5 rows"):
        kjt_from_jagged(features, num_ids={"user_id": 2, "item_id": 5})
    kjt_from_jagged(features, num_ids={"user_id": 2})  # keys not named are not checked
