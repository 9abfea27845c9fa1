
import numpy as np
import pytest

from recsys.data.readers.movielens import read_movielens
from recsys.data.schema import EventLog
from recsys.data.splits import Split, leave_one_out, time_split
from recsys.errors import ConfigError



def hand_log() -> EventLog:
    # user 0: e e i e i e i   (e = engaged, i = impression without action)
    # user 1: e e             (2 engaged < 3: all train)
    # user 2: i e e e
    return EventLog.from_arrays(
        user_id=[0] * 7 + [1] * 2 + [2] * 4,
        item_id=[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5],
        timestamp=[1, 2, 3, 4, 5, 6, 7, 1, 2, 10, 11, 12, 13],
        actions=[1, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1],
        num_items=7,
    )


def assert_partition(split: Split, n: int) -> None:
    joined = np.concatenate([split.train, split.valid, split.test])
    assert np.array_equal(np.sort(joined), np.arange(n))


def test_leave_one_out_known_answer():
    log = hand_log()
    split = leave_one_out(log)
    assert np.array_equal(split.train, [0, 1, 2, 7, 8, 9, 10])
    assert np.array_equal(split.valid, [3, 4, 11])
    assert np.array_equal(split.test, [5, 6, 12])
    assert_partition(split, len(log))
    strict = leave_one_out(log, min_engaged=4)  # user 0 has 4 engaged events, user 2 has 3
    assert np.array_equal(strict.test, [5, 6]) and np.array_equal(strict.valid, [3, 4])
    with pytest.raises(ConfigError, match="min_engaged"):
        leave_one_out(log, min_engaged=1)


def test_time_split_known_answer():
    log = EventLog.from_arrays(user_id=[0, 0, 0, 1, 1, 1, 1, 1, 1, 1], item_id=[0] * 10,
                               timestamp=[1, 5, 9, 2, 3, 4, 6, 7, 8, 10])
    split = time_split(log, valid_fraction=0.2, test_fraction=0.3)  # test: t >= 8, valid: 6 <= t < 8
    assert np.array_equal(log.timestamp[split.test], [9, 8, 10])
    assert np.array_equal(log.timestamp[split.valid], [6, 7])
    assert_partition(split, len(log))
    explicit = time_split(log, valid_start=3, test_start=10)
    assert np.array_equal(log.timestamp[explicit.train], [1, 2])
    assert np.array_equal(log.timestamp[explicit.test], [10])
    none = time_split(log, valid_fraction=0.0, test_fraction=0.0)
    assert len(none.train) == 10 and len(none.valid) == len(none.test) == 0
    with pytest.raises(ConfigError, match="below 1"):
        time_split(log, valid_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="swap"):
        time_split(log, valid_start=9, test_start=3)


def test_split_logs():
    log = hand_log()
    train, valid, test = leave_one_out(log).logs(log)
    assert (len(train), len(valid), len(test)) == (7, 3, 3)
    assert test.num_items == log.num_items and test.action_vocab == log.action_vocab


def test_leave_one_out_invariants_on_ml100k(shared_data):
    folder = shared_data("ml-100k")
    log = read_movielens(folder)
    split = leave_one_out(log, min_engaged=3)
    assert_partition(split, len(log))
    eligible = np.bincount(log.user_id[log.engaged()], minlength=log.num_users) >= 3
    engaged = log.engaged()
    for part in (split.valid, split.test):
        per_user = np.bincount(log.user_id[part][engaged[part]], minlength=log.num_users)
        assert np.array_equal(per_user, eligible.astype(int))  # exactly one engaged target each
    # test targets are each user's latest events; valid targets are no later than the test ones
    last_time = np.full(log.num_users, -1)
    np.maximum.at(last_time, log.user_id, log.timestamp)
    assert np.array_equal(log.timestamp[split.test], last_time[log.user_id[split.test]])
    first_test = np.full(log.num_users, np.iinfo(np.int64).max)
    np.minimum.at(first_test, log.user_id[split.test], split.test)
    assert (split.valid < first_test[log.user_id[split.valid]]).all()
    train_max = np.full(log.num_users, -1)
    np.maximum.at(train_max, log.user_id[split.train], split.train)
    assert (split.valid > train_max[log.user_id[split.valid]]).all()
