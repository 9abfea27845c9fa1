"""``rank_requests``: TransAct V2 scoring of request batches, each user's sequence read once.

The request path of the ``transact_v2`` ranker, as a library call::

    host    RankRequest x R --RankRequestBatch.build--> one sequence per request, candidate_offsets
            --HostArena.pack--> bucketed pinned buffer --one H2D copy--> device views
    device  NN selection per candidate against its request's tokens (nn_select, candidates
              grouped by request: candidate_seq = the request)          -> S_all rows [N, L]
            pooled embeddings: request features (user, surface, history bags) looked up once per
              request, item features once per candidate, then gathered per candidate
            dense stage: TransActV2.encode_padded over S_all + DLRM.interact   -> logits [N, H]
              (the encoder in one Triton kernel on CUDA, :mod:`recsys.ops.skut`; config
              ``inference_kernel``)
              (static bucket shapes: on CUDA a captured graph per bucket, :mod:`recsys.ranking.graphs`)

It computes what the model's offline forward computes on the replicated batch (one RankingBatch
row per (request, candidate) with its stored S_all, as training and evaluation build it), up to float
rounding: the same windows (:func:`recsys.data.lifelong.sequence_windows`), the same selection op
and rule, the same int8 dequantisation, the same modules.

Shape letters as :mod:`recsys.ranking.request`; L = S_all width (``LifelongConfig.sequence_length``),
H heads, N_b / R_b / T_b the bucket's capacities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.lifelong import LifelongConfig
from recsys.data.schema import ItemTable
from recsys.errors import ConfigError
from recsys.ops.int8_quantization import dequantize_int8
from recsys.ops.nn_select import nn_select
from recsys.ops.nn_select_reference import token_inverse_norms
from recsys.ranking.arena import Bucket, HostArena
from recsys.ranking.request import RankRequest, RankRequestBatch

REQUEST_FEATURES = ("user_id", "surface")  # besides the history bags: one value per request


@dataclass
class RequestDenseInputs:
    """What the dense stage reads, padded to the bucket's N_b rows (padded rows: no token, zeros).

    Args:
        dense_features: ``[N_b, C + T]`` float32 candidate content, then the request's context.
        pooled: ``[N_b, F * D]`` float32 pooled embeddings in ``spec.sparse_features`` order.
        actions / surface: ``[N_b, L]`` int32 S_all tokens' action bits and surfaces (0 at padding).
        content: ``[N_b, L, C]`` float32 dequantised S_all content (0 at padding).
        real: ``[N_b, L]`` bool, True at S_all tokens (a prefix of each row).
    """

    dense_features: torch.Tensor
    pooled: torch.Tensor
    actions: torch.Tensor
    surface: torch.Tensor
    content: torch.Tensor
    real: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(vars(self))


@torch.no_grad()
def rank_requests(
    model: nn.Module,
    requests: list[RankRequest],
    items: ItemTable,
    *,
    lifelong: LifelongConfig = LifelongConfig(),
    arena: HostArena | None = None,
    kernel: str = "auto",
    graphs=None,
) -> list[torch.Tensor]:
    """Scores every request's candidates: ``[N_r, H]`` logits per request, in order.

    Args:
        model: a ``transact_v2`` ranker (:class:`~recsys.models.pinnability.Pinnability`) in eval
            mode (``recsys.load`` returns one), on the device the scores are computed on.
        requests: one :class:`RankRequest` per user request.
        items: the item table (candidate content embeddings and attributes).
        lifelong: the sequence windows and S_all split the model was trained with (``data.lifelong``).
        arena: a reusable :class:`HostArena` on the model's device; None = one for this call, sized
            to the batch's bucket.
        kernel: the NN-selection backend (:func:`recsys.ops.nn_select.nn_select_kernels`).
        graphs: a :class:`~recsys.ranking.graphs.DenseStageGraphs` (CUDA only) to replay the
            dense stage per bucket; None runs it eagerly.

    Example::

        model = recsys.load("runs/transact-v2-lifelong-synthetic")
        sequence = UserSequence.from_store(store, user=3, request_time=t)
        request = RankRequest(3, t, sequence, candidates=np.array([17, 4, 256]))
        logits, = rank_requests(model, [request], items)   # [3, H]
    """
    encoder = _transact_v2_encoder(model, lifelong)
    device = encoder.input_projection.weight.device
    batch = RankRequestBatch.build(requests, model.spec, items)
    if arena is None:
        arena = HostArena.for_batch(model.spec, batch, device)
    elif arena.device != device:
        raise ConfigError(f"the arena moves batches to {arena.device} but the model is on {device}; "
                          "build the HostArena with the model's device")
    bucket, views = arena.load(batch, items, lifelong)
    inputs = request_dense_inputs(model, views, batch, bucket, lifelong, kernel)
    logits = graphs.run(inputs) if graphs is not None else dense_stage(model, inputs)  # [N_b, H]
    counts = (batch.candidate_offsets[1:] - batch.candidate_offsets[:-1]).tolist()
    return list(torch.split(logits[: batch.num_candidates], counts))


def dense_stage(model: nn.Module, inputs: RequestDenseInputs) -> torch.Tensor:
    """``[N_b, H]`` logits from the padded inputs: static shapes, no host read (graph-capturable)."""
    content_dim = model.spec.content_dim
    sequence = model.sequence_arch.encoder.encode_padded(
        inputs.actions, inputs.surface, inputs.content, inputs.real, inputs.dense_features[:, :content_dim]
    )  # [N_b, F]
    return model.interact(inputs.dense_features, inputs.pooled, sequence)  # [N_b, H]


def request_dense_inputs(model, views: dict, batch: RankRequestBatch, bucket: Bucket, config: LifelongConfig,
                         kernel: str) -> RequestDenseInputs:
    """The dense stage's inputs from the device views of one batch (selection and lookups)."""
    r, n = batch.num_requests, batch.num_candidates
    candidate_request = torch.searchsorted(views["candidate_offsets"][1 : r + 1],
                                           torch.arange(n, device=views["item_id"].device), right=True)  # [N]
    rows, real = select_s_all(views, batch, candidate_request, config, kernel)  # [N, L] each
    safe = rows.clamp(min=0)  # token row 0 exists in every bucket (T_b >= 1)
    content = dequantize_int8(views["token_content"][safe], batch.scale)  # [N, L, C]
    dense = torch.cat([views["candidate_content"][:n], views["context"][:r][candidate_request]], dim=1)  # [N, C + T]
    return RequestDenseInputs(
        dense_features=_pad_rows(dense, bucket.candidates),
        pooled=_pad_rows(pooled_embeddings(model, views, r, n, candidate_request), bucket.candidates),
        actions=_pad_rows(torch.where(real, views["token_actions"][safe], 0), bucket.candidates),
        surface=_pad_rows(torch.where(real, views["token_surface"][safe], 0), bucket.candidates),
        content=_pad_rows(torch.where(real.unsqueeze(-1), content, 0.0), bucket.candidates),
        real=_pad_rows(real, bucket.candidates),
    )


def select_s_all(views: dict, batch: RankRequestBatch, candidate_request: torch.Tensor, config: LifelongConfig,
                 kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """S_all of every candidate as batch token rows: ``rows [N, L]`` (real tokens first, -1 after)
    and ``real [N, L]``.

    ``S_all = NN(S_LL, c) ++ S_RT[:r] ++ NN(S_RT[r:], c) ++ NN(S_imp, c)``, each part in time order
    (:mod:`recsys.data.lifelong`); the NN parts select among the candidate's request's tokens only
    (``nn_select`` with ``candidate_seq`` = the request: each sequence read once for its candidates).
    """
    r, n, t = batch.num_requests, batch.num_candidates, batch.num_tokens
    windows = views["windows"][:r]  # [R, 6]
    ll_start, ll_len, rt_start, rt_len, imp_start, imp_len = (windows[:, i].contiguous() for i in range(6))
    values = views["token_content"][:t]  # [T, C] int8
    inverse_norms = token_inverse_norms(values)  # [T] once per batch
    candidates = views["candidate_content"][:n]  # [N, C]

    def latest(start, length, width):  # [N, width] the last min(width, length) rows of each window
        count = torch.clamp(length, max=width)
        slots = torch.arange(width, device=start.device)
        rows = (start + length - count)[candidate_request].unsqueeze(1) + slots
        return torch.where(slots < count[candidate_request].unsqueeze(1), rows, -1)

    def nearest(start, length, k):  # [N, k] the k rows nearest to each candidate, time order, -1 padded
        if config.selection == "recent":
            return latest(start, length, k)
        picked = nn_select(values, start, length, candidates, candidate_request, k, scale=batch.scale, kernel=kernel,
                           inverse_norms=inverse_norms)
        return torch.where(picked >= 0, start[candidate_request].unsqueeze(1) + picked, -1)

    recent_len = torch.clamp(rt_len, max=config.realtime_recent)
    rows = torch.cat([
        nearest(ll_start, ll_len, config.lifelong_k),
        latest(rt_start, rt_len, config.realtime_recent),  # S_RT[:r]
        nearest(rt_start, rt_len - recent_len, config.realtime_k),  # S_RT[r:], the older rest
        nearest(imp_start, imp_len, config.impression_k),
    ], dim=1)  # [N, L]
    valid = rows >= 0
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # real tokens first, in S_all order
    return torch.gather(rows, 1, order), torch.gather(valid, 1, order)


def pooled_embeddings(model, views: dict, r: int, n: int, candidate_request: torch.Tensor) -> torch.Tensor:
    """``[N, F * D]`` pooled embeddings in ``spec.sparse_features`` order, request features looked
    up once per request.

    One KJT of R + N rows: rows 0..R-1 hold the request features (user, surface, history bags),
    rows R.. the candidate features (item id, attributes); the other keys' bags are empty there.
    """
    spec = model.spec
    device = views["item_id"].device
    per_request = torch.cat([torch.ones(r, dtype=torch.int64, device=device),
                             torch.zeros(n, dtype=torch.int64, device=device)])
    per_candidate = 1 - per_request
    history_slots = torch.arange(spec.max_history, device=device)
    values, lengths = [], []
    for key in spec.sparse_features:
        if key in REQUEST_FEATURES:
            values.append(views[key][:r])
            lengths.append(per_request)
        elif key == "item_id":
            values.append(views["item_id"][:n])
            lengths.append(per_candidate)
        elif key in spec.attribute_features:
            values.append(views["attributes"][:n, spec.attribute_features.index(key)])
            lengths.append(per_candidate)
        else:  # history_<action>
            a = spec.history_features.index(key)
            counts = views["history_lengths"][:r, a]  # [R]
            values.append(views["history"][:r, a][history_slots < counts.unsqueeze(1)])  # most recent last
            lengths.append(torch.cat([counts, per_request.new_zeros(n)]))
    kjt = KeyedJaggedTensor(keys=list(spec.sparse_features), values=torch.cat(values),
                            lengths=torch.cat(lengths).to(torch.int32))
    by_name = model.sparse_arch(kjt).to_dict()
    parts = [by_name[key][:r][candidate_request] if _request_level(key, spec) else by_name[key][r:]
             for key in spec.sparse_features]
    return torch.cat(parts, dim=1)  # [N, F * D]


def _request_level(key: str, spec) -> bool:
    return key in REQUEST_FEATURES or key in spec.history_features


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``rows`` (the bucket's capacity)."""
    out = x.new_zeros((rows, *x.shape[1:]))
    out[: x.shape[0]] = x
    return out


def _transact_v2_encoder(model: nn.Module, config: LifelongConfig):
    from recsys.models.pinnability import TransActV2Arch

    arch = getattr(model, "sequence_arch", None)
    if not isinstance(arch, TransActV2Arch):
        raise ConfigError(f"rank_requests scores transact_v2 rankers; got {type(model).__name__} with sequence arch "
                          f"{type(arch).__name__}")
    if model.training:
        raise ConfigError("rank_requests needs the model in eval mode (dropout off); call model.eval() first")
    if config.sequence_length > arch.encoder.max_sequence:
        raise ConfigError(f"the lifelong config selects {config.sequence_length} S_all tokens but the encoder's "
                          f"position table holds {arch.encoder.max_sequence}; pass the data.lifelong config the "
                          "model was trained with")
    return arch.encoder
