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
  ``candidate_item_id``) that DistributedModelParallel shards like the others;
- ``"transact_v2"``: :class:`~recsys.modules.transact_v2.TransActV2`, a causal transformer over
  S_all, the lifelong selection of :mod:`recsys.data.lifelong` (lifelong batches only:
  ``data.lifelong.enabled``), output ``[B, F]`` (the zoo's ``transact_v2``, with the next-action
  loss on).

``next_action_loss`` (:mod:`recsys.modules.next_action_loss`) adds TransAct V2's auxiliary loss
to the TransAct encoders: the encoder output at each realtime action predicts the content of the
next one when that is a positive engagement (``next_action_loss.negative_actions``: not a hide);
impression negatives are the query's own user's S_imp tokens. The model then holds ``auxiliary_loss`` after every forward, and
:class:`~recsys.models.task.RankingTask` trains on ``L_CE + weight * auxiliary_loss``. With
TransAct V1 it needs ``transact_v1.causal`` (the output at an action must not have read the next
action). Negatives "in_batch" work on any batch; "impressions" read the impression tokens of
lifelong batches.

Lifelong batches carry S_all (``seq_source`` tells each token's part) and, after it, the stored
realtime history (``SOURCE_REALTIME_HISTORY``: S_RT's latest ``data.lifelong.realtime_history``
events, 100 by default) instead of the plain realtime history. BST and TransAct V1 read that
history (the latest ``max_sequence`` of it: V1 reads 100 actions by default, as the paper), or
S_RT[:r] when the batch stores none: the history they read from plain batches with the same
``data.max_sequence``. TransAct V2 reads S_all only. So every encoder can be compared on the same
lifelong batches.

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
from recsys.data.lifelong import SOURCE_IMPRESSION, SOURCE_REALTIME_HISTORY, SOURCE_REALTIME_RECENT
from recsys.errors import ConfigError, DataError
from recsys.models.dlrm import DLRM, DLRMConfig
from recsys.modules.bst import DEFAULT_MAX_SEQUENCE as BST_DEFAULT_MAX_SEQUENCE
from recsys.modules.bst import BSTConfig, BSTEncoder
from recsys.modules.next_action_loss import (
    NextActionLoss,
    NextActionLossConfig,
    jagged_next_pairs,
    next_token_pairs,
    positive_engagement,
)
from recsys.modules.transact_v1 import PAPER_MAX_SEQUENCE, TransActV1, TransActV1Config
from recsys.modules.transact_v2 import TransActV2, TransActV2Config

SEQUENCE_ENCODERS = ("none", "bst", "transact_v1", "transact_v2")
NAL_ENCODERS = ("transact_v1", "transact_v2")
SEQUENCE_KEYS = ("seq_item_id", "seq_actions", "seq_surface", "seq_timestamp")
SOURCE_KEY = "seq_source"  # lifelong batches only
HISTORY_ITEM_FEATURE = "seq_item_id"
CANDIDATE_ITEM_FEATURE = "candidate_item_id"
BST_ITEM_TABLE = "t_sequence_item_id"


@dataclass
class PinnabilityConfig(DLRMConfig):
    """DLRM's sizes plus the sequence encoder.

    Args:
        sequence_encoder: "none", "bst", "transact_v1" or "transact_v2".
        transact_v1: the TransAct V1 encoder's config (used when sequence_encoder is "transact_v1";
            a mapping is read as its fields over the defaults, e.g. from YAML).
        transact_v2: the TransAct V2 encoder's config (sequence_encoder "transact_v2").
        bst: the BST encoder's config (used when sequence_encoder is "bst").
        next_action_loss: the auxiliary next-action loss (TransAct encoders only).
        (the other fields are :class:`~recsys.models.dlrm.DLRMConfig`'s)
    """

    sequence_encoder: str = "none"
    transact_v1: TransActV1Config = field(default_factory=TransActV1Config)
    transact_v2: TransActV2Config = field(default_factory=TransActV2Config)
    bst: BSTConfig = field(default_factory=BSTConfig)
    next_action_loss: NextActionLossConfig = field(default_factory=NextActionLossConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sequence_encoder not in SEQUENCE_ENCODERS:
            raise ConfigError(
                f"PinnabilityConfig.sequence_encoder must be one of {list(SEQUENCE_ENCODERS)}, got {self.sequence_encoder!r}"
            )
        for name, cls in (("transact_v1", TransActV1Config), ("transact_v2", TransActV2Config), ("bst", BSTConfig),
                          ("next_action_loss", NextActionLossConfig)):
            setattr(self, name, _sub_config(cls, getattr(self, name), name, _field_default(self, name)))
        self._check_next_action_loss()

    def _check_next_action_loss(self) -> None:
        if not self.next_action_loss.enabled:
            return
        if self.sequence_encoder not in NAL_ENCODERS:
            raise ConfigError(
                f"next_action_loss needs a TransAct encoder (sequence_encoder one of {list(NAL_ENCODERS)}), "
                f"got {self.sequence_encoder!r}; set next_action_loss.enabled=false"
            )
        if self.sequence_encoder == "transact_v1" and not self.transact_v1.causal:
            raise ConfigError(
                "next_action_loss with transact_v1 needs transact_v1.causal=true: the output at an action must "
                "not have read the next action it predicts"
            )


@dataclass
class TransActV1RankerConfig(PinnabilityConfig):
    """PinnabilityConfig with the TransAct V1 encoder on (the zoo's ``transact_v1``)."""

    sequence_encoder: str = "transact_v1"


@dataclass
class BSTRankerConfig(PinnabilityConfig):
    """PinnabilityConfig with the BST encoder on (the zoo's ``bst``)."""

    sequence_encoder: str = "bst"


@dataclass
class TransActV2RankerConfig(PinnabilityConfig):
    """PinnabilityConfig with the TransAct V2 encoder and its next-action loss (impression
    negatives) on (the zoo's ``transact_v2``)."""

    sequence_encoder: str = "transact_v2"
    next_action_loss: NextActionLossConfig = field(default_factory=lambda: NextActionLossConfig(enabled=True))


def _field_default(config, name: str):
    """The default of field ``name`` of this config class (a subclass may change it)."""
    spec = next(f for f in dataclasses.fields(config) if f.name == name)
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default


def _sub_config(cls: type, value, name: str, default):
    """``value`` as a ``cls``: a mapping sets fields over ``default`` (the class's own default)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        from recsys.config import from_dict, to_dict

        return from_dict(cls, {**to_dict(default), **value}, where="model config", prefix=f"{name}.")
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

    @property
    def auxiliary_loss(self) -> torch.Tensor | None:
        """The next-action loss of the latest forward (a scalar), or None when it is off."""
        return getattr(self.sequence_arch, "auxiliary_loss", None)

    @property
    def auxiliary_loss_weight(self) -> float:
        """w in ``L_CE + w * auxiliary_loss``."""
        return float(self.config.next_action_loss.weight)


def build_sequence_arch(spec: FeatureSpec, config: PinnabilityConfig, device: torch.device | str | None) -> nn.Module | None:
    """The sequence arch named by ``config.sequence_encoder`` (None for "none")."""
    if config.sequence_encoder == "transact_v1":
        return TransActV1Arch(spec, config.transact_v1, device, config.next_action_loss)
    if config.sequence_encoder == "transact_v2":
        return TransActV2Arch(spec, config.transact_v2, device, config.next_action_loss)
    if config.sequence_encoder == "bst":
        return BSTArch(spec, config.bst, device)
    return None


def resolve_max_sequence(spec: FeatureSpec, configured: int | None, default: int) -> int:
    """Events an encoder reads: the config's, else the data's, else ``default``."""
    if configured is not None:
        return configured
    return spec.max_sequence if spec.max_sequence > 0 else default


class TransActV1Arch(nn.Module):
    """RankingBatch -> TransAct V1 features ``[B, (K + 1) * D]``, and the next-action loss.

    Reads the batch's realtime history (:func:`realtime_history`: the plain history, or S_RT[:r]
    of a lifelong batch).

    Args:
        spec: the data's features (content_dim > 0).
        config: the encoder's config (``max_sequence`` None = the data's).
        device: parameters go here, or on the CPU when it is meta.
        next_action_loss: the auxiliary loss (pairs of consecutive visible actions; needs
            ``config.causal``).
    """

    def __init__(self, spec: FeatureSpec, config: TransActV1Config, device: torch.device | str | None,
                 next_action_loss: NextActionLossConfig | None = None):
        super().__init__()
        max_sequence = resolve_max_sequence(spec, config.max_sequence, PAPER_MAX_SEQUENCE)
        config = dataclasses.replace(config, max_sequence=max_sequence)
        self.content_dim = spec.content_dim
        self.encoder = TransActV1(spec.num_actions, spec.content_dim, config, device=_dense_device(device))
        self.output_dim = self.encoder.output_dim
        self.next_action_loss = _next_action_loss(self.encoder.model_dim, spec, next_action_loss, device)
        self._positive = _positive_engagement(spec, next_action_loss)
        self.auxiliary_loss: torch.Tensor | None = None

    def forward(self, batch: RankingBatch) -> torch.Tensor:
        history = realtime_history(batch, "transact_v1")
        encoding = self.encoder.encode(
            lengths=history.lengths,
            action_bits=history.actions,
            action_content=history.content,
            action_time=history.timestamp,
            request_time=batch.timestamp,
            candidate_content=batch.dense_features[:, : self.content_dim],
        )
        if self.next_action_loss is not None:
            rows, query, following = next_token_pairs(~encoding.hidden, newest_first=True)
            target = encoding.index[rows, following]  # [N] the next action of each query, among the history's
            positive = self._positive(history.actions[target])  # [N] the next action is a positive engagement
            rows, query, target = rows[positive], query[positive], target[positive]
            negative_content, negative_ids, negative_users = impression_negatives(batch, self.next_action_loss.config.negatives)
            self.auxiliary_loss = self.next_action_loss(
                encoding.outputs[rows, query], history.content[target], history.item_id[target],
                negative_content, negative_ids, query_users=_users_if(negative_users, batch.user_id[rows]),
                negative_users=negative_users,
            )
        return encoding.features  # [B, (K + 1) * D]


class TransActV2Arch(nn.Module):
    """Lifelong RankingBatch -> TransAct V2 features ``[B, F]``, and the next-action loss.

    The next-action pairs are consecutive tokens of S_RT[:r] (``seq_source`` realtime-recent):
    engaged events in time order, so the token after t is the user's next engaged action.

    Args:
        spec: the data's features (content_dim > 0).
        config: the encoder's config.
        device: parameters go here, or on the CPU when it is meta.
        next_action_loss: the auxiliary loss config.
    """

    def __init__(self, spec: FeatureSpec, config: TransActV2Config, device: torch.device | str | None,
                 next_action_loss: NextActionLossConfig | None = None):
        super().__init__()
        self.content_dim = spec.content_dim
        self.encoder = TransActV2(spec.num_actions, len(spec.surface_vocab), spec.content_dim, config,
                                  device=_dense_device(device))
        self.output_dim = self.encoder.output_dim
        self.next_action_loss = _next_action_loss(config.model_dim, spec, next_action_loss, device)
        self._positive = _positive_engagement(spec, next_action_loss)
        self.auxiliary_loss: torch.Tensor | None = None

    def forward(self, batch: RankingBatch) -> torch.Tensor:
        lifelong_features(batch, "transact_v2")  # checked before the realtime history is dropped
        batch = s_all_batch(batch)
        features = lifelong_features(batch, "transact_v2")
        lengths = features["seq_actions"].lengths()
        encoding = self.encoder.encode(
            lengths, features["seq_actions"].values(), features["seq_surface"].values(), batch.sequence_content,
            batch.dense_features[:, : self.content_dim],
        )
        if self.next_action_loss is not None:
            recent = features[SOURCE_KEY].values() == SOURCE_REALTIME_RECENT  # [V]
            query, following = jagged_next_pairs(recent, lengths)  # [N], [N]
            positive = self._positive(features["seq_actions"].values()[following])  # [N]
            query, following = query[positive], following[positive]
            token_users = torch.repeat_interleave(batch.user_id, lengths.to(torch.int64))  # [V]
            negative_content, negative_ids, negative_users = impression_negatives(batch, self.next_action_loss.config.negatives)
            self.auxiliary_loss = self.next_action_loss(
                encoding.outputs[query], batch.sequence_content[following], features["seq_item_id"].values()[following],
                negative_content, negative_ids, query_users=_users_if(negative_users, token_users[query]),
                negative_users=negative_users,
            )
        return encoding.features  # [B, F]


def _positive_engagement(spec: FeatureSpec, config: NextActionLossConfig | None):
    """``actions [N] -> [N] bool``: a positive engagement (checked against the data's actions once, here)."""
    negative = config.negative_actions if config is not None and config.enabled else []
    positive_engagement(torch.zeros(0, dtype=torch.int64), spec.action_vocab, negative)  # names checked now
    return lambda actions: positive_engagement(actions, spec.action_vocab, negative)


def _users_if(negative_users: torch.Tensor | None, users: torch.Tensor) -> torch.Tensor | None:
    return users if negative_users is not None else None


def _next_action_loss(query_dim: int, spec: FeatureSpec, config: NextActionLossConfig | None, device) -> NextActionLoss | None:
    if config is None or not config.enabled:
        return None
    return NextActionLoss(query_dim, spec.content_dim, config, device=_dense_device(device))


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
        history = realtime_history(batch, "bst", needs_content=False)
        lengths = history.lengths
        one_each = torch.ones_like(batch.item_id, dtype=torch.int32)  # [B]
        lookup = kjt_from_jagged({
            HISTORY_ITEM_FEATURE: (history.item_id, lengths.to(torch.int32)),
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


@dataclass
class ActionHistory:
    """One jagged history per row, each oldest first (values of row b follow those of row b - 1).

    Args:
        lengths: ``[B]`` events per row.
        item_id / actions / surface / timestamp: ``[S_T]`` int64 per event.
        content: ``[S_T, C]`` float32 content embeddings, or None when the batch has none.
    """

    lengths: torch.Tensor
    item_id: torch.Tensor
    actions: torch.Tensor
    surface: torch.Tensor
    timestamp: torch.Tensor
    content: torch.Tensor | None


def realtime_history(batch: RankingBatch, model: str, needs_content: bool = True) -> ActionHistory:
    """The realtime engaged history of every row: the batch's ``sequence_features``, or on a
    lifelong batch (``seq_source`` present) its stored realtime history (``SOURCE_REALTIME_HISTORY``:
    S_RT's latest ``data.lifelong.realtime_history`` events, 100 by default), or S_RT[:r] when the
    batch stores none. The encoder then reads the latest ``max_sequence`` of them.

    Args:
        batch: a RankingBatch with sequence features.
        model: named in errors.
        needs_content: raise a DataError when the batch has no ``sequence_content``.
    """
    features = sequence_features(batch, model).to_dict()
    if needs_content and batch.sequence_content is None:
        raise DataError(
            f"{model} reads the content embedding of every history event, but the batch has no "
            "sequence_content; use data whose items carry content embeddings"
        )
    lengths = features[HISTORY_ITEM_FEATURE].lengths()
    columns = [features[key].values() for key in SEQUENCE_KEYS]
    content = batch.sequence_content
    if SOURCE_KEY in features:  # lifelong batch: keep the realtime history, else S_RT[:r]
        source = features[SOURCE_KEY].values()
        stored = bool((source == SOURCE_REALTIME_HISTORY).any())
        keep = source == (SOURCE_REALTIME_HISTORY if stored else SOURCE_REALTIME_RECENT)  # [V]
        row = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths.to(torch.int64))
        lengths = torch.zeros_like(lengths).index_add_(0, row, keep.to(lengths.dtype))  # [B]
        columns = [column[keep] for column in columns]
        content = content[keep] if content is not None else None
    return ActionHistory(lengths, *columns, content=content)


def impression_negatives(batch: RankingBatch, negatives: str) -> tuple[torch.Tensor | None, ...]:
    """``(content [M, C], item ids [M], user ids [M])`` of the batch's impression tokens (S_imp:
    shown to that row's user, not acted on) for "impressions" negatives; ``(None, None, None)``
    otherwise or when the batch is not a lifelong one."""
    history = batch.sequence_features
    if negatives != "impressions" or history is None or SOURCE_KEY not in history.keys():
        return None, None, None
    features = history.to_dict()
    is_impression = features[SOURCE_KEY].values() == SOURCE_IMPRESSION  # [V]
    lengths = features[SOURCE_KEY].lengths().to(torch.int64)
    users = torch.repeat_interleave(batch.user_id, lengths)  # [V] each token's row's user
    return (batch.sequence_content[is_impression], features[HISTORY_ITEM_FEATURE].values()[is_impression],
            users[is_impression])


def s_all_batch(batch: RankingBatch) -> RankingBatch:
    """A lifelong batch with its sequence cut to S_all (the stored realtime history dropped)."""
    features = batch.sequence_features.to_dict()
    source = features[SOURCE_KEY].values()
    keep = source != SOURCE_REALTIME_HISTORY  # [V]
    if bool(keep.all()):
        return batch
    lengths = features[SOURCE_KEY].lengths()
    row = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths.to(torch.int64))
    kept = torch.zeros_like(lengths).index_add_(0, row, keep.to(lengths.dtype))  # [B]
    columns = {key: (jagged.values()[keep], kept) for key, jagged in features.items()}
    content = batch.sequence_content[keep] if batch.sequence_content is not None else None
    return dataclasses.replace(batch, sequence_features=kjt_from_jagged(columns), sequence_content=content)


def lifelong_features(batch: RankingBatch, model: str) -> dict:
    """The checked ``sequence_features`` of a lifelong batch (S_all, with ``seq_source``) by key."""
    features = sequence_features(batch, model).to_dict()
    if SOURCE_KEY not in features:
        raise DataError(
            f"{model} reads S_all, the lifelong selection, but the batch's sequence has no {SOURCE_KEY!r}; "
            "train on lifelong batches: set data.lifelong.enabled=true"
        )
    if batch.sequence_content is None:
        raise DataError(f"{model} reads the content embedding of every S_all token, but the batch has no sequence_content")
    return features


def _dense_device(device: torch.device | str | None) -> torch.device:
    device = torch.device(device) if device is not None else torch.device("cpu")
    return torch.device("cpu") if device.type == "meta" else device
