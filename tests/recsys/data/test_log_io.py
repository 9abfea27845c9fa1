import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.log_io import read_log, write_log
from recsys.data.readers import read_events
from recsys.data.schema import EventLog, ItemTable
from recsys.errors import DataError


def full_log() -> EventLog:
    items = ItemTable(
        content_embedding=np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        attributes={"genre": np.array([0, 2, 1]), "decade": np.array([1, 1, 0])},
        attribute_cardinality={"genre": 3, "decade": 2},
    )
    return EventLog.from_arrays(
        user_id=[1, 0, 0, 1], item_id=[2, 0, 1, 1], timestamp=[5, 9, 3, 1], actions=[1, 0, 3, 2],
        surface=[0, 2, 1, 0], impression=[True, False, True, True], num_users=2, num_items=3,
        action_vocab=("click", "save"), surface_vocab=("home", "search", "related"), items=items,
        raw_user_ids=np.array(["alice", "bob"]), raw_item_ids=np.array([10, 20, 30]),
        rating=np.array([1.5, 2, 3, 4], np.float32), request_id=np.array([7, 8, 8, 7]),
    )


def assert_same(a: EventLog, b: EventLog) -> None:
    for name in EventLog._COLUMNS + EventLog._OPTIONAL_COLUMNS + ("raw_user_ids", "raw_item_ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or (np.array_equal(x, y) and x.dtype.kind == y.dtype.kind), name
    assert (a.num_users, a.num_items, a.action_vocab, a.surface_vocab) == (b.num_users, b.num_items, b.action_vocab, b.surface_vocab)
    assert (a.items is None) == (b.items is None)
    if a.items is not None:
        assert np.array_equal(a.items.content_embedding, b.items.content_embedding)
        assert a.items.content_embedding.dtype == np.float32
        assert a.items.attribute_cardinality == b.items.attribute_cardinality
        for k in a.items.attributes:
            assert np.array_equal(a.items.attributes[k], b.items.attributes[k])


def test_round_trip_full(tmp_path):
    log = full_log()
    write_log(log, tmp_path / "log")
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == [
        "events.parquet", "item_ids.parquet", "items.parquet", "meta.json", "users.parquet"]
    assert [p.name for p in tmp_path.iterdir()] == ["log"]  # no temporary folder left
    assert pq.read_schema(tmp_path / "log" / "items.parquet").field("content_embedding").type.list_size == 4
    back = read_events("log", str(tmp_path / "log"))
    assert_same(log, back)


def test_round_trip_minimal_and_overwrite(tmp_path):
    log = EventLog.from_arrays(user_id=[0, 1], item_id=[1, 0], timestamp=[1, 2])
    write_log(log, tmp_path / "log")
    assert_same(log, read_log(tmp_path / "log"))
    with pytest.raises(DataError, match="overwrite=True"):
        write_log(full_log(), tmp_path / "log")
    write_log(full_log(), tmp_path / "log", overwrite=True)
    assert_same(full_log(), read_log(tmp_path / "log"))
    assert [p.name for p in tmp_path.iterdir()] == ["log"]


def test_bad_directories(tmp_path):
    with pytest.raises(DataError, match="meta.json not found"):
        read_log(tmp_path)
    write_log(full_log(), tmp_path / "log")
    meta_path = tmp_path / "log" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(DataError, match="version 99"):
        read_log(tmp_path / "log")
    meta_path.write_text(json.dumps({**meta, "num_items": 2}))
    with pytest.raises(DataError, match="num_items"):
        read_log(tmp_path / "log")
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "log" / "items.parquet").unlink()
    with pytest.raises(DataError, match="items.parquet not found"):
        read_log(tmp_path / "log")
    pq.write_table(pq.read_table(tmp_path / "log" / "events.parquet").drop(["surface"]), tmp_path / "log" / "events.parquet")
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['surface'\]"):
        read_log(tmp_path / "log")


@pytest.mark.parametrize("edit, message", [
    (lambda meta: {**meta, "num_users": "abc"}, "'num_users' is 'abc', not a non-negative integer"),
    (lambda meta: {**meta, "action_vocab": 3}, "'action_vocab' is 3, not a list of names"),
    (lambda meta: {**meta, "attribute_cardinality": {"genre": -1}}, "'attribute_cardinality'"),
    (lambda meta: [meta], "must hold a JSON object"),
])
def test_bad_meta_json_values_name_the_field(tmp_path, edit, message):
    path = write_log(EventLog.from_arrays(user_id=[0], item_id=[0], timestamp=[1], actions=[1]), tmp_path / "log")
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(edit(meta)))
    with pytest.raises(DataError, match=message):
        read_log(path)


def test_meta_json_that_is_not_utf8_is_refused(tmp_path):
    path = write_log(EventLog.from_arrays(user_id=[0], item_id=[0], timestamp=[1], actions=[1]), tmp_path / "log")
    (path / "meta.json").write_bytes(b"{\"format\": \"\xff\"}")
    with pytest.raises(DataError, match="meta.json is not valid JSON"):
        read_log(path)


def test_events_of_the_wrong_type_are_refused(tmp_path):
    path = write_log(EventLog.from_arrays(user_id=[0], item_id=[0], timestamp=[1], actions=[1]), tmp_path / "log")
    table = pq.read_table(path / "events.parquet")
    pq.write_table(table.set_column(0, "user_id", pa.array(["x"])), path / "events.parquet")
    with pytest.raises(DataError, match="does not hold what meta.json describes"):
        read_log(path)
