import json
from pathlib import Path

import numpy as np
import pytest

from recsys.data.readers.amazon_s3rec import read_amazon_s3rec
from recsys.errors import DataError

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_beauty_counts_and_positions(shared_data):
    path = shared_data("amazon-s3rec/Beauty.txt")
    log = read_amazon_s3rec(path)
    assert (len(log), log.num_users, log.num_items) == (198_502, 22_363, 12_101)
    assert log.action_vocab == ("interact",) and (log.actions == 1).all()
    # timestamps are 0, 1, 2, ... within each user
    offsets = log.user_offsets()
    expected = np.arange(len(log)) - np.repeat(offsets[:-1], np.diff(offsets))
    assert np.array_equal(log.timestamp, expected)
    # the first line, in order
    first = [int(t) for t in path.read_text().split("\n", 1)[0].split()]
    user = np.searchsorted(log.raw_user_ids, first[0])
    assert np.array_equal(log.raw_item_ids[log.item_id[offsets[user]:offsets[user + 1]]], first[1:])
    emb = log.items.content_embedding
    assert emb.shape == (12_101, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    attributes = json.loads(path.with_name("Beauty_item2attributes.json").read_text())
    raw_first = np.array([attributes[str(i)][0] for i in log.raw_item_ids])
    ours = log.items.attributes["attribute"]
    # the remapping keeps raw order: equal raw first attributes <-> equal remapped ids
    assert np.array_equal(np.argsort(raw_first, kind="stable"), np.argsort(ours, kind="stable"))


def test_small_file_with_attributes(tmp_path):
    txt = write(tmp_path / "Toy.txt", "7 30 10 30\n3 10\n")
    write(tmp_path / "Toy_item2attributes.json", json.dumps({"10": [5, 2], "99": [1]}))
    log = read_amazon_s3rec(txt, content_dim=8)
    assert np.array_equal(log.raw_user_ids, [3, 7]) and np.array_equal(log.raw_item_ids, [10, 30])
    assert np.array_equal(log.user_id, [0, 1, 1, 1]) and np.array_equal(log.item_id, [0, 1, 0, 1])
    assert np.array_equal(log.timestamp, [0, 0, 1, 2])
    # attribute values among the log's items: raw 2 -> 0, raw 5 -> 1; item 30 has none -> 2
    assert np.array_equal(log.items.attributes["attribute"], [1, 2])
    assert log.items.attribute_cardinality == {"attribute": 3}
    emb = log.items.content_embedding
    assert np.isclose(np.linalg.norm(emb[0]), 1.0) and not emb[1].any()
    assert read_amazon_s3rec(txt, attributes_json=None).items is None


def test_embedding_depends_only_on_the_item_attributes(tmp_path):
    attrs = json.dumps({"1": [4, 9], "2": [3], "3": [4, 9]})
    (tmp_path / "a_item2attributes.json").write_text(attrs)
    (tmp_path / "b_item2attributes.json").write_text(attrs)
    a = read_amazon_s3rec(write(tmp_path / "a.txt", "1 1 2\n"))
    b = read_amazon_s3rec(write(tmp_path / "b.txt", "1 3\n"))
    assert np.array_equal(a.items.content_embedding[0], b.items.content_embedding[0])
    assert not np.allclose(a.items.content_embedding[0], a.items.content_embedding[1])


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 2 3\n2\n", r"line 2: expected 'user item1 item2 \.\.\.'"),
        ("1 2 3\n\n2 4 b5\n", r"line 3: 'b5' is not an integer id"),
        ("1 2 3\n2 4\n1 5\n", r"line 3: user 1 already has a line"),
    ],
)
def test_bad_lines(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_amazon_s3rec(write(tmp_path / "x.txt", text))


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_amazon_s3rec(tmp_path / "none.txt")
    with pytest.raises(DataError, match="is empty"):
        read_amazon_s3rec(write(tmp_path / "empty.txt", ""))
    txt = write(tmp_path / "ok.txt", "1 2\n")
    with pytest.raises(DataError, match="not valid JSON"):
        read_amazon_s3rec(txt, attributes_json=write(tmp_path / "bad.json", "{"))
    with pytest.raises(DataError, match=r"entry '2'"):
        read_amazon_s3rec(txt, attributes_json=write(tmp_path / "bad2.json", '{"2": ["a"]}'))


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "Toy.txt"
    path.write_bytes(b"7 30 10\n3 1\xb30\n")
    with pytest.raises(DataError, match=r"Toy\.txt line 2 is not valid UTF-8"):
        read_amazon_s3rec(path, attributes_json=None)


def test_empty_lines_only_and_huge_ids_are_refused(tmp_path):
    with pytest.raises(DataError, match="holds no"):
        read_amazon_s3rec(write(tmp_path / "A.txt", "\r"), attributes_json=None)
    with pytest.raises(DataError, match="line 1: id 18446744073709551616 is beyond the 64-bit"):
        read_amazon_s3rec(write(tmp_path / "B.txt", "7 18446744073709551616\n"), attributes_json=None)
