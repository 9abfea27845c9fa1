"""SKUT, the TransAct V2 encoder at inference in one kernel: the public op, its checks, its backends.

Both backends compute :func:`recsys.ops.skut_reference.skut_reference` (read it for the
semantics): token vectors ``[B, L, E]`` and lengths in, the max-pooled readout ``[B, F]`` out.

Backends:

- ``"pytorch"``: the reference (any device, any dtype; the dtype of ``x`` throughout).
- ``"triton"``: :mod:`recsys.kernels.skut_triton`, one launch for the input projection, every
  layer (attention, norms, FFN) and the readout; bfloat16 matmul inputs, float32 accumulation,
  float32 output. ``"auto"`` picks it on CUDA when :func:`skut_unsupported` finds nothing against
  the weights and input; on CPU it runs only when asked for by name with ``TRITON_INTERPRET=1``
  (the interpreter, for tests). triton is imported on first use, never at import time.

Forward only (no gradient): the op serves inference; training runs the module's own layers.

Example::

    weights = encoder.skut_weights()                         # TransActV2 (views of its parameters)
    features = skut(weights, tokens, lengths)                # [B, L, 2C], [B] -> [B, F]

Shape letters as :mod:`recsys.ops.skut_reference`.
"""

from __future__ import annotations

import torch

from recsys.errors import ConfigError, DataError
from recsys.ops.skut_reference import ACTIVATIONS, SkutWeights, skut_reference
from recsys.ops.triton_kernels import load_kernel, triton_interpret_requested

SKUT_KERNELS = ("pytorch", "triton")
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_MODEL_DIM = 128  # one [BLOCK_M, d] float32 tile of the residual stream per program stays in registers
MAX_OTHER_DIM = 256  # token width E, feed-forward width f, readout width F


def skut_unsupported(weights: SkutWeights, x: torch.Tensor) -> list[str]:
    """Why the Triton backend cannot encode ``x`` with ``weights``: an empty list when it can."""
    reasons = []
    if not (x.is_cuda or triton_interpret_requested()):
        reasons.append(f"x is on {x.device}: the kernel runs on CUDA (or on CPU with TRITON_INTERPRET=1)")
    if x.dtype not in INPUT_DTYPES:
        reasons.append(f"x is {x.dtype}; the kernel reads {', '.join(str(d) for d in INPUT_DTYPES)}")
    if torch.is_grad_enabled() and (x.requires_grad or weights.input_weight.requires_grad):
        reasons.append("a gradient is needed (the kernel is forward only: call it under torch.no_grad())")
    if not weights.layers:
        reasons.append("the encoder has no layers")
    if weights.activation not in ACTIVATIONS:
        reasons.append(f"activation {weights.activation!r} (the kernel has {', '.join(ACTIVATIONS)})")
    if weights.model_dim > MAX_MODEL_DIM:
        reasons.append(f"model_dim={weights.model_dim} above the kernel's {MAX_MODEL_DIM}")
    for name, size in (("token width 2 * content_dim", weights.token_dim),
                       ("feedforward_dim", weights.feedforward_dim), ("readout_dim", weights.output_dim)):
        if size > MAX_OTHER_DIM:
            reasons.append(f"{name}={size} above the kernel's {MAX_OTHER_DIM}")
    return reasons


def skut_backend(weights: SkutWeights, x: torch.Tensor, kernel: str = "auto") -> str:
    """The backend ``kernel`` resolves to for these inputs: ``"triton"`` or ``"pytorch"``.

    Raises:
        ConfigError: ``kernel`` is unknown, or ``"triton"`` was asked for and cannot run (the
            message names every reason).
    """
    if kernel not in ("auto", *SKUT_KERNELS):
        raise ConfigError(f"skut: kernel={kernel!r} is unknown; use 'auto' or one of {list(SKUT_KERNELS)}")
    if kernel == "pytorch":
        return kernel
    reasons = skut_unsupported(weights, x)
    if kernel == "triton" and reasons:
        raise ConfigError("skut: kernel='triton' cannot run here: " + "; ".join(reasons)
                          + ". Use kernel='auto' (falls back to PyTorch) or kernel='pytorch'")
    if kernel == "auto" and not x.is_cuda:
        return "pytorch"
    return "pytorch" if reasons else "triton"


def skut(
    weights: SkutWeights,
    x: torch.Tensor,
    lengths: torch.Tensor,
    *,
    kernel: str = "auto",
    return_outputs: bool = False,
    check_lengths: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The TransAct V2 encoder's readout of padded rows.

    Args:
        weights: the encoder's weights (``TransActV2.skut_weights()``), on ``x``'s device.
        x: ``[B, L, E]`` float token vectors, real tokens first in each row.
        lengths: ``[B]`` int real tokens per row, in ``0 .. L``.
        kernel: ``"auto"``, ``"pytorch"`` or ``"triton"`` (see the module docstring).
        return_outputs: also return the encoder's outputs ``[B, L, d]`` (real tokens only meaningful).
        check_lengths: check the values of ``lengths`` (a host read; skipped while a CUDA graph
            is being captured). Off for callers whose lengths are correct by construction.

    Returns:
        ``[B, F]`` readout, zeros for empty rows (float32 from ``"triton"``, ``x.dtype`` from
        ``"pytorch"``); with ``return_outputs`` also ``[B, L, d]``.
    """
    _check_inputs(weights, x, lengths, check_lengths)
    if skut_backend(weights, x, kernel) == "pytorch":
        return skut_reference(weights, x, lengths, return_outputs=return_outputs)
    kernel_fn = load_kernel("skut_triton", "skut_triton", "skut")  # triton loads on first use only
    return kernel_fn(weights, x, lengths, return_outputs=return_outputs)


def _check_inputs(weights: SkutWeights, x: torch.Tensor, lengths: torch.Tensor, check_lengths: bool) -> None:
    """Shapes, dtypes and devices, and (when asked) the lengths' range, naming the argument and the fix."""
    if x.dim() != 3 or x.shape[2] != weights.token_dim or not x.is_floating_point():
        raise DataError(f"skut: x must be [B, L, E={weights.token_dim}] float token vectors, "
                        f"got {x.dtype} {tuple(x.shape)}")
    if lengths.dim() != 1 or lengths.numel() != x.shape[0] or lengths.dtype not in (torch.int32, torch.int64):
        raise DataError(f"skut: lengths must be [B={x.shape[0]}] int32 or int64, got {lengths.dtype} "
                        f"{tuple(lengths.shape)}")
    for name, tensor in (("lengths", lengths), ("weights", weights.input_weight)):
        if tensor.device != x.device:
            raise DataError(f"skut: {name} is on {tensor.device} but x on {x.device}; move them together")
    if weights.model_dim % weights.num_heads:
        raise ConfigError(f"skut: num_heads={weights.num_heads} must divide model_dim={weights.model_dim}")
    capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
    if check_lengths and not capturing and lengths.numel():
        low, high = int(lengths.min()), int(lengths.max())
        if low < 0 or high > x.shape[1]:
            raise DataError(f"skut: lengths must lie in 0..L={x.shape[1]} (x's padded width), got {low}..{high}")
