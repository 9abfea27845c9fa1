"""SKUT in one Triton kernel: the whole TransAct V2 encoder per row, all layers in one launch.

Same signature and result as :func:`recsys.ops.skut_reference.skut_reference` (read it for the
semantics), up to the rounding of bfloat16 matmul inputs. One program encodes one row (one
candidate's S_all of up to L tokens) from the token vectors to the max-pooled readout::

    phase 0   z = x W_in^T + b_in                       per block of BLOCK_M rows   -> h scratch
    per layer
      phase 1 K, V of every block (of LN_1(z) with norm_first)                       -> kv scratch
      phase 2 per block of queries: Q, causal online-softmax attention over the key blocks
              at or before it, output projection, residual, layer norms, FFN          -> h scratch
    readout   max over the real rows of z W_out^T + b_out                             -> out [F]

Only attention mixes rows; everything after it is row-local, so phase 2 finishes a block of
rows in registers and writes it back in place (its keys and values are already in the kv
scratch). The scratch (``[L, d]`` float32 and ``[H, L, 2 d/H]`` bfloat16 per row, 96 KB at L = 192,
d = 64) is written and read back by the same program, so it lives in L2; ``tl.debug_barrier``
(a CTA barrier, which also orders the program's global memory accesses) separates the phases.

Arithmetic: ``tl.dot`` on bfloat16 inputs with float32 accumulation for every matmul (the input,
Q / K / V, ``Q K^T``, ``P V``, output, FFN and readout projections); the residual stream, softmax
statistics and layer norms stay float32. The Triton interpreter (CPU tests) has no bfloat16
``tl.dot``: there the inputs are rounded to bfloat16 and multiplied in float32, the same numbers.

Ragged rows: a block loop stops at the row's length; a key is visible to a query when it is at or
before it and real (``s <= t``, ``s < length``), so padded keys are never read and a row of length
0 does no work and reads out zeros. Dimensions are zero-padded to powers of two (at least 16,
``tl.dot``'s minimum); layer norms count only the true d columns.

Shape letters: B rows, L padded length, E token width, d model width, H heads, f feed-forward
width, F readout width, N layers; ``*_P`` the padded sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from recsys.errors import ConfigError
from recsys.ops.skut_reference import SkutWeights

LOG2E = 1.4426950408889634
DEFAULT_BLOCK_M = 64  # query rows per tile
DEFAULT_BLOCK_N = 64  # key rows per tile
DEFAULT_NUM_WARPS = 4  # one warpgroup: Hopper's wgmma tiles of 64 rows
DEFAULT_NUM_STAGES = 1  # the key loop has L / BLOCK_N <= 3 steps at L = 192: little to pipeline
MIN_DOT = 16  # tl.dot needs every dimension to be at least 16
PACKED_KEY = "triton"


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _round_bf16(x):
    """float32 ``x`` rounded to the nearest bfloat16 (ties to even), as float32. The interpreter's
    own conversion truncates; the GPU's rounds to nearest, as this does."""
    bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _to_bf16(x, BF16_DOT: tl.constexpr):
    """``x`` as bfloat16, rounded to nearest on the GPU and in the interpreter alike."""
    if BF16_DOT:
        y = x.to(tl.bfloat16)
    else:
        y = _round_bf16(x).to(tl.bfloat16)
    return y


@triton.jit
def _mm(a, b, BF16_DOT: tl.constexpr):
    """``a @ b`` with bfloat16-rounded inputs and float32 accumulation."""
    if BF16_DOT:
        c = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    else:  # the interpreter has no bfloat16 tl.dot: the same bfloat16 values, multiplied in float32
        c = tl.dot(_round_bf16(a), _round_bf16(b), input_precision="ieee")
    return c


@triton.jit
def _load_matrix(ptr, R: tl.constexpr, C: tl.constexpr):
    """A dense ``[R, C]`` row-major tile."""
    r = tl.arange(0, R)
    c = tl.arange(0, C)
    return tl.load(ptr + r[:, None] * C + c[None, :])


@triton.jit
def _linear(a, w_ptr, b_ptr, K: tl.constexpr, N: tl.constexpr, BF16_DOT: tl.constexpr):
    """``a [M, K] @ W [K, N] + b [N]`` (W stored transposed, ``[in, out]``)."""
    bias = tl.load(b_ptr + tl.arange(0, N)).to(tl.float32)
    return _mm(a, _load_matrix(w_ptr, K, N), BF16_DOT) + bias[None, :]


@triton.jit
def _layer_norm(h, w_ptr, b_ptr, dim, eps, D: tl.constexpr):
    """Layer norm of ``h [M, D]`` over its first ``dim`` columns (the padded columns are zero)."""
    cols = tl.arange(0, D)
    real = (cols < dim)[None, :]
    mean = tl.sum(h, axis=1) / dim
    diff = tl.where(real, h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / dim + eps)
    gamma = tl.load(w_ptr + cols).to(tl.float32)
    beta = tl.load(b_ptr + cols).to(tl.float32)
    return diff * rstd[:, None] * gamma[None, :] + beta[None, :]


@triton.jit
def _feedforward(a, w1_ptr, b1_ptr, w2_ptr, b2_ptr, D: tl.constexpr, FF: tl.constexpr, GELU: tl.constexpr,
                 BF16_DOT: tl.constexpr):
    """``W_2 act(W_1 a + b_1) + b_2`` for ``a [M, D]``."""
    hidden = _linear(a, w1_ptr, b1_ptr, D, FF, BF16_DOT)  # [M, FF]
    if GELU:
        hidden = 0.5 * hidden * (1.0 + tl.erf(hidden * 0.7071067811865476))
    else:
        hidden = tl.maximum(hidden, 0.0)
    return _linear(hidden, w2_ptr, b2_ptr, FF, D, BF16_DOT)  # [M, D]


@triton.jit
def _attention(a, m0, length, kv_row, scratch_rows, layer, qk_scale, wq_ptr, bq_ptr, wo_ptr, bo_ptr,
               H: tl.constexpr, D: tl.constexpr, HD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BF16_DOT: tl.constexpr):
    """Causal multi-head attention of the queries ``a [M, D]`` (rows ``m0 ..``) with the output
    projection: ``[M, D]``. Keys and values come from the kv scratch of this row."""
    rows = m0 + tl.arange(0, BLOCK_M)
    keys0 = tl.arange(0, BLOCK_N)
    hd = tl.arange(0, HD)
    end = tl.minimum(m0 + BLOCK_M, length)  # keys past the block's last query are never visible
    out = tl.zeros([BLOCK_M, D], tl.float32)
    for head in tl.static_range(H):  # unrolled: with one head, a is dead once q is computed
        w = layer * H + head
        q = _linear(a, wq_ptr + w * D * HD, bq_ptr + w * HD, D, HD, BF16_DOT) * qk_scale  # [M, HD], log2 units
        q = _to_bf16(q, BF16_DOT)  # what the dot reads anyway; half the registers
        kv_head = kv_row + head * scratch_rows * 2 * HD  # [L_P, 2 HD]: k then v of each row
        row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HD], tl.float32)
        for n0 in range(0, end, BLOCK_N):
            keys = n0 + keys0
            k = tl.load(kv_head + keys[:, None] * 2 * HD + hd[None, :])  # [N, HD]
            v = tl.load(kv_head + keys[:, None] * 2 * HD + HD + hd[None, :])  # [N, HD]
            s = _mm(q, tl.trans(k), BF16_DOT)  # [M, N]
            visible = (keys[None, :] <= rows[:, None]) & (keys[None, :] < length)  # key 0 is visible to every row
            s = tl.where(visible, s, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(s, axis=1))
            p = tl.exp2(s - new_max[:, None])  # [M, N]
            alpha = tl.exp2(row_max - new_max)
            row_sum = row_sum * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + _mm(p, v, BF16_DOT)
            row_max = new_max
        out += _mm(acc / row_sum[:, None], _load_matrix(wo_ptr + w * HD * D, HD, D), BF16_DOT)  # [M, D]
    bias = tl.load(bo_ptr + layer * D + tl.arange(0, D)).to(tl.float32)
    return out + bias[None, :]


# ----------------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------------


@triton.jit
def _skut_kernel(
    x_ptr, lengths_ptr, out_ptr, h_ptr, kv_ptr,
    win_ptr, bin_ptr, wq_ptr, bq_ptr, wkv_ptr, bkv_ptr, wo_ptr, bo_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr, g1_ptr, be1_ptr, g2_ptr, be2_ptr, wr_ptr, br_ptr,
    width, token_dim, model_dim, out_dim, num_layers, scratch_rows, stride_xb, stride_xl, qk_scale, eps,
    E: tl.constexpr, D: tl.constexpr, HD: tl.constexpr, FF: tl.constexpr, FO: tl.constexpr, H: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NORM_FIRST: tl.constexpr, GELU: tl.constexpr, BF16_DOT: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    length = tl.minimum(tl.maximum(tl.load(lengths_ptr + row), 0), width).to(tl.int32)
    h_row = h_ptr + row * scratch_rows * D  # [L_P, D] float32
    kv_row = kv_ptr + row * H * scratch_rows * 2 * HD  # [H, L_P, 2 HD] bfloat16
    m = tl.arange(0, BLOCK_M)
    cd = tl.arange(0, D)
    ce = tl.arange(0, E)
    hd2 = tl.arange(0, 2 * HD)

    # Phase 0: the token projection z = x W_in^T + b_in.
    for m0 in range(0, length, BLOCK_M):
        rows = m0 + m
        x = tl.load(x_ptr + row * stride_xb + rows[:, None] * stride_xl + ce[None, :],
                    mask=(rows < length)[:, None] & (ce < token_dim)[None, :], other=0.0)  # [M, E]
        z = _linear(x, win_ptr, bin_ptr, E, D, BF16_DOT)  # [M, D]
        tl.store(h_row + rows[:, None] * D + cd[None, :], z)
    tl.debug_barrier()

    for layer in range(num_layers):
        g1 = g1_ptr + layer * D  # the layer norms' weights and biases
        be1 = be1_ptr + layer * D
        g2 = g2_ptr + layer * D
        be2 = be2_ptr + layer * D
        # Phase 1: keys and values of every block (one matmul: W_kv = [W_k | W_v]).
        for head in range(H):
            w = layer * H + head
            for m0 in range(0, length, BLOCK_M):
                rows = m0 + m
                a = tl.load(h_row + rows[:, None] * D + cd[None, :])  # [M, D]
                if NORM_FIRST:
                    a = _layer_norm(a, g1, be1, model_dim, eps, D)
                kv = _linear(a, wkv_ptr + w * D * 2 * HD, bkv_ptr + w * 2 * HD, D, 2 * HD, BF16_DOT)  # [M, 2 HD]
                slots = rows[:, None] * 2 * HD + hd2[None, :]
                tl.store(kv_row + head * scratch_rows * 2 * HD + slots, _to_bf16(kv, BF16_DOT))
        tl.debug_barrier()
        # Phase 2: per block of queries, attention and the rest of the layer, written back in place.
        for m0 in range(0, length, BLOCK_M):
            rows = m0 + m
            a = tl.load(h_row + rows[:, None] * D + cd[None, :])  # [M, D]
            if NORM_FIRST:
                a = _layer_norm(a, g1, be1, model_dim, eps, D)
            o = _attention(a, m0, length, kv_row, scratch_rows, layer, qk_scale, wq_ptr, bq_ptr, wo_ptr, bo_ptr,
                           H, D, HD, BLOCK_M, BLOCK_N, BF16_DOT)  # [M, D]
            h = tl.load(h_row + rows[:, None] * D + cd[None, :]) + o  # the residual, read again (from L1)
            if NORM_FIRST:  # z + MHA(LN_1 z), then + FFN(LN_2 .)
                h += _feedforward(_layer_norm(h, g2, be2, model_dim, eps, D), w1_ptr + layer * D * FF,
                                  b1_ptr + layer * FF, w2_ptr + layer * FF * D, b2_ptr + layer * D, D, FF, GELU,
                                  BF16_DOT)
            else:  # LN_1(z + MHA(z)), then LN_2(. + FFN(.))
                h = _layer_norm(h, g1, be1, model_dim, eps, D)
                h += _feedforward(h, w1_ptr + layer * D * FF, b1_ptr + layer * FF, w2_ptr + layer * FF * D,
                                  b2_ptr + layer * D, D, FF, GELU, BF16_DOT)
                h = _layer_norm(h, g2, be2, model_dim, eps, D)
            tl.debug_barrier()  # every thread has read this block's rows before any overwrites them
            tl.store(h_row + rows[:, None] * D + cd[None, :], h)
        tl.debug_barrier()

    # Readout: max over the real rows of z W_out^T + b_out; zeros for an empty row.
    cf = tl.arange(0, FO)
    best = tl.full([FO], float("-inf"), tl.float32)
    for m0 in range(0, length, BLOCK_M):
        rows = m0 + m
        h = tl.load(h_row + rows[:, None] * D + cd[None, :])  # [M, D]
        projected = _linear(h, wr_ptr, br_ptr, D, FO, BF16_DOT)  # [M, FO]
        best = tl.maximum(best, tl.max(tl.where((rows < length)[:, None], projected, float("-inf")), axis=0))
    best = tl.where(length > 0, best, 0.0)
    tl.store(out_ptr + row * out_dim + cf, best, mask=cf < out_dim)


# ----------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------


def padded(n: int) -> int:
    """A dimension as the kernel tiles it: the next power of two, at least 16."""
    return max(MIN_DOT, triton.next_power_of_2(max(int(n), 1)))


@dataclass
class PackedSkutWeights:
    """:class:`SkutWeights` as the kernel reads them: transposed to ``[in, out]``, zero-padded,
    stacked over layers (and heads); matrices bfloat16, vectors float32.

    Args: the tensors named as the kernel's arguments (``win [E_P, D_P]``, ``wq [N, H, D_P, HD_P]``,
    ``wkv [N, H, D_P, 2 HD_P]`` (keys, then values), ``wo [N, H, HD_P, D_P]``, ``w1 [N, D_P, FF_P]``, ``w2 [N, FF_P, D_P]``,
    ``wr [D_P, FO_P]``, biases and norms ``[N, ...]``), and the padded sizes.
    """

    tensors: dict[str, torch.Tensor]
    sizes: dict[str, int]


def pack_skut_weights(weights: SkutWeights, device: torch.device) -> PackedSkutWeights:
    """The kernel's layout of ``weights`` on ``device`` (see :class:`PackedSkutWeights`)."""
    heads, dim, ff = weights.num_heads, weights.model_dim, weights.feedforward_dim
    head_dim = dim // heads
    sizes = dict(E=padded(weights.token_dim), D=padded(dim), HD=padded(head_dim), FF=padded(ff),
                 FO=padded(weights.output_dim), H=heads)
    E, D, HD, FF, FO = (sizes[k] for k in ("E", "D", "HD", "FF", "FO"))

    def mat(t, rows, cols):  # [out, in] -> zero-padded [in, out] bfloat16
        out = torch.zeros(rows, cols, dtype=torch.bfloat16, device=device)
        out[: t.shape[1], : t.shape[0]] = t.detach().t()
        return out

    def vec(t, size):
        out = torch.zeros(size, dtype=torch.float32, device=device)
        out[: t.shape[0]] = t.detach()
        return out

    def per_head(weight, bias):  # [d, d] rows of one of Q/K/V -> [H, D_P, HD_P], [H, HD_P]
        return (torch.stack([mat(weight[i * head_dim:(i + 1) * head_dim], D, HD) for i in range(heads)]),
                torch.stack([vec(bias[i * head_dim:(i + 1) * head_dim], HD) for i in range(heads)]))

    layers: dict[str, list[torch.Tensor]] = {}
    for layer in weights.layers:
        packed = {}
        parts = [per_head(layer.qkv_weight[i * dim:(i + 1) * dim], layer.qkv_bias[i * dim:(i + 1) * dim])
                 for i in range(3)]  # q, k, v: ([H, D_P, HD_P], [H, HD_P]) each
        packed["wq"], packed["bq"] = parts[0]
        packed["wkv"] = torch.cat([parts[1][0], parts[2][0]], dim=2)  # [H, D_P, 2 HD_P]
        packed["bkv"] = torch.cat([parts[1][1], parts[2][1]], dim=1)  # [H, 2 HD_P]
        packed["wo"] = torch.stack([mat(layer.out_weight[:, i * head_dim:(i + 1) * head_dim], HD, D)
                                    for i in range(heads)])
        packed.update(bo=vec(layer.out_bias, D), w1=mat(layer.ff1_weight, D, FF), b1=vec(layer.ff1_bias, FF),
                      w2=mat(layer.ff2_weight, FF, D), b2=vec(layer.ff2_bias, D),
                      g1=vec(layer.norm1_weight, D), be1=vec(layer.norm1_bias, D),
                      g2=vec(layer.norm2_weight, D), be2=vec(layer.norm2_bias, D))
        for name, tensor in packed.items():
            layers.setdefault(name, []).append(tensor)
    tensors = dict(win=mat(weights.input_weight, E, D), bin=vec(weights.input_bias, D),
                   wr=mat(weights.readout_weight, D, FO), br=vec(weights.readout_bias, FO))
    tensors.update({name: torch.stack(parts).contiguous() for name, parts in layers.items()})
    return PackedSkutWeights(tensors, sizes)


def packed_weights(weights: SkutWeights, device: torch.device) -> PackedSkutWeights:
    """The packed weights, derived once per :class:`SkutWeights` and device (kept in ``weights.packed``)."""
    key = (PACKED_KEY, str(device))
    if key not in weights.packed:
        weights.packed[key] = pack_skut_weights(weights, device)
    return weights.packed[key]


def skut_triton(
    weights: SkutWeights,
    x: torch.Tensor,
    lengths: torch.Tensor,
    *,
    return_outputs: bool = False,
    block_m: int = DEFAULT_BLOCK_M,
    block_n: int = DEFAULT_BLOCK_N,
    num_warps: int = DEFAULT_NUM_WARPS,
    num_stages: int = DEFAULT_NUM_STAGES,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The encoder's readout of padded rows in one launch; inputs checked by :func:`recsys.ops.skut.skut`.

    Args:
        weights, x, lengths, return_outputs: as :func:`recsys.ops.skut_reference.skut_reference`.
        block_m: query rows per tile (a power of two, at least 16).
        block_n: key rows per tile (a power of two, at least 16, at most ``block_m``).
        num_warps: warps per program.
        num_stages: software pipelining depth of the key loop.

    Returns:
        ``[B, F]`` float32 readout; with ``return_outputs`` also ``[B, L, d]`` float32 outputs
        (unspecified at padded slots).
    """
    if not MIN_DOT <= block_n <= block_m or block_m & (block_m - 1) or block_n & (block_n - 1):
        raise ConfigError(f"skut_triton: block_m={block_m} and block_n={block_n} must be powers of two with "
                          f"{MIN_DOT} <= block_n <= block_m")
    packed = packed_weights(weights, x.device)
    sizes, t = packed.sizes, packed.tensors
    rows, width, _ = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    scratch_rows = max(triton.cdiv(width, block_m), 1) * block_m
    h = torch.empty(rows, scratch_rows, sizes["D"], dtype=torch.float32, device=x.device)  # [B, L_P, D_P]
    kv = torch.empty(rows, sizes["H"], scratch_rows, 2 * sizes["HD"], dtype=torch.bfloat16, device=x.device)
    out = torch.empty(rows, weights.output_dim, dtype=torch.float32, device=x.device)  # [B, F]
    if rows:
        _skut_kernel[(rows,)](
            x, lengths, out, h, kv,
            t["win"], t["bin"], t["wq"], t["bq"], t["wkv"], t["bkv"], t["wo"], t["bo"],
            t["w1"], t["b1"], t["w2"], t["b2"], t["g1"], t["be1"], t["g2"], t["be2"], t["wr"], t["br"],
            width, weights.token_dim, weights.model_dim, weights.output_dim, len(weights.layers), scratch_rows,
            x.stride(0), x.stride(1), LOG2E / math.sqrt(weights.model_dim // weights.num_heads), weights.eps,
            BLOCK_M=block_m, BLOCK_N=block_n, NORM_FIRST=weights.norm_first, GELU=weights.activation == "gelu",
            BF16_DOT=x.is_cuda, num_warps=num_warps, num_stages=num_stages, **sizes,
        )
    if not return_outputs:
        return out
    return out, h[:, :width, : weights.model_dim]
