"""MIMN ranker: the user's behaviours stream through the MIMN memory; the candidate reads the state.

    state  = MIMN.encode(events, mask)        one MIMN.update per time step   (recsys.modules.mimn)
    logits = MIMN.score(state, c, side)                                        [B, H]
    auxiliary_loss = utilisation_loss(state.utilisation)                       Eq. (8), weight lambda

Training and a User Interest Center share :meth:`MIMNRanker.init_state`, :meth:`MIMNRanker.update`
(one event per user, ids in) and :meth:`MIMNRanker.score` (the candidates' ids in): a state built
event by event equals the one :meth:`forward` builds over the whole sequence. The ranking task
adds ``auxiliary_loss_weight * auxiliary_loss`` to the cross-entropy (:class:`~recsys.models.task.RankingTask`).
Inputs and table as every behaviour-sequence model (:mod:`recsys.models.behavior_sequence`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recsys.data.batch import RankingBatch
from recsys.data.features import FeatureSpec
from recsys.errors import ConfigError
from recsys.models.behavior_sequence import BehaviorSequenceConfig, BehaviorSequenceRanker
from recsys.models.dlrm import resolve_heads
from recsys.modules.mimn import MIMN, MIMNState, utilisation_loss


@dataclass
class MIMNConfig(BehaviorSequenceConfig):
    """MIMN sizes (and the shared fields of :class:`BehaviorSequenceConfig`).

    Args:
        memory_slots: m, NTM memory slots (= MIU interest channels).
        memory_dim: Dm, width of a slot.
        controller_dim: Dc, the controller GRU's width.
        induction_dim: Ds, width of an MIU channel (the paper's §5.1: 32).
        induction_top_k: channels the MIU steps per event (slots with the largest read weights), 1..m.
        utilisation_regularization: rebalance the writes by the utilisation (Eqs. (5), (6)) and add the
            utilisation loss (Eq. (8)); False = the plain NTM.
        utilisation_loss_weight: lambda of Eq. (8), >= 0, on the utilisation share (the paper gives no
            value; :mod:`recsys.modules.mimn` relates it to the authors' code).
    """

    memory_slots: int = 4
    memory_dim: int = 16
    controller_dim: int = 16
    induction_dim: int = 32
    induction_top_k: int = 1
    utilisation_regularization: bool = True
    utilisation_loss_weight: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("memory_slots", "memory_dim", "controller_dim", "induction_dim", "induction_top_k")
        if self.induction_top_k > self.memory_slots:
            raise ConfigError(
                f"MIMNConfig.induction_top_k={self.induction_top_k} must be at most memory_slots={self.memory_slots}"
            )
        if not (isinstance(self.utilisation_loss_weight, (int, float)) and self.utilisation_loss_weight >= 0):
            raise ConfigError(f"MIMNConfig.utilisation_loss_weight must be a number >= 0, got {self.utilisation_loss_weight!r}")


class MIMNRanker(BehaviorSequenceRanker):
    """The behaviour-sequence frame with the MIMN memory as its arch (``self.arch``).

    Example::

        model = get_model("mimn", feature_spec=spec)
        logits = model(batch)                                   # [B, H], training
        state = model.init_state(2)                             # serving: per event ...
        state = model.update(state, item_ids, action_bits, mask)
        logits = model.score(state, candidate_items, dense_features)
    """

    def __init__(self, spec: FeatureSpec, config: MIMNConfig, device=None):
        d = config.embedding_dim
        memory = MIMN(
            event_dim=d, candidate_dim=d, side_dim=d if config.use_dense_features else 0,
            num_heads=len(resolve_heads(spec, config.heads)), memory_slots=config.memory_slots,
            memory_dim=config.memory_dim, controller_dim=config.controller_dim, induction_dim=config.induction_dim,
            induction_top_k=config.induction_top_k, utilisation_regularization=config.utilisation_regularization,
            over_arch_layers=tuple(config.over_arch_layers),
        )
        super().__init__(spec, config, memory, device=device)
        self.auxiliary_loss_weight = float(config.utilisation_loss_weight)
        self.auxiliary_loss: torch.Tensor | None = None

    def forward(self, batch: RankingBatch) -> torch.Tensor:
        """``[B, H]`` logits; sets ``auxiliary_loss`` (Eq. (8) over the rows with history)."""
        events, mask, candidates = self.embed(batch.sequence_features, batch.item_id, batch.batch_size)
        state = self.arch.encode(events, mask)
        if self.config.utilisation_regularization:
            self.auxiliary_loss = utilisation_loss(state.utilisation, mask.any(dim=1).to(events.dtype))
        return self.arch.score(state, candidates, self.side(batch.dense_features))

    # ------------------------------------------------------------------ the state API (training == serving)
    def init_state(self, batch_size: int) -> MIMNState:
        """The state of ``batch_size`` users without behaviour."""
        return self.arch.init_state(batch_size)

    def update(self, state: MIMNState, item_ids: torch.Tensor, action_bits: torch.Tensor, mask: torch.Tensor) -> MIMNState:
        """One behaviour event per user: ``item_ids [B]``, ``action_bits [B]``, ``mask [B]`` (False = no event)."""
        return self.arch.update(state, self.event_embeddings(item_ids, action_bits), mask)

    def event_embeddings(self, item_ids: torch.Tensor, action_bits: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` event embeddings e_k of ``item_ids [N]`` with ``action_bits [N]`` (one table lookup).

        ``update(s, ids, bits, mask) == arch.update(s, event_embeddings(ids, bits), mask)``: a UIC
        embeds a whole batch of events once, then steps the users through ``arch.update``.
        """
        one, none = torch.ones_like(item_ids, dtype=torch.int32), torch.zeros_like(item_ids, dtype=torch.int32)
        events, _ = self.lookup(item_ids, one, item_ids[:0], none)  # [N, D]
        if self.action_embeddings is not None:
            events = events + self.action_tokens(action_bits)
        return events

    def score(self, state: MIMNState, candidate_items: torch.Tensor, dense_features: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, H]`` logits of candidate ``candidate_items [B]`` (``dense_features [B, C + T]`` if the model reads them)."""
        _, candidates = self.lookup(candidate_items[:0], torch.zeros_like(candidate_items, dtype=torch.int32), candidate_items)  # [B, D]
        return self.arch.score(state, candidates, self.side(dense_features))


def build_mimn(spec: FeatureSpec, config: MIMNConfig, device=None) -> MIMNRanker:
    return MIMNRanker(spec, config, device=device)
