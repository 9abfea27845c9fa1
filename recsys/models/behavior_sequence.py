"""The frame MIMN and its baselines share: embed the behaviour sequence and the candidate, then an arch scores.

Every model of this family (``mimn``, ``din``, ``emb_mlp``, ``gru4rec``) reads the same inputs
from a :class:`~recsys.data.batch.RankingBatch` and differs only in its *interest arch*::

    sequence_features  seq_item_id  [i_1 .. i_n] per row, oldest first (n may be 0)
                       seq_actions  [a_1 .. a_n] action bit masks
    item_id            c            the candidate

    e_k    = E_item[i_k] + sum_{a in a_k} E_action[a]        event embedding       [D]
    events = pad(e_1 .. e_n) to the batch's longest row       [B, L, D], mask [B, L]
    cand   = E_item[c]                                                            [B, D]
    side   = W dense_features (content + context), if used                        [B, D]
    logits = arch(events, mask, cand, side)                                       [B, H]

The item table is one TorchRec EmbeddingCollection (``t_item_id``, features ``seq_item_id`` and
``candidate_item_id``), built on ``device`` (``"meta"`` allocates nothing until
DistributedModelParallel shards it); the action embeddings and the dense projection are small
dense parameters. :class:`ScoringHead` is the MLP + linear heads every arch ends with.

Shape letters: B rows, L longest history of the batch, Th history events of the batch, D
embedding dimension, A actions, H heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.modules.mlp import MLP

from recsys.data.batch import RankingBatch
from recsys.data.collate import kjt_from_jagged
from recsys.data.features import FeatureSpec
from recsys.errors import ConfigError, DataError
from recsys.models.dlrm import resolve_heads

HISTORY_ITEM_FEATURE = "seq_item_id"
HISTORY_ACTION_FEATURE = "seq_actions"
CANDIDATE_ITEM_FEATURE = "candidate_item_id"


@dataclass
class BehaviorSequenceConfig:
    """What every model of the family shares.

    Args:
        embedding_dim: D, width of the item and action embeddings.
        use_actions: add the embeddings of an event's actions to its item embedding.
        use_dense_features: feed a projection of the candidate's dense features (content
            embedding and context, as DLRM reads them) to the head.
        over_arch_layers: widths of the MLP before the heads.
        heads: action names to predict, one logit each; None = every action of the FeatureSpec.
    """

    embedding_dim: int = 16
    use_actions: bool = True
    use_dense_features: bool = True
    over_arch_layers: list[int] = field(default_factory=lambda: [64])
    heads: list[str] | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.embedding_dim, int) or self.embedding_dim <= 0:
            raise ConfigError(f"{name}.embedding_dim must be a positive int, got {self.embedding_dim!r}")
        if not self.over_arch_layers or not all(isinstance(w, int) and w > 0 for w in self.over_arch_layers):
            raise ConfigError(f"{name}.over_arch_layers must be a non-empty list of positive ints, got {self.over_arch_layers!r}")
        if self.heads is not None and len(self.heads) == 0:
            raise ConfigError(f"{name}.heads must name at least one action, or be None for all actions")

    def check_positive(self, *names: str) -> None:
        """ConfigError unless every named field is a positive int."""
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be a positive int, got {value!r}")


class ScoringHead(nn.Module):
    """``[B, N]`` -> MLP -> ``[B, H]`` logits."""

    def __init__(self, input_dim: int, layers: list[int], num_heads: int):
        super().__init__()
        self.over_arch = MLP(input_dim, list(layers))
        self.head_layer = nn.Linear(layers[-1], num_heads)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head_layer(self.over_arch(features))


def pad_jagged(values: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged ``values [Th, D]`` with ``lengths [B]`` -> ``padded [B, L, D]`` (zeros after each row), ``mask [B, L]``."""
    lengths = lengths.to(torch.int64)
    b = lengths.numel()
    longest = int(lengths.max()) if b else 0
    rows = torch.repeat_interleave(torch.arange(b, device=values.device), lengths)  # [Th]
    starts = torch.cumsum(lengths, 0) - lengths  # [B]
    columns = torch.arange(values.shape[0], device=values.device) - starts[rows]  # [Th]
    padded = values.new_zeros(b, longest, values.shape[-1])  # [B, L, D]
    padded = padded.index_put((rows, columns), values)
    mask = torch.arange(longest, device=values.device).unsqueeze(0) < lengths.unsqueeze(1)  # [B, L]
    return padded, mask


class BehaviorSequenceRanker(nn.Module):
    """Embeds a RankingBatch's behaviour sequence and candidate; ``arch`` turns them into logits.

    Args:
        spec: the data's features (``max_sequence > 0`` makes the batches carry ``sequence_features``).
        config: the shared sizes (a :class:`BehaviorSequenceConfig` or subclass).
        arch: ``arch(events [B, L, D], mask [B, L], candidates [B, D], side [B, D] or None) -> [B, H]``.
        device: where the item table lives (``"meta"`` allocates nothing); dense layers stay on
            the CPU when it is meta (DistributedModelParallel moves them).
    """

    def __init__(self, spec: FeatureSpec, config: BehaviorSequenceConfig, arch: nn.Module, device: torch.device | str | None = None):
        super().__init__()
        device = torch.device(device) if device is not None else torch.device("cpu")
        dense_device = torch.device("cpu") if device.type == "meta" else device
        if spec.num_items <= 0:
            raise ConfigError("the FeatureSpec has no items (num_items=0); the item table needs at least one row")
        d = config.embedding_dim
        self.spec, self.config = spec, config
        self.heads = resolve_heads(spec, config.heads)
        self._table_configs = [
            EmbeddingConfig(num_embeddings=spec.num_items, embedding_dim=d, name="t_item_id",
                            feature_names=[HISTORY_ITEM_FEATURE, CANDIDATE_ITEM_FEATURE])
        ]
        self.item_embeddings = EmbeddingCollection(tables=self._table_configs, device=device)
        self.action_embeddings = nn.Parameter(torch.randn(spec.num_actions, d, device=dense_device) * 0.02) if config.use_actions else None
        self.dense_projection = nn.Linear(spec.dense_dim, d, device=dense_device) if config.use_dense_features else None
        self.arch = arch.to(dense_device)

    @property
    def side_dim(self) -> int:
        return self.config.embedding_dim if self.config.use_dense_features else 0

    def embedding_configs(self) -> list[EmbeddingConfig]:
        """The tables of the model (what the sharding planner places)."""
        return list(self._table_configs)

    def forward(self, batch: RankingBatch) -> torch.Tensor:
        """``[B, H]`` logits, column h for ``self.heads[h]``."""
        events, mask, candidates = self.embed(batch.sequence_features, batch.item_id, batch.batch_size)
        return self.arch(events, mask, candidates, self.side(batch.dense_features))

    def embed(self, history, candidate_items: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One table lookup for the histories and the candidates.

        Returns:
            ``events [B, L, D]``, ``mask [B, L]`` and ``candidates [B, D]``.
        """
        history = self._check_history(history, num_rows)
        items = history[HISTORY_ITEM_FEATURE]
        lengths = items.lengths().to(torch.int32)  # [B]
        events, candidates = self.lookup(items.values(), lengths, candidate_items)
        if self.action_embeddings is not None:
            events = events + self.action_tokens(history[HISTORY_ACTION_FEATURE].values())  # [Th, D]
        padded, mask = pad_jagged(events, lengths)  # [B, L, D], [B, L]
        return padded, mask, candidates

    def lookup(
        self, history_items: torch.Tensor, history_lengths: torch.Tensor,
        candidate_items: torch.Tensor, candidate_lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One table lookup for both features of B rows.

        Args:
            history_items: ``[Th]`` ids, ``history_lengths [B]`` of them per row.
            candidate_items: ``[Tc]`` ids, ``candidate_lengths [B]`` per row (None = one per row).

        Returns:
            ``[Th, D]`` and ``[Tc, D]`` embeddings.
        """
        if candidate_lengths is None:
            candidate_lengths = torch.ones_like(candidate_items, dtype=torch.int32)
        lookup = kjt_from_jagged({
            HISTORY_ITEM_FEATURE: (history_items, history_lengths),
            CANDIDATE_ITEM_FEATURE: (candidate_items, candidate_lengths),
        })
        embedded = self.item_embeddings(lookup)  # by name: a sharded collection may reorder the features
        return embedded[HISTORY_ITEM_FEATURE].values(), embedded[CANDIDATE_ITEM_FEATURE].values()

    def action_tokens(self, action_bits: torch.Tensor) -> torch.Tensor:
        """``[Th]`` bit masks -> ``[Th, D]`` sum of the embeddings of the actions set."""
        bits = torch.arange(self.spec.num_actions, device=action_bits.device)  # [A]
        multi_hot = ((action_bits.to(torch.int64).unsqueeze(1) >> bits) & 1).to(self.action_embeddings.dtype)  # [Th, A]
        return multi_hot @ self.action_embeddings  # [Th, D]

    def side(self, dense_features: torch.Tensor | None) -> torch.Tensor | None:
        """``[B, C + T]`` -> ``[B, D]`` projection, or None when the model ignores dense features."""
        if self.dense_projection is None:
            return None
        if dense_features is None or dense_features.dim() != 2 or dense_features.shape[1] != self.spec.dense_dim:
            raise DataError(
                f"dense_features must be [B, {self.spec.dense_dim}], got {None if dense_features is None else tuple(dense_features.shape)}; "
                "build batches and the model from one FeatureSpec"
            )
        return self.dense_projection(dense_features)

    def _check_history(self, history, num_rows: int):
        if history is None:
            raise DataError(
                f"{type(self).__name__} reads the batch's sequence_features, but the batch has none; "
                "set data.max_sequence > 0 (e.g. data.max_sequence=50)"
            )
        missing = [k for k in (HISTORY_ITEM_FEATURE, HISTORY_ACTION_FEATURE) if k not in history.keys()]
        if missing:
            raise DataError(f"sequence_features lacks keys {missing}; build batches from a FeatureSpec with max_sequence > 0")
        rows = history[HISTORY_ITEM_FEATURE].lengths().numel()
        if rows != num_rows:
            raise DataError(f"sequence_features has {rows} rows, the batch {num_rows}; give one history per row")
        return history
