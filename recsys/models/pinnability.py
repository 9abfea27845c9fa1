"""Pinnability: the DLRM-DCNv2 ranker with a pluggable user-sequence encoder.

Pinterest's Homefeed ranker (Xia et al., KDD 2023) is :class:`~recsys.models.dlrm.DLRM`
(pooled id embeddings, dense arch, full-rank DCNv2 crossing, one head per action, trained with
the weighted cross-entropy) whose crossing input also holds the output of a sequence encoder::

    x_0 = concat(dense arch, pooled embeddings, sequence_arch(batch))       [B, N]

``sequence_encoder`` picks the encoder:

- ``"none"``: plain DLRM (the zoo's ``pinnability``);
- ``"transact_v1"``: :class:`~recsys.modules.transact_v1.TransActV1` over the latest realtime
  actions (action bit mask + content embedding of each, candidate content fused early), output
  ``[B, (K + 1) * D]`` (the zoo's ``transact_v1``);
- ``"bst"``: :class:`~recsys.modules.bst.BSTEncoder` over the history's item ids with the
  candidate as last token, output ``[B, 2 D_bst]`` (the zoo's ``bst``). Its item table
  ``t_sequence_item_id`` is a TorchRec EmbeddingCollection (features ``seq_item_id`` and
  ``candidate_item_id``) that DistributedModelParallel shards like the others.

The encoders read ``RankingBatch.sequence_features`` (``seq_item_id``, ``seq_actions``,
``seq_timestamp``; each row oldest first, at most ``data.max_sequence`` events),
``sequence_content`` (TransAct), the candidate's content embedding (the first C columns of
``dense_features``) and ``timestamp`` (the request time). The random time-window mask of
TransAct is active in training mode only (``model.train()``), as the ranking recipe sets it.

Shape letters: B rows, N crossing width, H heads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import RankingBatch
from recsys.data.collate import kjt_from_jagged
from recsys.data.features import FeatureSpec
from recsys.errors import ConfigError, DataError
from recsys.models.dlrm import DLRM, DLRMConfig
from recsys.modules.bst import DEFAULT_MAX_SEQUENCE as BST_DEFAULT_MAX_SEQUENCE
from recsys.modules.bst import BSTConfig, BSTEncoder
from recsys.modules.transact_v1 import PAPER_MAX_SEQUENCE, TransActV1, TransActV1Config

SEQUENCE_ENCODERS = ("none", "bst", "transact_v1")
SEQUENCE_KEYS = ("seq_item_id", "seq_actions", "seq_surface", "seq_timestamp")
HISTORY_ITEM_FEATURE = "seq_item_id"
CANDIDATE_ITEM_FEATURE = "candidate_item_id"
BST_ITEM_TABLE = "t_sequence_item_id"


@dataclass
class PinnabilityConfig(DLRMConfig):
    """DLRM's sizes plus the sequence encoder.

    Args:
        sequence_encoder: "none", "bst" or "transact_v1".
        transact_v1: the TransAct V1 encoder's config (used when sequence_encoder is "transact_v1";
            a mapping is read as its fields, e.g. from YAML).
        bst: the BST encoder's config (used when sequence_encoder is "bst").
        (the other fields are :class:`~recsys.models.dlrm.DLRMConfig`'s)
    """

    sequence_encoder: str = "none"
    transact_v1: TransActV1Config = field(default_factory=TransActV1Config)
    bst: BSTConfig = field(default_factory=BSTConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sequence_encoder not in SEQUENCE_ENCODERS:
            raise ConfigError(
                f"PinnabilityConfig.sequence_encoder must be one of {list(SEQUENCE_ENCODERS)}, got {self.sequence_encoder!r}"
            )
        self.transact_v1 = _sub_config(TransActV1Config, self.transact_v1, "transact_v1")
        self.bst = _sub_config(BSTConfig, self.bst, "bst")


@dataclass
class TransActV1RankerConfig(PinnabilityConfig):
    """PinnabilityConfig with the TransAct V1 encoder on (the zoo's ``transact_v1``)."""

    sequence_encoder: str = "transact_v1"


@dataclass
class BSTRankerConfig(PinnabilityConfig):
    """PinnabilityConfig with the BST encoder on (the zoo's ``bst``)."""

    sequence_encoder: str = "bst"


def _sub_config(cls: type, value, name: str):
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        from recsys.config import from_dict

        return from_dict(cls, value, where="model config", prefix=f"{name}.")
    raise ConfigError(f"PinnabilityConfig.{name} must be a {cls.__name__} or a mapping of its fields, got {value!r}")


class Pinnability(DLRM):
    """DLRM-DCNv2 ranker whose crossing input also holds a user-sequence encoding.

    Args:
        spec: the data's features (``max_sequence > 0`` for the sequence encoders).
        config: DLRM sizes, heads and the sequence encoder.
        device: where the embedding tables live (``"meta"`` allocates nothing); dense layers and
            the TransAct / BST transformers are built on ``device``, or on the CPU when it is meta.

    Example::

        spec = FeatureSpec(num_users=10, num_items=100, content_dim=32, max_sequence=100)
        model = Pinnability(spec, PinnabilityConfig(sequence_encoder="transact_v1"))
        logits = model(batch)  # [B, H]
    """

    def __init__(self, spec: FeatureSpec, config: PinnabilityConfig | None = None, device: torch.device | str | None = None):
        config = config or PinnabilityConfig()
        device = torch.device(device) if device is not None else torch.device("cpu")
        super().__init__(spec, config, device, sequence_arch=build_sequence_arch(spec, config, device))


def build_sequence_arch(spec: FeatureSpec, config: PinnabilityConfig, device: torch.device | str | None) -> nn.Module | None:
    """The sequence arch named by ``config.sequence_encoder`` (None for "none")."""
    if config.sequence_encoder == "transact_v1":
        return TransActV1Arch(spec, config.transact_v1, device)
    if config.sequence_encoder == "bst":
        return BSTArch(spec, config.bst, device)
    return None


def resolve_max_sequence(spec: FeatureSpec, configured: int | None, default: int) -> int:
    """Events an encoder reads: the config's, else the data's, else ``default``."""
    if configured is not None:
        return configured
    return spec.max_sequence if spec.max_sequence > 0 else default


class TransActV1Arch(nn.Module):
    """RankingBatch -> TransAct V1 features ``[B, (K + 1) * D]``.

    Args:
        spec: the data's features (content_dim > 0).
        config: the encoder's config (``max_sequence`` None = the data's).
        device: parameters go here, or on the CPU when it is meta.
    """

    def __init__(self, spec: FeatureSpec, config: TransActV1Config, device: torch.device | str | None):
        super().__init__()
        max_sequence = resolve_max_sequence(spec, config.max_sequence, PAPER_MAX_SEQUENCE)
        config = dataclasses.replace(config, max_sequence=max_sequence)
        self.content_dim = spec.content_dim
        self.encoder = TransActV1(spec.num_actions, spec.content_dim, config, device=_dense_device(device))
        self.output_dim = self.encoder.output_dim

    def forward(self, batch: RankingBatch) -> torch.Tensor:
        history = sequence_features(batch, "transact_v1")
        if batch.sequence_content is None:
            raise DataError(
                "transact_v1 reads the content embedding of every history event, but the batch has no "
                "sequence_content; use data whose items carry content embeddings"
            )
        features = history.to_dict()
        return self.encoder(
            lengths=features["seq_actions"].lengths(),
            action_bits=features["seq_actions"].values(),
            action_content=batch.sequence_content,
            action_time=features["seq_timestamp"].values(),
            request_time=batch.timestamp,
            candidate_content=batch.dense_features[:, : self.content_dim],
        )  # [B, (K + 1) * D]


class BSTArch(nn.Module):
    """RankingBatch -> BST features ``[B, 2 D]``, item embeddings from a TorchRec table.

    Args:
        spec: the data's features.
        config: the encoder's config (``max_sequence`` None = the data's).
        device: where the item table lives (``"meta"`` allocates nothing); the transformer is
            built on ``device``, or on the CPU when it is meta.
    """

    def __init__(self, spec: FeatureSpec, config: BSTConfig, device: torch.device | str | None):
        super().__init__()
        if spec.num_items <= 0:
            raise ConfigError("the FeatureSpec has no items (num_items=0); the BST item table needs at least one row")
        max_sequence = resolve_max_sequence(spec, config.max_sequence, BST_DEFAULT_MAX_SEQUENCE)
        config = dataclasses.replace(config, max_sequence=max_sequence)
        self._table_configs = [
            EmbeddingConfig(
                num_embeddings=spec.num_items, embedding_dim=config.embedding_dim, name=BST_ITEM_TABLE,
                feature_names=[HISTORY_ITEM_FEATURE, CANDIDATE_ITEM_FEATURE],
            )
        ]
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.item_embeddings = EmbeddingCollection(tables=self._table_configs, device=device)
        self.encoder = BSTEncoder(config, device=_dense_device(device))
        self.output_dim = self.encoder.output_dim

    def embedding_configs(self) -> list[EmbeddingConfig]:
        """The item table (what the sharding planner places)."""
        return list(self._table_configs)

    def forward(self, batch: RankingBatch) -> torch.Tensor:
        history = sequence_features(batch, "bst")[HISTORY_ITEM_FEATURE]
        lengths = history.lengths()
        one_each = torch.ones_like(batch.item_id, dtype=torch.int32)  # [B]
        lookup = kjt_from_jagged({
            HISTORY_ITEM_FEATURE: (history.values(), lengths.to(torch.int32)),
            CANDIDATE_ITEM_FEATURE: (batch.item_id, one_each),
        })
        embedded = self.item_embeddings(lookup)  # by feature name: a sharded collection may reorder them
        return self.encoder(
            embedded[HISTORY_ITEM_FEATURE].values(), lengths, embedded[CANDIDATE_ITEM_FEATURE].values()
        )  # [B, 2 D]


def sequence_features(batch: RankingBatch, model: str) -> KeyedJaggedTensor:
    """The batch's ``sequence_features``, checked: every ``seq_*`` key, one history per row."""
    history = batch.sequence_features
    if history is None:
        raise DataError(
            f"{model} reads the batch's sequence_features, but the batch has none; "
            "set data.max_sequence > 0 (e.g. data.max_sequence=100)"
        )
    missing = [k for k in SEQUENCE_KEYS if k not in history.keys()]
    if missing:
        raise DataError(f"sequence_features lacks keys {missing}; build batches from a FeatureSpec with max_sequence > 0")
    rows = history[HISTORY_ITEM_FEATURE].lengths().numel()
    if rows != batch.batch_size:
        raise DataError(f"sequence_features has {rows} rows, the batch {batch.batch_size}; give one history per row")
    return history


def _dense_device(device: torch.device | str | None) -> torch.device:
    device = torch.device(device) if device is not None else torch.device("cpu")
    return torch.device("cpu") if device.type == "meta" else device
