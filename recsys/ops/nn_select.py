"""Candidate-conditioned nearest-neighbour selection: the public op, its checks and its backends.

Every backend implements the signature and the exact semantics of
:func:`recsys.ops.nn_select_reference.nn_select_reference` (pure PyTorch, runs everywhere; read
its module docstring for the layout and the tie-break). Backends register with
:func:`register_nn_select_backend`; ``kernel="auto"`` takes the most recently registered backend
whose ``auto`` check accepts the input, else the reference.

Backends:

- ``"pytorch"``: the reference, one sequence at a time (CPU and CUDA).
- ``"triton"``: :mod:`recsys.kernels.nn_select_triton`, one fused kernel (int8 loads, int8 x int8
  tensor-core dot products times the token's inverse norm, the exact per-candidate top-k kept
  in-kernel in O(k) memory, time-ordered output; a small merge kernel when long sequences are
  cut into segments). Chosen by ``"auto"`` on CUDA. On CPU it runs only when asked for by name with ``TRITON_INTERPRET=1`` in the
  environment (the Triton interpreter, for tests). triton is imported on first use, never at
  import time of :mod:`recsys`.

Example::

    values = quantize_int8(content_of_every_history_token)           # [T, C] int8
    idx = nn_select(values, seq_starts, seq_lengths, candidate_content, candidate_seq, k=96)
    # idx: [B, 96] positions within each candidate's sequence, ascending, -1 padded; the tokens
    # nearest to the candidate by cosine with the dequantised, L2-normalised token

Shape letters: T tokens, C content dimension, R sequences, B candidates, k tokens kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from recsys.errors import ConfigError, DataError
from recsys.ops.int8_quantization import DEFAULT_SCALE, check_scale
from recsys.ops.nn_select_reference import MAX_EXACT_DIM, nn_select_reference, token_inverse_norms
from recsys.ops.triton_kernels import load_kernel, triton_interpret_requested

MAX_CONTENT_DIM = MAX_EXACT_DIM  # dot products stay exact in float32 up to here (C * 127 * 127 < 2^24)


@dataclass(frozen=True)
class NNSelectBackend:
    """One implementation of :func:`nn_select`.

    Args:
        name: what ``kernel=`` selects it by.
        fn: a callable with :func:`nn_select_reference`'s signature.
        supports: whether it can run on these inputs (given ``values``).
        auto: whether ``kernel="auto"`` may pick it for these inputs.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    supports: Callable[[torch.Tensor], bool]
    auto: Callable[[torch.Tensor], bool]


_BACKENDS: dict[str, NNSelectBackend] = {}


def register_nn_select_backend(
    name: str,
    fn: Callable[..., torch.Tensor],
    supports: Callable[[torch.Tensor], bool],
    auto: Callable[[torch.Tensor], bool] | None = None,
) -> None:
    """Make ``fn`` selectable as ``kernel=name``; the newest backend whose ``auto`` accepts wins
    under ``"auto"`` (``auto`` defaults to ``supports``)."""
    _BACKENDS.pop(name, None)
    _BACKENDS[name] = NNSelectBackend(name, fn, supports, auto if auto is not None else supports)


def nn_select_kernels() -> list[str]:
    """Names accepted by ``kernel=``, besides ``"auto"``."""
    return list(_BACKENDS)


def _nn_select_triton(*args, **kwargs) -> torch.Tensor:
    kernel = load_kernel("nn_select_triton", "nn_select_triton", "nn_select")  # triton loads on first use only
    return kernel(*args, **kwargs)


register_nn_select_backend("pytorch", nn_select_reference, lambda values: True)
register_nn_select_backend(
    "triton",
    _nn_select_triton,
    supports=lambda values: values.is_cuda or triton_interpret_requested(),
    auto=lambda values: values.is_cuda,
)


def nn_select(
    values: torch.Tensor,
    seq_starts: torch.Tensor,
    seq_lengths: torch.Tensor,
    candidates: torch.Tensor,
    candidate_seq: torch.Tensor,
    k: int,
    *,
    scale: float = DEFAULT_SCALE,
    kernel: str = "auto",
    inverse_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Top-``k`` tokens of each candidate's sequence by normalised score, in time order.

    ``score(c, t) = (q_c . q_t) / ||q_t||``: the candidate against the dequantised, L2-normalised
    token (see :mod:`recsys.ops.nn_select_reference` for the exact arithmetic).

    Args:
        values: ``[T, C]`` int8 quantised token embeddings (see
            :func:`recsys.ops.int8_quantization.quantize_int8`).
        seq_starts: ``[R]`` int64 first row of each sequence in ``values``.
        seq_lengths: ``[R]`` int64 number of tokens of each sequence (windows may overlap).
        candidates: ``[B, C]`` float candidate embeddings (quantised with ``scale``), or int8.
        candidate_seq: ``[B]`` int64 index into the R sequences: the one each candidate ranks.
        k: tokens kept per candidate (>= 0).
        scale: the int8 scale of ``values``.
        kernel: ``"auto"`` or one of :func:`nn_select_kernels`.
        inverse_norms: ``[T]`` float32 :func:`~recsys.ops.nn_select_reference.token_inverse_norms`
            of ``values``, for callers that select from one table many times; None = computed here.

    Returns:
        ``[B, k]`` int64 positions within each candidate's sequence, ascending, padded with -1
        (a sequence shorter than ``k`` gives all its positions). Ties in score go to the more
        recent token.
    """
    check_scale(scale)
    _check_inputs(values, seq_starts, seq_lengths, candidates, candidate_seq, k)
    if inverse_norms is None:
        inverse_norms = token_inverse_norms(values)
    elif inverse_norms.shape != values.shape[:1] or inverse_norms.dtype != torch.float32 \
            or inverse_norms.device != values.device:
        raise DataError(f"nn_select: inverse_norms must be [T={values.size(0)}] float32 on {values.device} "
                        f"(token_inverse_norms(values)), got {inverse_norms.dtype} {tuple(inverse_norms.shape)} "
                        f"on {inverse_norms.device}")
    backend = _select_backend(kernel, values)
    return backend.fn(values, seq_starts, seq_lengths, candidates, candidate_seq, int(k), scale=scale,
                      inverse_norms=inverse_norms)


def _select_backend(kernel: str, values: torch.Tensor) -> NNSelectBackend:
    if kernel == "auto":
        return next(b for b in reversed(_BACKENDS.values()) if b.auto(values))
    if kernel not in _BACKENDS:
        raise ConfigError(f"nn_select: kernel={kernel!r} is unknown; use 'auto' or one of {nn_select_kernels()}")
    backend = _BACKENDS[kernel]
    if not backend.supports(values):
        raise ConfigError(
            f"nn_select: kernel={kernel!r} cannot run on {values.device} tensors; use kernel='auto' "
            "(set TRITON_INTERPRET=1 to run the Triton kernel on CPU in the interpreter)"
        )
    return backend


def _check_inputs(values, seq_starts, seq_lengths, candidates, candidate_seq, k) -> None:
    """Shapes, dtypes, devices and index ranges, with messages naming the argument and the fix."""
    if values.dim() != 2 or values.dtype != torch.int8:
        raise DataError(
            f"nn_select: values must be [T, C] int8 (quantize_int8), got {values.dtype} {tuple(values.shape)}"
        )
    num_tokens, dim = values.shape
    if not 1 <= dim <= MAX_CONTENT_DIM:
        raise DataError(f"nn_select: values has C={dim}; C must be in 1..{MAX_CONTENT_DIM}")
    if candidates.dim() != 2 or candidates.size(1) != dim:
        raise DataError(f"nn_select: candidates must be [B, C={dim}], got {tuple(candidates.shape)}")
    if candidates.dtype != torch.int8 and not candidates.is_floating_point():
        raise DataError(f"nn_select: candidates must be float or int8, got {candidates.dtype}")
    for name, tensor, size in (("seq_starts", seq_starts, None), ("seq_lengths", seq_lengths, seq_starts.numel()),
                               ("candidate_seq", candidate_seq, candidates.size(0))):
        if tensor.dim() != 1 or tensor.dtype not in (torch.int32, torch.int64):
            raise DataError(f"nn_select: {name} must be a 1-D int64 tensor, got {tensor.dtype} {tuple(tensor.shape)}")
        if size is not None and tensor.numel() != size:
            raise DataError(f"nn_select: {name} must have {size} entries, got {tensor.numel()}")
    for name, tensor in (("seq_starts", seq_starts), ("seq_lengths", seq_lengths),
                         ("candidates", candidates), ("candidate_seq", candidate_seq)):
        if tensor.device != values.device:
            raise DataError(
                f"nn_select: {name} is on {tensor.device} but values on {values.device}; move them together"
            )
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"nn_select: k must be an integer >= 0, got {k!r}")
    _check_ranges(values.size(0), seq_starts, seq_lengths, candidate_seq)


def _check_ranges(num_tokens: int, seq_starts, seq_lengths, candidate_seq) -> None:
    """Windows inside ``values`` and ``candidate_seq`` inside the sequences, with one device sync."""
    num_seqs = seq_starts.numel()
    bounds = []  # each must be >= 0
    if num_seqs:
        ends = seq_starts.to(torch.int64) + seq_lengths.to(torch.int64)
        bounds += [seq_lengths.min().to(torch.int64), seq_starts.min().to(torch.int64), num_tokens - ends.max()]
    if candidate_seq.numel():
        bounds += [candidate_seq.min().to(torch.int64), num_seqs - 1 - candidate_seq.max().to(torch.int64)]
    if not bounds:
        return
    values = torch.stack(bounds).tolist()
    if num_seqs and min(values[:3]) < 0:
        raise DataError(
            f"nn_select: every window seq_starts[r] .. seq_starts[r] + seq_lengths[r] must lie within the "
            f"{num_tokens} rows of values (non-negative starts and lengths)"
        )
    if min(values) < 0:
        raise DataError(f"nn_select: candidate_seq must index the {num_seqs} sequences (0..{num_seqs - 1})")
