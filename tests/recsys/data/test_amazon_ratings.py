from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from recsys.data.log_io import read_log, write_log
from recsys.data.pipeline import load_events
from recsys.data.readers import read_events
from recsys.data.readers.amazon_ratings import dense_codes, interaction_filter, read_amazon_ratings, time_order
from recsys.data.readers.movielens import LEVELS, RATE_LIKE_HIDE
from recsys.errors import ConfigError, DataError
from recsys.train.config import DataConfig

# Users A1.., items with ASIN-like ids. With minimums of 2 (hand-computed):
#   raw counts: users A1 3, A2 2, A3 2, A4 1; items 0001 3, 0002 2, B003 2, B004 1.
#   single pass: drop A4's line (user count 1) and A3-B004 (item count 1); the items left form
#     the id space {0001, 0002, B003}; A3 is then left with 1 rating and is dropped, so B003 keeps
#     its id with a single rating (from A1).
#   k_core: after A3 goes, B003 has 1 rating and goes too; A1 keeps 2: users {A1, A2}, items {0001, 0002}.
SMALL = """\
A1XV7PQ3RZ9K2M,0001,5.0,10
A1XV7PQ3RZ9K2M,0002,4.0,20
A1XV7PQ3RZ9K2M,B003,1.0,30
A2BBQW8T1LJ4NS,0001,3.0,15
A2BBQW8T1LJ4NS,0002,2.0,25
A3KX0M7Q2VJ8RT,B003,5.0,5
A3KX0M7Q2VJ8RT,B004,4.0,6
A4ZZ91QH3C5PLE,0001,5.0,1
"""
USERS = ["A1XV7PQ3RZ9K2M", "A2BBQW8T1LJ4NS", "A3KX0M7Q2VJ8RT", "A4ZZ91QH3C5PLE"]


def write(tmp_path: Path, text: str, name: str = "ratings_Test.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def events(log) -> list[tuple[str, str, int]]:
    """(raw user, raw item, timestamp) of every event, in log order."""
    triples = zip(log.user_id, log.item_id, log.timestamp)
    return [(log.raw_user_ids[u], log.raw_item_ids[i], int(t)) for u, i, t in triples]


# ------------------------------------------------------------------ filtering
def test_single_pass_filter_by_hand(tmp_path):
    log = read_amazon_ratings(write(tmp_path, SMALL), min_user_interactions=2, min_item_interactions=2)
    assert list(log.raw_user_ids) == USERS[:2]
    assert list(log.raw_item_ids) == ["0001", "0002", "B003"]  # B003 keeps its id
    assert events(log) == [
        (USERS[0], "0001", 10), (USERS[0], "0002", 20), (USERS[0], "B003", 30),
        (USERS[1], "0001", 15), (USERS[1], "0002", 25),
    ]  # fmt: skip
    assert np.array_equal(log.rating, [5, 4, 1, 3, 2])


def test_k_core_filter_by_hand(tmp_path):
    log = read_amazon_ratings(write(tmp_path, SMALL), 2, 2, filtering="k_core")
    assert list(log.raw_user_ids) == USERS[:2] and list(log.raw_item_ids) == ["0001", "0002"]
    a1, a2 = USERS[:2]
    assert events(log) == [(a1, "0001", 10), (a1, "0002", 20), (a2, "0001", 15), (a2, "0002", 25)]


def test_interaction_filter_invariants():
    rng = np.random.default_rng(0)
    user, item = rng.integers(0, 300, 5000), rng.zipf(1.5, 5000) % 400
    keep, space = interaction_filter(user, item, 300, 400, 5, 4, "k_core")
    assert np.bincount(user[keep])[np.unique(user[keep])].min() >= 5
    assert np.bincount(item[keep])[np.unique(item[keep])].min() >= 4
    assert np.array_equal(space, np.bincount(item[keep], minlength=400) > 0)
    once, once_space = interaction_filter(user, item, 300, 400, 5, 4, "single_pass")
    assert np.bincount(user[once])[np.unique(user[once])].min() >= 5
    assert not (keep & ~once).any() and once_space[item[once]].all()  # the k-core is inside the single pass
    everything, all_items = interaction_filter(user, item, 300, 400, 1, 1)
    assert everything.all() and np.array_equal(all_items, np.bincount(item, minlength=400) > 0)


def test_defaults_are_five_and_nothing_left_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"no rating is left .*min_user_interactions=5, min_item_interactions=5; lower"):
        read_amazon_ratings(write(tmp_path, SMALL))


# ------------------------------------------------------------------ ids, order, actions
def test_ids_are_sorted_raw_ids_whatever_the_line_order(tmp_path):
    lines = SMALL.splitlines()
    shuffled = [lines[i] for i in np.random.default_rng(1).permutation(len(lines))]
    first = read_amazon_ratings(write(tmp_path, SMALL), 1, 1)
    second = read_amazon_ratings(write(tmp_path, "\n".join(shuffled) + "\n", "shuffled.csv"), 1, 1)
    assert list(first.raw_user_ids) == USERS and list(first.raw_item_ids) == ["0001", "0002", "B003", "B004"]
    for name in ("user_id", "item_id", "timestamp", "rating", "raw_user_ids", "raw_item_ids"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name  # no ties in SMALL


def test_dense_codes_and_time_order():
    codes, uniques = dense_codes(pa.chunked_array([["b", "a"], ["c", "a", "b"]]))
    assert uniques.to_pylist() == ["a", "b", "c"] and np.array_equal(codes, [1, 0, 2, 0, 1])
    user, timestamp = np.array([1, 0, 1, 0, 1]), np.array([7, 9, 3, 9, 7])
    assert np.array_equal(time_order(user, timestamp), [1, 3, 2, 0, 4])  # ties keep their order
    assert np.array_equal(time_order(user * 2**40, timestamp * 2**30), [1, 3, 2, 0, 4])  # the overflow-safe path


def test_time_order_ties_keep_file_order(tmp_path):
    text = "U1,B2,5.0,300\nU1,B9,4.0,100\nU1,B1,3.0,300\nU0,B1,5.0,50\n"
    log = read_amazon_ratings(write(tmp_path, text), 1, 1)
    assert events(log) == [("U0", "B1", 50), ("U1", "B9", 100), ("U1", "B2", 300), ("U1", "B1", 300)]
    assert np.all(np.diff(log.timestamp[log.user_id == 1]) >= 0)


def test_actions_from_ratings(tmp_path):
    path = write(tmp_path, "U1,I1,1.0,1\nU1,I2,2.0,2\nU1,I3,3.0,3\nU1,I4,4.0,4\nU1,I5,5.0,5\n")
    log = read_amazon_ratings(path, 1, 1)
    assert log.action_vocab == RATE_LIKE_HIDE and log.surface_vocab == ("home",) and log.items is None
    assert np.array_equal(log.actions, [0b101, 0b101, 0b001, 0b011, 0b011]) and log.engaged().all()
    assert log.impression.all() and log.rating.dtype == np.float32
    levels = read_amazon_ratings(path, 1, 1, actions="levels")
    assert levels.action_vocab == LEVELS and np.array_equal(levels.actions, [1, 2, 4, 8, 16])


# ------------------------------------------------------------------ duplicates
def test_duplicates_keep_drop_error(tmp_path):
    path = write(tmp_path, "U1,I1,5.0,10\nU1,I2,4.0,20\nU1,I1,5.0,10\nU2,I1,3.0,10\n")
    assert len(read_amazon_ratings(path, 1, 1)) == 4  # kept as separate events by default
    dropped = read_amazon_ratings(path, 1, 1, duplicates="drop")
    assert events(dropped) == [("U1", "I1", 10), ("U1", "I2", 20), ("U2", "I1", 10)]
    with pytest.raises(DataError, match=r"line 3 repeats line 1: user U1, item I1, timestamp 10; delete it, or pass"):
        read_amazon_ratings(path, 1, 1, duplicates="error")
    # repeats count towards the minimums when kept: U1-I1 twice makes item I1 reach 3
    assert read_amazon_ratings(path, 1, 3).num_items == 1
    with pytest.raises(DataError, match="no rating is left"):
        read_amazon_ratings(path, 1, 3, duplicates="drop")


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "text, message",
    [
        ("U1,I1,5.0,10\n\nU1,I2,5.0\n", r"line 3: expected 4 comma-separated fields .* found 3"),
        ("U1,I1,5.0,10\nU1,I2,five,11\n", r"line 2: rating 'five' is not a number; fix or delete the line"),
        ("user,item,rating,timestamp\nU1,I1,5.0,10\n", r"line 1: rating 'rating' is not a number.*no header line"),
        ("U1,I1,5.0,10\nU1,I2,5.0,yesterday\n", r"line 2: timestamp 'yesterday' is not an integer"),
        ("U1,I1,5.0,10\nU1,,5.0,11\n", r"line 2: the item field is empty; fill it in or delete the line"),
        ("U1,I1,5.0,10\n\n\nU1,I2,6.0,11\n", r"line 4: rating 6.0 is outside 1..5 stars"),
        ("U1,I1,0.0,10\n", r"line 1: rating 0.0 is outside"),
        ("U1,I1,5.0,10\nU1,I2,5.0,-3\n", r"line 2: timestamp -3 is negative"),
        ("\n\n", r"holds no ratings"),
    ],
)
def test_bad_lines_name_the_line_and_fix(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=message) as info:
        read_amazon_ratings(path, 1, 1)
    assert str(path) in str(info.value)


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(DataError, match=r"Amazon ratings file not found: .*ratings_Books.csv; pass"):
        read_amazon_ratings(tmp_path / "ratings_Books.csv")
    path = write(tmp_path, SMALL)
    for options, message in (
        ({"min_user_interactions": 0}, r"min_user_interactions=0 must be an integer >= 1"),
        ({"min_item_interactions": 2.5}, r"min_item_interactions=2.5"),
        ({"filtering": "iterative"}, r"filtering='iterative' is not one of \['single_pass', 'k_core'\]"),
        ({"duplicates": "merge"}, r"duplicates='merge'"),
        ({"actions": "stars"}, r"actions='stars'"),
    ):
        with pytest.raises(ConfigError, match=message):
            read_amazon_ratings(path, **options)
    with pytest.raises(ConfigError, match=r"takes no option\(s\) \['min_rating'\]"):
        read_events("amazon_ratings", path, min_rating=3)


# ------------------------------------------------------------------ wiring
def test_config_source_and_log_roundtrip(tmp_path):
    path = write(tmp_path, SMALL)
    options = {"min_user_interactions": 2, "min_item_interactions": 2}
    cfg = DataConfig(source="amazon_ratings", path=str(path), options=options)
    log = load_events(cfg)
    assert (len(log), log.num_users, log.num_items) == (5, 2, 3)
    back = read_log(write_log(log, tmp_path / "log"))
    assert events(back) == events(log) and list(back.raw_item_ids) == ["0001", "0002", "B003"]
