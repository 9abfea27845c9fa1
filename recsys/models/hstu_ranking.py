"""HSTU as a ranker: interleaved (item, action) tokens, the candidate as target, one logit per head.

Generative ranking (Zhai et al., "Actions Speak Louder than Words", ICML 2024, Section 2.2): the
user's engaged history becomes a token sequence in which every item is followed by the actions the
user took on it, and the candidate item is appended as the single target token::

    history (oldest ... newest)   (i_1, a_1) (i_2, a_2) ... (i_n, a_n)      candidate c
    tokens                        i_1  a_1  i_2  a_2  ...  i_n  a_n  c       2n + 1 tokens
    timestamps                    t_1  t_1  t_2  t_2  ...  t_n  t_n  t_c     (the pair shares t_k)

    item token    = E_item[i_k] + E_surface[s_k]                             [D]
    action token  = sum of E_action[a] over the actions a set in the bit mask  [D]
    target token  = E_item[c] + E_surface[s_c] + W dense_features_c          [D]

    h      = HSTUEncoder(tokens, num_targets=1)[candidate]                   [B, D]
    logits = MLP(h) V^T + b                                                  [B, H]

The candidate attends to the whole history and the history never attends to the candidate, so
(target-aware) its output depends only on its own user's history and on the candidate itself.
An empty history leaves the candidate alone (one token).

The item table is a TorchRec EmbeddingCollection (``t_item_id``, features ``seq_item_id`` and
``candidate_item_id``), built on ``device`` (``"meta"`` allocates nothing until
DistributedModelParallel shards it). The action, surface and dense projections are small and
dense. The surface embedding is added to item and candidate tokens; ``use_dense_features`` adds a
projection of the candidate's dense features (content embedding and context, as DLRM reads them).

Serving (M-FALCON, :mod:`recsys.modules.mfalcon`): :meth:`HSTURanking.score_candidates` encodes
every user's history once and scores many candidates against its cached keys and values, in
micro-batches; a candidate's score equals its :meth:`HSTURanking.forward` score alone. For that
the encoder is built for ``2 * max_sequence + max_candidates_per_pass`` tokens (training uses
``2 * max_sequence + 1`` of them; targets share one position for the position bias, and both
normalizations are the same in training and serving: ``"max_len"`` divides by the encoder's fixed
length, ``"length"`` by the keys a query attends to).

Shape letters: B rows (users), n history events of a row, Th history events of the batch,
Tc candidates, D embedding dimension, A actions, H heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import RankingBatch
from recsys.data.collate import kjt_from_jagged
from recsys.data.features import FeatureSpec
from recsys.errors import ConfigError, DataError
from recsys.models.dlrm import resolve_heads
from recsys.modules.hstu import HSTUEncoder, append_jagged
from recsys.modules.mfalcon import score_candidates as mfalcon_score_candidates
from recsys.ops.hstu_attention import NORMALIZATIONS

HISTORY_ITEM_FEATURE = "seq_item_id"
CANDIDATE_ITEM_FEATURE = "candidate_item_id"
DEFAULT_MAX_SEQUENCE = 50


@dataclass
class HSTURankingConfig:
    """Sizes of the HSTU ranker.

    Args:
        embedding_dim: D, width of the tokens.
        num_layers: HSTU blocks.
        num_heads: attention heads per block.
        attention_dim: per-head query/key width.
        linear_dim: per-head value width.
        dropout: dropout rate inside the blocks.
        max_sequence: most history events a row may carry; None = the data's ``max_sequence``
            (or 50 when the FeatureSpec has none).
        max_candidates_per_pass: most candidates per user that :meth:`HSTURanking.score_candidates`
            scores in one pass (its ``microbatch_size`` limit).
        normalization: attention normalization, ``"max_len"`` (the reference's) or ``"length"``
            (see :func:`recsys.ops.hstu_attention.hstu_attention`).
        over_arch_layers: widths of the MLP between the candidate's output and the heads.
        use_dense_features: add a projection of the candidate's dense features to its token.
        heads: action names to predict, one logit each; None = every action of the FeatureSpec.
        attention_kernel: the attention backend (``kernel`` of :class:`~recsys.modules.hstu.HSTUEncoder`):
            "auto" (the fused Triton kernel on CUDA, the PyTorch reference elsewhere), "pytorch"
            or "triton".
    """

    embedding_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    attention_dim: int = 32
    linear_dim: int = 32
    dropout: float = 0.1
    max_sequence: int | None = None
    max_candidates_per_pass: int = 64
    normalization: str = "max_len"
    over_arch_layers: list[int] = field(default_factory=lambda: [64])
    use_dense_features: bool = True
    heads: list[str] | None = None
    attention_kernel: str = "auto"

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "num_layers", "num_heads", "attention_dim", "linear_dim", "max_candidates_per_pass"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"HSTURankingConfig.{name} must be a positive int, got {value!r}")
        if self.max_sequence is not None and (not isinstance(self.max_sequence, int) or self.max_sequence <= 0):
            raise ConfigError(f"HSTURankingConfig.max_sequence must be a positive int or None, got {self.max_sequence!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"HSTURankingConfig.dropout must lie in [0, 1), got {self.dropout!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"HSTURankingConfig.normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if not self.over_arch_layers or not all(isinstance(w, int) and w > 0 for w in self.over_arch_layers):
            raise ConfigError(
                f"HSTURankingConfig.over_arch_layers must be a non-empty list of positive ints, got {self.over_arch_layers!r}"
            )
        if self.heads is not None and len(self.heads) == 0:
            raise ConfigError("HSTURankingConfig.heads must name at least one action, or be None for all actions")


def resolve_max_sequence(spec: FeatureSpec, config: HSTURankingConfig) -> int:
    """History events the model accepts: the config's, else the data's, else 50."""
    if config.max_sequence is None:
        return spec.max_sequence if spec.max_sequence > 0 else DEFAULT_MAX_SEQUENCE
    if spec.max_sequence > config.max_sequence:
        raise ConfigError(
            f"the data carries up to {spec.max_sequence} history events (data.max_sequence) but "
            f"model.max_sequence={config.max_sequence}; raise model.max_sequence or leave it unset"
        )
    return config.max_sequence


class HSTURanking(nn.Module):
    """HSTU ranker over interleaved (item, action) tokens with the candidate as target.

    Args:
        spec: the data's features (``max_sequence > 0`` makes the batches carry ``sequence_features``).
        config: sizes and heads.
        device: where the item table lives (``"meta"`` allocates nothing); the dense layers are
            built on ``device``, or on the CPU when it is meta.

    Example::

        model = HSTURanking(FeatureSpec(num_users=10, num_items=100, max_sequence=20), HSTURankingConfig())
        logits = model(batch)  # [B, H]
    """

    def __init__(self, spec: FeatureSpec, config: HSTURankingConfig | None = None, device: torch.device | str | None = None):
        super().__init__()
        config = config or HSTURankingConfig()
        device = torch.device(device) if device is not None else torch.device("cpu")
        dense_device = torch.device("cpu") if device.type == "meta" else device
        if spec.num_items <= 0:
            raise ConfigError("the FeatureSpec has no items (num_items=0); the item table needs at least one row")
        d = config.embedding_dim
        self.spec, self.config = spec, config
        self.heads = resolve_heads(spec, config.heads)
        self.max_sequence = resolve_max_sequence(spec, config)
        self._table_configs = [
            EmbeddingConfig(
                num_embeddings=spec.num_items, embedding_dim=d, name="t_item_id",
                feature_names=[HISTORY_ITEM_FEATURE, CANDIDATE_ITEM_FEATURE],
            )
        ]
        self.item_embeddings = EmbeddingCollection(tables=self._table_configs, device=device)
        self.action_embeddings = nn.Parameter(torch.empty(spec.num_actions, d, device=dense_device))  # [A, D]
        self.surface_embeddings = nn.Embedding(len(spec.surface_vocab), d, device=dense_device)
        self.dense_projection = nn.Linear(spec.dense_dim, d, device=dense_device) if config.use_dense_features else None
        self.encoder = HSTUEncoder(
            num_layers=config.num_layers, embedding_dim=d, num_heads=config.num_heads,
            attention_dim=config.attention_dim, linear_dim=config.linear_dim,
            max_seq_len=2 * self.max_sequence + config.max_candidates_per_pass,
            dropout=config.dropout, normalization=config.normalization, kernel=config.attention_kernel,
        ).to(dense_device)
        self.over_arch = MLP(d, config.over_arch_layers, device=dense_device)
        self.head_layer = nn.Linear(config.over_arch_layers[-1], len(self.heads), device=dense_device)
        nn.init.normal_(self.action_embeddings, std=0.02)
        nn.init.normal_(self.surface_embeddings.weight, std=0.02)

    def embedding_configs(self) -> list[EmbeddingConfig]:
        """The tables of the model (what the sharding planner places)."""
        return list(self._table_configs)

    # ------------------------------------------------------------------ training / evaluation
    def forward(self, batch: RankingBatch) -> torch.Tensor:
        """Scores a batch.

        Args:
            batch: RankingBatch with ``sequence_features`` (keys ``seq_item_id``, ``seq_actions``,
                ``seq_surface``, ``seq_timestamp``) and the ``surface`` sparse feature.

        Returns:
            ``[B, H]`` logits, column h for ``self.heads[h]``.
        """
        history = self._check_history(batch.sequence_features, batch.batch_size)
        one_each = torch.ones(batch.batch_size, dtype=torch.int32, device=batch.item_id.device)  # [B]
        history_tokens, history_offsets, history_times, candidate_items = self._history_tokens(
            history, batch.item_id, one_each
        )
        candidates = self._candidate_tokens(candidate_items, self._candidate_surface(batch), batch.dense_features)  # [B, D]
        target_offsets = torch.arange(batch.batch_size + 1, device=candidates.device)  # [B + 1]
        tokens, offsets = append_jagged(history_tokens, history_offsets, candidates, target_offsets)  # [2Th + B, D]
        times, _ = append_jagged(history_times, history_offsets, batch.timestamp.to(torch.int64), target_offsets)  # [2Th + B]
        encoded = self.encoder(tokens, offsets, times, num_targets=torch.ones_like(one_each, dtype=torch.int64))
        return self._logits(encoded[offsets[1:] - 1])  # candidate = last token of each row -> [B, H]

    # ------------------------------------------------------------------ serving
    def score_candidates(
        self,
        history: KeyedJaggedTensor,
        candidate_offsets: torch.Tensor,
        item_id: torch.Tensor,
        timestamp: torch.Tensor,
        surface: torch.Tensor | None = None,
        dense_features: torch.Tensor | None = None,
        microbatch_size: int = 64,
    ) -> torch.Tensor:
        """Scores many candidates per user against each user's history encoded once (M-FALCON).

        Args:
            history: ``sequence_features`` of B users (``seq_*`` keys, B rows).
            candidate_offsets: ``[B + 1]`` int64: user b's candidates are rows
                ``candidate_offsets[b] .. candidate_offsets[b + 1] - 1`` of the tensors below.
            item_id: ``[Tc]`` candidate items.
            timestamp: ``[Tc]`` request time of each candidate.
            surface: ``[Tc]`` surface ids; None = surface 0.
            dense_features: ``[Tc, C + T]`` candidate dense features (required with
                ``use_dense_features``).
            microbatch_size: most candidates per user in one pass (at most
                ``config.max_candidates_per_pass``).

        Returns:
            ``[Tc, H]`` logits, each equal to :meth:`forward` on that candidate alone.
        """
        self._check_candidates(history, candidate_offsets, item_id, timestamp, dense_features, microbatch_size)
        candidate_lengths = (candidate_offsets[1:] - candidate_offsets[:-1]).to(torch.int32)  # [B]
        history_tokens, history_offsets, history_times, candidate_items = self._history_tokens(
            history, item_id, candidate_lengths
        )
        surface = torch.zeros_like(item_id) if surface is None else surface
        candidates = self._candidate_tokens(candidate_items, surface, dense_features)  # [Tc, D]
        encoded = mfalcon_score_candidates(
            self.encoder, history_tokens, history_offsets, candidates, candidate_offsets.to(torch.int64),
            microbatch_size, timestamps=history_times, candidate_timestamps=timestamp.to(torch.int64),
        )  # [Tc, D]
        return self._logits(encoded)  # [Tc, H]

    # ------------------------------------------------------------------ tokens
    def _history_tokens(
        self, history: KeyedJaggedTensor, candidate_items: torch.Tensor, candidate_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Interleaved history tokens and the candidates' item embeddings, in one table lookup.

        Returns:
            ``tokens [2 Th, D]`` (i_1, a_1, i_2, a_2, ... per row), their offsets ``[B + 1]``,
            timestamps ``[2 Th]`` and the candidates' item embeddings ``[Tc, D]``.
        """
        features = history.to_dict()
        lengths = features[HISTORY_ITEM_FEATURE].lengths().to(torch.int32)  # [B]
        lookup = kjt_from_jagged({
            HISTORY_ITEM_FEATURE: (features[HISTORY_ITEM_FEATURE].values(), lengths),
            CANDIDATE_ITEM_FEATURE: (candidate_items, candidate_lengths),
        })
        embedded = self.item_embeddings(lookup)  # by feature name: a sharded collection may reorder them
        items = embedded[HISTORY_ITEM_FEATURE].values()  # [Th, D]
        items = items + self.surface_embeddings(features["seq_surface"].values())  # [Th, D]
        actions = self._action_tokens(features["seq_actions"].values())  # [Th, D]
        tokens = torch.stack([items, actions], dim=1).reshape(-1, items.size(1))  # [2 Th, D]: i_1, a_1, i_2, a_2, ...
        offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)]).to(torch.int64) * 2  # [B + 1]
        times = features["seq_timestamp"].values().to(torch.int64).repeat_interleave(2)  # [2 Th]
        return tokens, offsets, times, embedded[CANDIDATE_ITEM_FEATURE].values()

    def _action_tokens(self, action_bits: torch.Tensor) -> torch.Tensor:
        """``[Th]`` bit masks -> ``[Th, D]`` sum of the embeddings of the actions set."""
        bits = torch.arange(self.spec.num_actions, device=action_bits.device)  # [A]
        multi_hot = ((action_bits.to(torch.int64).unsqueeze(1) >> bits) & 1).to(self.action_embeddings.dtype)  # [Th, A]
        return multi_hot @ self.action_embeddings  # [Th, D]

    def _candidate_tokens(self, items: torch.Tensor, surface: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        """``[Tc, D]`` candidate item embeddings -> target tokens (surface and dense features added)."""
        tokens = items + self.surface_embeddings(surface)  # [Tc, D]
        if self.dense_projection is not None:
            tokens = tokens + self.dense_projection(dense)  # [Tc, D]
        return tokens

    def _candidate_surface(self, batch: RankingBatch) -> torch.Tensor:
        if "surface" not in batch.sparse_features.keys():
            raise DataError("the batch lacks the 'surface' sparse feature; build batches and the model from one FeatureSpec")
        return batch.sparse_features["surface"].values()  # [B]: one surface per row

    def _logits(self, candidate_outputs: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` encoder outputs at the candidates -> ``[N, H]`` logits."""
        return self.head_layer(self.over_arch(candidate_outputs))

    # ------------------------------------------------------------------ checks
    def _check_history(self, history: KeyedJaggedTensor | None, num_rows: int) -> KeyedJaggedTensor:
        if history is None:
            raise DataError(
                "hstu_ranking reads the batch's sequence_features, but the batch has none; "
                "set data.max_sequence > 0 (e.g. data.max_sequence=50)"
            )
        missing = [k for k in ("seq_item_id", "seq_actions", "seq_surface", "seq_timestamp") if k not in history.keys()]
        if missing:
            raise DataError(f"sequence_features lacks keys {missing}; build batches from a FeatureSpec with max_sequence > 0")
        lengths = history[HISTORY_ITEM_FEATURE].lengths()
        if lengths.numel() != num_rows:
            raise DataError(f"sequence_features has {lengths.numel()} rows, the batch {num_rows}; give one history per row")
        if lengths.numel() and int(lengths.max()) > self.max_sequence:
            raise DataError(
                f"a history has {int(lengths.max())} events > the model's max_sequence={self.max_sequence}; "
                "set model.max_sequence to at least data.max_sequence"
            )
        return history

    def _check_candidates(self, history, candidate_offsets, item_id, timestamp, dense_features, microbatch_size) -> None:
        self._check_history(history, candidate_offsets.numel() - 1)
        if item_id.dim() != 1 or timestamp.shape != item_id.shape or int(candidate_offsets[-1]) != item_id.numel():
            raise DataError(
                f"score_candidates: item_id and timestamp must both be [Tc] with Tc = candidate_offsets[-1] = "
                f"{int(candidate_offsets[-1])}; got {tuple(item_id.shape)} and {tuple(timestamp.shape)}"
            )
        expected_dense = (item_id.numel(), self.spec.dense_dim)
        if self.dense_projection is not None and (dense_features is None or dense_features.shape != expected_dense):
            raise DataError(
                f"score_candidates: this model reads the candidates' dense features; pass dense_features "
                f"[Tc, {self.spec.dense_dim}] (or build it with use_dense_features=False)"
            )
        if microbatch_size > self.config.max_candidates_per_pass:
            raise ConfigError(
                f"score_candidates: microbatch_size={microbatch_size} > max_candidates_per_pass="
                f"{self.config.max_candidates_per_pass}; lower it or build the model with a larger max_candidates_per_pass"
            )
