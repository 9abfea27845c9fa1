"""Behaviour of the synthetic feed generator: determinism, shapes of the distributions, truth."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from recsys.data.synthetic import SyntheticConfig, SyntheticWorld, generate, generate_with_probabilities, iter_shards
from recsys.errors import ConfigError, DataError

SMALL = SyntheticConfig(num_users=240, num_items=2000, mean_events_per_user=150, heavy_user_fraction=0.0,
                        shard_users=100)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(SMALL)


@pytest.fixture(scope="module")
def shard(world):
    return world.simulate_users(0, SMALL.num_users)


@pytest.fixture(scope="module")
def log(shard):
    return shard.log


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    pos = labels.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _columns(log):
    return {name: getattr(log, name) for name in ("user_id", "item_id", "timestamp", "actions", "surface",
                                                  "impression", "request_id")}


def test_auc_helper_matches_known_values():
    assert _auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert _auc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5


def test_same_seed_gives_identical_logs_and_another_seed_differs(log):
    again = generate(SMALL)
    for name, values in _columns(log).items():
        np.testing.assert_array_equal(values, getattr(again, name), err_msg=name)
    other = generate(SMALL.replace(seed=1))
    assert len(other) != len(log) or not np.array_equal(other.item_id, log.item_id)


def test_events_do_not_depend_on_shard_size_or_order(world, log):
    shards = list(iter_shards(SMALL.replace(shard_users=37)))
    assert [int(s.user_id.min()) for s in shards if len(s)] == list(range(0, SMALL.num_users, 37))
    for name, values in _columns(log).items():
        np.testing.assert_array_equal(np.concatenate([getattr(s, name) for s in shards]), values, err_msg=name)
    alone = world.simulate_users(150, 153).log  # generated out of order, on its own
    rows = (log.user_id >= 150) & (log.user_id < 153)
    np.testing.assert_array_equal(alone.item_id, log.item_id[rows])
    np.testing.assert_array_equal(alone.actions, log.actions[rows])


def test_log_validates_and_pages_group_requests(log):
    log.validate()
    assert log.items is not None and log.items.content_embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(log.items.content_embedding, axis=1), 1.0, atol=1e-5)
    assert log.impression.all()
    _, inverse, sizes = np.unique(log.request_id, return_inverse=True, return_counts=True)
    assert sizes.max() <= SMALL.page_size_max
    assert 3 <= sizes.mean() <= SMALL.page_size_max
    # A request belongs to one user and one surface.
    first = np.unique(inverse, return_index=True)[1]
    for column in (log.user_id, log.surface):
        np.testing.assert_array_equal(column, column[first][inverse])
    counts = np.bincount(log.user_id, minlength=SMALL.num_users)
    assert counts.min() >= 2 and abs(counts.mean() - SMALL.mean_events_per_user) < 0.3 * SMALL.mean_events_per_user


def test_item_frequency_follows_zipf(log):
    freq = np.sort(np.bincount(log.item_id, minlength=log.num_items))[::-1].astype(float)
    rank = np.arange(1, len(freq) + 1)
    band = slice(9, 400)
    slope = np.polyfit(np.log(rank[band]), np.log(freq[band] + 1.0), 1)[0]
    assert -1.5 < slope < -0.75, slope


def test_heavy_users_reach_ten_thousand_events():
    config = SyntheticConfig(num_users=3, num_items=500, heavy_user_fraction=1.0, heavy_user_events=12_000)
    heavy = generate(config)
    heavy.validate()
    counts = np.bincount(heavy.user_id, minlength=3)
    assert counts.min() >= 10_000, counts
    light = SyntheticWorld(SyntheticConfig(heavy_user_fraction=0.01))
    flags = [light.user_profile(u).heavy for u in range(2000)]
    assert 5 <= sum(flags) <= 40


def test_heavy_users_count_fixes_the_first_users_as_heavy():
    """``heavy_users`` makes users 0..n-1 heavy on every seed and leaves every other user's draw alone."""
    for seed in range(3):
        base = SyntheticWorld(SyntheticConfig(num_users=50, heavy_user_fraction=0.0, seed=seed))
        fixed = SyntheticWorld(SyntheticConfig(num_users=50, heavy_user_fraction=0.0, heavy_users=3, seed=seed))
        profiles = [fixed.user_profile(u) for u in range(50)]
        assert [p.heavy for p in profiles] == [True] * 3 + [False] * 47
        assert all(p.num_events >= 0.9 * 12_000 for p in profiles[:3])
        for u in range(3, 50):
            assert profiles[u].num_events == base.user_profile(u).num_events
    with pytest.raises(ConfigError, match="heavy_users"):
        SyntheticConfig(num_users=5, heavy_users=6)


def test_engaged_items_are_closer_to_interests_than_ignored_ones(world, log):
    interest = world.interest_vectors(log.user_id, log.timestamp)  # [N, C]
    affinity = np.einsum("nc,nc->n", interest, log.items.content_embedding[log.item_id])
    clicked = (log.actions & 1).astype(bool)
    ignored = log.actions == 0
    assert affinity[clicked].mean() > affinity[ignored].mean() + 0.1


def test_true_probabilities_rank_clicks_well(world, shard):
    log = shard.log
    clicked = log.actions & 1
    exact_auc = _auc(shard.probabilities[:, 0], clicked)
    long_term = world.action_probabilities(log.user_id, log.item_id, log.timestamp, log.surface)
    long_term_auc = _auc(long_term[:, 0], clicked)
    assert exact_auc > 0.7, exact_auc
    assert 0.6 < long_term_auc < exact_auc, (long_term_auc, exact_auc)
    # Calibration: the mean exact probability matches the observed rate of every action, over the
    # worlds of four seeds (~140k events: one world's ~700 hides alone vary by ~4% around the mean).
    shards = [shard] + [SyntheticWorld(SMALL.replace(seed=seed)).simulate_users(0, SMALL.num_users) for seed in (1, 2, 3)]
    probabilities = np.concatenate([s.probabilities for s in shards])
    taken = np.concatenate([s.log.action_matrix() for s in shards])
    np.testing.assert_allclose(probabilities.mean(axis=0), taken.mean(axis=0), rtol=0.05)


def test_action_rates_are_plausible(log):
    rates = dict(zip(log.action_vocab, log.action_matrix().mean(axis=0)))
    assert 0.05 <= rates["click"] <= 0.30, rates
    assert rates["hide"] < rates["click"] and rates["save"] < rates["click"], rates
    assert rates["long_view"] < rates["click"], rates
    assert (log.actions == 0).mean() > 0.5
    matrix = log.action_matrix()
    assert not (matrix[:, 0] & matrix[:, 2]).any()  # a hide is never a click
    assert not (matrix[:, 1] & ~matrix[:, 0]).any()  # a save follows a click


def test_all_surfaces_and_two_years(log):
    assert set(np.unique(log.surface)) == {0, 1, 2}
    assert log.timestamp.min() >= SMALL.start_timestamp and log.timestamp.max() < SMALL.end_timestamp
    assert log.timestamp.max() - log.timestamp.min() > 0.9 * SMALL.days * 86_400
    hours = (log.timestamp % 86_400) // 3600
    by_hour = np.bincount(hours, minlength=24)
    assert by_hour[19:22].sum() > 3 * by_hour[2:5].sum()  # evenings are busier than nights


def test_interests_drift_over_the_period(world, log):
    """Topic mixes of the first and last eighths of a history differ more than adjacent eighths."""
    topic = log.items.attributes["topic"][log.item_id]
    far, adjacent = [], []
    offsets = log.user_offsets()
    for user in range(log.num_users):
        events = topic[offsets[user] : offsets[user + 1]]
        if len(events) < 200:
            continue
        blocks = np.array_split(events, 8)
        far.append(_total_variation(blocks[0], blocks[7], world.items.num_topics))
        adjacent.append(_total_variation(blocks[3], blocks[4], world.items.num_topics))
    assert len(far) >= 20
    assert np.mean(far) > np.mean(adjacent) + 0.08, (np.mean(far), np.mean(adjacent))


def _total_variation(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    pa = np.bincount(a, minlength=bins) / len(a)
    pb = np.bincount(b, minlength=bins) / len(b)
    return 0.5 * float(np.abs(pa - pb).sum())


def _next_page_follows_click_rate(log) -> float:
    """Share of items on the page after a click (same session) that have the clicked item's topic."""
    topic = log.items.attributes["topic"][log.item_id]
    clicked = np.flatnonzero(log.actions & 1)
    last_click_topic = dict(zip(log.request_id[clicked], topic[clicked]))  # later clicks overwrite
    page_end = dict(zip(log.request_id, log.timestamp))  # last timestamp of each page
    previous = log.request_id - 1  # the user's previous page (ids count pages per user)
    wanted = np.array([last_click_topic.get(r, -1) for r in previous])
    gap = log.timestamp - np.array([page_end.get(r, -(10**12)) for r in previous])
    rows = (wanted >= 0) & (gap < 300)  # the previous page had a click and belongs to this session
    return float((topic[rows] == wanted[rows]).mean())


def test_recent_clicks_raise_similar_items_soon(log):
    """With click feedback on, the page after a click shows the clicked topic more often."""
    without_feedback = generate(SMALL.replace(num_users=120, click_boost=0.0))
    with_feedback = log.take(log.user_id < 120)
    assert _next_page_follows_click_rate(with_feedback) > _next_page_follows_click_rate(without_feedback) + 0.1


def test_shards_are_lazy_and_memory_does_not_grow_with_users():
    def first_shard_peak(num_users: int) -> tuple[int, float]:
        config = SyntheticConfig(num_users=num_users, shard_users=50, heavy_user_fraction=0.0)
        tracemalloc.start()
        start = time.perf_counter()
        shard = next(iter_shards(config))
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert shard.num_users == num_users and int(shard.user_id.max()) < 50
        return peak, elapsed

    small_peak, _ = first_shard_peak(1_000)
    huge_peak, elapsed = first_shard_peak(100_000_000)
    assert elapsed < 5.0
    assert huge_peak < 1.2 * small_peak + 1_000_000
    assert huge_peak < 64 * 2**20


def test_action_probabilities_shape_order_and_errors(world):
    users = np.array([0, 5, 5, 7])
    items = np.array([1, 2, 3, 4])
    ts = np.full(4, SMALL.start_timestamp + 1000)
    probs = world.action_probabilities(users, items, ts, np.array([0, 1, 2, 0]))
    assert probs.shape == (4, 4) and ((probs >= 0) & (probs <= 1)).all()
    assert (probs[:, 1] <= probs[:, 0]).all() and (probs[:, 3] <= probs[:, 0]).all()
    lower = world.action_probabilities(users, items, ts, np.zeros(4, int), position=np.full(4, 8))
    assert (lower[:, 0] < world.action_probabilities(users, items, ts, np.zeros(4, int))[:, 0]).all()
    with pytest.raises(DataError, match="item_id"):
        world.action_probabilities(users, items + SMALL.num_items, ts, np.zeros(4, int))
    with pytest.raises(DataError, match="surface"):
        world.action_probabilities(users, items, ts, np.zeros(3, int))


def _pages_repeating_an_item(log) -> float:
    """Share of requests (pages) that show some item more than once."""
    requests, shown = np.unique(log.request_id, return_counts=True)  # [P] impressions per page
    pairs = np.unique(np.stack([log.request_id, log.item_id]), axis=1)  # [2, distinct (request, item)]
    distinct = np.unique(pairs[0], return_counts=True)[1]  # [P] distinct items per page, same order
    return float(np.mean(distinct < shown))


def test_pages_show_distinct_items_by_default(log):
    assert SMALL.distinct_page_items
    assert _pages_repeating_an_item(log) == 0.0
    with_replacement = SyntheticWorld(SMALL.replace(distinct_page_items=False)).simulate_users(0, 60).log
    assert _pages_repeating_an_item(with_replacement) > 0.1  # independent slots repeat popular items
    # the redraws touch only the repeated slots: the other slots keep their items
    same_users = log.user_id < 60
    assert len(with_replacement) == int(same_users.sum())
    assert np.mean(with_replacement.item_id == log.item_id[same_users]) > 0.5


def test_generate_with_probabilities_keeps_the_exact_probabilities(world, shard):
    config = SMALL.replace(num_users=30, shard_users=7)
    kept = generate_with_probabilities(config)
    np.testing.assert_array_equal(kept.log.item_id, generate(config).item_id)
    assert kept.probabilities.shape == (len(kept.log), 4)
    np.testing.assert_array_equal(kept.probabilities, SyntheticWorld(config).simulate_users(0, 30).probabilities)


def test_bad_config_names_the_field():
    with pytest.raises(ConfigError, match="distinct_page_items"):
        SyntheticConfig(num_items=40, num_topics=4, max_interests=4, page_size_max=50, max_session_impressions=60)
    with pytest.raises(ConfigError, match="zipf_exponent"):
        SyntheticConfig(zipf_exponent=0.0)
    with pytest.raises(ConfigError, match="surface_probs"):
        SyntheticConfig(surface_probs=(1.0, 0.0))
    with pytest.raises(ConfigError, match="no field"):
        SMALL.replace(num_user=3)
    with pytest.raises(ConfigError, match="iter_shards"):
        generate(SyntheticConfig(num_users=10**8))
