"""The knobs of the synthetic feed world, as one typed dataclass.

Defaults describe a small Pinterest-style feed (2,000 users, 5,000 items, 32 topics, two years
of sessions on the home, search and related surfaces) that generates in a few seconds. Every
field is checked by :meth:`SyntheticConfig.validate`, which raises a
:class:`~recsys.errors.ConfigError` naming the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from recsys.data.schema import DEFAULT_CONTENT_DIM, DEFAULT_SURFACES
from recsys.errors import ConfigError

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class SyntheticConfig:
    """Configuration of the synthetic user-behaviour generator.

    Args:
        num_users: users ``0..num_users-1`` (10^3 .. 10^8; users are generated shard by shard).
        num_items: items ``0..num_items-1``.
        num_topics: number of topics; each item has a main topic (item attribute ``"topic"``).
        content_dim: dimension C of the unit-norm item content embedding.
        seed: master seed; a user's events depend only on ``(seed, user_id)``.
        shard_users: users per shard yielded by :func:`iter_shards`.
        start_timestamp: first second of the simulated period (default 2022-01-01 00:00 UTC).
        days: length of the simulated period in days.
        zipf_exponent: item popularity is proportional to ``rank ** -zipf_exponent``.
        second_topic_prob: probability that an item also belongs to a second topic.
        embedding_noise: std of the isotropic noise added to an item's topic mix (before norm).
        min_interests / max_interests: number of long-term interests (topics) per user.
        mean_events_per_user: mean impressions per ordinary user (log-normal activity).
        activity_sigma: sigma of the log-normal activity level across users.
        heavy_user_fraction: fraction of users with a very long history (drawn per user).
        heavy_users: users ``0..heavy_users-1`` are heavy users whatever their draw, so that small
            worlds hold a fixed number of long histories on every seed.
        heavy_user_events: mean number of impressions of a heavy user.
        max_events_per_user: hard cap on a user's impressions (also bounds shard memory).
        mean_session_impressions: mean impressions per session (sessions hold 2..20).
        max_session_impressions: most impressions in one session.
        page_size_min / page_size_max: impressions per request (one feed page).
        distinct_page_items: True (the default, as a real feed) = a page never shows an item twice:
            a slot drawing an item already on its page redraws (same slot kind and topic, up to
            ``PAGE_REDRAWS`` times, then the next item id not on the page); needs ``num_items >=
            page_size_max``. False = every slot is drawn independently, so a page may repeat an
            item (the generator's behaviour before this option; the same events as then).
        surface_probs: probability of a session on each surface of ``DEFAULT_SURFACES``.
        session_stickiness: probability that a session within a day of the previous one keeps
            its dominant topic.
        explore_session_prob: probability that a session follows a random topic.
        click_boost: probability that a slot after a click shows an item of the clicked item's topic.
    """

    num_users: int = 2000
    num_items: int = 5000
    num_topics: int = 32
    content_dim: int = DEFAULT_CONTENT_DIM
    seed: int = 0
    shard_users: int = 1000
    start_timestamp: int = 1_640_995_200
    days: int = 730
    zipf_exponent: float = 1.1
    second_topic_prob: float = 0.3
    embedding_noise: float = 0.5
    min_interests: int = 1
    max_interests: int = 5
    mean_events_per_user: float = 200.0
    activity_sigma: float = 1.0
    heavy_user_fraction: float = 0.01
    heavy_users: int = 0
    heavy_user_events: int = 12_000
    max_events_per_user: int = 100_000
    mean_session_impressions: float = 9.0
    max_session_impressions: int = 20
    page_size_min: int = 5
    page_size_max: int = 10
    distinct_page_items: bool = True
    surface_probs: tuple[float, ...] = (0.6, 0.25, 0.15)
    session_stickiness: float = 0.5
    explore_session_prob: float = 0.1
    click_boost: float = 0.6

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_surfaces(self) -> int:
        return len(DEFAULT_SURFACES)

    @property
    def end_timestamp(self) -> int:
        """One past the last second of the simulated period."""
        return self.start_timestamp + self.days * SECONDS_PER_DAY

    def validate(self) -> None:
        """Raises :class:`ConfigError` naming the first bad field and the fix."""
        for name in ("num_users", "num_items", "num_topics", "content_dim", "shard_users", "days",
                     "min_interests", "max_events_per_user", "max_session_impressions",
                     "page_size_min", "heavy_user_events"):
            _require(self, getattr(self, name) >= 1, name, "must be >= 1")
        _require(self, self.num_items >= self.num_topics, "num_items", f"must be >= num_topics ({self.num_topics})")
        _require(self, self.seed >= 0, "seed", "must be a non-negative integer")
        _require(self, self.start_timestamp >= 0, "start_timestamp", "must be seconds since the epoch (>= 0)")
        _require(self, self.zipf_exponent > 0, "zipf_exponent", "must be > 0 (about 1.0-1.2 for feeds)")
        _require(self, self.max_interests >= self.min_interests, "max_interests", "must be >= min_interests")
        _require(self, self.max_interests <= self.num_topics, "max_interests", "must be <= num_topics")
        _require(self, self.mean_events_per_user >= 1, "mean_events_per_user", "must be >= 1")
        _require(self, self.activity_sigma >= 0, "activity_sigma", "must be >= 0")
        _require(self, self.embedding_noise >= 0, "embedding_noise", "must be >= 0")
        _require(self, 0 <= self.heavy_users <= self.num_users, "heavy_users",
                 f"must lie between 0 and num_users ({self.num_users})")
        _require(self, self.heavy_user_events <= self.max_events_per_user, "heavy_user_events",
                 f"must be <= max_events_per_user ({self.max_events_per_user})")
        _require(self, self.page_size_max >= self.page_size_min, "page_size_max", "must be >= page_size_min")
        _require(self, isinstance(self.distinct_page_items, bool), "distinct_page_items", "must be true or false")
        _require(self, not self.distinct_page_items or self.num_items >= self.page_size_max, "distinct_page_items",
                 f"needs num_items >= page_size_max ({self.page_size_max}) to fill a page with distinct items; "
                 "raise num_items, lower page_size_max or set distinct_page_items=false")
        _require(self, self.max_session_impressions >= 2, "max_session_impressions", "must be >= 2")
        _require(self, 2 <= self.mean_session_impressions <= self.max_session_impressions, "mean_session_impressions",
                 "must lie between 2 and max_session_impressions")
        for name in ("second_topic_prob", "heavy_user_fraction", "session_stickiness",
                     "explore_session_prob", "click_boost"):
            _require(self, 0.0 <= getattr(self, name) <= 1.0, name, "must be a probability in [0, 1]")
        _require(self, len(self.surface_probs) == self.num_surfaces and min(self.surface_probs) >= 0
                 and sum(self.surface_probs) > 0, "surface_probs",
                 f"must hold {self.num_surfaces} non-negative weights, one per surface {list(DEFAULT_SURFACES)}")

    def replace(self, **overrides) -> "SyntheticConfig":
        """A copy with ``overrides`` applied; unknown names raise :class:`ConfigError`."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"SyntheticConfig has no field(s) {unknown}; known fields: {sorted(known)}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(overrides)
        return SyntheticConfig(**values)


def _require(config: SyntheticConfig, ok: bool, name: str, rule: str) -> None:
    if not ok:
        value = getattr(config, name)
        raise ConfigError(f"SyntheticConfig.{name}={value!r} {rule}; set {name} to a valid value")
