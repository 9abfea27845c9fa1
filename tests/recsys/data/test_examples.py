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
def reference_row(log: EventLog, spec: FeatureSpec, target: int, item: int, negative: bool) -> dict:
    """Features of one row, computed event by event without any of the vectorised machinery."""
    user = int(log.user_id[target])
    history = []
    for j in range(len(log)):  # the log is sorted by (user, time): earlier positions come first
        if j < target and int(log.user_id[j]) == user and int(log.actions[j]) != 0:
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
    ts = int(log.timestamp[target])
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
    assert batch.timestamp.tolist() == [int(log.timestamp[examples.event[r]]) for r in rows]
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
@pytest.mark.parametrize("max_history, max_sequence", [(4, 0), (50, 3), (0, 0)])
def test_collate_matches_naive_reference(max_history, max_sequence):
    log = random_log()
    spec = FeatureSpec.from_log(log, max_history=max_history, max_sequence=max_sequence)
    targets = np.flatnonzero(log.impression)
    examples = RankingExamples.build(log, targets, spec, negatives_per_target=2, seed=3)
    order = np.random.default_rng(0).permutation(len(examples))
    for rows in np.array_split(order, 5):
        assert_matches_reference(examples.collate(rows), examples, rows)


def test_history_covers_ragged_empty_and_tied_events():
    log = random_log()
    spec = FeatureSpec.from_log(log, max_history=4)
    examples = RankingExamples.build(log, np.arange(len(log)), spec)
    batch = examples.collate(np.arange(len(examples)))
    lengths = batch.sparse_features["history_click"].lengths()
    assert int(lengths.min()) == 0 and int(lengths.max()) == 4  # empty and truncated histories
    ties = np.flatnonzero((log.user_id[1:] == log.user_id[:-1]) & (log.timestamp[1:] == log.timestamp[:-1]))
    assert len(ties) > 0, "the test log must contain equal timestamps within a user"
    engaged_tie = ties[log.actions[ties] != 0][0]  # event tied with the next one, and engaged
    later = engaged_tie + 1
    assert int(log.item_id[engaged_tie]) in examples.collate([later]).sparse_features.values().tolist()


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
