"""Dense memory and compute of one training step on one rank, from the model's structure.

The sharding planner places embedding tables; everything else a rank holds while it trains is
estimated here, per zoo model, from the sizes of the model's own layers (read from the model
built on the meta device, so the estimate follows its config) and from the batch:

- dense state: parameters, gradients and optimizer state of every non-table parameter
  (replicated on every rank; Adam keeps 2 moments, Adagrad 1, SGD none);
- activations kept for backward: per layer, the bytes of the distinct tensor storages autograd
  saves for the backward pass (what ``torch.autograd.graph.saved_tensors_hooks`` sees, deduped by
  storage), as a function of the per-rank batch B, the jagged lengths of the typical batch
  (:class:`~recsys.distributed.sequence_lengths.LengthDistribution`) and the layer widths;
- dense FLOPs of forward + backward (matmuls: 2 m n k forward, twice that backward; the weight
  gradient only where the input needs none), turned into time at a stated fraction of the
  device's peak rate.

The activation formulas follow the PyTorch implementations the models run in fp32: padded
``[B, N, ...]`` attention for TransAct / BST / SASRec (N the batch's longest row), the pure-PyTorch
HSTU attention (padded scores ``[B, H, N, N]`` beside jagged ``[T, ...]`` projections), the
retrieval models' sampled softmax. ``fused_attention=True`` (the CUDA default of
``scaled_dot_product_attention``) drops the ``[B, H, N, N]`` probabilities from the
``nn.MultiheadAttention`` / SASRec blocks. Embedding lookups of the sharded tables are the
planner's (not counted here); their outputs, once dense layers read them, are.

Shape letters: B rows per rank, N padded length, T jagged tokens, E = B N padded tokens, D / d
model widths, H heads, F feed-forward width, K sampled negatives, U distinct sampled items.

Example::

    model = get_model("hstu", device="meta", num_layers=16, embedding_dim=256, max_seq_len=1024)
    est = estimate_dense(model, Workload(batch_size=4096, lengths=LengthDistribution.fixed(1024)))
    est.activation_bytes / 2**30, est.compute_ms(peak_tflops=989, efficiency=0.4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Tuple

import numpy as np
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from recsys.distributed.sequence_lengths import LengthDistribution
from recsys.errors import ConfigError

F32, I64, BOOL = 4, 8, 1
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "adagrad": 1, "rowwise_adagrad": 1, "sgd": 0}


CUDNN_GRU_FLOATS_PER_HIDDEN = 19.5  # cuDNN GRU transient per token and hidden unit (see _gru)
FUSED_GRU_CELL_EXTRA_PER_HIDDEN = 5  # floats per row and hidden unit a CUDA nn.GRUCell saves beyond the CPU's (_mimn)


@dataclass(frozen=True)
class Workload:
    """What one rank trains per step.

    Args:
        batch_size: B, rows per rank (``train.batch_size``).
        lengths: per-row sequence lengths: history events (ranking sequence encoders; S_all for
            TransAct V2) or tokens per sequence (retrieval). Ignored by models without sequences.
        num_items: items the retrieval loss samples negatives from (sizes its distinct lookups).
        impressions_per_row / next_action_pairs_per_row: TransAct V2's next-action loss per row:
            impression negatives (distinct (user, item) impression tokens of S_all) and (token,
            next action) pairs (consecutive realtime-recent tokens whose next action is a positive
            engagement); bounded by ``data.lifelong``'s impression_k and realtime_recent - 1.
        fused_attention: ``scaled_dot_product_attention`` runs a fused kernel (CUDA), which keeps
            no ``[B, H, N, N]`` probabilities.
        accelerator: the step runs on an accelerator (CUDA). The HSTU reference attention then
            pads every sequence to the encoder's ``max_seq_len`` (its layout reads no length back
            to the host), not to the batch's longest as on CPU.
    """

    batch_size: int
    lengths: LengthDistribution = field(default_factory=lambda: LengthDistribution.fixed(0))
    num_items: int = 1
    impressions_per_row: float = 0.0
    next_action_pairs_per_row: float = 0.0
    fused_attention: bool = False
    accelerator: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be an integer >= 1, got {self.batch_size!r}")


@dataclass
class DenseEstimate:
    """One rank's dense memory (bytes) and compute (FLOPs) per training step.

    ``activation_parts`` / ``flop_parts`` break the totals down by part of the model.
    ``scatter_adds``: elements the backward adds into a small table with atomics, many to one
    entry (``index_add_`` of the HSTU relative-bias gradient: one per pair ``[B, N, N]`` and
    layer); they serialise on the entry, so their time is their count x a per-element cost
    (:meth:`scatter_ms`), not bytes over bandwidth.
    """

    parameter_bytes: int
    optimizer_bytes: int
    activation_parts: Dict[str, int]
    flop_parts: Dict[str, float]
    launches: int = 0
    forward_transient_bytes: int = 0
    backward_transient_bytes: int = 0
    scatter_adds: float = 0.0

    @property
    def gradient_bytes(self) -> int:
        return self.parameter_bytes

    @property
    def dense_bytes(self) -> int:
        """Parameters + gradients + optimizer state."""
        return self.parameter_bytes + self.gradient_bytes + self.optimizer_bytes

    @property
    def activation_bytes(self) -> int:
        return int(sum(self.activation_parts.values()))

    @property
    def flops(self) -> float:
        return float(sum(self.flop_parts.values()))

    @property
    def phase_bytes(self) -> Dict[str, int]:
        """Bytes made during the step that are alive at each phase's peak (parameters and
        optimizer state, which live throughout, excluded):

        - forward: the saved activations + the forward's largest transient (tensors a layer makes
          and drops, e.g. the padded ``[B, N, D]`` copy of a jagged sequence);
        - backward: saved activations + parameter gradients + the largest backward transient (the
          gradients of a layer's widest activations alive at once with everything saved before
          it: the ``[B, H, N, N]`` score gradients, the sampled softmax's ``[N, U]`` logit gradients);
        - optimizer: the gradients + one parameter-sized temporary of the multi-tensor (foreach)
          Adam update, activations all freed.
        """
        saved = self.activation_bytes
        return {
            "forward": saved + self.forward_transient_bytes,
            "backward": saved + self.gradient_bytes + self.backward_transient_bytes,
            "optimizer": self.gradient_bytes + (self.parameter_bytes if self.optimizer_bytes else 0),
        }

    @property
    def step_peak_bytes(self) -> int:
        """The most step-made bytes alive at once: the max over :attr:`phase_bytes` (what a
        live-tensor count over one step measures, :class:`~recsys.distributed.step_trace.StepTrace`)."""
        return max(self.phase_bytes.values())

    @property
    def peak_bytes(self) -> int:
        """Peak dense + activation bytes of a step: parameters + optimizer state + :attr:`step_peak_bytes`."""
        return self.parameter_bytes + self.optimizer_bytes + self.step_peak_bytes

    @property
    def transient_bytes(self) -> int:
        """What the peak holds beyond parameters, gradients, optimizer state and saved activations."""
        return max(self.peak_bytes - self.dense_bytes - self.activation_bytes, 0)

    def overhead_ms(self, launch_us: float) -> float:
        """Per-step framework time of eager execution: ``launches`` x ``launch_us`` (dominates small models)."""
        return self.launches * launch_us / 1e3

    def scatter_ms(self, ns_per_element: float) -> float:
        """Time of the backward's atomic scatter-adds into small tables: :attr:`scatter_adds` x ``ns_per_element``."""
        return self.scatter_adds * ns_per_element / 1e6

    def compute_ms(self, peak_tflops: float, efficiency: float) -> float:
        """Dense forward + backward time in ms at ``efficiency`` x ``peak_tflops``."""
        return self.flops / (peak_tflops * 1e12 * efficiency) * 1e3


class _Tally:
    """Accumulates activation bytes and FLOPs under part names."""

    def __init__(self) -> None:
        self.bytes: Dict[str, int] = {}
        self.flops: Dict[str, float] = {}
        self.transient = {"forward": 0, "backward": 0}
        self.scatter_adds = 0.0

    def peak(self, phase: str, nbytes: float) -> None:
        """A transient of ``phase`` (not saved for backward, alive at that phase's peak): the largest counts."""
        self.transient[phase] = max(self.transient[phase], int(round(nbytes)))

    def add(self, part: str, nbytes: float = 0, flops: float = 0) -> None:
        self.bytes[part] = self.bytes.get(part, 0) + int(round(nbytes))
        self.flops[part] = self.flops.get(part, 0.0) + float(flops)


# ---------------------------------------------------------------------------------------- helpers
def _linears(module: nn.Module) -> List[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _matmul_flops(rows: float, fan_in: int, fan_out: int, input_grad: bool = True) -> float:
    """Forward 2 r i o, weight gradient 2 r i o, input gradient 2 r i o when the input needs one."""
    return (6.0 if input_grad else 4.0) * rows * fan_in * fan_out


def _dropout_on(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules())


def _mlp(t: _Tally, part: str, mlp: nn.Module, rows: float, input_grad: bool = True) -> None:
    """torchrec MLP (Linear + ReLU per layer): its input and every layer's ReLU output, ``[rows, w]``."""
    layers = _linears(mlp)
    t.add(part, F32 * rows * (layers[0].in_features + sum(l.out_features for l in layers)))
    for i, layer in enumerate(layers):
        t.add(part, flops=_matmul_flops(rows, layer.in_features, layer.out_features, input_grad or i > 0))


def _layer_norm(rows: float, width: int) -> float:
    """LayerNorm keeps its input ``[rows, w]`` and mean / rstd ``[rows, 1]``."""
    return F32 * rows * (width + 2)


def _attention_flops(batch: float, heads: int, n_q: float, n_k: float, head_dim: int, value_dim: int) -> float:
    """Q K^T and P V, forward and backward (both operands need gradients): 3 x 2 b h n m (dk + dv)."""
    return 6.0 * batch * heads * n_q * n_k * (head_dim + value_dim)


# ------------------------------------------------------------------------ transformer layers
def _torch_encoder_layer(t: _Tally, part: str, layer: nn.TransformerEncoderLayer, groups: Iterable[Tuple[int, int]],
                         fused: bool) -> None:
    """``nn.TransformerEncoderLayer`` (post-norm, ReLU) on padded groups of (rows, width) each.

    Per group of E = b N tokens: both norms (2 E d + 4 E), linear1's input (E d), the ReLU output
    and linear2's input (2 E F); with dropout its masks (2 E d + E F). Attention: the in/out
    projections' inputs, the packed q/k/v and, on the math path, scaled q and k^T copies (7 E d)
    with scores, probabilities and their dropout mask (3 b H N^2, 2 without dropout); a fused kernel
    (CUDA, or no dropout) keeps the output and logsumexp and the padding mask (5 E d + 2 b H N).
    """
    d, ff, heads = layer.linear1.in_features, layer.linear1.out_features, layer.self_attn.num_heads
    drop = layer.dropout.p > 0
    fused = fused or not drop  # without dropout SDPA runs a fused kernel on CPU too
    for rows, width in groups:
        e = rows * width
        kept = e * (3 * d + 4 + 2 * ff) + (e * (2 * d + ff) if drop else 0)
        if fused:
            kept += 5 * e * d + 2 * rows * heads * width
        else:
            kept += 7 * e * d + (3 if drop else 2) * rows * heads * width * width
        # backward transient: the gradients of probabilities and scores (math path) or of q, k, v (fused)
        t.peak("backward", F32 * (3 * e * d if fused else 2 * rows * heads * width * width))
        t.add(part, F32 * kept)
        t.add(part, flops=_matmul_flops(e, d, 3 * d) + _matmul_flops(e, d, d) + _matmul_flops(e, d, ff)
              + _matmul_flops(e, ff, d) + _attention_flops(rows, heads, width, width, d // heads, d // heads))


def _hstu_layers(t: _Tally, encoder: nn.Module, lengths: np.ndarray, accelerator: bool = False) -> None:
    """HSTU blocks on jagged tokens ``lengths`` (one row per sequence), attention padded to N: the
    longest row on CPU, the encoder's ``max_seq_len`` on an accelerator (``_padded_width`` of
    :mod:`recsys.ops.hstu_attention_layout`: no read of the lengths back to the host).

    Per layer on T tokens: input norm + f1 input (2 T D), f1 output and its SiLU (2 T H (2 Dv + 2 Dqk)),
    attention output, dropout mask, f2 input, output norm (4 T H Dv, 3 without dropout), norm stats;
    padded q, k^T, v (B H N (2 Dqk + Dv)), scores before and after SiLU (2 B H N^2). Once per pass:
    the mask (bool) and relative-bias index (int64) ``[B, N, N]``. With a relative bias, every
    layer's backward adds its ``[B, N, N]`` bias gradient into the small combined bias table
    (``index_select``'s gradient, an ``index_add_``): B N^2 scatter-adds per layer.

    The fused Triton kernel (:func:`uses_fused_hstu_attention`) keeps none of the padded tensors:
    per layer its output and the ``[T]`` float32 normalizer (q, k, v are views of the SiLU
    output); no mask or bias index is built; its backward holds dq, dk, dv (T H (2 Dqk + Dv)) and
    sums the bias gradient in-kernel; its work covers each sequence's own n^2 pairs.
    """
    b, tokens, n = len(lengths), float(lengths.sum()), int(lengths.max()) if len(lengths) else 0
    if accelerator and b:
        n = encoder.max_seq_len
    fused = uses_fused_hstu_attention(encoder, accelerator)
    pairs = float(np.sum(lengths.astype(np.float64) ** 2)) if fused else float(b * n * n)
    for layer in encoder.layers:
        h, dqk, dv = layer.num_heads, layer.attention_dim, layer.linear_dim
        d = layer.f1.in_features
        drop = layer.dropout.p > 0
        per_token = 2 * d + 4 + 2 * h * (2 * dv + 2 * dqk) + (4 if drop else 3) * h * dv + 2
        if fused:
            t.add("encoder", F32 * tokens * (per_token + 1))
            t.peak("backward", F32 * tokens * h * (2 * dqk + dv))
        else:
            padded = b * h * n * (2 * dqk + dv) + 2 * b * h * n * n + b
            t.add("encoder", F32 * (tokens * per_token + padded))
            t.peak("backward", F32 * 2 * b * h * n * n)  # gradients of the scores before and after SiLU
            if layer.relative_bias is not None:
                t.scatter_adds += float(b * n * n)
        t.add("encoder", flops=_matmul_flops(tokens, d, layer.f1.out_features) + _matmul_flops(tokens, h * dv, d)
              + 6.0 * h * pairs * (dqk + dv))
    time_bias = getattr(encoder.layers[0].relative_bias, "use_time_bias", False) if len(encoder.layers) else False
    mask_and_index = 0 if fused else (BOOL + I64 * (2 if time_bias else 1)) * b * n * n
    t.add("encoder", mask_and_index + I64 * (b + 1))
    if isinstance(getattr(encoder, "final_norm", None), nn.LayerNorm):
        t.add("encoder", _layer_norm(tokens, encoder.final_norm.normalized_shape[0]))


def uses_fused_hstu_attention(encoder: nn.Module, accelerator: bool) -> bool:
    """Whether ``encoder``'s layers train with the fused Triton attention kernel: asked for by name
    (``kernel="triton"``), or ``"auto"`` on an accelerator (the dispatcher's choice on CUDA for
    float32, bfloat16 and float16, :mod:`recsys.ops.hstu_attention`)."""
    kernel = encoder.layers[0].kernel if len(encoder.layers) else "pytorch"
    return kernel == "triton" or (kernel == "auto" and accelerator)


def _sasrec_layers(t: _Tally, encoder: nn.Module, lengths: np.ndarray, fused: bool) -> None:
    """SASRec blocks (pre-norm, SDPA attention, ReLU FFN) padded to ``[B, N, D]``.

    Per block: norms (2 E D + 4 E), the qkv and FFN inputs (2 E D), the ReLU output (E F); with
    dropout the FFN's masks and second input (2 E F + E D). Attention on the math path: q, k^T, v
    copies and the output projection's input (4 E D) with scores, probabilities and dropout mask
    (3 B H N^2); a fused kernel (CUDA, or no dropout): the packed qkv, output, logsumexp and the
    float mask (4 E D + B H N + B N^2).
    """
    b, n = len(lengths), max(int(lengths.max()), 1)
    e, d = b * n, encoder.embedding_dim
    drop = _dropout_on(encoder)
    fused = fused or not drop
    for layer in encoder.layers:
        h, ff = layer.num_heads, layer.ffn[0].out_features
        kept = e * (4 * d + 4 + ff) + (e * (2 * ff + d) if drop else 0) + 4 * e * d
        kept += b * h * n + b * n * n if fused else 3 * b * h * n * n
        t.peak("backward", F32 * (3 * e * d if fused else 2 * b * h * n * n))
        t.add("encoder", F32 * kept)
        t.add("encoder", flops=_matmul_flops(e, d, 3 * d) + _matmul_flops(e, d, d) + _matmul_flops(e, d, ff)
              + _matmul_flops(e, ff, d) + _attention_flops(b, h, n, n, d // h, d // h))
    t.add("encoder", F32 * e * d * (1 if drop else 0) + I64 * (e + b + 1) + _layer_norm(e, d))


# ---------------------------------------------------------------------------- model families
def _retrieval(t: _Tally, model: nn.Module, work: Workload) -> None:
    """SequentialRetrieval (hstu, sasrec): encoder + L2 norm + sampled softmax of the next item."""
    lengths = work.lengths.capped(model.max_seq_len).typical_batch(work.batch_size)
    lengths = np.maximum(lengths, 1)
    b, tokens, d = len(lengths), float(lengths.sum()), model.embedding_dim
    if type(model.encoder).__name__ == "SASRecEncoder":
        _sasrec_layers(t, model.encoder, lengths, work.fused_attention)
    else:
        _hstu_layers(t, model.encoder, lengths, work.accelerator)
    t.add("input", F32 * tokens * d * (1 if model.input_dropout.p > 0 else 0)
          + (I64 * tokens if model.positions is not None else 0))
    queries = tokens - b
    t.add("loss", I64 * queries + F32 * tokens * (d + 2))  # next-token index, L2 norm of the outputs
    _sampled_softmax(t, model.loss, queries, d, work.num_items)


def _sampled_softmax(t: _Tally, loss: nn.Module, queries: float, d: int, num_items: int) -> None:
    """Uniform sampled softmax (:class:`~recsys.modules.sampled_softmax.SampledSoftmaxLoss`), N queries."""
    k = loss.num_negatives
    if loss.negatives == "in_batch":
        t.add("loss", F32 * (4 * queries * d + 2 * queries * queries) + BOOL * queries * queries + I64 * queries)
        t.peak("backward", F32 * 2 * queries * queries)  # the logits' gradient and its softmax
        t.add("loss", flops=_matmul_flops(queries, d, queries))
        return
    draws = queries * (1 + k)
    distinct = _distinct_draws(queries, k, num_items)
    common = 4 + I64 * (queries + draws) + (F32 + BOOL) * draws + F32 * queries * (1 + 3 * d) + F32 * distinct * (2 + 2 * d)
    if distinct <= k * d:  # scores against every distinct item, then gathered
        t.add("loss", common + F32 * distinct * d + F32 * queries * distinct)
        # the loss's backward peaks twice: at the log-softmax's gradient (two [N, 1 + K] logit
        # gradients beside everything saved), then at gather's: one [N, U] buffer of zeros the
        # [N, K] logit gradients are added into in place (scatter_add_) beside the saved [N, U]
        # scores, the log-softmax output freed by then making room for the logit gradient
        t.peak("backward", F32 * max(2 * queries * (1 + k), queries * distinct))
        t.add("loss", flops=_matmul_flops(queries, d, distinct))
    else:  # gathered [N, K, D]
        t.add("loss", common + F32 * queries * k * d)
        # the log-softmax's gradient (two [N, 1 + K] logit gradients), then the einsum's
        # gradient of the gathered [N, K, D] vectors beside the saved ones (the tables train)
        t.peak("backward", F32 * max(2 * queries * (1 + k), queries * k * d))
        t.add("loss", flops=6.0 * queries * k * d)


def _ranking_arch(t: _Tally, model: nn.Module, b: int) -> None:
    """DLRM-DCNv2 frame (dlrm, pinnability family): dense MLP, cross net, over arch, heads, loss."""
    _mlp(t, "dense_arch", model.dense_arch, b, input_grad=False)
    width = _linears(model.over_arch)[0].in_features  # the interaction width W
    layers = model.cross_net._num_layers  # torchrec CrossNet: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l
    t.add("cross_net", F32 * 2 * b * width * layers, flops=layers * _matmul_flops(b, width, width))
    _mlp(t, "over_arch", model.over_arch, b)
    heads = model.head_layer
    t.add("over_arch", F32 * 3 * b * heads.out_features,
          flops=_matmul_flops(b, heads.in_features, heads.out_features))


def _bst(t: _Tally, arch: nn.Module, lengths: np.ndarray, fused: bool) -> None:
    encoder = arch.encoder
    b, width = len(lengths), int(np.minimum(lengths, encoder.max_sequence).max()) + 1  # + the candidate
    t.add("sequence_encoder", I64 * 2 * b + F32 * b + (2 * I64 + BOOL) * b * width)
    for layer in encoder.encoder.layers:
        _torch_encoder_layer(t, "sequence_encoder", layer, [(b, width)], fused)


def _transact_v1(t: _Tally, arch: nn.Module, lengths: np.ndarray, fused: bool) -> None:
    encoder = arch.encoder
    b, s, d = len(lengths), encoder.max_sequence, encoder.model_dim
    width = int(np.minimum(lengths, s).max())
    t.add("sequence_encoder", BOOL * b * (1 + s) + F32 * b * s * d + I64 * b * (2 * s + d) + F32 * b * d)
    t.add("sequence_encoder", flops=_matmul_flops(b, d, d))  # pool projection
    for layer in encoder.encoder.layers:
        _torch_encoder_layer(t, "sequence_encoder", layer, [(b, max(width, 1))], fused)


def _transact_v2(t: _Tally, arch: nn.Module, lengths: np.ndarray, work: Workload) -> None:
    encoder = arch.encoder
    lengths = np.sort(np.minimum(lengths, encoder.max_sequence))
    b, tokens, d = len(lengths), float(lengths.sum()), encoder.model_dim
    token_dim = encoder.input_projection.in_features
    out = encoder.readout_projection.out_features
    groups = [(len(g), max(int(g.max()), 1)) for g in np.array_split(lengths, min(encoder.config.length_groups, b)) if len(g)]
    t.add("sequence_encoder", I64 * b + I64 * tokens * 7 + F32 * tokens * (encoder.num_actions + token_dim))
    t.add("sequence_encoder", flops=_matmul_flops(tokens, token_dim, d, input_grad=False))
    for rows, width in groups:
        t.add("sequence_encoder", (2 * BOOL + I64) * rows * width + BOOL * rows + I64 * rows * out
              + F32 * rows * width * d, flops=_matmul_flops(rows * width, d, out))
    for layer in encoder.encoder.layers:
        _torch_encoder_layer(t, "sequence_encoder", layer, groups, work.fused_attention)
    nal = getattr(arch, "next_action_loss", None)
    if nal is not None:
        _next_action_loss(t, nal, b, work, d)


def _next_action_loss(t: _Tally, nal: nn.Module, b: int, work: Workload, d: int) -> None:
    """Next-action loss with impression negatives: Q queries against P impressions."""
    config = nal.config
    q = min(b * work.next_action_pairs_per_row, config.max_queries)
    p = min(b * work.impressions_per_row, config.max_negatives)
    c = nal.item_projection.in_features
    t.add("next_action_loss", 4 + F32 * p * (2 + 2 * d + c) + I64 * 2 * q + F32 * q * (4 + 4 * d + c)
          + (F32 + BOOL) * q * (p + 1), flops=_matmul_flops(q, d, p) + _matmul_flops(p + q, c, d))


def _hstu_ranking(t: _Tally, model: nn.Module, work: Workload) -> None:
    """HSTU ranking: interleaved (item, action) history tokens + the candidate token per row."""
    history = np.minimum(work.lengths.typical_batch(work.batch_size), model.max_sequence)
    b, d, items = len(history), model.config.embedding_dim, float(history.sum())
    _hstu_layers(t, model.encoder, 2 * history + 1, work.accelerator)
    actions = model.action_embeddings.shape[0]
    t.add("input", I64 * (2 * b + 2 * items) + F32 * (b * d + items * actions + 2 * items * d) + I64 * (items + b))
    if model.dense_projection is not None:
        proj = model.dense_projection
        t.add("input", F32 * b * proj.in_features, flops=_matmul_flops(b, proj.in_features, proj.out_features, False))
    _mlp(t, "over_arch", model.over_arch, b)
    heads = model.head_layer
    t.add("over_arch", F32 * 3 * b * heads.out_features, flops=_matmul_flops(b, heads.in_features, heads.out_features))


def _pinnability_sequence(t: _Tally, model: nn.Module, work: Workload) -> None:
    arch = getattr(model, "sequence_arch", None)
    if arch is None:
        return
    lengths = work.lengths.typical_batch(work.batch_size)
    name = type(arch).__name__
    if name == "BSTArch":
        _bst(t, arch, lengths, work.fused_attention)
    elif name == "TransActV1Arch":
        _transact_v1(t, arch, lengths, work.fused_attention)
    elif name == "TransActV2Arch":
        _transact_v2(t, arch, lengths, work)
    else:
        raise ConfigError(f"no dense estimate for sequence arch {name}; add one to recsys/distributed/dense_estimate.py")


def _behavior_sequence(t: _Tally, model: nn.Module, work: Workload) -> None:
    """The behaviour-sequence family (mimn, din, emb_mlp, gru4rec): padded ``[B, L, D]`` events,
    the candidate, the dense projection, then the model's interest arch and its head."""
    lengths = work.lengths.typical_batch(work.batch_size)
    b, d, events = len(lengths), model.config.embedding_dim, float(lengths.sum())
    longest = int(lengths.max()) if b else 0
    t.add("input", I64 * 2 * events)  # the padding's (row, column) index
    if model.action_embeddings is not None:
        actions = model.action_embeddings.shape[0]
        t.add("input", F32 * events * actions, flops=_matmul_flops(events, actions, d, False))
    if model.dense_projection is not None:
        proj = model.dense_projection
        t.add("input", F32 * b * proj.in_features, flops=_matmul_flops(b, proj.in_features, proj.out_features, False))
    arch, name = model.arch, type(model.arch).__name__
    if name == "SumPoolingArch":
        t.add("sequence_encoder", BOOL * b * longest)
        t.peak("forward", F32 * 2 * b * longest * d)  # the padded [B, L, D] events and their masked copy
    elif name == "DINArch":
        _din(t, arch, b, longest, d)
        t.peak("backward", F32 * b * longest * _linears(arch.attention.unit)[0].in_features)  # grad of the unit's input
    elif name == "GRUArch":
        _gru(t, arch.gru, b, longest, d, work.accelerator)
        t.peak("backward", F32 * b * longest * 4 * arch.gru.hidden_size)  # grads of the [B, L, 3h] gates and [B, L, h] outputs
        t.add("sequence_encoder", I64 * 2 * b + BOOL * b)  # the gather at each row's last event
    elif name == "MIMN":
        _mimn(t, arch, b, longest, d, work.accelerator)
    else:
        raise ConfigError(f"no dense estimate for behaviour-sequence arch {name}; add one to recsys/distributed/dense_estimate.py")
    head = getattr(arch, "head", arch)  # ScoringHead, or MIMN's own over arch + heads
    _mlp(t, "over_arch", head.over_arch, b)
    heads = head.head_layer
    t.add("over_arch", F32 * 3 * b * heads.out_features, flops=_matmul_flops(b, heads.in_features, heads.out_features))


def _din(t: _Tally, arch: nn.Module, b: int, longest: int, d: int) -> None:
    """Local activation unit on every padded (row, event) + masked softmax + weighted sum."""
    rows = b * longest
    _mlp(t, "sequence_encoder", arch.attention.unit, rows)
    score = arch.attention.score
    t.add("sequence_encoder", F32 * (rows * d + 2 * rows + b * d) + BOOL * 2 * rows,
          flops=_matmul_flops(rows, score.in_features, 1) + 6.0 * rows * d)


def _gru(t: _Tally, gru: nn.GRU, b: int, longest: int, d: int, cudnn: bool = False) -> None:
    """nn.GRU over ``[B, L, .]``: per layer and step its input and 7 hidden-wide tensors (gates, h).

    On CUDA, cuDNN runs the whole sequence as one op; its workspace and the batch-major <->
    time-major copies around it peak in the forward at about ``26.5 h + 4 d`` floats per token
    in all (fit to the allocator's peak of ``nn.GRU`` forward + backward on an H100, 2026-12-05:
    h in {32, 128}, d in {16, 64}, within 3% from 51,200 tokens a step, up to 1.16x under at
    12,800: ``benchmarks/cudnn_gru_peak.py``). The ``d + 7 h`` saved above are one part of it;
    the rest, ``19.5 h + 3 d``, is added as a forward transient.
    """
    h = gru.hidden_size
    for layer in range(gru.num_layers):
        fan_in = d if layer == 0 else h
        t.add("sequence_encoder", F32 * b * longest * (fan_in + 7 * h),
              flops=longest * (_matmul_flops(b, fan_in, 3 * h) + _matmul_flops(b, h, 3 * h)) - 2.0 * b * h * 3 * h)
        if cudnn:
            t.peak("forward", F32 * b * longest * (CUDNN_GRU_FLOATS_PER_HIDDEN * h + 3 * fan_in))


def _mimn(t: _Tally, mimn: nn.Module, b: int, longest: int, d: int, accelerator: bool = False) -> None:
    """MIMN: ``L`` update steps over every row (masked rows compute too), then the readout.

    Per row and step (fp32 values): controller GRU input and gates, both heads' outputs, the
    memory and two cosine-similarity intermediates per head, the softmaxes, the rebalancing
    ``[m, m]``, erase / add, and the MIU GRU over the m slots (``recsys.modules.mimn``).

    On CUDA an ``nn.GRUCell`` is one fused op (``_thnn_fused_gru_cell``) whose backward formula keeps
    both gate pre-activations (``3h`` each) and a ``5h`` workspace, where the CPU's cell-by-cell
    GRU keeps about ``6h`` of gates: ``5h`` more per row, cell and step (controller: h = Dc; MIU:
    m cells of h = Ds).
    """
    m, dm, dc, ds, k = mimn.memory_slots, mimn.memory_dim, mimn.controller_dim, mimn.induction_dim, mimn.induction_top_k
    per_step = (d * (1 + m) + 8 * dc + 7 * m * ds + 7 * dm + 7 * m * dm + 15 * m + m * m + 6)  # floats per row
    if accelerator:
        per_step += FUSED_GRU_CELL_EXTRA_PER_HIDDEN * (dc + m * ds)
    per_step = F32 * per_step + I64 * k + BOOL * m
    first_step = -F32 * m * dm if longest else 0  # M_0 is the learned parameter
    t.add("sequence_encoder", b * (longest * per_step + first_step) + BOOL * b * longest)
    t.add("sequence_encoder", F32 * b * (d + dm + ds + m * (dm + ds) + 2 * m))  # target-attended readout
    if mimn.utilisation_regularization:
        t.add("auxiliary_loss", F32 * b * (2 * m + 4))
    step_flops = (_matmul_flops(b, d + dm, 3 * dc) + _matmul_flops(b, dc, 3 * dc)  # controller
                  + _matmul_flops(b, dc, 4 * dm + 2)  # read and write heads
                  + 6.0 * b * m * dm  # r_t = w^r M
                  + _matmul_flops(b * m, dm + d, 3 * ds) + _matmul_flops(b * m, ds, 3 * ds))  # MIU
    if mimn.utilisation_regularization:
        step_flops += _matmul_flops(b, m, m * m) + 6.0 * b * m * m  # W_g u and w P
    first = 2.0 * b * (dc * 3 * dc + m * ds * 3 * ds + (m * m * m if mimn.utilisation_regularization else 0))
    readout = _matmul_flops(b, d, dm) + _matmul_flops(b, d, ds) + 12.0 * b * m * (dm + ds)
    t.add("sequence_encoder", flops=longest * step_flops - (first if longest else 0) + readout)


def _distinct_draws(queries: float, negatives: int, num_items: int) -> float:
    """Expected distinct items among the positives and uniform negatives of N queries (U)."""
    draws = queries * (1 + negatives)
    return min(draws, num_items * (1 - math.exp(-draws / max(num_items, 1))))


def sequence_ids_per_row(model: nn.Module, work: Workload) -> float:
    """Ids one row looks up in the sequence (EmbeddingCollection) tables per step: its history
    tokens, plus for retrieval the distinct items its sampled softmax embeds (U / B). The
    planner's pooling factor of those tables."""
    if type(model).__name__ == "RankingTask":
        model = model.model
    cap = getattr(model, "max_seq_len", None) or getattr(model, "max_sequence", None)
    lengths = work.lengths.typical_batch(work.batch_size)
    lengths = np.minimum(lengths, cap) if cap else lengths
    tokens = float(lengths.sum())
    if type(model).__name__ != "SequentialRetrieval":
        return max(tokens / work.batch_size, 1.0)
    loss = model.loss
    queries = max(tokens - work.batch_size, 0.0)
    extra = queries if loss.negatives == "in_batch" else _distinct_draws(queries, loss.num_negatives, work.num_items)
    return max((tokens + extra) / work.batch_size, 1.0)


# ------------------------------------------------------------------------------------ entry point
def dense_parameters(model: nn.Module) -> int:
    """Elements of every parameter outside the TorchRec embedding tables (the replicated part)."""
    tables = {id(p) for m in model.modules() if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))
              for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in tables)


def estimate_dense(model: nn.Module, work: Workload, optimizer: str = "adam") -> DenseEstimate:
    """One rank's dense memory and FLOPs per training step of a zoo model.

    Args:
        model: the zoo model (build it on ``device="meta"``: only its structure is read).
        work: batch per rank, sequence lengths and the rest of :class:`Workload`.
        optimizer: the dense optimizer (``optim.dense.name``): sizes its state.
    """
    if optimizer not in OPTIMIZER_STATES:
        raise ConfigError(f"optim.dense.name={optimizer!r}: no state size known; known: {sorted(OPTIMIZER_STATES)}")
    t = _Tally()
    if type(model).__name__ == "RankingTask":  # model + loss: the loss's own tensors are counted with the heads
        model = model.model
    name = type(model).__name__
    if name == "SequentialRetrieval":
        _retrieval(t, model, work)
    elif name == "HSTURanking":
        _hstu_ranking(t, model, work)
    elif hasattr(model, "arch") and hasattr(model, "item_embeddings"):  # recsys.models.behavior_sequence
        _behavior_sequence(t, model, work)
    elif hasattr(model, "cross_net") and hasattr(model, "over_arch"):
        _ranking_arch(t, model, work.batch_size)
        _pinnability_sequence(t, model, work)
    else:
        raise ConfigError(f"no dense estimate for model class {name}; add one to recsys/distributed/dense_estimate.py")
    params = F32 * dense_parameters(model)
    return DenseEstimate(
        parameter_bytes=params,
        optimizer_bytes=params * OPTIMIZER_STATES[optimizer],
        activation_parts=t.bytes,
        flop_parts=t.flops,
        forward_transient_bytes=t.transient["forward"],
        backward_transient_bytes=t.transient["backward"],
        scatter_adds=t.scatter_adds,
        launches=3 * sum(1 for m in model.modules() if not list(m.children())),  # fwd, bwd, optimizer per leaf
    )

