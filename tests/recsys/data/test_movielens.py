from pathlib import Path

import numpy as np
import pytest

from recsys.data.readers.movielens import LEVELS, RATE_LIKE_HIDE, read_movielens, ratings_to_actions
from recsys.errors import ConfigError, DataError

def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding=encoding)
    return folder


def u_item_line(movie: int, date: str, flags: list[int]) -> str:
    bits = ["0"] * 19
    for g in flags:
        bits[g] = "1"
    return f"{movie}|Movie {movie}|{date}||http://x|" + "|".join(bits)


# ------------------------------------------------------------------ real data
def test_ml100k_counts_and_items(shared_data):
    log = read_movielens(shared_data("ml-100k"))
    assert (len(log), log.num_users, log.num_items) == (100_000, 943, 1682)
    assert log.action_vocab == RATE_LIKE_HIDE and log.surface_vocab == ("home",)
    assert log.impression.all() and log.rating.dtype == np.float32
    like = (log.actions & 2) != 0
    assert np.array_equal(like, log.rating >= 4) and np.array_equal((log.actions & 4) != 0, log.rating <= 2)
    assert log.items.content_embedding.shape == (1682, 32)
    assert log.items.attribute_cardinality["genre"] == 20
    norms = np.linalg.norm(log.items.content_embedding, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-6)  # every ml-100k movie lists a genre
    assert np.array_equal(log.raw_item_ids, np.arange(1, 1683))
    # Toy Story (raw id 1): Animation, Children's, Comedy -> flags 3, 4, 5; first genre 3; 1990s.
    assert np.allclose(log.items.content_embedding[0, [3, 4, 5]], 1 / np.sqrt(3))
    assert log.items.attributes["genre"][0] == 3
    decade = log.items.attributes["decade"]
    assert decade.max() == log.items.attribute_cardinality["decade"] - 1  # movie 267 has no date


def test_ml100k_row_matches_source_line(shared_data):
    folder = shared_data("ml-100k")
    log = read_movielens(folder)
    first = (folder / "u.data").read_text().splitlines()[0].split("\t")  # 196 242 3 881250949
    user = np.searchsorted(log.raw_user_ids, int(first[0]))
    item = np.searchsorted(log.raw_item_ids, int(first[1]))
    hit = (log.user_id == user) & (log.item_id == item) & (log.timestamp == int(first[3]))
    assert hit.sum() == 1 and log.rating[hit][0] == float(first[2])


def test_ml_latest_small_counts_levels(shared_data):
    log = read_movielens(shared_data("ml-latest-small"), actions="levels")
    assert (len(log), log.num_users, log.num_items) == (100_836, 610, 9724)
    assert log.action_vocab == LEVELS and log.items is None  # no movies.csv in this copy
    level = np.log2(log.actions).astype(int) + 1
    assert np.array_equal(level, np.ceil(log.rating).astype(int))


# ------------------------------------------------------------------ formats
def test_ml100k_format_items_missing_and_ties(tmp_path):
    folder = write(tmp_path / "ml", "u.data", "5\t10\t4\t100\n5\t20\t1\t100\n2\t30\t3\t50\n\n5\t10\t5\t90\n")
    write(folder, "u.item", "\n".join([u_item_line(10, "01-Jan-1995", [1, 16]), u_item_line(20, "", [])]) + "\n",
          encoding="latin-1")
    log = read_movielens(folder)
    assert log.num_users == 2 and log.num_items == 3
    assert np.array_equal(log.raw_user_ids, [2, 5]) and np.array_equal(log.raw_item_ids, [10, 20, 30])
    # user 5: t=90 first, then the two t=100 events in file order (10 then 20)
    assert np.array_equal(log.item_id, [2, 0, 0, 1]) and np.array_equal(log.timestamp, [50, 90, 100, 100])
    emb = log.items.content_embedding
    assert np.allclose(emb[0, [1, 16]], 1 / np.sqrt(2)) and np.count_nonzero(emb[0]) == 2
    assert not emb[1].any() and not emb[2].any()  # no genre; missing from u.item
    assert np.array_equal(log.items.attributes["genre"], [1, 19, 19])
    assert log.items.attribute_cardinality == {"genre": 20, "decade": 2}
    assert np.array_equal(log.items.attributes["decade"], [0, 1, 1])


def test_ml1m_format(tmp_path):
    folder = write(tmp_path / "ml-1m", "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::2::978298413\n")
    write(folder, "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                "661::James and the Giant Peach: Part 1 (1996)::Animation|Children's|Musical\n",
          encoding="latin-1")
    log = read_movielens(folder)
    assert (len(log), log.num_users, log.num_items) == (3, 2, 2)
    assert np.array_equal(log.raw_item_ids, [661, 1193])
    # genre vocabulary sorted: Animation, Children's, Drama, Musical
    assert np.array_equal(log.items.attributes["genre"], [0, 2])
    assert np.allclose(log.items.content_embedding[0, [0, 1, 3]], 1 / np.sqrt(3))
    assert log.items.attribute_cardinality == {"genre": 5, "decade": 3}
    assert np.array_equal(log.items.attributes["decade"], [1, 0])  # 1990s, 1970s


def test_csv_format_quoted_titles_and_no_genres(tmp_path):
    folder = write(tmp_path / "ml-latest", "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.5,10\n1,2,0.5,20\n")
    write(folder, "movies.csv", 'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama|Romance\n'
                                "2,Untitled,(no genres listed)\n")
    log = read_movielens(folder, like_min=4.5, hide_max=0.5)
    assert np.array_equal(log.actions, [0b011, 0b101])
    assert np.array_equal(log.items.attributes["genre"], [0, 3])
    assert not log.items.content_embedding[1].any()
    assert np.array_equal(log.items.attributes["decade"], [0, 1])
    with pytest.raises(DataError, match="content_dim >= 3"):
        read_movielens(folder, content_dim=2)


def test_ratings_to_actions():
    mask, vocab = ratings_to_actions(np.array([0.5, 1.0, 2.0, 3.5, 4.0, 5.0]), "levels")
    assert vocab == LEVELS and np.array_equal(mask, [1, 1, 2, 8, 8, 16])
    mask, _ = ratings_to_actions(np.array([1.0, 2.0, 3.0, 4.0]), "rate_like_hide", like_min=3.0, hide_max=1.0)
    assert np.array_equal(mask, [5, 1, 3, 3])
    with pytest.raises(ConfigError, match="rate_like_hide"):
        read_movielens(".", actions="stars")


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "text, message",
    [
        ("1\t2\t3\t10\nx\t2\t3\t11\n", r"line 2: user 'x' is not a number"),
        ("1\t2\t3\t10\n\n1\t3\t3\n", r"line 3: expected 4 fields"),
        ("1\t2\t3\t10\n1\t3\t3\t-5\n", r"line 2: timestamp -5 is negative"),
        ("1\t2\t3\t10\n1\t3\t3\tnan\n", r"line 2: timestamp 'nan' is not a number"),
        ("1\t2\t6\t10\n", r"line 1: rating 6.0 is outside"),
        ("1\t2\tnan\t10\n", r"line 1: rating nan is outside"),
        ("1\t2\t3\t10\n1\t3\t\t10\n", r"line 2: the rating field is empty"),
    ],
)
def test_bad_ratings_name_the_line(tmp_path, text, message):
    folder = write(tmp_path / "ml", "u.data", text)
    with pytest.raises(DataError, match=message) as info:
        read_movielens(folder)
    assert "u.data" in str(info.value)


def test_duplicates_error_or_drop(tmp_path):
    folder = write(tmp_path / "ml", "u.data", "1\t2\t3\t10\n1\t3\t3\t10\n1\t2\t5\t10\n")
    with pytest.raises(DataError, match=r'line 3: .*already appears at .*line 1.*duplicates="drop"'):
        read_movielens(folder)
    log = read_movielens(folder, duplicates="drop")
    assert len(log) == 2 and np.array_equal(log.rating, [3, 3])


def test_missing_empty_and_wrong_files(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"no MovieLens ratings file.*notes.txt"):
        read_movielens(tmp_path / "empty")
    write(tmp_path / "e", "u.data", "")
    with pytest.raises(DataError, match="is empty"):
        read_movielens(tmp_path / "e")
    write(tmp_path / "h", "ratings.csv", "user,item,rating,time\n1,2,3,4\n")
    with pytest.raises(DataError, match=r"line 1: expected the header"):
        read_movielens(tmp_path / "h")
    with pytest.raises(ConfigError, match="ml-100k"):
        read_movielens(tmp_path / "h", variant="ml-10m")
    write(tmp_path / "m", "u.data", "1\t2\t3\t10\n")
    write(tmp_path / "m", "u.item", "2|only two columns\n")
    with pytest.raises(DataError, match="u.item"):
        read_movielens(tmp_path / "m")
