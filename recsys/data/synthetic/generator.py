"""The synthetic world as a whole: shards of users streamed in constant memory, and the truth.

:class:`SyntheticWorld` holds the config, the item world and the engagement model. It generates
any contiguous range of users (:meth:`SyntheticWorld.simulate_users`) and answers the ground-truth
probability of each action for any impression (:meth:`SyntheticWorld.action_probabilities`).

:func:`iter_shards` yields one :class:`~recsys.data.schema.EventLog` per ``shard_users`` users,
lazily, so memory depends on the shard size and the item count, never on ``num_users``.
:func:`generate` concatenates all shards (for small configs); :func:`generate_with_probabilities`
also keeps the exact probability every action was drawn with (the oracle of ranking evaluations).

Example::

    config = SyntheticConfig(num_users=100, num_items=500)
    log = generate(config)                      # EventLog sorted by (user, time)
    world = SyntheticWorld(config)
    p = world.action_probabilities(log.user_id, log.item_id, log.timestamp, log.surface)  # [N, 4]

Shape letters: n impressions, N events, A actions, C content dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from recsys.data.schema import DEFAULT_ACTIONS, DEFAULT_SURFACES, EventLog, ItemTable
from recsys.data.synthetic.config import SyntheticConfig
from recsys.data.synthetic.engagement import EngagementModel, action_probabilities, stage_probabilities
from recsys.data.synthetic.seeding import user_rng
from recsys.data.synthetic.sessions import UserPlan, plan_user, show_pages
from recsys.data.synthetic.users import UserProfile, user_profile
from recsys.data.synthetic.world import build_item_world
from recsys.errors import ConfigError, DataError

MAX_GENERATE_USERS = 1_000_000  # generate() holds everything in memory; beyond this use iter_shards


@dataclass
class SyntheticShard:
    """A contiguous range of users with the probabilities their actions were drawn from.

    Args:
        log: the users' events, sorted by (user, time).
        probabilities: ``[N, A]`` float64 exact probability of each action at generation time
            (including the session topic and in-session clicks).
    """

    log: EventLog
    probabilities: np.ndarray


class SyntheticWorld:
    """Items, users and the ground-truth engagement model of one :class:`SyntheticConfig`.

    Args:
        config: the world's configuration (defaults to ``SyntheticConfig()``).
        engagement: coefficients of the action model.
    """

    def __init__(self, config: SyntheticConfig | None = None, engagement: EngagementModel | None = None):
        self.config = config if config is not None else SyntheticConfig()
        self.engagement = engagement if engagement is not None else EngagementModel()
        self.items = build_item_world(self.config)
        self._item_table = self.items.item_table()

    def item_table(self) -> ItemTable:
        """The shared :class:`ItemTable` (content embeddings ``[I, C]``, ``topic``, ``second_topic``)."""
        return self._item_table

    def user_profile(self, user_id: int) -> UserProfile:
        """The interests and activity of ``user_id`` (depends only on the seed and the id)."""
        self._check_users(np.asarray([user_id]))
        return user_profile(self.config, self.items, int(user_id))

    def time_fraction(self, timestamp: np.ndarray) -> np.ndarray:
        """``[n]`` seconds -> ``[n]`` float64 position in the simulated period (0 = start, 1 = end)."""
        c = self.config
        return (np.asarray(timestamp, dtype=np.float64) - c.start_timestamp) / (c.end_timestamp - c.start_timestamp)

    def interest_vectors(self, user_id, timestamp) -> np.ndarray:
        """``[n]`` users and seconds -> ``[n, C]`` float64 unit long-term interest vectors."""
        user_id = np.asarray(user_id, dtype=np.int64)
        t = self.time_fraction(timestamp)
        self._check_users(user_id)
        out = np.empty((user_id.shape[0], self.config.content_dim))
        order = np.argsort(user_id, kind="stable")
        users, starts = np.unique(user_id[order], return_index=True)
        for user, rows in zip(users, np.split(order, starts[1:])):
            out[rows] = user_profile(self.config, self.items, int(user)).interest_vector(self.items, t[rows])
        return out

    def action_probabilities(self, user_id, item_id, timestamp, surface, position=None) -> np.ndarray:
        """True probability of each action for impressions, from the long-term interests only.

        The user's state is the long-term interest vector at ``timestamp``; the session topic and
        the boost from clicks earlier in the session are left out (they are only known while
        generating: :attr:`SyntheticShard.probabilities` holds those exact probabilities).

        Args:
            user_id / item_id / timestamp / surface: ``[n]`` int arrays.
            position: ``[n]`` slot within the page (default 0, the top slot).

        Returns:
            ``[n, A]`` float64 marginal probabilities in ``DEFAULT_ACTIONS`` order.
        """
        item_id = np.asarray(item_id, dtype=np.int64)
        surface = np.asarray(surface, dtype=np.int64)
        n = item_id.shape[0]
        position = np.zeros(n, np.int64) if position is None else np.asarray(position, dtype=np.int64)
        inputs = {"user_id": user_id, "timestamp": timestamp, "surface": surface, "position": position}
        for name, values in inputs.items():
            if np.shape(values) != (n,):
                raise DataError(
                    f"action_probabilities: {name} has shape {np.shape(values)}; pass [{n}] values like item_id"
                )
        _check_range("item_id", item_id, self.config.num_items)
        _check_range("surface", surface, len(DEFAULT_SURFACES))
        state = self.interest_vectors(user_id, timestamp)  # [n, C]
        affinity = np.einsum("nc,nc->n", state, self.items.content_embedding[item_id])
        stages = stage_probabilities(self.engagement, affinity, self.items.quality[item_id], surface, position)
        return action_probabilities(stages)

    def simulate_users(self, first_user: int, stop_user: int) -> SyntheticShard:
        """Generates users ``first_user..stop_user-1`` as one shard."""
        if not 0 <= first_user < stop_user <= self.config.num_users:
            raise ConfigError(
                f"user range {first_user}..{stop_user} is outside 0..{self.config.num_users}; "
                "pick a range within num_users"
            )
        users = np.arange(first_user, stop_user, dtype=np.int64)
        plans = [self._plan(int(user)) for user in users]
        shown = show_pages(self.config, self.items, self.engagement, plans)
        counts = np.array([plan.num_events for plan in plans], dtype=np.int64)
        user_id = np.repeat(users, counts)
        page = np.concatenate([plan.page for plan in plans])
        log = EventLog(
            user_id=user_id,
            item_id=shown.item_id,
            timestamp=np.concatenate([plan.timestamp for plan in plans]),
            actions=shown.actions,
            surface=np.concatenate([plan.surface[plan.session] for plan in plans]),
            impression=np.ones(user_id.shape[0], bool),
            num_users=self.config.num_users,
            num_items=self.config.num_items,
            action_vocab=DEFAULT_ACTIONS,
            surface_vocab=DEFAULT_SURFACES,
            items=self._item_table,
            request_id=user_id * self.config.max_events_per_user + page,
        )
        return SyntheticShard(log=log, probabilities=shown.probabilities)

    def _plan(self, user: int) -> UserPlan:
        rng = user_rng(self.config.seed, user)
        return plan_user(self.config, self.items, user_profile(self.config, self.items, user, rng), rng)

    def _check_users(self, user_id: np.ndarray) -> None:
        _check_range("user_id", user_id, self.config.num_users)


def iter_shards(config: SyntheticConfig | None = None, world: SyntheticWorld | None = None) -> Iterator[EventLog]:
    """Yields one :class:`EventLog` per ``config.shard_users`` users, lazily, in user order.

    All shards share ``num_users``, ``num_items`` and the :class:`ItemTable`. Only one shard is
    in memory at a time (plus the item world); a user's events do not depend on the shard size.

    Args:
        config: the world to generate (default ``SyntheticConfig()``).
        world: an already built :class:`SyntheticWorld` to reuse; its config is used.
    """
    world = world if world is not None else SyntheticWorld(config)
    config = world.config
    for first in range(0, config.num_users, config.shard_users):
        yield world.simulate_users(first, min(first + config.shard_users, config.num_users)).log


def generate(config: SyntheticConfig | None = None) -> EventLog:
    """All users of ``config`` as one validated :class:`EventLog` (for small configs)."""
    return generate_with_probabilities(config).log


def generate_with_probabilities(config: SyntheticConfig | None = None) -> SyntheticShard:
    """All users of ``config`` as one :class:`SyntheticShard`: the validated log (the same as
    :func:`generate`'s) and ``probabilities [N, A]``, the exact probability each event's actions
    were drawn with (slot, surface, session topic and in-session clicks included)."""
    config = config if config is not None else SyntheticConfig()
    if config.num_users > MAX_GENERATE_USERS:
        raise ConfigError(
            f"generate() holds all {config.num_users} users in memory; for more than {MAX_GENERATE_USERS} "
            "users stream them with iter_shards(config)"
        )
    world = SyntheticWorld(config)
    step = config.shard_users
    shards = [world.simulate_users(first, min(first + step, config.num_users)) for first in range(0, config.num_users, step)]
    log = EventLog.concatenate([shard.log for shard in shards])
    log.validate()
    return SyntheticShard(log=log, probabilities=np.concatenate([shard.probabilities for shard in shards]))


def _check_range(name: str, values: np.ndarray, size: int) -> None:
    values = np.asarray(values)
    if values.size and (values.min() < 0 or values.max() >= size):
        raise DataError(f"{name} holds values outside 0..{size - 1}; pass ids within the synthetic world's range")
