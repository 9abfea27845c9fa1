"""Building TorchRec jagged tensors from plain Python lists or numpy arrays.

A KeyedJaggedTensor stores, key after key, every row's ids in one flat ``values`` tensor and how
many ids each row holds in ``lengths``::

    features = {"user_id": [[7], [2]], "history_click": [[3, 9], []]}

    keys     user_id       history_click
    rows     0     1       0        1
    lengths  1     1       2        0          -> lengths [F * B] = [1, 1, 2, 0]
    values   7     2       3  9                -> values  [sum(lengths)] = [7, 2, 3, 9]

Every key must hold the same number of rows B. Values are int64 (weights float32); lengths are
int32, the type FBGEMM's permute and pooling kernels expect.

Given the table sizes (``num_ids``), every id is checked against its table: FBGEMM's lookups do not
fail on an id outside ``0..rows-1`` (they read row 0 or garbage), so an out-of-vocabulary or
negative id is a :class:`DataError` naming the feature, the id and the table size, here.

Example::

    kjt = kjt_from_lists({"user_id": [[7], [2]], "history_click": [[3, 9], []]})
    kjt["history_click"].to_dense()  # [tensor([3, 9]), tensor([], dtype=torch.int64)]
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys.errors import DataError

VALUE_DTYPE = torch.int64
LENGTH_DTYPE = torch.int32
WEIGHT_DTYPE = torch.float32


def jagged_from_lists(rows: Sequence[Sequence[int]]) -> JaggedTensor:
    """One JaggedTensor from a list of id lists: row b holds ``rows[b]``.

    Args:
        rows: B lists of ints (empty lists are empty rows).

    Returns:
        JaggedTensor with int64 ``values [sum(len(r))]`` and int32 ``lengths [B]``.
    """
    values, lengths = _flatten("rows", rows, VALUE_DTYPE)
    return JaggedTensor(values=values, lengths=lengths)


def kjt_from_lists(
    features: Mapping[str, Sequence[Sequence[int]]],
    weights: Mapping[str, Sequence[Sequence[float]]] | None = None,
) -> KeyedJaggedTensor:
    """A KeyedJaggedTensor from ``{key: [ids of row 0, ids of row 1, ...]}``, keys in dict order.

    Args:
        features: key -> B lists of int ids; every key must have the same B.
        weights: optional key -> B lists of float weights, shaped exactly like ``features``
            (every key of ``features`` must be present).

    Returns:
        KJT with int64 values ``[sum of lengths]``, int32 lengths ``[F * B]`` and, with weights,
        float32 weights ``[sum of lengths]``.
    """
    jagged = {key: _flatten(f"feature {key!r}", rows, VALUE_DTYPE) for key, rows in features.items()}
    if weights is None:
        return kjt_from_jagged(jagged)
    if set(weights) != set(features):
        raise DataError(
            f"weights must have exactly the keys of features; got {sorted(weights)} for {sorted(features)}"
        )
    weighted = {}
    for key, (values, lengths) in jagged.items():
        w, w_lengths = _flatten(f"weights of {key!r}", weights[key], WEIGHT_DTYPE)
        if not torch.equal(w_lengths, lengths):
            raise DataError(f"weights of {key!r} must have one weight per id in every row, like features[{key!r}]")
        weighted[key] = (values, lengths, w)
    return kjt_from_jagged(weighted)


def kjt_from_jagged(features: Mapping[str, tuple], num_ids: Mapping[str, int] | None = None) -> KeyedJaggedTensor:
    """A KeyedJaggedTensor from per-key flat arrays, keys in dict order.

    Args:
        features: key -> ``(values, lengths)`` or ``(values, lengths, weights)``, each a numpy
            array or tensor: ``values [n_k]`` ints, ``lengths [B]`` non-negative ints summing to
            ``n_k``, ``weights [n_k]`` floats. All keys must have the same B, and either all keys
            or none carry weights.
        num_ids: key -> rows of the table its ids index; the ids of those keys must lie in
            ``0..rows-1`` (see :func:`check_ids`). Keys not named are not checked.

    Returns:
        KJT with int64 values, int32 lengths ``[F * B]``, float32 weights (or None).
    """
    if not features:
        raise DataError("a KeyedJaggedTensor needs at least one feature; got an empty dict")
    keys = list(features)
    arity = {len(parts) for parts in features.values()}
    if not arity <= {2, 3} or len(arity) != 1:
        raise DataError("every feature must be (values, lengths) or (values, lengths, weights), the same form for all keys")
    values, lengths, weights, length_per_key = [], [], [], []
    batch_size = None
    for key, parts in features.items():
        v = _as_tensor(parts[0], VALUE_DTYPE, f"values of {key!r}")
        n = _as_tensor(parts[1], LENGTH_DTYPE, f"lengths of {key!r}")
        if batch_size is None:
            batch_size = n.numel()
        _check_jagged(key, v, n, batch_size)
        if num_ids is not None and key in num_ids:
            check_ids(key, v, num_ids[key])
        values.append(v)
        lengths.append(n)
        length_per_key.append(v.numel())
        if len(parts) == 3:
            w = _as_tensor(parts[2], WEIGHT_DTYPE, f"weights of {key!r}")
            if w.shape != v.shape:
                raise DataError(f"weights of {key!r} must have one weight per value: {tuple(w.shape)} vs {tuple(v.shape)}")
            weights.append(w)
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.cat(values),
        weights=torch.cat(weights) if weights else None,
        lengths=torch.cat(lengths),
        stride=batch_size,
        length_per_key=length_per_key,
    )


def check_ids(feature: str, ids: torch.Tensor, num_rows: int) -> None:
    """Raises DataError unless every id of ``ids [n]`` indexes a row of a ``num_rows``-row table."""
    if ids.numel() == 0:
        return
    bad = (ids < 0) | (ids >= num_rows)
    if bool(bad.any()):
        value = int(ids[bad][0])
        raise DataError(
            f"feature {feature!r} has id {value}, outside its table of {num_rows} rows (ids 0..{num_rows - 1}); "
            "the data and the model's tables disagree: build both from the same log (FeatureSpec.from_log)"
        )


def _flatten(what: str, rows: Sequence[Sequence], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """B lists -> (flat values, int32 lengths [B])."""
    try:
        lengths = [len(row) for row in rows]
        flat = [x for row in rows for x in row]
    except TypeError:
        raise DataError(f"{what} must be a list of lists (one list per row), got {type(rows).__name__}") from None
    np_dtype = np.int64 if dtype == VALUE_DTYPE else np.float32
    try:
        array = np.asarray(flat, dtype=np_dtype)
    except (TypeError, ValueError):
        raise DataError(f"{what} must hold only {np.dtype(np_dtype).name} numbers") from None
    if np_dtype == np.int64 and array.size and not np.array_equal(array, np.asarray(flat)):
        raise DataError(f"{what} must hold integer ids, got non-integer values")
    return torch.from_numpy(array.reshape(-1)), torch.tensor(lengths, dtype=LENGTH_DTYPE)


def _as_tensor(x, dtype: torch.dtype, what: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if tensor.ndim != 1:
        raise DataError(f"{what} must be 1-D, got shape {tuple(tensor.shape)}")
    if dtype != WEIGHT_DTYPE and tensor.is_floating_point():
        raise DataError(f"{what} must be integers, got {tensor.dtype}")
    return tensor.to(dtype)


def _check_jagged(key: str, values: torch.Tensor, lengths: torch.Tensor, batch_size: int) -> None:
    if lengths.numel() != batch_size:
        raise DataError(
            f"feature {key!r} has {lengths.numel()} rows but the first feature has {batch_size}; "
            "every feature needs one entry (possibly empty) per row"
        )
    if lengths.numel() and int(lengths.min()) < 0:
        raise DataError(f"lengths of {key!r} must be non-negative")
    total = int(lengths.sum())
    if total != values.numel():
        raise DataError(f"lengths of {key!r} sum to {total} but it has {values.numel()} values")
