"""Next-action loss (NAL, TransAct V2): the encoder's output at a token predicts the next engaged item.

A causal sequence encoder's output ``u(t)`` at token t has read the user's actions up to t. The
next-action loss is a sampled softmax that asks it to pick the content of the item of the user's
next engaged action among negatives, and is added to the ranking loss with a small weight::

    L = L_CE + w * L_NAL            (w = 0.01 by default)

Over the N (query, next action) pairs of a batch (the caller forms them: :func:`next_token_pairs`,
:func:`jagged_next_pairs`; the next action is a *positive* engagement, :func:`positive_engagement`:
a hide is an engagement, but not one to predict as the item the user wants next)::

    q_n = normalize(u(t_n))                                  [N, d]
    p_n = normalize(W c(next_n) + b)                          [N, d]  W: Linear(C, d), learned
    k_m = normalize(W c(neg_m) + b)                           [M, d]
    logits_n = [q_n . p_n, q_n . k_1, ..., q_n . k_M] / temperature
    L_NAL = mean_n cross_entropy(logits_n, class 0)

``c(.)`` is the item's content embedding (C wide); the learned linear ``W`` maps it to the encoder's
width d (the paper does not say how the two spaces meet; a projection of the item side keeps the
encoder untouched). Negatives (``negatives``):

- ``"impressions"``: the items the user was shown and did not act on, the hard negatives of the
  paper: the impression tokens (``seq_source == SOURCE_IMPRESSION``) of the query's own user
  (``query_users`` / ``negative_users``: another user's impressions say nothing about this user's
  next action), deduplicated by (user, item id);
- ``"in_batch"``: the positives of the other pairs of the batch (M = N - 1 per query).

A negative with the positive's item id (an *accidental hit*, e.g. an item seen again, or the same
next action in two rows of one request) is masked to -inf: it is not a negative. Batches hold many
more pairs than are needed, so at most ``max_queries`` pairs (and ``max_negatives`` impression
negatives) are drawn uniformly per batch. A batch without pairs gives 0 (still connected to every
parameter, as DistributedDataParallel's static graph expects).

Shape letters: B rows, L padded sequence length, N pairs, M negatives, d query width, C content width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError, DataError

NEGATIVE_MODES = ("impressions", "in_batch")


@dataclass
class NextActionLossConfig:
    """The next-action loss of a sequence encoder.

    Args:
        enabled: add ``weight * L_NAL`` to the ranking loss.
        weight: w, the loss weight (paper-style small auxiliary weight: 0.01).
        negatives: "impressions" (shown, not acted on) or "in_batch" (the other positives).
        temperature: logits are cosine similarities divided by it.
        max_queries: at most this many (token, next action) pairs per batch, drawn uniformly.
        max_negatives: at most this many impression negatives per batch, drawn uniformly.
        negative_actions: actions that are not positive engagement (a next action with only these
            bits is no positive: :func:`positive_engagement`); names of the data's action vocabulary.
    """

    enabled: bool = False
    weight: float = 0.01
    negatives: Literal["impressions", "in_batch"] = "impressions"
    temperature: float = 0.05
    max_queries: int = 1024
    max_negatives: int = 1024
    negative_actions: list[str] = field(default_factory=lambda: ["hide"])

    def __post_init__(self) -> None:
        if isinstance(self.negative_actions, str) or not all(isinstance(a, str) for a in self.negative_actions):
            raise ConfigError(f"next_action_loss.negative_actions must be a list of action names, "
                              f"got {self.negative_actions!r}")
        self.negative_actions = list(self.negative_actions)
        if self.negatives not in NEGATIVE_MODES:
            raise ConfigError(f"next_action_loss.negatives must be one of {list(NEGATIVE_MODES)}, got {self.negatives!r}")
        if not self.weight >= 0:
            raise ConfigError(f"next_action_loss.weight must be >= 0, got {self.weight!r}")
        if not self.temperature > 0:
            raise ConfigError(f"next_action_loss.temperature must be > 0, got {self.temperature!r}")
        for name in ("max_queries", "max_negatives"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"next_action_loss.{name} must be a positive int, got {value!r}")


class NextActionLoss(nn.Module):
    """Sampled softmax of encoder outputs against next-action content (see the module docstring).

    Args:
        query_dim: d, width of the encoder outputs.
        content_dim: C, width of the content embeddings.
        config: negatives, temperature and caps.
        device: where the projection lives.

    Example::

        loss_fn = NextActionLoss(query_dim=64, content_dim=32, config=NextActionLossConfig(enabled=True))
        loss = loss_fn(queries, next_content, next_ids, impression_content, impression_ids)
    """

    def __init__(self, query_dim: int, content_dim: int, config: NextActionLossConfig, device=None):
        super().__init__()
        self.config = config
        self.item_projection = nn.Linear(content_dim, query_dim, device=device)

    def forward(
        self,
        queries: torch.Tensor,
        positive_content: torch.Tensor,
        positive_ids: torch.Tensor,
        negative_content: torch.Tensor | None = None,
        negative_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        query_users: torch.Tensor | None = None,
        negative_users: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean next-action cross-entropy.

        Args:
            queries: ``[N, d]`` encoder outputs at the query tokens.
            positive_content: ``[N, C]`` content of each query's next engaged item.
            positive_ids: ``[N]`` int64 item id of each query's next engaged item.
            negative_content: ``[M, C]`` impression content ("impressions" mode; may be empty).
            negative_ids: ``[M]`` int64 impression item ids.
            generator: source of the subsampling draws; None = torch's global generator.
            query_users: ``[N]`` int64 user of each pair ("impressions" mode): a query is scored
                only against its own user's impressions. None = one user for the whole batch.
            negative_users: ``[M]`` int64 user of each impression (with ``query_users``).

        Returns:
            scalar; 0 when there is no pair.
        """
        _check_pairs(queries, positive_content, positive_ids)
        keep = _draw(queries.shape[0], self.config.max_queries, queries.device, generator)  # [N'] or None
        if (query_users is None) != (negative_users is None):
            raise DataError("NextActionLoss: give query_users and negative_users together (or neither)")
        if query_users is not None and query_users.shape != positive_ids.shape:
            raise DataError(f"NextActionLoss: query_users must be [N={positive_ids.shape[0]}], got {tuple(query_users.shape)}")
        if keep is not None:
            queries, positive_content, positive_ids = queries[keep], positive_content[keep], positive_ids[keep]
            query_users = query_users[keep] if query_users is not None else None
        positives = self._items(positive_content)  # [N, d]
        if queries.shape[0] == 0:
            return queries.sum() * 0.0 + positives.sum() * 0.0  # zero, with every parameter in the graph
        query = F.normalize(queries, dim=-1)  # [N, d]
        if self.config.negatives == "in_batch":
            logits = query @ positives.T  # [N, N]; the diagonal holds the positives
            hits = positive_ids.unsqueeze(0) == positive_ids.unsqueeze(1)  # [N, N]
            hits.fill_diagonal_(False)
            labels = torch.arange(query.shape[0], device=query.device)  # [N]
        else:
            negatives, negative_ids, negative_users = self._impressions(negative_content, negative_ids, negative_users,
                                                                        generator)
            logits = torch.cat([(query * positives).sum(-1, keepdim=True), query @ negatives.T], dim=1)  # [N, 1 + M]
            masked = positive_ids.unsqueeze(1) == negative_ids.unsqueeze(0)  # [N, M] accidental hits
            if query_users is not None:  # only the query's own user's impressions are its negatives
                masked |= query_users.unsqueeze(1) != negative_users.unsqueeze(0)
            hits = torch.cat([torch.zeros_like(positive_ids, dtype=torch.bool).unsqueeze(1), masked], dim=1)  # [N, 1 + M]
            labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)  # [N]
        logits = (logits / self.config.temperature).masked_fill(hits, float("-inf"))
        return F.cross_entropy(logits, labels)

    def _items(self, content: torch.Tensor) -> torch.Tensor:
        """``[*, d]`` unit-length projections of content embeddings."""
        return F.normalize(self.item_projection(content), dim=-1)

    def _impressions(self, content, ids, users, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``[M, d]`` projected impression negatives (one per (user, item id), at most ``max_negatives``),
        their ids and users."""
        if content is None or ids is None:
            raise DataError(
                "next_action_loss.negatives='impressions' needs the batch's impression tokens; use lifelong "
                "batches (data.lifelong.enabled=true) or set next_action_loss.negatives=in_batch"
            )
        if content.dim() != 2 or ids.shape != content.shape[:1] or content.shape[1] != self.item_projection.in_features:
            raise DataError(
                f"impression content must be [M, {self.item_projection.in_features}] with ids [M]; "
                f"got {tuple(content.shape)} and {tuple(ids.shape)}"
            )
        if users is not None and users.shape != ids.shape:
            raise DataError(f"NextActionLoss: negative_users must be [M={ids.shape[0]}], got {tuple(users.shape)}")
        key = ids if users is None else users * (int(ids.max()) + 1 if ids.numel() else 1) + ids  # (user, item)
        _, first = first_occurrences(key)  # [U]
        keep = _draw(first.shape[0], self.config.max_negatives, ids.device, generator)
        if keep is not None:
            first = first[keep]
        return self._items(content[first]), ids[first], (users[first] if users is not None else None)


def positive_engagement(actions: torch.Tensor, action_vocab: Sequence[str], negative_actions: Sequence[str]) -> torch.Tensor:
    """``[V]`` bool: the action bit masks ``[V]`` hold an action outside ``negative_actions``
    (a click, save, ...; not a hide alone, and not an impression without action)."""
    unknown = [a for a in negative_actions if a not in action_vocab]
    if unknown:
        raise ConfigError(f"next_action_loss.negative_actions names {unknown}, not actions of the data "
                          f"{list(action_vocab)}; list negative actions of that vocabulary (e.g. ['hide'])")
    positive_bits = sum(1 << i for i, a in enumerate(action_vocab) if a not in negative_actions)
    return (actions.to(torch.int64) & positive_bits) != 0


def first_occurrences(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(unique ids [U], index of each one's first occurrence in ids [U])``."""
    unique_ids, inverse = torch.unique(ids, return_inverse=True)  # [U], [M]
    positions = torch.arange(ids.shape[0], device=ids.device)  # [M]
    first = torch.full_like(unique_ids, ids.shape[0]).scatter_reduce(0, inverse, positions, reduce="amin")
    return unique_ids, first


def next_token_pairs(eligible: torch.Tensor, newest_first: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (query, next token) pairs of padded rows: consecutive eligible tokens.

    Args:
        eligible: ``[B, L]`` bool, True at the tokens that take part (e.g. the realtime-recent
            engaged tokens of S_all, which are consecutive and in time order).
        newest_first: rows hold the newest token first (TransAct V1): the next action of position
            p is at p - 1; otherwise (oldest first) at p + 1.

    Returns:
        ``row [N]``, ``query position [N]`` and ``next position [N]``, int64::

            eligible [[F, T, T, T]] (oldest first)  ->  rows [0, 0], queries [1, 2], next [2, 3]
    """
    if eligible.dim() != 2:
        raise DataError(f"next_token_pairs: eligible must be [B, L], got {tuple(eligible.shape)}")
    if newest_first:
        query = eligible[:, 1:] & eligible[:, :-1]  # [B, L-1]: position p + 1 with p eligible
        rows, before = query.nonzero(as_tuple=True)
        return rows, before + 1, before
    query = eligible[:, :-1] & eligible[:, 1:]  # [B, L-1]
    rows, position = query.nonzero(as_tuple=True)
    return rows, position, position + 1


def jagged_next_pairs(eligible: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (query, next token) pairs of jagged rows, each oldest first: consecutive eligible
    tokens of one row.

    Args:
        eligible: ``[V]`` bool, True at the tokens that take part.
        lengths: ``[B]`` tokens per row (rows one after the other).

    Returns:
        ``query [N]`` and ``next [N]`` int64 token indices::

            eligible [T, T, T, T, F], lengths [2, 3]  ->  queries [0, 2], next [1, 3]
    """
    if eligible.dim() != 1 or int(lengths.sum()) != eligible.shape[0]:
        raise DataError(f"jagged_next_pairs: eligible must be [V] with V = sum(lengths) = {int(lengths.sum())}, "
                        f"got {tuple(eligible.shape)}")
    row = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths.to(torch.int64))  # [V]
    pair = eligible[:-1] & eligible[1:] & (row[:-1] == row[1:])  # [V - 1]
    query = pair.nonzero().reshape(-1)
    return query, query + 1


def _draw(count: int, cap: int, device, generator) -> torch.Tensor | None:
    """``[cap]`` distinct indices of ``range(count)`` in increasing order, or None when count <= cap."""
    if count <= cap:
        return None
    draw_device = generator.device if generator is not None else device
    chosen = torch.randperm(count, generator=generator, device=draw_device)[:cap]
    return chosen.sort().values.to(device)


def _check_pairs(queries, positive_content, positive_ids) -> None:
    n = queries.shape[0]
    if queries.dim() != 2 or positive_content.dim() != 2 or positive_content.shape[0] != n or positive_ids.shape != (n,):
        raise DataError(
            f"NextActionLoss: queries [N, d], positive_content [N, C] and positive_ids [N] must share N; got "
            f"{tuple(queries.shape)}, {tuple(positive_content.shape)} and {tuple(positive_ids.shape)}"
        )
