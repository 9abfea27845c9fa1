"""Jagged HSTU attention: the public op, its argument checks and the choice of backend.

Every backend implements the same signature and the semantics written down in
:mod:`recsys.ops.hstu_attention_reference` (pure PyTorch, runs everywhere). Faster backends
register themselves with :func:`register_hstu_attention_backend`; ``kernel="auto"`` takes the most
recently registered backend that supports the input (and a gradient, when one is needed), else
the reference. Registered here: ``"pytorch"`` (the reference) and ``"triton"``
(:mod:`recsys.kernels.hstu_attention_triton`: fused forward and backward that compute the mask,
the normalizer and the relative bias in-kernel from the offsets, targets, timestamps and the two
bias tables, so no ``[B, N, N]`` tensor exists; picked by ``"auto"`` on CUDA for bfloat16, float16
and float32 (TF32 products when ``torch.backends.cuda.matmul.allow_tf32`` is on, else float32
accuracy from three TF32 products), training and evaluation alike; on CPU tensors only when asked
for by name with ``TRITON_INTERPRET=1``). Force one with ``kernel="pytorch"`` / ``kernel="triton"``.

Jagged layout: tokens of all sequences are concatenated along dim 0 and ``seq_offsets`` (``[B + 1]``
int64, ``seq_offsets[0] == 0``) marks where each sequence starts::

    seq_offsets = [0, 3, 3, 5]     sequence 0: rows 0-2, sequence 1: empty, sequence 2: rows 3-4
    q           = [T=5, H, Dqk]

Differences from the reference code (generative-recommenders), on purpose:

- ``normalization="length"`` (an option; the default ``"max_len"`` is the reference's division by
  ``max_seq_len``) divides each query's output by the number of keys it attends to; both are
  causal: no output depends on the tokens after it;
- targets share one position for the position bias and never feed ``t_next`` of another token
  (see :mod:`recsys.ops.relative_bias_index`);
- ``query_offsets`` lets a pass compute only the last tokens of each sequence against a cached
  history (M-FALCON), with jagged rather than fixed per-sequence query counts;
- ``num_contextual`` makes the first C keys visible to every query; the contextual queries
  themselves attend causally (the reference code also lets them see the whole history, which makes
  them depend on later tokens).

Shape letters: T tokens, B sequences, H heads, Dqk / Dv head dims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from recsys.errors import ConfigError, DataError
from recsys.ops.relative_bias_index import DEFAULT_TIME_BUCKET_BASE
from recsys.ops.hstu_attention_layout import (
    HSTUAttentionLayout,
    build_hstu_attention_layout,
    check_hstu_attention_inputs,
)
from recsys.ops.hstu_attention_reference import hstu_attention_reference
from recsys.ops.triton_kernels import load_kernel, triton_interpret_requested

NORMALIZATIONS = ("length", "max_len")


@dataclass(frozen=True)
class HSTUAttentionBackend:
    """One implementation of :func:`hstu_attention`.

    Args:
        name: what ``kernel=`` selects it by.
        fn: a callable with :func:`hstu_attention_reference`'s signature (it receives ``layout=``
            and may ignore it).
        supports: whether it can run on these inputs (given ``q``), e.g. a CUDA device check.
        auto: whether ``kernel="auto"`` may pick it for these inputs (default: ``supports``).
        differentiable: whether its output has a gradient; a forward-only backend is skipped by
            ``"auto"`` and refused by name when q, k, v or a bias table needs one.
        needs_layout: whether it reads an :class:`HSTUAttentionLayout` (built here when not given);
            a backend that does not gets the arguments checked but no layout built.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    supports: Callable[[torch.Tensor], bool]
    auto: Callable[[torch.Tensor], bool]
    differentiable: bool = True
    needs_layout: bool = True


_BACKENDS: dict[str, HSTUAttentionBackend] = {}


def register_hstu_attention_backend(
    name: str,
    fn: Callable[..., torch.Tensor],
    supports: Callable[[torch.Tensor], bool],
    auto: Callable[[torch.Tensor], bool] | None = None,
    differentiable: bool = True,
    needs_layout: bool = True,
) -> None:
    """Make ``fn`` selectable as ``kernel=name``; the newest backend ``auto`` accepts wins under ``"auto"``."""
    _BACKENDS.pop(name, None)
    _BACKENDS[name] = HSTUAttentionBackend(
        name, fn, supports, auto if auto is not None else supports, differentiable, needs_layout
    )


def hstu_attention_kernels() -> list[str]:
    """Names accepted by ``kernel=``, besides ``"auto"``."""
    return list(_BACKENDS)


def check_kernel_name(kernel: str, field: str) -> None:
    """Raises a :class:`ConfigError` naming ``field`` unless ``kernel`` is ``"auto"`` or a backend's name."""
    if kernel != "auto" and kernel not in _BACKENDS:
        raise ConfigError(f"{field} must be 'auto' or one of {hstu_attention_kernels()}, got {kernel!r}")


def _hstu_attention_triton(*args, **kwargs) -> torch.Tensor:
    kernel = load_kernel("hstu_attention_triton", "hstu_attention_triton", "hstu_attention")  # triton loads on first use only
    return kernel(*args, **kwargs)


TRITON_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

register_hstu_attention_backend("pytorch", hstu_attention_reference, lambda q: True)
register_hstu_attention_backend(
    "triton",
    _hstu_attention_triton,
    supports=lambda q: q.dtype in TRITON_DTYPES and (q.is_cuda or triton_interpret_requested()),
    auto=lambda q: q.is_cuda and q.dtype in TRITON_DTYPES,
    differentiable=True,
    needs_layout=False,
)


def hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float | None = None,
    timestamps: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
    time_bias: torch.Tensor | None = None,
    time_bucket_base: float = DEFAULT_TIME_BUCKET_BASE,
    num_targets: torch.Tensor | None = None,
    causal: bool = True,
    normalization: str = "max_len",
    query_offsets: torch.Tensor | None = None,
    kernel: str = "auto",
    layout: HSTUAttentionLayout | None = None,
    next_timestamp: torch.Tensor | None = None,
    max_attn_len: int = 0,
    num_contextual: int = 0,
    deterministic: bool | None = None,
) -> torch.Tensor:
    """Jagged HSTU attention ``SiLU(alpha Q K^T + rab) V / N`` with causal and target masks.

    Args:
        q: ``[T, H, Dqk]`` queries; with ``query_offsets``, ``[Tq, H, Dqk]`` for the last
            ``query_offsets[b+1] - query_offsets[b]`` tokens of each sequence only.
        k: ``[T, H, Dqk]`` keys.
        v: ``[T, H, Dv]`` values.
        seq_offsets: ``[B + 1]`` int64 offsets of the sequences in ``k`` / ``v``.
        max_seq_len: upper bound on every sequence length (checked); the divisor of
            ``"max_len"`` normalization.
        alpha: score scale; default ``1 / sqrt(Dqk)``.
        timestamps: ``[T]`` int64 token timestamps; required with ``time_bias``.
        position_bias: ``[2L - 1]`` bias per relative position ``j - i`` (index ``j - i + L - 1``).
        time_bias: ``[num_buckets + 1]`` bias per log time bucket of ``t_next(i) - t_j``.
        time_bucket_base: bucket width (see :func:`recsys.ops.relative_bias_index.time_buckets`).
        num_targets: ``[B]`` int64: the last ``num_targets[b]`` tokens of sequence ``b`` are
            targets, attending to the history and to themselves only.
        causal: hide keys after the query.
        normalization: ``"length"`` (divide each query's output by the number of keys it attends
            to) or ``"max_len"`` (by ``max_seq_len``).
        query_offsets: ``[B + 1]`` int64 offsets of ``q``; None when ``q`` covers every token.
        kernel: ``"auto"`` or one of :func:`hstu_attention_kernels`.
        layout: from :func:`recsys.ops.hstu_attention_layout.build_hstu_attention_layout` on these
            same ``seq_offsets``, ``query_offsets``, ``num_targets`` and ``timestamps`` tensors;
            its checks then stand and are not repeated. Default: built (and checked) here.
        next_timestamp: ``[B]`` int64 time of the event after each sequence's history (e.g. the
            held-out target's at evaluation): ``t_next`` of the last history token for the time
            bias; None uses that token's own timestamp.
        max_attn_len: hide keys more than this many positions before the query (targets count
            at position ``h_b``); 0 (default) for no limit.
        num_contextual: the first ``num_contextual`` tokens of every sequence (a contextual
            prefix such as user features) are visible to every query; 0 (default) for none.
        deterministic: backward with bitwise-reproducible bias-table gradients (the Triton
            kernel then reduces per-program partial tables in a fixed order instead of using
            atomics; slower). None follows ``torch.are_deterministic_algorithms_enabled()``.

    Returns:
        ``[Tq, H, Dv]`` attention output per query token.

    Example::

        out = hstu_attention(q, k, v, torch.tensor([0, 3, 5]), max_seq_len=4)  # q, k: [5, H, Dqk]
    """
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"hstu_attention: normalization={normalization!r}; use one of {NORMALIZATIONS}")
    _check_shapes(q, k, v, timestamps, position_bias, time_bias)
    backend = _select_backend(kernel, q, _needs_grad(q, k, v, position_bias, time_bias))
    settings = dict(num_targets=num_targets, timestamps=timestamps, query_offsets=query_offsets,
                    next_timestamp=next_timestamp, max_attn_len=max_attn_len, num_contextual=num_contextual)
    if layout is not None:
        _check_layout(layout, q, k, seq_offsets, max_seq_len, causal, normalization, **settings)
    elif backend.needs_layout:
        layout = build_hstu_attention_layout(
            seq_offsets, max_seq_len, num_rows=k.size(0), num_queries=q.size(0), causal=causal,
            normalization=normalization, **settings,
        )
    else:
        check_hstu_attention_inputs(seq_offsets, max_seq_len, num_rows=k.size(0), num_queries=q.size(0), **settings)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    return backend.fn(
        q, k, v, seq_offsets, max_seq_len,
        alpha=alpha, position_bias=position_bias, time_bias=time_bias, time_bucket_base=time_bucket_base,
        causal=causal, normalization=normalization, layout=layout, deterministic=deterministic, **settings,
    )


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _select_backend(kernel: str, q: torch.Tensor, needs_grad: bool) -> HSTUAttentionBackend:
    if kernel == "auto":
        return next(b for b in reversed(_BACKENDS.values()) if b.auto(q) and (b.differentiable or not needs_grad))
    if kernel not in _BACKENDS:
        raise ConfigError(f"hstu_attention: kernel={kernel!r} is unknown; use 'auto' or one of {hstu_attention_kernels()}")
    backend = _BACKENDS[kernel]
    if not backend.supports(q):
        hint = " (or set TRITON_INTERPRET=1 to run a Triton kernel on CPU)" if kernel == "triton" else ""
        raise ConfigError(f"hstu_attention: kernel={kernel!r} cannot run on {q.device} {q.dtype}; use kernel='auto'{hint}")
    if needs_grad and not backend.differentiable:
        raise ConfigError(
            f"hstu_attention: kernel={kernel!r} is forward-only and an input requires a gradient; "
            "use kernel='auto' or 'pytorch' for training, or call under torch.no_grad()"
        )
    return backend


def _check_shapes(q, k, v, timestamps, position_bias, time_bias) -> None:
    """q, k, v and bias table shapes, with messages naming the argument and the expected shape (no host sync)."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise DataError(f"hstu_attention: q, k, v must be [T, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != (v.size(0), q.size(1), q.size(2)) or v.size(1) != q.size(1):
        raise DataError(
            f"hstu_attention: k must be [T, H, Dqk] = [{v.size(0)}, {q.size(1)}, {q.size(2)}] and v [T, H, Dv]; "
            f"got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if time_bias is not None and timestamps is None:
        raise DataError("hstu_attention: time_bias needs timestamps; pass the [T] int64 token timestamps")
    if position_bias is not None and (position_bias.dim() != 1 or position_bias.numel() % 2 == 0):
        raise DataError(f"hstu_attention: position_bias must be [2L - 1]; got {tuple(position_bias.shape)}")
    if time_bias is not None and time_bias.dim() != 1:
        raise DataError(f"hstu_attention: time_bias must be [num_buckets + 1]; got {tuple(time_bias.shape)}")


def _check_layout(
    layout, q, k, seq_offsets, max_seq_len, causal, normalization, *, query_offsets, num_targets, timestamps,
    next_timestamp, max_attn_len, num_contextual,
) -> None:
    """A given layout must describe these very arguments (tensor identity, no host sync)."""
    if not layout.matches(seq_offsets, query_offsets, num_targets, timestamps, max_seq_len, causal, normalization,
                          next_timestamp, max_attn_len, num_contextual):
        raise DataError(
            "hstu_attention: layout was built for other seq_offsets / query_offsets / num_targets / timestamps / "
            "next_timestamp or settings (causal, normalization, max_attn_len, num_contextual); build it with "
            "build_hstu_attention_layout from the tensors and settings passed here"
        )
    if layout.key_slots.numel() != k.size(0) or layout.query_row_slots.numel() != q.size(0):
        raise DataError(
            f"hstu_attention: layout covers {layout.key_slots.numel()} keys and {layout.query_row_slots.numel()} queries; "
            f"got k with {k.size(0)} rows and q with {q.size(0)}"
        )
