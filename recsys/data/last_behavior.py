"""The MIMN paper's evaluation protocol: each user's last behaviour against one sampled negative.

Pi et al., KDD 2019 (arXiv 1905.09248), §5.1: "a user u with T behaviours: the first T-1 behaviours
predict whether u interacts with the T-th"; each positive is paired with one item the user did not
interact with; the metric is AUC. ``data.protocol: last_behavior`` builds these rows for every
behaviour-sequence model of the zoo (``mimn``, ``din``, ``emb_mlp``, ``gru4rec``) through the normal
``recsys train``.

A *behaviour* is an event carrying ``behavior_action`` (or any action when None). Per user, with
its behaviours b_1 .. b_T in time order (users whose b_{T-1} sees fewer than ``min_sequence``
behaviours give no rows)::

    b_1 ... b_{T-k-2}  b_{T-k-1} ... b_{T-2}   b_{T-1}     b_T
    only history        train targets          valid target test target

- every target is a positive row (its actions as labels) plus ``negatives`` rows, all labels 0,
  same request, of items the user never interacted with: no engaged event (any action) with the
  item anywhere in the log, before or after the target. An item only shown to the user
  (an impression without action) may be a negative; excluding impressions too would, on a feed
  where a user is shown much of the catalogue, leave only the unpopular tail as negatives. The
  exclusion set is the user's whole set of interacted items, so it never depends on which event
  is the target. ``negative_sampling``: ``popularity`` (default, the paper's public code: items
  drawn in proportion to their interactions in the log, so a negative is as popular as a positive
  and only the user's interests tell them apart; the code excludes only the target item, we
  exclude every item the user interacted with) or ``uniform`` over those items
  (:func:`~recsys.data.examples.sample_unseen_items` on the interactions). Seeds: train ``seed``, valid ``seed + 1``,
  test ``seed + 2`` (same seed, same rows).
- a row's sequence is the user's engaged events strictly before its request start (for a log
  without request ids: before the target's timestamp), as for every ranking row
  (:class:`~recsys.data.examples.RankingExamples`): nothing at or after the target is visible.
- train targets: the ``train_targets_per_user`` latest behaviours before the valid target (0 = all
  of them) whose sequence holds at least ``min_sequence`` behaviours.
- the split is by time within each user: every train target of a user precedes its valid target,
  which precedes its test target (ties allowed, never seen: strictly-earlier sequences). The
  split's event sets (:class:`~recsys.data.splits.Split`, for the popularity baseline and the user
  weights) are the user's events before the valid target (train), from it up to the test target
  (valid), and from the test target on (test); users with too few behaviours stay in train.

Why per-user rather than one global time cut: the paper evaluates every user's last behaviour, and
a global cut would leave the users whose history ends before it without a test row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from recsys.data.examples import RankingExamples, first_position_at_or_after, sample_unseen_items
from recsys.data.request_time import event_request_start
from recsys.data.features import FeatureSpec
from recsys.data.schema import EventLog
from recsys.data.splits import Split
from recsys.errors import ConfigError, DataError

PROTOCOL = "last_behavior"


@dataclass
class LastBehaviorConfig:
    """``data.last_behavior``: the rows of ``data.protocol: last_behavior``.

    Args:
        behavior_action: the action that makes an event a behaviour (a target or part of the
            count), e.g. ``click`` on the synthetic feed, ``rate`` on MovieLens; None = any action.
        min_sequence: behaviours a target needs in its sequence, i.e. strictly before its request
            start (>= 1; the paper drops Amazon samples with fewer than 20). A user gives rows when
            its valid target has them.
        train_targets_per_user: latest behaviours before the valid target that become training
            targets (>= 0; 0 = all that have ``min_sequence`` behaviours before them).
        negatives: sampled negative rows per target (>= 1; the paper: 1).
        negative_sampling: "popularity" (items in proportion to their interactions in the log, the
            paper's code) or "uniform", both over the items the user never interacted with.
    """

    behavior_action: str | None = None
    min_sequence: int = 1
    train_targets_per_user: int = 0
    negatives: int = 1
    negative_sampling: Literal["popularity", "uniform"] = "popularity"

    def __post_init__(self) -> None:
        if self.negative_sampling not in ("popularity", "uniform"):
            raise ConfigError(f"data.last_behavior.negative_sampling={self.negative_sampling!r} must be "
                              "'popularity' or 'uniform'")
        for name, low in (("min_sequence", 1), ("train_targets_per_user", 0), ("negatives", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"data.last_behavior.{name}={value!r} must be an integer >= {low}; "
                                  f"e.g. data.last_behavior.{name}={max(low, 1)}")


@dataclass
class LastBehaviorTargets:
    """Event indices into the log (sorted): the protocol's targets and its split."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    split: Split


def behavior_mask(log: EventLog, behavior_action: str | None) -> np.ndarray:
    """``[N]`` bool: the events that are behaviours (carry ``behavior_action``, or any action)."""
    if behavior_action is None:
        return log.engaged()
    if behavior_action not in log.action_vocab:
        raise ConfigError(f"data.last_behavior.behavior_action={behavior_action!r} is not an action of the data "
                          f"{list(log.action_vocab)}; name one of them, or null for any action")
    return (log.actions & (1 << log.action_vocab.index(behavior_action))) != 0


def last_behavior_targets(log: EventLog, config: LastBehaviorConfig) -> LastBehaviorTargets:
    """The train / valid / test targets and the split of the protocol (module docstring)."""
    behaviors = np.flatnonzero(behavior_mask(log, config.behavior_action))  # [E] grouped by user, in time order
    user = log.user_id[behaviors]
    counts = np.bincount(user, minlength=log.num_users)  # [U]
    rank = np.arange(len(behaviors)) - (np.cumsum(counts) - counts)[user]  # [E] 0-based index within the user
    total = counts[user]  # [E]
    visible = visible_behaviors(log, behaviors)  # [E] behaviours in each one's sequence
    is_valid = rank == total - 2
    eligible_user = np.zeros(log.num_users, bool)
    eligible_user[user[is_valid & (visible >= config.min_sequence)]] = True
    eligible = eligible_user[user]
    test = behaviors[eligible & (rank == total - 1)]
    valid = behaviors[eligible & is_valid]
    train_rank = eligible & (rank <= total - 3) & (visible >= config.min_sequence)
    if config.train_targets_per_user:
        train_rank &= rank >= total - 2 - config.train_targets_per_user
    never = np.iinfo(np.int64).max
    valid_start, test_start = np.full(log.num_users, never), np.full(log.num_users, never)
    valid_start[log.user_id[valid]], test_start[log.user_id[test]] = valid, test
    position = np.arange(len(log))
    labels = np.zeros(len(log), np.int8)
    labels[position >= valid_start[log.user_id]] = 1
    labels[position >= test_start[log.user_id]] = 2
    return LastBehaviorTargets(behaviors[train_rank], valid, test, Split.from_labels(labels))


def visible_behaviors(log: EventLog, behaviors: np.ndarray) -> np.ndarray:
    """``[E]`` for each behaviour event (sorted log positions), how many of its user's behaviours lie
    strictly before its request start: those a row of it would see in its sequence."""
    starts = event_request_start(log)[behaviors]  # [E]
    end = first_position_at_or_after(log, log.user_id[behaviors], starts)  # [E] one past the visible events
    first = log.user_offsets()[log.user_id[behaviors]]  # [E] the user's first event
    return np.searchsorted(behaviors, end) - np.searchsorted(behaviors, first)


def build_last_behavior_examples(log: EventLog, spec: FeatureSpec, config: LastBehaviorConfig, seed: int,
                                 user_weights: np.ndarray | None = None) -> tuple[LastBehaviorTargets, dict[str, RankingExamples]]:
    """The protocol's targets and its train / valid / test rows (each target, then its negatives)."""
    targets = last_behavior_targets(log, config)
    if len(targets.test) == 0:
        raise DataError(f"no user has {config.min_sequence} behaviours before its second-to-last one "
                        f"(data.last_behavior.behavior_action={config.behavior_action!r}), so the last-behaviour "
                        "protocol has no test row; lower data.last_behavior.min_sequence or use more data")
    interactions = log.take(np.flatnonzero(log.engaged()))  # same id spaces: what "interacted" means
    draw = sample_unseen_items_by_popularity if config.negative_sampling == "popularity" else sample_unseen_items

    def sampler(_, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return draw(interactions, users, rng)

    rows = {
        name: RankingExamples.build(log, getattr(targets, name), spec, negatives_per_target=config.negatives,
                                    seed=seed + offset, user_weights=user_weights, negative_sampler=sampler)
        for offset, name in enumerate(("train", "valid", "test"))
    }
    return targets, rows


def sample_unseen_items_by_popularity(log: EventLog, users: np.ndarray, rng: np.random.Generator,
                                      max_rounds: int = 64) -> np.ndarray:
    """One item per entry of ``users``, drawn in proportion to the item's events in ``log`` among the
    items that user has no event with (rejection: redraw the entries that hit a seen item).

    Entries still unresolved after ``max_rounds`` (a user who has seen nearly every popular item)
    take a uniform unseen item (:func:`~recsys.data.examples.sample_unseen_items`).

    Args:
        log: the event log (item popularity and what each user has seen).
        users: ``[M]`` int64 user ids.
        rng: numpy random generator.

    Returns:
        ``[M]`` int64 item ids.
    """
    users = np.asarray(users, dtype=np.int64)
    num_items = log.num_items
    seen = np.unique(log.user_id * num_items + log.item_id)  # [P] sorted (user, item) keys
    cumulative = np.cumsum(np.bincount(log.item_id, minlength=num_items).astype(np.float64))  # [I]

    def draw(count: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cumulative, rng.random(count) * cumulative[-1], side="right"), num_items - 1)

    def is_seen(rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users[rows] * num_items + items
        at = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
        return seen[at] == keys

    items = np.empty(len(users), dtype=np.int64)
    pending = np.arange(len(users))
    for _ in range(max_rounds):
        if len(pending) == 0:
            return items
        items[pending] = draw(len(pending))
        pending = pending[is_seen(pending, items[pending])]
    if len(pending):
        items[pending] = sample_unseen_items(log, users[pending], rng)
    return items
