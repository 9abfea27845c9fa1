import math
from datetime import datetime, timezone

import numpy as np
import pytest
import torch

from recsys.data.examples import RankingExamples, sample_unseen_items
from recsys.data.features import CONTEXT_FEATURES, FeatureSpec
from recsys.data.schema import EventLog, ItemTable
from recsys.errors import DataError

NUM_USERS, NUM_ITEMS, CONTENT_DIM = 9, 40, 3


def random_log(seed: int = 0, num_events: int = 150, request_ids: bool = False) -> EventLog:
    """Ragged users (user 8 has one event, user 7 none), timestamp ties, unengaged events."""
    rng = np.random.default_rng(seed)
    user = rng.choice(7, size=num_events, p=np.arange(1, 8) / 28)
    user = np.concatenate([user, [8]])
    n = len(user)
    items = ItemTable(
        content_embedding=rng.standard_normal((NUM_ITEMS, CONTENT_DIM)).astype(np.float32),
        attributes={"genre": rng.integers(0, 5, NUM_ITEMS), "decade": rng.integers(0, 3, NUM_ITEMS)},
        attribute_cardinality={"genre": 5, "decade": 3},
    )
    return EventLog.from_arrays(
        user_id=user,
        item_id=rng.integers(0, NUM_ITEMS - 10, n),  # items >= 30 are never seen
        timestamp=1_600_000_000 + rng.integers(0, 20, n) * 3_000,  # many equal timestamps
        actions=rng.choice([0, 0, 1, 2, 3, 4, 5, 8, 9, 15], size=n),
        surface=rng.integers(0, 3, n),
        impression=rng.random(n) < 0.8,
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
        items=items,
        request_id=rng.integers(0, 30, n) if request_ids else None,
    )


# ---------------------------------------------------------------- naive reference
def reference_request_time(log: EventLog, target: int) -> int:
    """The earliest timestamp of the target's request (same user and request id), or its own."""
    if log.request_id is None:
        return int(log.timestamp[target])
    same = [j for j in range(len(log)) if log.user_id[j] == log.user_id[target]
            and log.request_id[j] == log.request_id[target]]
    return min(int(log.timestamp[j]) for j in same)


def reference_row(log: EventLog, spec: FeatureSpec, target: int, item: int, negative: bool) -> dict:
    """Features of one row, computed event by event without any of the vectorised machinery:
    only the user's engaged events strictly before the request time are visible."""
    user = int(log.user_id[target])
    ts = reference_request_time(log, target)
    history = []
    for j in range(len(log)):  # the log is sorted by (user, time): earlier positions come first
        if int(log.user_id[j]) == user and int(log.actions[j]) != 0 and int(log.timestamp[j]) < ts:
            history.append(j)
    sparse = {
        "user_id": [user],
        "item_id": [item],
        "surface": [int(log.surface[target])],
    }
    for name in spec.item_attributes:
        sparse[f"item_{name}"] = [int(log.items.attributes[name][item])]
    for a, action in enumerate(spec.action_vocab):
        carrying = [int(log.item_id[j]) for j in history if (int(log.actions[j]) >> a) & 1]
        sparse[f"history_{action}"] = carrying[max(0, len(carrying) - spec.max_history):] if spec.max_history else []
    when = datetime.fromtimestamp(ts, tz=timezone.utc)
    since = ts - int(log.timestamp[history[-1]]) if history else 0
    context = {
        "hour_sin": math.sin(2 * math.pi * when.hour / 24),
        "hour_cos": math.cos(2 * math.pi * when.hour / 24),
        "weekday_sin": math.sin(2 * math.pi * when.weekday() / 7),
        "weekday_cos": math.cos(2 * math.pi * when.weekday() / 7),
        "log1p_history_length": math.log1p(len(history)),
        "log1p_seconds_since_last_engagement": math.log1p(since),
    }
    dense = list(log.items.content_embedding[item]) + [context[name] for name in CONTEXT_FEATURES]
    bits = 0 if negative else int(log.actions[target])
    sequence = history[max(0, len(history) - spec.max_sequence):] if spec.max_sequence else []
    return {
        "sparse": sparse,
        "dense": dense,
        "labels": [float((bits >> a) & 1) for a in range(spec.num_actions)],
        "sequence": {
            "seq_item_id": [int(log.item_id[j]) for j in sequence],
            "seq_actions": [int(log.actions[j]) for j in sequence],
            "seq_surface": [int(log.surface[j]) for j in sequence],
            "seq_timestamp": [int(log.timestamp[j]) for j in sequence],
        },
    }


def rows_of(kjt, key):
    return [row.tolist() for row in kjt[key].to_dense()]


def assert_matches_reference(batch, examples, rows):
    log, spec = examples.log, examples.spec
    refs = [
        reference_row(log, spec, int(examples.event[r]), int(examples.item[r]), bool(examples.sampled_negative[r]))
        for r in rows
    ]
    kjt = batch.sparse_features
    assert kjt.keys() == spec.sparse_features
    assert kjt.values().dtype == torch.int64 and kjt.lengths().dtype == torch.int32
    for key in spec.sparse_features:
        assert rows_of(kjt, key) == [ref["sparse"][key] for ref in refs], key
    np.testing.assert_allclose(batch.dense_features.numpy(), np.array([ref["dense"] for ref in refs]), atol=1e-6)
    assert batch.dense_features.dtype == torch.float32
    assert batch.labels.tolist() == [ref["labels"] for ref in refs]
    assert batch.user_id.tolist() == [ref["sparse"]["user_id"][0] for ref in refs]
    assert batch.item_id.tolist() == [ref["sparse"]["item_id"][0] for ref in refs]
    assert batch.timestamp.tolist() == [reference_request_time(log, int(examples.event[r])) for r in rows]
    if spec.max_sequence:
        seq = batch.sequence_features
        assert seq.keys() == spec.sequence_features
        for key in spec.sequence_features:
            assert rows_of(seq, key) == [ref["sequence"][key] for ref in refs], key
        expected_content = log.items.content_embedding[seq["seq_item_id"].values().numpy()]
        np.testing.assert_array_equal(batch.sequence_content.numpy(), expected_content)
    else:
        assert batch.sequence_features is None
        assert batch.sequence_content is None


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("max_history, max_sequence, request_ids", [(4, 0, False), (50, 3, False), (0, 0, False),
                                                                   (50, 3, True)])
def test_collate_matches_naive_reference(max_history, max_sequence, request_ids):
    log = random_log(request_ids=request_ids)
    spec = FeatureSpec.from_log(log, max_history=max_history, max_sequence=max_sequence)
    targets = np.flatnonzero(log.impression)
    examples = RankingExamples.build(log, targets, spec, negatives_per_target=2, seed=3)
    order = np.random.default_rng(0).permutation(len(examples))
    for rows in np.array_split(order, 5):
        assert_matches_reference(examples.collate(rows), examples, rows)


def test_history_covers_ragged_empty_and_excludes_tied_events():
    log = random_log()
    spec = FeatureSpec.from_log(log, max_history=4, max_sequence=50)
    examples = RankingExamples.build(log, np.arange(len(log)), spec)
    batch = examples.collate(np.arange(len(examples)))
    lengths = batch.sparse_features["history_click"].lengths()
    assert int(lengths.min()) == 0 and int(lengths.max()) == 4  # empty and truncated histories
    ties = np.flatnonzero((log.user_id[1:] == log.user_id[:-1]) & (log.timestamp[1:] == log.timestamp[:-1]))
    assert len(ties) > 0, "the test log must contain equal timestamps within a user"
    engaged_tie = ties[log.actions[ties] != 0][0]  # event tied with the next one, and engaged
    later = examples.collate([engaged_tie + 1])
    # an event at the same second as the request is not before it: it stays out of every feature
    assert int(log.timestamp[engaged_tie]) not in later.sequence_features["seq_timestamp"].values().tolist()
    assert (later.sequence_features["seq_timestamp"].values() < int(log.timestamp[engaged_tie])).all()


def test_rows_layout_labels_and_requests():
    log = random_log()
    spec = FeatureSpec.from_log(log)
    targets = np.array([5, 0, 17])
    examples = RankingExamples.build(log, targets, spec, negatives_per_target=3, seed=1)
    assert len(examples) == 12
    assert examples.event.tolist() == [5] * 4 + [0] * 4 + [17] * 4
    assert examples.sampled_negative.tolist() == [False, True, True, True] * 3
    assert examples.item[[0, 4, 8]].tolist() == log.item_id[targets].tolist()
    assert examples.request_id.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    batch = examples.collate(np.arange(12))
    assert batch.labels[1:4].sum() == 0
    assert batch.labels[0].tolist() == [float((int(log.actions[5]) >> a) & 1) for a in range(4)]
    assert batch.weights.tolist() == [1.0] * 12

    logged = random_log(request_ids=True)
    with_requests = RankingExamples.build(logged, targets, spec, negatives_per_target=1)
    assert with_requests.request_id.tolist() == np.repeat(logged.request_id[targets], 2).tolist()


def test_negatives_avoid_every_item_the_user_has_seen():
    log = random_log()
    spec = FeatureSpec.from_log(log)
    examples = RankingExamples.build(log, np.arange(len(log)), spec, negatives_per_target=5, seed=7)
    seen = {(int(u), int(i)) for u, i in zip(log.user_id, log.item_id)}
    negatives = np.flatnonzero(examples.sampled_negative)
    assert len(negatives) == 5 * len(log)
    users = log.user_id[examples.event[negatives]]
    assert not any((int(u), int(i)) in seen for u, i in zip(users, examples.item[negatives]))
    assert (examples.label_bits[negatives] == 0).all()


def test_unseen_item_sampling_is_uniform():
    log = EventLog.from_arrays(user_id=[0, 0, 0, 0, 1], item_id=[0, 3, 4, 9, 2], timestamp=[1, 2, 3, 4, 5],
                               num_users=2, num_items=10)
    draws = sample_unseen_items(log, np.zeros(60_000, dtype=np.int64), np.random.default_rng(0))
    counts = np.bincount(draws, minlength=10)
    unseen = [1, 2, 5, 6, 7, 8]
    assert counts[[0, 3, 4, 9]].sum() == 0
    np.testing.assert_allclose(counts[unseen] / 60_000, 1 / 6, atol=0.01)


def test_same_seed_same_rows_and_batches():
    log = random_log()
    spec = FeatureSpec.from_log(log, max_sequence=5)
    a = RankingExamples.build(log, np.arange(len(log)), spec, negatives_per_target=2, seed=11)
    b = RankingExamples.build(log, np.arange(len(log)), spec, negatives_per_target=2, seed=11)
    c = RankingExamples.build(log, np.arange(len(log)), spec, negatives_per_target=2, seed=12)
    assert np.array_equal(a.item, b.item) and not np.array_equal(a.item, c.item)
    rows = np.arange(0, len(a), 3)
    x, y = a.collate(rows), b.collate(rows)
    assert torch.equal(x.sparse_features.values(), y.sparse_features.values())
    assert torch.equal(x.sparse_features.lengths(), y.sparse_features.lengths())
    assert torch.equal(x.dense_features, y.dense_features)
    assert torch.equal(x.sequence_features.values(), y.sequence_features.values())


def test_user_weights_and_log_without_items():
    log = random_log()
    bare = EventLog.from_arrays(user_id=log.user_id, item_id=log.item_id, timestamp=log.timestamp,
                                actions=log.actions, num_users=NUM_USERS, num_items=NUM_ITEMS)
    spec = FeatureSpec.from_log(bare)
    weights = np.arange(NUM_USERS, dtype=np.float32) / 2
    examples = RankingExamples.build(bare, np.arange(len(bare)), spec, user_weights=weights)
    batch = examples.collate(np.arange(20))
    assert batch.dense_features.shape == (20, len(CONTEXT_FEATURES))
    assert batch.weights.tolist() == (bare.user_id[:20] / 2).tolist()
    assert batch.sparse_features.keys() == ["user_id", "item_id", "surface", *spec.history_features]


def _spec(log, **overrides):
    spec = FeatureSpec.from_log(log)
    for key, value in overrides.items():
        setattr(spec, key, value)
    return spec


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(targets=[0, 10_000]), "targets holds 10000"),
        (dict(targets=[0.5]), "must hold integers"),
        (dict(targets=[[0]]), "1-D"),
        (dict(negatives_per_target=-1), "negatives_per_target"),
        (dict(user_weights=np.ones(3)), r"user_weights must have shape \[9\]"),
        (dict(user_weights=-np.ones(NUM_USERS)), "non-negative"),
        (dict(spec_overrides=dict(num_users=3)), r"'user_id' has id \d+ but its table has 3 rows"),
        (dict(spec_overrides=dict(num_items=10)), r"'item_id' has id \d+ but its table has 10 rows"),
        (dict(spec_overrides=dict(item_attributes={"genre": 2, "decade": 3})), "'item_genre' .* table has 2 rows"),
        (dict(spec_overrides=dict(item_attributes={"mood": 4})), "lacks"),
        (dict(spec_overrides=dict(content_dim=8)), "content_dim"),
        (dict(spec_overrides=dict(action_vocab=("click",))), "action_vocab"),
        (dict(spec_overrides=dict(surface_vocab=("home",))), "'surface' .* table has 1 rows"),
    ],
)
def test_build_rejects_bad_input(kwargs, message):
    log = random_log()
    spec = _spec(log, **kwargs.pop("spec_overrides", {}))
    args = dict(targets=np.arange(len(log)), negatives_per_target=0, user_weights=None) | kwargs
    with pytest.raises(DataError, match=message):
        RankingExamples.build(log, args["targets"], spec, negatives_per_target=args["negatives_per_target"],
                              user_weights=args["user_weights"])


def test_history_ids_beyond_the_table_are_named():
    log = random_log()
    small = np.flatnonzero(log.item_id < 5)
    spec = _spec(log, num_items=5)
    examples = RankingExamples.build(log, small, spec)
    with pytest.raises(DataError, match=r"'history_\w+' has id \d+ but its table has 5 rows"):
        examples.collate(np.arange(len(examples)))


def test_collate_rejects_bad_rows_and_impossible_negatives():
    log = random_log()
    examples = RankingExamples.build(log, np.arange(10), FeatureSpec.from_log(log))
    with pytest.raises(DataError, match="empty"):
        examples.collate([])
    with pytest.raises(DataError, match="row_indices holds 10"):
        examples.collate([0, 10])
    full = EventLog.from_arrays(user_id=[0, 0, 1], item_id=[0, 1, 0], timestamp=[1, 2, 3], num_items=2)
    with pytest.raises(DataError, match="user 0 has events with all 2 items"):
        RankingExamples.build(full, [0], FeatureSpec.from_log(full), negatives_per_target=1)


# ---------------------------------------------------------------- nothing at or after the request, per source
def _source_log(source: str, tmp_path) -> EventLog:
    """A small log of ``source`` read through its reader (request ids and equal timestamps where the
    source can hold them)."""
    from recsys.data.log_io import read_log, write_log
    from recsys.data.readers import read_events
    from recsys.data.synthetic import SyntheticConfig, generate

    rng = np.random.default_rng(1)
    if source in ("synthetic", "log"):
        log = generate(SyntheticConfig(num_users=12, num_items=200, num_topics=4, max_interests=2,
                                       mean_events_per_user=40, heavy_user_fraction=0.0, days=20))
        if source == "synthetic":
            return log
        return read_log(write_log(log, tmp_path / "log"))
    users, items = rng.integers(1, 8, 160), rng.integers(1, 40, 160)
    times = 1_000 + rng.integers(0, 25, 160) * 60  # many equal timestamps within a user
    if source == "movielens":
        lines = {(u, i): f"{u}\t{i}\t{rng.integers(1, 6)}\t{t}" for u, i, t in zip(users, items, times)}
        (tmp_path / "ml").mkdir()
        (tmp_path / "ml" / "u.data").write_text("\n".join(lines.values()) + "\n")
        return read_events("movielens", tmp_path / "ml")
    if source == "amazon_ratings":
        lines = {(u, i): f"U{u},I{i},{rng.integers(1, 6)}.0,{t}" for u, i, t in zip(users, items, times)}
        (tmp_path / "r.csv").write_text("\n".join(lines.values()) + "\n")
        return read_events("amazon_ratings", tmp_path / "r.csv", min_user_interactions=1, min_item_interactions=1)
    if source == "amazon":
        text = "\n".join(f"{u} " + " ".join(str(i) for i in rng.integers(1, 40, 12)) for u in range(1, 8))
        (tmp_path / "a.txt").write_text(text + "\n")
        return read_events("amazon", tmp_path / "a.txt", attributes_json=None)
    assert source == "events"  # pages of 4 impressions a few seconds apart, one request id each
    page = np.arange(160) // 4
    stamp = 1_000 + page * 100 + (np.arange(160) % 4) * 5
    acts = rng.choice(["", "click", "save", "click|save"], 160)
    rows = [f"{page[k] % 7},{items[k]},{stamp[k]},{acts[k]},{page[k]}" for k in range(160)]
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp,actions,request\n" + "\n".join(rows) + "\n")
    return read_events("events", tmp_path / "e.csv", columns={"request": "request"})


@pytest.mark.parametrize("source", ["synthetic", "log", "movielens", "amazon_ratings", "amazon", "events"])
def test_nothing_at_or_after_the_request_time_is_visible(source, tmp_path):
    log = _source_log(source, tmp_path)
    spec = FeatureSpec.from_log(log, max_history=10_000, max_sequence=10_000)
    examples = RankingExamples.build(log, np.arange(len(log)), spec)
    batch = examples.collate(np.arange(len(examples)))
    start = {}  # (user, request) -> earliest timestamp, event by event
    for j in range(len(log)):
        key = (int(log.user_id[j]), int(log.request_id[j]) if log.request_id is not None else -1 - j)
        start[key] = min(start.get(key, int(log.timestamp[j])), int(log.timestamp[j]))
    request_time = np.array([start[(int(log.user_id[j]), int(log.request_id[j]) if log.request_id is not None else -1 - j)]
                             for j in range(len(log))])
    assert batch.timestamp.tolist() == request_time.tolist()

    seq = batch.sequence_features["seq_timestamp"]
    row_of_token = np.repeat(np.arange(len(log)), seq.lengths().numpy())
    assert (seq.values().numpy() < request_time[row_of_token]).all()  # every token predates its request
    engaged = log.actions != 0
    before = (log.user_id[None, :] == log.user_id[:, None]) & (log.timestamp[None, :] < request_time[:, None])  # [R, N]
    assert seq.lengths().tolist() == (before & engaged).sum(axis=1).tolist()  # and every earlier one is there
    for a, key in enumerate(spec.history_features):
        carrying = (log.actions >> a) & 1 == 1
        assert batch.sparse_features[key].lengths().tolist() == (before & carrying).sum(axis=1).tolist(), key
    context = batch.dense_features[:, spec.content_dim:].numpy().astype(np.float64)
    last = np.where(before & engaged, log.timestamp[None, :], -1).max(axis=1)
    since = np.where(last >= 0, request_time - last, 0)
    expected = [int(ts) for ts in request_time]
    hour = [datetime.fromtimestamp(ts, tz=timezone.utc).hour for ts in expected]
    np.testing.assert_allclose(context[:, CONTEXT_FEATURES.index("hour_sin")], np.sin(2 * np.pi * np.array(hour) / 24), atol=1e-5)
    np.testing.assert_allclose(context[:, CONTEXT_FEATURES.index("log1p_history_length")],
                               np.log1p((before & engaged).sum(axis=1)), rtol=1e-6)
    np.testing.assert_allclose(context[:, CONTEXT_FEATURES.index("log1p_seconds_since_last_engagement")],
                               np.log1p(since), rtol=1e-6)
