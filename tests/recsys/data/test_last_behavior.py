"""The MIMN paper's last-behaviour protocol: targets, split by time, negatives, sequences, seeds."""

import numpy as np
import pytest

from recsys.config import load_config
from recsys.data.examples import RankingExamples
from recsys.data.features import FeatureSpec
from recsys.data.last_behavior import (
    LastBehaviorConfig, build_last_behavior_examples, last_behavior_targets, sample_unseen_items_by_popularity,
)
from recsys.data.pipeline import build_ranking_data
from recsys.data.schema import EventLog
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.errors import ConfigError, DataError
from recsys.train.config import DataConfig, TrainConfig

ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]


def hand_log() -> EventLog:
    # actions: bit 0 = click, bit 1 = save; 0 = impression without action
    # user 0: c c i c s c c   -> behaviours (click) at 0 1 3 5 6
    # user 1: c c             -> 2 clicks < min_sequence + 2: no rows
    # user 2: c c c c         -> behaviours 9 10 11 12, the last two tied in time
    return EventLog.from_arrays(
        user_id=[0] * 7 + [1] * 2 + [2] * 4,
        item_id=[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5],
        timestamp=[1, 2, 3, 4, 5, 6, 7, 1, 2, 10, 11, 12, 12],
        actions=[1, 1, 0, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1],
        num_items=12,
        action_vocab=("click", "save"),
    )


def test_targets_and_split_known_answer():
    log = hand_log()
    targets = last_behavior_targets(log, LastBehaviorConfig(behavior_action="click", min_sequence=1))
    assert targets.test.tolist() == [6, 12] and targets.valid.tolist() == [5, 11]
    assert targets.train.tolist() == [1, 3, 10]  # >= 1 click before, before the valid target
    assert targets.split.train.tolist() == [0, 1, 2, 3, 4, 7, 8, 9, 10]  # user 1: all train
    assert targets.split.valid.tolist() == [5, 11] and targets.split.test.tolist() == [6, 12]
    latest = last_behavior_targets(log, LastBehaviorConfig(behavior_action="click", train_targets_per_user=1))
    assert latest.train.tolist() == [3, 10]
    strict = last_behavior_targets(log, LastBehaviorConfig(behavior_action="click", min_sequence=3))
    assert strict.test.tolist() == [6] and strict.train.tolist() == [] and strict.valid.tolist() == [5]
    any_action = last_behavior_targets(log, LastBehaviorConfig(min_sequence=1))  # the save at 4 is a behaviour
    assert any_action.train.tolist() == [1, 3, 4, 10]


def long_log(seed: int = 0) -> EventLog:
    return generate(SyntheticConfig(num_users=40, num_items=400, num_topics=8, max_interests=3,
                                    mean_events_per_user=150, heavy_user_fraction=0.0, days=60, seed=seed))


def rows_of(log: EventLog, seed: int = 0, **config):
    spec = FeatureSpec.from_log(log, max_history=10, max_sequence=10_000)
    return build_last_behavior_examples(log, spec, LastBehaviorConfig(behavior_action="click", **config), seed)


@pytest.mark.parametrize("sampling", ["popularity", "uniform"])
def test_negatives_are_items_the_user_never_interacted_with(sampling):
    log = long_log()
    _, rows = rows_of(log, negative_sampling=sampling, negatives=2)
    engaged = log.actions != 0
    interacted = set(zip(log.user_id[engaged].tolist(), log.item_id[engaged].tolist()))  # before and after the target
    shown = set(zip(log.user_id.tolist(), log.item_id.tolist()))
    only_shown = 0
    for examples in rows.values():
        users = log.user_id[examples.event]
        negative = examples.sampled_negative
        assert negative.sum() == 2 * (~negative).sum() and (examples.label_bits[negative] == 0).all()
        pairs = list(zip(users[negative].tolist(), examples.item[negative].tolist()))
        assert not any(pair in interacted for pair in pairs)
        only_shown += sum(pair in shown for pair in pairs)  # impressions without action may be negatives
        assert (examples.item[~negative] == log.item_id[examples.event[~negative]]).all()
        assert (examples.label_bits[~negative] & 1).all()  # every positive is a click
    assert only_shown > 0


@pytest.mark.parametrize("min_sequence", [1, 6])
def test_nothing_of_the_sequence_is_at_or_after_the_target(min_sequence):
    log = long_log()
    _, rows = rows_of(log, min_sequence=min_sequence)
    for examples in rows.values():
        batch = examples.collate(np.arange(len(examples)))
        seq = batch.sequence_features["seq_timestamp"]
        lengths = seq.lengths().numpy()
        clicks = (batch.sequence_features["seq_actions"].values().numpy() & 1) != 0
        per_row_clicks = np.add.reduceat(clicks, np.cumsum(lengths) - lengths) if len(clicks) else clicks
        assert lengths.min() >= min_sequence and per_row_clicks.min() >= min_sequence
        row = np.repeat(np.arange(len(examples)), lengths)
        target_time = log.timestamp[examples.event]
        assert (seq.values().numpy() < target_time[row]).all()
        assert (seq.values().numpy() < batch.timestamp.numpy()[row]).all()  # the request start


def test_split_is_by_time_within_each_user():
    log = long_log()
    targets, rows = rows_of(log, min_sequence=5)
    test_time = dict(zip(log.user_id[targets.test].tolist(), log.timestamp[targets.test].tolist()))
    valid_time = dict(zip(log.user_id[targets.valid].tolist(), log.timestamp[targets.valid].tolist()))
    assert set(test_time) == set(valid_time) and len(test_time) > 20
    for event in targets.train:
        user = int(log.user_id[event])
        assert log.timestamp[event] <= valid_time[user] <= test_time[user]
    # every test target is its user's last click, every valid target the one before it
    clicks = np.flatnonzero(log.actions & 1)
    last = {int(u): int(e) for u, e in zip(log.user_id[clicks], clicks)}
    assert all(last[int(log.user_id[e])] == e for e in targets.test)
    assert set(targets.split.test) >= set(targets.test) and not set(targets.split.train) & set(targets.valid)
    assert len(np.intersect1d(targets.train, targets.valid)) == 0


def test_same_seed_same_rows_other_seed_other_negatives():
    log = long_log()
    _, first = rows_of(log, seed=3)
    _, again = rows_of(log, seed=3)
    _, other = rows_of(log, seed=4)
    for split in ("train", "valid", "test"):
        assert np.array_equal(first[split].item, again[split].item)
        assert np.array_equal(first[split].event, other[split].event)
    assert not np.array_equal(first["train"].item, other["train"].item)


def test_popularity_sampling_follows_the_item_counts():
    log = EventLog.from_arrays(user_id=[0, 1, 1, 1, 1, 2], item_id=[0, 1, 1, 1, 2, 3], timestamp=[1, 1, 2, 3, 4, 1],
                               num_items=5)
    items = sample_unseen_items_by_popularity(log, np.zeros(40_000, np.int64), np.random.default_rng(0))
    share = np.bincount(items, minlength=5) / len(items)  # user 0 saw item 0; counts 3, 1, 1 for items 1-3, 0 for 4
    np.testing.assert_allclose(share, [0.0, 0.6, 0.2, 0.2, 0.0], atol=0.01)


def test_pipeline_option_loads_and_builds_the_protocol_rows():
    cfg = load_config(TrainConfig, ROOT / "configs/din/lastbehavior_synthetic.yaml", [
        "data.synthetic.num_users=30", "data.synthetic.mean_events_per_user=150", "data.synthetic.num_items=300",
        "data.max_sequence=50"])
    data = build_ranking_data(cfg.data, seed=0)
    assert len(data.test) == 2 * len(np.unique(data.log.user_id[data.test.event]))
    assert data.test.sampled_negative.sum() == len(data.test) // 2 and data.event_probabilities is None


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="min_sequence"):
        LastBehaviorConfig(min_sequence=0)
    with pytest.raises(ConfigError, match="negative_sampling"):
        LastBehaviorConfig(negative_sampling="hard")
    with pytest.raises(ConfigError, match="data.protocol"):
        DataConfig(protocol="leave_last")
    with pytest.raises(ConfigError, match="behavior_action='buy'"):
        last_behavior_targets(hand_log(), LastBehaviorConfig(behavior_action="buy"))
    with pytest.raises(DataError, match="no test row"):
        rows_of(hand_log(), min_sequence=10)


def test_default_sampler_of_ranking_examples_is_unchanged():
    log = hand_log()
    spec = FeatureSpec.from_log(log)
    a = RankingExamples.build(log, [6, 12], spec, negatives_per_target=1, seed=0)
    from recsys.data.examples import sample_unseen_items
    b = RankingExamples.build(log, [6, 12], spec, negatives_per_target=1, seed=0, negative_sampler=sample_unseen_items)
    assert np.array_equal(a.item, b.item)


@pytest.mark.parametrize("model", ["mimn", "din", "emb_mlp", "gru4rec"])
def test_every_behaviour_sequence_model_trains_and_evaluates_on_the_protocol(model, tmp_path):
    from tests.tiny import TINY_TRAINER, train_and_evaluate

    cfg = load_config(TrainConfig, ROOT / f"configs/{model}/lastbehavior_synthetic.yaml", [
        *TINY_TRAINER, "train.epochs=1", "data.synthetic.num_users=30", "data.synthetic.num_items=300",
        "data.synthetic.mean_events_per_user=150", "data.max_sequence=20", "data.last_behavior.min_sequence=3",
        "data.num_workers=0", f"output_dir={tmp_path}"])
    metrics = train_and_evaluate(cfg)
    assert list(metrics) == ["click"] and 0.0 <= metrics["click"]["auc"] <= 1.0
    assert metrics["click"]["positives"] == len(np.unique(build_ranking_data(cfg.data, seed=0).test.event))
