"""One user's sessions: when they happen, what the feed shows, and how the user engages.

A user's impressions are split into short sessions (2..``max_session_impressions``), each on one
surface (home, search, related) at a time drawn over the user's active days with a daily rhythm.
A session has a dominant topic: one of the user's interests at that time (by weight), a random
topic (exploration), or, for a session within a day of the previous one, often that session's topic.

Each session is shown page by page (one ``request_id`` per page of ``page_size_min..page_size_max``
impressions). A slot holds an item of the session topic, of another long-term interest, a popular
item, or a uniformly random item, in proportions that depend on the surface. Items within a topic
are drawn by popularity. With ``distinct_page_items`` (the default) a page shows each item at most
once: a slot that draws an item already on its page redraws it.

Engagement uses the user's current state: the long-term interest vector, plus the session topic's
centroid, plus the embedding of the item clicked last in the session. Clicks also steer
the next pages: any slot after a click shows an item of the last clicked item's topic with
probability ``click_boost``. This short-term feedback is what sequence models can learn.

Shape letters: S sessions, n impressions, K interests, C content dimension, A actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.data.schema import DEFAULT_ACTIONS
from recsys.data.synthetic.config import SECONDS_PER_DAY, SyntheticConfig
from recsys.data.synthetic.engagement import (
    EngagementModel,
    action_probabilities,
    draw_actions,
    stage_probabilities,
)
from recsys.data.synthetic.users import UserProfile
from recsys.data.synthetic.world import ItemWorld

# Relative session volume per hour of day: quiet nights, a lunch bump, an evening peak.
HOUR_WEIGHTS = np.array([3, 2, 1, 1, 1, 1, 2, 4, 5, 5, 5, 6, 8, 7, 5, 5, 5, 6, 8, 10, 11, 10, 8, 5], float)
HOUR_WEIGHTS /= HOUR_WEIGHTS.sum()
HOUR_CDF = np.cumsum(HOUR_WEIGHTS)

SESSION_TOPIC, LONG_TERM, POPULAR, EXPLORE = range(4)
# Slot kind mix per surface (rows: home, search, related; columns: the four kinds above).
SLOT_MIX = np.array([[0.45, 0.25, 0.20, 0.10], [0.80, 0.05, 0.10, 0.05], [0.70, 0.10, 0.15, 0.05]])
SLOT_CDF = np.cumsum(SLOT_MIX, axis=1)

SESSION_WEIGHT = 1.0  # weight of the session topic centroid in the user's current state
CLICK_WEIGHT = 0.8  # weight of the embedding of the session's last clicked item
MEAN_IMPRESSION_GAP_S = 6.0
MEAN_PAGE_GAP_S = 20.0
MIN_SESSION_GAP_S = 60
PAGE_REDRAWS = 16  # redraws of a slot that repeats an item of its page, before the next free item id


@dataclass
class UserPlan:
    """Everything about one user's impressions that does not depend on earlier clicks.

    Per impression (``[n]``): ``session`` (index within the user), ``page_in_session``, ``slot``
    (position in the page), ``page`` (request index within the user), ``timestamp`` (int64 seconds,
    non-decreasing), ``kind`` (slot kind), ``long_term_topic`` (topic for ``LONG_TERM`` slots), and
    the uniforms ``item_uniform``, ``boost_uniform``, ``action_uniform`` (``[n, 3]``) and
    ``redraw_uniform`` (``[n, PAGE_REDRAWS]``, or ``[n, 0]`` without ``distinct_page_items``).
    Per session (``[S]``): ``topic``, ``surface`` and ``base_state`` (``[S, C]``: long-term
    interest vector plus the session topic's centroid).
    """

    session: np.ndarray
    page_in_session: np.ndarray
    slot: np.ndarray
    page: np.ndarray
    timestamp: np.ndarray
    kind: np.ndarray
    long_term_topic: np.ndarray
    item_uniform: np.ndarray
    boost_uniform: np.ndarray
    action_uniform: np.ndarray
    redraw_uniform: np.ndarray
    topic: np.ndarray
    surface: np.ndarray
    base_state: np.ndarray

    @property
    def num_events(self) -> int:
        return int(self.session.shape[0])


@dataclass
class ShownPages:
    """What the feed showed and what the users did, each ``[n]`` (``probabilities``: ``[n, A]``)."""

    item_id: np.ndarray
    actions: np.ndarray
    probabilities: np.ndarray


@dataclass
class _Layout:
    """Where each impression sits: its session, page and slot, each ``[n]`` int64."""

    session: np.ndarray
    page_in_session: np.ndarray
    slot: np.ndarray
    page: np.ndarray


def plan_user(config: SyntheticConfig, world: ItemWorld, profile: UserProfile, rng: np.random.Generator) -> UserPlan:
    """Draws a user's sessions, times, slot kinds and uniforms from the user's stream ``rng``."""
    lengths = _session_lengths(rng, config, profile.num_events)  # [S]
    num_sessions = lengths.shape[0]
    per_session = rng.random((num_sessions, 9))  # one block of uniforms, one column per use
    surface = _inverse_cdf(np.cumsum(_normalised(config.surface_probs)), per_session[:, 0])
    size_range = config.page_size_max - config.page_size_min + 1
    page_size = config.page_size_min + (per_session[:, 1] * size_range).astype(np.int64)  # [S]
    layout = _layout(lengths, page_size)
    n = layout.session.shape[0]
    per_event = rng.random((n, 9))  # one block of uniforms, one column per use
    offset = _offsets_in_session(layout, lengths, per_event[:, 7:9])  # [n] seconds since session start
    duration = offset[np.cumsum(lengths) - 1] + 1  # [S]
    start = _session_starts(config, profile.join, duration, per_session[:, 2:5])  # [S]
    t = (start - config.start_timestamp) / (config.end_timestamp - config.start_timestamp)  # [S]
    weights = profile.interest_weights(t)  # [S, K]
    topic = _session_topics(config, world, profile, weights, start, per_session[:, 5:9])  # [S]
    long_term = profile.interest_vector(world, t, weights)  # [S, C]
    long_term_topic = profile.topics[_categorical(weights[layout.session], per_event[:, 0])]  # [n]
    # Drawn last, so the draws above (and the events without distinct_page_items) do not change.
    redraw = rng.random((n, PAGE_REDRAWS if config.distinct_page_items else 0))
    return UserPlan(
        session=layout.session,
        page_in_session=layout.page_in_session,
        slot=layout.slot,
        page=layout.page,
        timestamp=np.minimum(start[layout.session] + offset, config.end_timestamp - 1),
        kind=_inverse_cdf(SLOT_CDF[surface[layout.session]], per_event[:, 1]),
        long_term_topic=long_term_topic,
        item_uniform=per_event[:, 2],
        boost_uniform=per_event[:, 3],
        action_uniform=per_event[:, 4:7],
        redraw_uniform=redraw,
        topic=topic,
        surface=surface,
        base_state=long_term + SESSION_WEIGHT * world.topic_centroids[topic],
    )


def _session_lengths(rng: np.random.Generator, config: SyntheticConfig, num_events: int) -> np.ndarray:
    """``[S]`` session lengths (2..max, geometric-like; the last may be cut) summing to ``num_events``."""
    p = 1.0 / (config.mean_session_impressions - 1.0)
    chunks, total = [], 0
    while total < num_events:
        chunk = np.minimum(1 + rng.geometric(p, size=int(num_events / config.mean_session_impressions) + 8),
                           config.max_session_impressions)
        chunks.append(chunk)
        total += int(chunk.sum())
    lengths = np.concatenate(chunks)
    ends = np.cumsum(lengths)
    num_sessions = int(np.searchsorted(ends, num_events)) + 1
    lengths = lengths[:num_sessions].copy()
    lengths[-1] -= int(ends[num_sessions - 1]) - num_events
    return lengths.astype(np.int64)


def _layout(lengths: np.ndarray, page_size: np.ndarray) -> _Layout:
    session = np.repeat(np.arange(lengths.shape[0]), lengths)  # [n]
    first = np.cumsum(lengths) - lengths  # [S]
    position = np.arange(session.shape[0]) - first[session]
    size = page_size[session]
    pages_per_session = -(-lengths // page_size)  # ceil
    page_in_session = position // size
    page = (np.cumsum(pages_per_session) - pages_per_session)[session] + page_in_session
    return _Layout(session=session, page_in_session=page_in_session, slot=position % size, page=page)


def _offsets_in_session(layout: _Layout, lengths: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """``[n]`` int64 seconds from session start: a few seconds per impression, more per new page.

    ``uniforms``: ``[n, 2]`` in [0, 1), turned into exponential gaps.
    """
    exponential = -np.log1p(-uniforms)  # [n, 2] unit exponentials
    gaps = 1.0 + MEAN_IMPRESSION_GAP_S * exponential[:, 0]
    gaps += ((layout.slot == 0) & (layout.page_in_session > 0)) * MEAN_PAGE_GAP_S * exponential[:, 1]
    first = np.cumsum(lengths) - lengths
    gaps[first] = 0.0
    elapsed = np.cumsum(gaps)
    return (elapsed - elapsed[first][layout.session]).astype(np.int64)


def _session_starts(config: SyntheticConfig, join: float, duration: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """``[S]`` int64 session start times: days over the active span, hours by ``HOUR_WEIGHTS``.

    ``uniforms``: ``[S, 3]`` in [0, 1) for the day, the hour and the second within the hour.
    Sessions never overlap: each starts at least ``MIN_SESSION_GAP_S`` after the previous one ends.
    """
    day = np.floor((join + (1.0 - join) * uniforms[:, 0]) * config.days).astype(np.int64)
    hour = _inverse_cdf(HOUR_CDF, uniforms[:, 1])
    second = hour * 3600 + (uniforms[:, 2] * 3600).astype(np.int64)
    start = np.sort(config.start_timestamp + day * SECONDS_PER_DAY + second)
    # Push starts forward so that start[s] >= start[s-1] + span[s-1], keeping as early as possible.
    span = duration + MIN_SESSION_GAP_S
    before = np.cumsum(span) - span  # total span of the earlier sessions
    return before + np.maximum.accumulate(start - before)


def _session_topics(config, world: ItemWorld, profile: UserProfile, weights, start, uniforms) -> np.ndarray:
    """``[S]`` dominant topic per session: an interest by ``[S, K]`` weights, a random topic, or the previous one.

    ``uniforms``: ``[S, 4]`` in [0, 1).
    """
    num_sessions = weights.shape[0]
    fresh = profile.topics[_categorical(weights, uniforms[:, 0])]
    explore = uniforms[:, 1] < config.explore_session_prob
    random_topic = world.item_topic[world.sample_popular(uniforms[:, 2])]
    fresh = np.where(explore, random_topic, fresh)
    close = np.diff(start, prepend=start[0] - SECONDS_PER_DAY) < SECONDS_PER_DAY
    stay = close & (uniforms[:, 3] < config.session_stickiness)
    stay[0] = False
    source = np.maximum.accumulate(np.where(stay, 0, np.arange(num_sessions)))
    return fresh[source]


def show_pages(config: SyntheticConfig, world: ItemWorld, model: EngagementModel, plans: list[UserPlan]) -> ShownPages:
    """Fills the pages of all ``plans`` and draws engagement, vectorised over their sessions.

    Pages are shown in order (page 0 of every session, then page 1, ...); clicks on one page change
    the state and the topical slots of the session's later pages. Each user's outcome depends only
    on its own plan, so batching users together changes nothing.
    """
    plan = _stack(plans)
    n = plan.num_events
    items = np.empty(n, np.int64)
    actions = np.empty(n, np.int32)
    probs = np.empty((n, len(DEFAULT_ACTIONS)))
    last_click = np.full(plan.topic.shape[0], -1, np.int64)  # [S] last clicked item of each session
    order = np.argsort(plan.page_in_session, kind="stable")
    bounds = np.searchsorted(plan.page_in_session[order], np.arange(plan.page_in_session.max(initial=0) + 2))
    for page in range(bounds.shape[0] - 1):
        idx = order[bounds[page] : bounds[page + 1]]  # impressions on this page of each session
        s = plan.session[idx]
        previous = last_click[s]
        has_click = previous >= 0
        boosted = has_click & (plan.boost_uniform[idx] < config.click_boost)  # slot follows the last click
        kind = np.where(boosted, SESSION_TOPIC, plan.kind[idx])
        slot_topic = np.where(kind == LONG_TERM, plan.long_term_topic[idx], plan.topic[s])
        slot_topic = np.where(boosted, world.item_topic[previous], slot_topic)
        shown = _sample_items(world, kind, slot_topic, plan.item_uniform[idx])
        if config.distinct_page_items:
            shown = _distinct_on_page(world, s, kind, slot_topic, shown, plan.redraw_uniform[idx])
        state = plan.base_state[s] + (CLICK_WEIGHT * has_click)[:, None] * world.content_embedding[previous]
        state /= np.linalg.norm(state, axis=1, keepdims=True)
        affinity = np.einsum("nc,nc->n", state, world.content_embedding[shown])
        stages = stage_probabilities(model, affinity, world.quality[shown], plan.surface[s], plan.slot[idx])
        drawn = draw_actions(stages, plan.action_uniform[idx])
        items[idx], actions[idx], probs[idx] = shown, drawn, action_probabilities(stages)
        clicked = (drawn & 1).astype(bool)
        last_click[s[clicked]] = shown[clicked]  # the last click on the page wins
    return ShownPages(item_id=items, actions=actions, probabilities=probs)


def _stack(plans: list[UserPlan]) -> UserPlan:
    """One plan over all users; session indices are shifted to be unique across users."""
    session_counts = np.array([p.topic.shape[0] for p in plans], dtype=np.int64)
    session_base = np.cumsum(session_counts) - session_counts
    per_event = lambda name: np.concatenate([getattr(p, name) for p in plans])
    return UserPlan(
        session=np.concatenate([p.session + base for p, base in zip(plans, session_base)]),
        **{name: per_event(name) for name in ("page_in_session", "slot", "page", "timestamp", "kind",
                                             "long_term_topic", "item_uniform", "boost_uniform",
                                             "action_uniform", "redraw_uniform", "topic", "surface", "base_state")},
    )


def _sample_items(world: ItemWorld, kind: np.ndarray, topic: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """``[n]`` items for slots of ``kind`` (topical kinds use ``topic``), from ``[n]`` uniforms."""
    items = np.empty(kind.shape[0], np.int64)
    topical = kind <= LONG_TERM
    popular = kind == POPULAR
    explore = kind == EXPLORE
    items[topical] = world.sample_in_topic(topic[topical], uniform[topical])
    items[popular] = world.sample_popular(uniform[popular])
    items[explore] = world.sample_uniform(uniform[explore])
    return items


def _distinct_on_page(world: ItemWorld, page: np.ndarray, kind: np.ndarray, topic: np.ndarray, items: np.ndarray,
                      uniforms: np.ndarray) -> np.ndarray:
    """``[m]`` items of the slots of pages ``page [m]`` (slots in page order) with no item twice on a page.

    A slot showing an item of an earlier slot of its page redraws with its kind and topic from
    the next column of ``uniforms [m, R]``; after R rounds a slot still repeating takes the next
    item id (mod I) not on its page. Each page depends only on its own slots and uniforms.
    """
    items = items.copy()
    for column in range(uniforms.shape[1]):
        repeat = _repeats_on_page(page, items, world.num_items)
        if not repeat.any():
            return items
        items[repeat] = _sample_items(world, kind[repeat], topic[repeat], uniforms[repeat, column])
    while (repeat := _repeats_on_page(page, items, world.num_items)).any():
        items[repeat] = (items[repeat] + 1) % world.num_items
    return items


def _repeats_on_page(page: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """``[m]`` bool: the slot shows an item that an earlier slot (array order) of its page shows."""
    _, first = np.unique(page * num_items + items, return_index=True)
    repeat = np.ones(items.shape[0], dtype=bool)
    repeat[first] = False
    return repeat


def _categorical(weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One draw per row of ``[n, K]`` non-negative weights, from ``[n]`` uniforms -> ``[n]`` int64."""
    cumulative = np.cumsum(weights, axis=1)
    return _inverse_cdf(cumulative / cumulative[:, -1:], uniforms)


def _inverse_cdf(cdf: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """``[K]`` or ``[n, K]`` cumulative probabilities and ``[n]`` uniforms -> ``[n]`` int64 indices."""
    index = (uniforms[:, None] >= cdf).sum(axis=1) if cdf.ndim == 2 else np.searchsorted(cdf, uniforms, side="right")
    return np.minimum(index, cdf.shape[-1] - 1).astype(np.int64)


def _normalised(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()
