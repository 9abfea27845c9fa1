"""Lifelong sequences: the store, S_all against a brute force from the raw log, stored == served."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from recsys.data.examples import RankingExamples
from recsys.data.features import FeatureSpec
from recsys.data.lifelong import (
    SEQUENCE_KEYS,
    SOURCE_IMPRESSION,
    SOURCE_LIFELONG,
    SOURCE_REALTIME_HISTORY,
    SOURCE_REALTIME_NN,
    SOURCE_REALTIME_RECENT,
    LifelongConfig,
    LifelongSequences,
    build_lifelong_sequences,
    collate_lifelong,
    serve_lifelong_tokens,
)
from recsys.data.lifelong_store import LifelongStore
from recsys.data.request_time import request_start_times
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.errors import ConfigError, DataError
from recsys.ops.int8_quantization import dequantize_int8, quantize_int8

# Small parts so that short histories already exercise every part and its cap.
SMALL = LifelongConfig(lifelong_max=300, realtime_max=20, impression_max=30,
                       lifelong_k=12, realtime_recent=4, realtime_k=6, impression_k=8)


@pytest.fixture(scope="module")
def log():
    config = SyntheticConfig(num_users=12, num_items=300, num_topics=6, heavy_user_fraction=0.25,
                             heavy_user_events=4000, mean_events_per_user=120, days=90, seed=3)
    log = generate(config)
    assert np.bincount(log.user_id).max() >= 2000  # at least one heavy user
    return log


@pytest.fixture(scope="module")
def store(log):
    return LifelongStore.from_log(log)


@pytest.fixture(scope="module")
def examples(log):
    """Targets spread over every user's history (early ones have short or empty sequences), each
    with one sampled negative: two candidates per request."""
    rng = np.random.default_rng(0)
    targets = np.sort(rng.choice(len(log), size=90, replace=False))
    return RankingExamples.build(log, targets, FeatureSpec.from_log(log), negatives_per_target=1, seed=1)


def brute_force_s_all(log, user, time, candidate_item, config, scale=0.65):
    """S_all from the raw log, written from the definition with Python lists and sorts."""
    before = [i for i in np.flatnonzero(log.user_id == user) if log.timestamp[i] < time]
    engaged = [i for i in before if log.actions[i] != 0]
    merged_actions = {e: int(log.actions[e]) for e in engaged}
    if config.records == "merged":  # one record per item: its latest event, the OR of its actions so far
        latest = {}
        for e in engaged:
            merged_actions[e] = int(log.actions[e]) | (merged_actions[latest[log.item_id[e]]] if log.item_id[e] in latest else 0)
            latest[log.item_id[e]] = e
        engaged = sorted(latest.values())
    shown = [i for i in before if log.impression[i] and log.actions[i] == 0]
    realtime = engaged[len(engaged) - min(len(engaged), config.realtime_max):]
    lifelong = engaged[: len(engaged) - len(realtime)][-config.lifelong_max:] if config.lifelong_max else []
    impressions = shown[len(shown) - min(len(shown), config.impression_max):]
    codes = quantize_int8(log.items.content_embedding).numpy().astype(np.int64)
    query = codes[candidate_item]

    def score(item):  # the candidate against the dequantised, L2-normalised token, rounded as the op does
        norm = np.sqrt(float(codes[item] @ codes[item]))
        return float(np.float32(codes[item] @ query) * np.float32(1.0 / norm if norm else 0.0))

    def nearest(events, k):
        if config.selection == "recent":  # the ablation without NN selection: the k latest
            return events[len(events) - min(k, len(events)):]
        scored = sorted(((score(log.item_id[e]), pos) for pos, e in enumerate(events)), reverse=True)
        return [events[pos] for pos in sorted(pos for _, pos in scored[:k])]

    recent = min(len(realtime), config.realtime_recent)
    parts = [(nearest(lifelong, config.lifelong_k), SOURCE_LIFELONG),
             (realtime[len(realtime) - recent:], SOURCE_REALTIME_RECENT),
             (nearest(realtime[: len(realtime) - recent], config.realtime_k), SOURCE_REALTIME_NN),
             (nearest(impressions, config.impression_k), SOURCE_IMPRESSION),
             (realtime[len(realtime) - min(len(realtime), config.realtime_history):], SOURCE_REALTIME_HISTORY)]
    events = [e for part, _ in parts for e in part]
    sources = [source for part, source in parts for _ in part]
    actions = [merged_actions.get(e, int(log.actions[e])) if s != SOURCE_IMPRESSION else 0
               for e, s in zip(events, sources)]
    return events, sources, actions


def tokens_equal(a, b):
    return all(np.array_equal(getattr(a, name), getattr(b, name))
               for name in ("lengths", "item_id", "actions", "surface", "timestamp", "source", "content"))


def test_store_streams_hold_engaged_events_and_unengaged_impressions(log, store):
    for user in (0, int(np.argmax(np.bincount(log.user_id)))):
        events = np.flatnonzero(log.user_id == user)
        history = store.user(user)
        engaged = events[log.actions[events] != 0]
        shown = events[log.impression[events] & (log.actions[events] == 0)]
        assert np.array_equal(history.engaged.item_id, log.item_id[engaged])
        assert np.array_equal(history.engaged.timestamp, log.timestamp[engaged])
        assert np.array_equal(history.impressions.actions, np.zeros(len(shown), np.int32))
        assert np.array_equal(history.impressions.surface, log.surface[shown])
        codes = quantize_int8(log.items.content_embedding[log.item_id[engaged]]).numpy()
        assert np.array_equal(history.engaged.content, codes)
    assert store.engaged.content.dtype == np.int8 and len(store.engaged) == int((log.actions != 0).sum())


def test_count_before_matches_a_per_user_search(log, store):
    rng = np.random.default_rng(1)
    users = rng.integers(0, log.num_users, 200)
    times = rng.integers(int(log.timestamp.min()) - 5, int(log.timestamp.max()) + 5, 200)
    times[:20] = log.timestamp[rng.integers(0, len(log), 20)]  # exactly at an event: strictly before
    first, count = store.engaged.count_before(users, times)
    for u, t, f, c in zip(users, times, first, count):
        stream = store.engaged.user(int(u))
        assert f == store.engaged.user_offsets[u]
        assert c == int((stream.timestamp < t).sum())


@pytest.mark.parametrize("config", [SMALL, LifelongConfig(), dataclasses.replace(SMALL, selection="recent"),
                                    dataclasses.replace(SMALL, records="events")],
                         ids=["small", "paper", "most_recent", "per_event"])
def test_served_s_all_matches_the_definition(log, store, config):
    heavy = int(np.argmax(np.bincount(log.user_id)))
    heavy_events = np.flatnonzero(log.user_id == heavy)
    requests = [(heavy, int(log.timestamp[heavy_events[-1]]) + 1),  # after all of the heaviest history
                (heavy, int(log.timestamp[heavy_events[len(heavy_events) // 3]])),  # at an event: strictly before
                (0, int(log.timestamp.min())),  # before everything: empty
                (5, int(log.timestamp.max()) + 10)]
    items = np.array([3, 77, 150])
    for user, time in requests:
        served = serve_lifelong_tokens(store.user(user), time, log.items.content_embedding[items], config)
        offsets = served.offsets
        for b, item in enumerate(items):
            events, sources, actions = brute_force_s_all(log, user, time, item, config)
            lo, hi = offsets[b], offsets[b + 1]
            assert served.lengths[b] == len(events) <= config.sequence_length + config.realtime_history
            assert np.array_equal(served.item_id[lo:hi], log.item_id[events])
            assert np.array_equal(served.timestamp[lo:hi], log.timestamp[events])
            assert np.array_equal(served.actions[lo:hi], actions)
            assert np.array_equal(served.source[lo:hi], sources)
            assert np.array_equal(served.engaged[lo:hi], np.array(sources) != SOURCE_IMPRESSION)
            assert (served.timestamp[lo:hi] < time).all()


def test_stored_s_all_equals_served_s_all(tmp_path, log, store, examples):
    sequences = build_lifelong_sequences(examples, store, tmp_path / "seq", SMALL, chunk_rows=37)
    assert len(sequences) == len(examples)
    assert sequences.rows(np.arange(len(examples))).lengths.max() == SMALL.sequence_length + 20  # caps reached
    users, times = log.user_id[examples.event], request_start_times(log, examples.event)
    for row in range(len(examples)):
        served = serve_lifelong_tokens(store.user(int(users[row])), int(times[row]),
                                       log.items.content_embedding[examples.item[row : row + 1]], SMALL)
        assert tokens_equal(sequences.rows([row]), served), f"row {row}"
    # A whole request (target and its negative) served at once gives both rows.
    row = int(np.argmax(sequences.rows(np.arange(len(examples))).lengths))
    pair = [row - row % 2, row - row % 2 + 1]
    served = serve_lifelong_tokens(store.user(int(users[row])), int(times[row]),
                                   log.items.content_embedding[examples.item[pair]], SMALL)
    assert tokens_equal(sequences.rows(pair), served)


def test_paper_defaults_stored_equals_served(tmp_path, log, store, examples):
    sequences = build_lifelong_sequences(examples, store, tmp_path / "seq", chunk_rows=64)
    assert sequences.config == LifelongConfig() and LifelongConfig().sequence_length == 192
    users, times = log.user_id[examples.event], request_start_times(log, examples.event)
    lengths = sequences.rows(np.arange(len(examples))).lengths
    for row in np.argsort(-lengths)[:10]:
        served = serve_lifelong_tokens(store.user(int(users[row])), int(times[row]),
                                       log.items.content_embedding[examples.item[row : row + 1]])
        assert tokens_equal(sequences.rows([row]), served)


def test_collate_puts_s_all_into_the_ranking_batch(tmp_path, store, examples):
    sequences = build_lifelong_sequences(examples, store, tmp_path / "seq", SMALL)
    rows = [5, 0, 41, 17]
    batch = collate_lifelong(examples, sequences, rows)
    plain = examples.collate(rows)
    tokens = sequences.rows(rows)
    assert batch.sequence_features.keys() == list(SEQUENCE_KEYS)
    for key, column in zip(SEQUENCE_KEYS, ("item_id", "actions", "surface", "timestamp", "source")):
        jagged = batch.sequence_features[key]
        assert jagged.lengths().tolist() == tokens.lengths.tolist()
        assert jagged.values().tolist() == getattr(tokens, column).tolist()
    assert batch.sequence_content.dtype == torch.float32
    assert torch.equal(batch.sequence_content, dequantize_int8(tokens.content))
    assert torch.equal(batch.labels, plain.labels) and torch.equal(batch.dense_features, plain.dense_features)
    assert batch.sparse_features.keys() == plain.sparse_features.keys()


def test_files_are_written_atomically_and_checked(tmp_path, log, store, examples):
    target = tmp_path / "seq"
    build_lifelong_sequences(examples, store, target, SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seq"]  # no staging directory left
    with pytest.raises(DataError, match="already exists"):
        build_lifelong_sequences(examples, store, target, SMALL)
    meta = json.loads((target / "meta.json").read_text())
    assert meta["num_rows"] == len(examples) and meta["config"]["lifelong_k"] == SMALL.lifelong_k

    other = RankingExamples.build(log, examples.event[:10], examples.spec)
    with pytest.raises(DataError, match="other rows"):
        collate_lifelong(other, LifelongSequences.open(target), [0])
    (target / "source.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="source.npy"):
        LifelongSequences.open(target)
    with pytest.raises(DataError, match="meta.json"):
        LifelongSequences.open(tmp_path)


def test_a_failed_build_leaves_nothing(tmp_path, store, examples, monkeypatch):
    import recsys.data.lifelong as lifelong

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(lifelong, "_write_meta", fail)
    with pytest.raises(RuntimeError):
        build_lifelong_sequences(examples, store, tmp_path / "seq", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_store_save_and_load_round_trip(tmp_path, store):
    store.save(tmp_path / "store")
    loaded = LifelongStore.load(tmp_path / "store")
    assert loaded.scale == store.scale
    for stream in ("engaged", "impressions"):
        for name in ("user_offsets", "item_id", "actions", "surface", "timestamp", "content"):
            assert np.array_equal(getattr(getattr(loaded, stream), name), getattr(getattr(store, stream), name))
    candidate = np.full((1, store.content_dim), 0.1, np.float32)
    served = serve_lifelong_tokens(loaded.user(3), 2**40, candidate, SMALL)
    assert tokens_equal(served, serve_lifelong_tokens(store.user(3), 2**40, candidate, SMALL))


def test_bad_config_and_inputs_raise_clear_errors(store):
    with pytest.raises(ConfigError, match="realtime_recent"):
        LifelongConfig(realtime_max=10, realtime_recent=20)
    with pytest.raises(ConfigError, match="lifelong_k"):
        LifelongConfig(lifelong_k=-1)
    with pytest.raises(ConfigError, match="selection"):
        LifelongConfig(selection="random")
    with pytest.raises(DataError, match="candidate_content"):
        serve_lifelong_tokens(store.user(0), 10**10, np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match="outside"):
        store.user(10**6)


def brute_force_request_start(log, event):
    """The earliest timestamp of the events of ``event``'s page (same user and request id)."""
    page = (log.user_id == log.user_id[event]) & (log.request_id == log.request_id[event])
    return int(log.timestamp[page].min())


@pytest.fixture(scope="module")
def later_slots(log):
    """Rows of later slots of a page: an earlier slot of the same page (an engaged one or a shown,
    not engaged one) has an earlier timestamp, so cutting at the row's own time would show it."""
    start = np.array([brute_force_request_start(log, e) for e in range(len(log))])
    late = np.flatnonzero(log.timestamp > start)
    rng = np.random.default_rng(4)
    targets = np.sort(rng.choice(late, size=min(120, len(late)), replace=False))
    return RankingExamples.build(log, targets, FeatureSpec.from_log(log)), start


@pytest.mark.parametrize("source", [SOURCE_LIFELONG, SOURCE_REALTIME_RECENT, SOURCE_REALTIME_NN, SOURCE_IMPRESSION,
                                    SOURCE_REALTIME_HISTORY],
                         ids=["lifelong", "realtime_recent", "realtime_nn", "impression", "realtime_history"])
def test_no_sequence_token_at_or_after_the_request_start(tmp_path, log, store, later_slots, source):
    examples, start = later_slots
    config = LifelongConfig(lifelong_max=300, realtime_max=20, impression_max=30,
                            lifelong_k=300, realtime_recent=4, realtime_k=16, impression_k=30)  # every event kept
    sequences = build_lifelong_sequences(examples, store, tmp_path / "seq", config)
    tokens = sequences.rows(np.arange(len(examples)))
    row = np.repeat(np.arange(len(examples)), tokens.lengths)  # [V]
    request_start = start[examples.event][row]  # [V]
    own_time = log.timestamp[examples.event][row]  # [V]
    part = tokens.source == source
    assert part.any(), "the test data must exercise this part"
    assert (tokens.timestamp[part] < request_start[part]).all()
    # The page's earlier slots exist in the store: before the fix they entered the sequences.
    stream = store.impressions if source == SOURCE_IMPRESSION else store.engaged
    users = log.user_id[examples.event]
    own_first, own_count = stream.count_before(users, log.timestamp[examples.event])
    _, start_count = stream.count_before(users, start[examples.event])
    assert (own_count > start_count).any()
    assert not ((tokens.timestamp >= request_start) & (tokens.timestamp < own_time)).any()


def test_request_start_is_the_earliest_event_of_the_page(log):
    events = np.arange(0, len(log), 7)
    expected = [brute_force_request_start(log, e) for e in events]
    assert request_start_times(log, events).tolist() == expected
    no_ids = log.take(np.arange(len(log)))
    no_ids.request_id = None
    assert np.array_equal(request_start_times(no_ids, events), log.timestamp[events])
    with pytest.raises(DataError, match="events"):
        request_start_times(log, [len(log)])


def test_merged_records_hold_each_item_once_with_its_actions_ored(log, store):
    """TransAct V2's records: repeated engagements with one item are one token (not one per event)."""
    heavy = int(np.argmax(np.bincount(log.user_id)))
    time = int(log.timestamp[log.user_id == heavy].max()) + 1
    history = store.user(heavy)
    events = serve_lifelong_tokens(history, time, log.items.content_embedding[:1], dataclasses.replace(
        LifelongConfig(), records="events"))
    merged = serve_lifelong_tokens(history, time, log.items.content_embedding[:1])
    engaged_events = events.item_id[events.source == SOURCE_LIFELONG]
    engaged_merged = merged.item_id[merged.source == SOURCE_LIFELONG]
    assert len(np.unique(engaged_events)) < len(engaged_events)  # per event: repeated items
    assert len(np.unique(engaged_merged)) == len(engaged_merged)  # merged: each item once
    own = np.flatnonzero((log.user_id == heavy) & (log.actions != 0))
    engaged = merged.source != SOURCE_IMPRESSION
    for item, actions, ts in zip(merged.item_id[engaged], merged.actions[engaged], merged.timestamp[engaged]):
        of_item = own[log.item_id[own] == item]
        assert actions == np.bitwise_or.reduce(log.actions[of_item]) and ts == log.timestamp[of_item].max()


def test_record_counts_match_the_listed_records(log, store):
    rng = np.random.default_rng(2)
    users = rng.integers(0, log.num_users, 300)
    times = rng.integers(int(log.timestamp.min()), int(log.timestamp.max()) + 2, 300)
    rows, offsets, count = store.engaged.visible_before(users, times)
    assert np.array_equal(store.engaged.count_records_before(users, times), count)
    for j in range(0, 300, 37):
        listed = rows[offsets[j]:offsets[j + 1]]
        before = np.flatnonzero((log.user_id == users[j]) & (log.timestamp < times[j]) & (log.actions != 0))
        assert len(listed) == len(np.unique(log.item_id[before]))
        assert (store.engaged.timestamp[listed] < times[j]).all()
