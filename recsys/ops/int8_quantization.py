"""Symmetric int8 quantisation of content embeddings, as TransAct V2 stores lifelong sequences.

A lifelong sequence holds O(10^4) tokens per user, each with a C-dimensional content embedding
(PinSage in the paper, ``ItemTable.content_embedding`` here). Stored as float32 that is 4C bytes
per token; TransAct V2 stores int8 instead, with one scalar scale ``s`` for the whole table::

    q = clamp(round(e / s * 127), -127, 127)      int8, zero maps to zero (no offset)
    e ~= q * s / 127                              dequantised

The paper uses ``s = 0.65`` for its PinSage embeddings (:data:`DEFAULT_SCALE`). Inside
``[-s, s]`` the error is at most half a step, ``s / 254``; values beyond are clipped to ``+-s``.
-128 is never produced, so the code is symmetric and ``-q`` is always representable.

:func:`choose_scale` picks ``s`` for other embeddings: among the upper quantiles of ``|e|`` and
values between them and the maximum, the one with the smallest reconstruction mean squared error. A quantile alone
ignores the trade-off (a low one clips many values, the maximum wastes resolution on outliers);
the MSE is the quantity the trade-off is about, and it is cheap to evaluate exactly.

Shape letters: N embeddings, C content dimension.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys.errors import ConfigError, DataError

DEFAULT_SCALE = 0.65
INT8_LEVELS = 127  # codes -127..127
MAX_SCALE_SAMPLE = 1 << 20  # choose_scale looks at most at this many values


def quantize_int8(embeddings: torch.Tensor | np.ndarray, scale: float = DEFAULT_SCALE) -> torch.Tensor:
    """``q = clamp(round(e / s * 127), -127, 127)`` as int8 (round half to even).

    Args:
        embeddings: ``[..., C]`` float tensor or numpy array.
        scale: ``s > 0``, the value that maps to code 127.

    Returns:
        int8 tensor of the same shape, on the input's device.
    """
    x = _as_float_tensor(embeddings, "embeddings")
    s = check_scale(scale)
    return torch.clamp(torch.round(x / s * INT8_LEVELS), -INT8_LEVELS, INT8_LEVELS).to(torch.int8)


def dequantize_int8(codes: torch.Tensor | np.ndarray, scale: float = DEFAULT_SCALE) -> torch.Tensor:
    """``e ~= q * s / 127`` as float32.

    Args:
        codes: ``[..., C]`` int8 tensor or numpy array.
        scale: the ``s`` the codes were made with.
    """
    q = torch.from_numpy(np.ascontiguousarray(codes)) if isinstance(codes, np.ndarray) else codes
    if q.dtype != torch.int8:
        raise DataError(f"dequantize_int8: codes must be int8, got {q.dtype}; quantise them with quantize_int8 first")
    return q.to(torch.float32) * (check_scale(scale) / INT8_LEVELS)


def choose_scale(embeddings: torch.Tensor | np.ndarray, quantiles: int = 41, lowest_quantile: float = 0.9) -> float:
    """The scale with the smallest int8 reconstruction MSE among upper quantiles of ``|e|``.

    Candidates are the ``quantiles`` evenly spaced quantiles of ``|e|`` from ``lowest_quantile``
    to 1 (the maximum), and as many evenly spaced values between the lowest of them and the
    maximum (the gap above the top quantiles is where heavy tails put the optimum). At most
    :data:`MAX_SCALE_SAMPLE` values are used (an even stride over the flattened input), so the
    answer is deterministic.

    Args:
        embeddings: ``[N, C]`` (any shape) float values; not all zero.
        quantiles: number of candidate scales (>= 1).
        lowest_quantile: the lowest candidate quantile, in [0, 1].

    Returns:
        ``s > 0`` as a Python float.

    Example::

        s = choose_scale(item_table.content_embedding)
        q = quantize_int8(item_table.content_embedding, s)
    """
    if quantiles < 1 or not 0.0 <= lowest_quantile <= 1.0:
        raise ConfigError(
            f"choose_scale: quantiles={quantiles} must be >= 1 and lowest_quantile={lowest_quantile} in [0, 1]"
        )
    x = _as_float_tensor(embeddings, "embeddings").reshape(-1).to(torch.float64)
    if x.numel() == 0 or not torch.isfinite(x).all():
        raise DataError("choose_scale: embeddings must be non-empty and finite; clean NaN/inf values first")
    x = x[:: max(1, x.numel() // MAX_SCALE_SAMPLE)]
    magnitudes = x.abs().sort().values  # [n]
    if float(magnitudes[-1]) == 0.0:
        raise DataError("choose_scale: every embedding value is 0, so no scale can be chosen; pass real embeddings")
    levels = torch.linspace(lowest_quantile, 1.0, quantiles, dtype=torch.float64)
    picks = (levels * (magnitudes.numel() - 1)).round().long()
    spread = torch.linspace(float(magnitudes[picks[0]]), float(magnitudes[-1]), quantiles, dtype=torch.float64)
    candidates = torch.unique(torch.cat([magnitudes[picks], spread]))
    candidates = candidates[candidates > 0]
    errors = torch.stack([_reconstruction_mse(x, float(s)) for s in candidates])
    return float(candidates[int(torch.argmin(errors))])


def check_scale(scale: float) -> float:
    """``scale`` as a positive finite float, else :class:`ConfigError`."""
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise ConfigError(f"int8 scale must be a number, got {scale!r}") from None
    if not np.isfinite(s) or s <= 0:
        raise ConfigError(
            f"int8 scale must be a finite number > 0, got {scale!r}; the paper's default is {DEFAULT_SCALE}"
        )
    return s


def _reconstruction_mse(x: torch.Tensor, scale: float) -> torch.Tensor:
    codes = torch.clamp(torch.round(x / scale * INT8_LEVELS), -INT8_LEVELS, INT8_LEVELS)
    return ((codes * (scale / INT8_LEVELS) - x) ** 2).mean()


def _as_float_tensor(x, what: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        dtype = getattr(tensor, "dtype", type(tensor).__name__)
        raise DataError(f"{what} must be a float tensor or array, got {dtype}")
    return tensor
