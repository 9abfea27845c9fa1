"""DLRM with DCNv2 crossing and one logit per action head (the Pinnability-style ranker).

The model reads a :class:`~recsys.data.batch.RankingBatch` and scores every candidate for every
head (one head per action: click, save, hide, ...)::

    sparse_features (KJT) --EmbeddingBagCollection (MEAN pooling)--> e_f  [B, D] per feature f
    dense_features [B, C+T] --dense arch MLP--------------------------> d    [B, D']

    s       = sequence arch(batch), when the model has one (Pinnability)  [B, F_seq]
    x_0     = concat(d, e_user_id, e_item_id, e_surface, e_item_<attr>..., e_history_<action>..., s)
                                                                   [B, N], N = D' + F * D + F_seq
    x_{l+1} = x_0 * (W_l x_l + b_l) + x_l,  l = 0 .. L-1    (DCNv2 full-rank cross, W_l [N, N])
    h       = over arch MLP(x_L)                                             [B, O]
    logits  = h V^T + c                                                      [B, H]

The item table is shared by ``item_id`` and every ``history_<action>`` key, so a history bag
(MEAN of the embeddings of the items the user clicked, saved, hid, ...) lives in the same space
as the candidate. An empty history pools to zeros.

Shape letters: B rows, F sparse features, D embedding dimension, H heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.modules.crossnet import CrossNet
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedTensor

from recsys.data.batch import RankingBatch
from recsys.data.features import FeatureSpec
from recsys.errors import ConfigError, DataError


@dataclass
class DLRMConfig:
    """Sizes of the DLRM-DCNv2 ranker.

    Args:
        embedding_dim: D, width of every embedding table.
        dense_arch_layers: widths of the MLP over the dense features (the last one is the dense
            vector's width in the interaction; by default D, like one more pooled feature).
        cross_layers: L, number of full-rank DCNv2 cross layers.
        over_arch_layers: widths of the MLP between the cross net and the heads.
        heads: action names to predict, one logit each; None = every action of the FeatureSpec.
    """

    embedding_dim: int = 32
    dense_arch_layers: list[int] = field(default_factory=lambda: [128, 32])
    cross_layers: int = 3
    over_arch_layers: list[int] = field(default_factory=lambda: [256, 128])
    heads: list[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.embedding_dim, int) or self.embedding_dim <= 0:
            raise ConfigError(f"DLRMConfig.embedding_dim must be a positive int, got {self.embedding_dim!r}")
        if not isinstance(self.cross_layers, int) or self.cross_layers < 0:
            raise ConfigError(f"DLRMConfig.cross_layers must be an int >= 0, got {self.cross_layers!r}")
        for name in ("dense_arch_layers", "over_arch_layers"):
            layers = getattr(self, name)
            if not layers or not all(isinstance(w, int) and w > 0 for w in layers):
                raise ConfigError(f"DLRMConfig.{name} must be a non-empty list of positive ints, got {layers!r}")
        if self.heads is not None and len(self.heads) == 0:
            raise ConfigError("DLRMConfig.heads must name at least one action, or be None for all actions")


def resolve_heads(spec: FeatureSpec, heads: list[str] | None) -> list[str]:
    """The head names: ``heads`` checked against the spec's actions, or all actions when None."""
    if heads is None:
        return list(spec.action_vocab)
    unknown = [h for h in heads if h not in spec.action_vocab]
    if unknown:
        raise ConfigError(
            f"heads {unknown} are not actions of the data; pick heads from {list(spec.action_vocab)}"
        )
    if len(set(heads)) != len(heads):
        raise ConfigError(f"heads {list(heads)} repeat a name; list each action once")
    return list(heads)


def embedding_bag_configs(spec: FeatureSpec, embedding_dim: int) -> list[EmbeddingBagConfig]:
    """One table per id space, named ``t_<feature>``; the item table also serves the histories."""
    item_features = ["item_id", *spec.history_features]
    own_table_features = ["user_id", "surface", *spec.attribute_features]
    configs = [_table("item_id", item_features, spec, embedding_dim)]
    configs += [_table(name, [name], spec, embedding_dim) for name in own_table_features]
    return configs


def _table(name: str, features: list[str], spec: FeatureSpec, dim: int) -> EmbeddingBagConfig:
    rows = spec.cardinality(name)
    if rows <= 0:
        raise ConfigError(f"feature {name!r} has {rows} ids; the FeatureSpec must give it at least one row")
    return EmbeddingBagConfig(
        num_embeddings=rows,
        embedding_dim=dim,
        name=f"t_{name}",
        feature_names=features,
        pooling=PoolingType.MEAN,
    )


class DLRM(nn.Module):
    """DLRM ranker with a DCNv2 interaction and one logit per head.

    Args:
        spec: feature names and id-space sizes (the KJT keys the batches carry).
        config: layer sizes and heads.
        device: where the embedding tables live; ``"meta"`` allocates nothing, so a 10^9-row table
            costs no memory until DistributedModelParallel shards and materialises it. The dense
            layers are small and are built on ``device``, or on the CPU when ``device`` is meta
            (DistributedModelParallel moves them to its device).
        sequence_arch: optional module mapping the batch to ``[B, F_seq]`` extra crossing inputs
            (its ``output_dim`` is F_seq), e.g. a user-sequence encoder; None = plain DLRM.

    Example::

        model = DLRM(FeatureSpec(num_users=10, num_items=100), DLRMConfig())
        logits = model(batch)  # [B, H]
    """

    def __init__(
        self,
        spec: FeatureSpec,
        config: DLRMConfig | None = None,
        device: torch.device | str | None = None,
        sequence_arch: nn.Module | None = None,
    ):
        super().__init__()
        config = config or DLRMConfig()
        device = torch.device(device) if device is not None else torch.device("cpu")
        dense_device = torch.device("cpu") if device.type == "meta" else device
        self.spec = spec
        self.config = config
        self.heads = resolve_heads(spec, config.heads)
        self.sparse_feature_names = spec.sparse_features
        self._table_configs = embedding_bag_configs(spec, config.embedding_dim)
        self.sparse_arch = EmbeddingBagCollection(tables=self._table_configs, device=device)
        self.dense_arch = MLP(spec.dense_dim, config.dense_arch_layers, device=dense_device)
        self.sequence_arch = sequence_arch
        interaction_dim = config.dense_arch_layers[-1] + len(self.sparse_feature_names) * config.embedding_dim
        interaction_dim += sequence_arch.output_dim if sequence_arch is not None else 0
        self.cross_net = CrossNet(interaction_dim, config.cross_layers).to(dense_device)
        self.over_arch = MLP(interaction_dim, config.over_arch_layers, device=dense_device)
        self.head_layer = nn.Linear(config.over_arch_layers[-1], len(self.heads), device=dense_device)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The tables of the sparse arch (what the sharding planner places)."""
        return list(self._table_configs)

    def forward(self, batch: RankingBatch) -> torch.Tensor:
        """Scores a batch.

        Args:
            batch: RankingBatch whose ``sparse_features`` holds every key of ``spec.sparse_features``
                and whose ``dense_features`` is ``[B, spec.dense_dim]``.

        Returns:
            ``[B, H]`` logits, column h for ``self.heads[h]``.
        """
        if not isinstance(batch, torch.fx.Proxy):  # TorchRec's train pipeline traces this forward
            self._check_batch(batch)
        pooled = self.pooled_embeddings(self.sparse_arch(batch.sparse_features))  # [B, F * D]
        sequence = self.sequence_arch(batch) if self.sequence_arch is not None else None  # [B, F_seq]
        return self.interact(batch.dense_features, pooled, sequence)  # [B, H]

    def interact(self, dense_features: torch.Tensor, pooled: torch.Tensor, sequence: torch.Tensor | None = None) -> torch.Tensor:
        """Everything after the lookups and the sequence encoder (the dense part ``recsys.inference`` exports).

        Args:
            dense_features: ``[B, C + T]``.
            pooled: ``[B, F * D]`` from :meth:`pooled_embeddings`.
            sequence: ``[B, F_seq]`` sequence-arch features, or None for plain DLRM.

        Returns:
            ``[B, H]`` logits.
        """
        parts = [self.dense_arch(dense_features), pooled]  # [B, D'], [B, F * D]
        if sequence is not None:
            parts.append(sequence)  # [B, F_seq]
        x_0 = torch.cat(parts, dim=1)  # [B, N]
        crossed = self.cross_net(x_0)  # [B, N]: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l
        return self.head_layer(self.over_arch(crossed))  # [B, H]

    def forward_requests(self, batch: RankingBatch, request_offsets: torch.Tensor) -> torch.Tensor:
        """Scores a batch of served requests, the request side of the first cross layer once per request.

        Equal to :meth:`forward` (up to float rounding) when the rows of each request share their
        request-side features (:meth:`request_side_features`: the user, the surface, the history bags),
        as the rows of one served request do (every candidate of a user at one time)::

            rows   r0 r1 r2 | r3 r4      request_offsets = [0, 3, 5]
            user   u7 u7 u7 | u2 u2      W_0[:, U] x_U computed for r0 and r3 only

        Args:
            batch: RankingBatch of R rows, request after request.
            request_offsets: ``[B + 1]`` int64, request b's rows are ``request_offsets[b]:request_offsets[b + 1]``.

        Returns:
            ``[R, H]`` logits.
        """
        self._check_batch(batch)
        pooled = self.pooled_embeddings(self.sparse_arch(batch.sparse_features))  # [R, F * D]
        sequence = self.sequence_arch(batch) if self.sequence_arch is not None else None  # [R, F_seq]
        parts = [self.dense_arch(batch.dense_features), pooled] + ([sequence] if sequence is not None else [])
        x_0 = torch.cat(parts, dim=1)  # [R, N]
        if self.config.cross_layers == 0:
            return self.head_layer(self.over_arch(x_0))  # [R, H]
        kernels, biases = self.cross_net.kernels, self.cross_net.bias  # W_l [N, N], b_l [N, 1]
        shared = self._request_side_columns(x_0.shape[1], x_0.device)  # [N] bool
        counts = request_offsets[1:] - request_offsets[:-1]  # [B]
        # DCNv2 eq. (1) at l = 0 with W_0 x_0 = W_0[:, U] x_U + W_0[:, C] x_C (U request side, C the rest).
        request_part = x_0[request_offsets[:-1]][:, shared] @ kernels[0][:, shared].T  # [B, N]
        if len(counts) > 1:
            request_part = request_part.repeat_interleave(counts, dim=0)  # [R, N]; one request broadcasts [1, N]
        xw = torch.addmm(request_part, x_0[:, ~shared], kernels[0][:, ~shared].T)  # [R, N]
        x_l = x_0 * (xw + biases[0].T) + x_0  # [R, N]
        for layer in range(1, self.config.cross_layers):
            x_l = x_0 * (x_l @ kernels[layer].T + biases[layer].T) + x_l  # x_{l+1} = x_0 * (W_l x_l + b_l) + x_l
        return self.head_layer(self.over_arch(x_l))  # [R, H]

    def request_side_features(self) -> list[str]:
        """The sparse features every candidate of one request shares: the user, the surface, the histories."""
        return [name for name in self.sparse_feature_names
                if name in ("user_id", "surface") or name in self.spec.history_features]

    def _request_side_columns(self, width: int, device: torch.device) -> torch.Tensor:
        """``[N]`` bool: the columns of ``x_0`` holding request-side pooled embeddings."""
        shared = torch.zeros(width, dtype=torch.bool, device=device)
        start, dim, names = self.config.dense_arch_layers[-1], self.config.embedding_dim, self.sparse_feature_names
        for name in self.request_side_features():
            f = names.index(name)
            shared[start + f * dim: start + (f + 1) * dim] = True
        return shared

    def _check_batch(self, batch: RankingBatch) -> None:
        missing = [k for k in self.sparse_feature_names if k not in batch.sparse_features.keys()]
        if missing:
            raise DataError(
                f"the batch lacks sparse features {missing}; build batches and the model from one FeatureSpec "
                f"(the model expects {self.sparse_feature_names})"
            )
        if batch.dense_features.dim() != 2 or batch.dense_features.shape[1] != self.spec.dense_dim:
            raise DataError(
                f"dense_features must be [B, {self.spec.dense_dim}] (content_dim {self.spec.content_dim} + context), "
                f"got {tuple(batch.dense_features.shape)}; build batches and the model from one FeatureSpec"
            )

    def pooled_embeddings(self, pooled: KeyedTensor) -> torch.Tensor:
        """``[B, F * D]``: pooled embeddings in ``spec.sparse_features`` order.

        Looked up by feature name because a sharded collection may return its features in
        another order.
        """
        by_name = pooled.to_dict()
        return torch.cat([by_name[name] for name in self.sparse_feature_names], dim=1)  # [B, F * D]
