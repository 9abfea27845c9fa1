from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.readers import read_events
from recsys.data.readers.event_table import ColumnMapping, read_event_table
from recsys.errors import ConfigError, DataError

CSV = """uid,iid,ts,acts,page,shown,stars,req
7,101,1700000060,click|save,home,true,4,1
7,205,1700000000,,search,1,3.5,1
3,101,1600000000, click ,home,false,1,2
"""
MAPPING = ColumnMapping(user="uid", item="iid", timestamp="ts", actions="acts", surface="page",
                        impression="shown", rating="stars", request="req")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def check_example(log):
    assert np.array_equal(log.raw_user_ids, [3, 7]) and np.array_equal(log.raw_item_ids, [101, 205])
    assert np.array_equal(log.user_id, [0, 1, 1]) and np.array_equal(log.item_id, [0, 1, 0])
    assert np.array_equal(log.timestamp, [1600000000, 1700000000, 1700000060])
    assert log.action_vocab == ("click", "save")
    assert np.array_equal(log.actions, [1, 0, 3])
    assert log.surface_vocab == ("home", "search") and np.array_equal(log.surface, [0, 1, 0])
    assert np.array_equal(log.impression, [False, True, True])
    assert np.array_equal(log.rating, [1.0, 3.5, 4.0]) and np.array_equal(log.request_id, [2, 1, 1])


def test_csv_all_columns(tmp_path):
    check_example(read_event_table(write(tmp_path / "e.csv", CSV), MAPPING))


def test_parquet_same_as_csv(tmp_path):
    table = pa.table({
        "uid": [7, 7, 3], "iid": [101, 205, 101], "ts": [1700000060, 1700000000, 1600000000],
        "acts": ["click|save", None, "click"], "page": ["home", "search", "home"],
        "shown": [True, True, False], "stars": [4.0, 3.5, 1.0], "req": [1, 1, 2],
    })
    pq.write_table(table, tmp_path / "e.parquet")
    check_example(read_event_table(tmp_path / "e.parquet", MAPPING))


def test_given_vocab_order_and_unknown_action(tmp_path):
    path = write(tmp_path / "e.csv", CSV)
    log = read_event_table(path, MAPPING, action_vocab=("save", "hide", "click"))
    assert np.array_equal(log.actions, [4, 0, 5])
    with pytest.raises(DataError, match=r"line 2: action 'save' is not in action_vocab"):
        read_event_table(path, MAPPING, action_vocab=("click",))


def test_timestamp_units(tmp_path):
    ms = write(tmp_path / "ms.csv", "user_id,item_id,timestamp,actions\n1,2,1500,a\n1,3,2999,a\n")
    assert np.array_equal(read_event_table(ms, timestamp_unit="ms").timestamp, [1, 2])
    iso = write(tmp_path / "iso.csv", "user_id,item_id,timestamp,actions\n1,2,1970-01-01T00:01:00Z,a\n"
                                      "1,3,1970-01-01T02:00:00+01:00,a\n")
    assert np.array_equal(read_event_table(iso, timestamp_unit="iso8601").timestamp, [60, 3600])
    naive = write(tmp_path / "naive.csv", "user_id,item_id,timestamp,actions\n1,2,1970-01-02 00:00:00,a\n")
    assert np.array_equal(read_event_table(naive, timestamp_unit="iso8601").timestamp, [86400])
    bad = write(tmp_path / "bad.csv", "user_id,item_id,timestamp,actions\n1,2,1970-01-02 00:00:00,a\n1,3,yesterday,a\n")
    with pytest.raises(DataError, match=r"line 3: column 'timestamp' holds 'yesterday', not an ISO 8601"):
        read_event_table(bad, timestamp_unit="iso8601")
    with pytest.raises(ConfigError, match="timestamp_unit"):
        read_event_table(bad, timestamp_unit="days")


def test_no_actions_column(tmp_path):
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp\n1,2,3\n")
    log = read_event_table(path, ColumnMapping(actions=None))
    assert log.action_vocab == ("interact",) and np.array_equal(log.actions, [1])


@pytest.mark.parametrize(
    "text, message",
    [
        ("user_id,item_id,timestamp,actions\n1,2,3,a\n\nu9,2,4,a\n", r"line 4: column 'user_id' holds 'u9', not an integer"),
        ("user_id,item_id,timestamp,actions\n1,2,3,a\n1,2,-4,a\n", r"line 3: column 'timestamp' is before 1970"),
        ("user_id,item_id,timestamp,actions\n1,2,,a\n", r"line 2: column 'timestamp' is empty"),
        ("user_id,item_id,timestamp,actions\n1,2,3,a\n1,2,3,b\n", r'line 3: .*already appears at .*line 2.*duplicates="drop"'),
        ("user,item_id,timestamp,actions\n1,2,3,a\n", r"lacks the column\(s\) \['user_id'\]; found \['user', 'item_id'"),
        ("user_id,item_id,timestamp,actions\n", r"holds no events"),
        ("user_id,item_id,timestamp,actions\n1,2.5,3,a\n", r"line 2: column 'item_id' holds '2.5'"),
    ],
)
def test_bad_csv(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_event_table(write(tmp_path / "e.csv", text))


def test_bad_optional_columns(tmp_path):
    head = "user_id,item_id,timestamp,actions,shown,stars\n"
    mapping = ColumnMapping(impression="shown", rating="stars")
    with pytest.raises(DataError, match=r"line 3: column 'shown' holds 'maybe'"):
        read_event_table(write(tmp_path / "a.csv", head + "1,2,3,a,1,2\n1,3,3,a,maybe,2\n"), mapping)
    with pytest.raises(DataError, match=r"line 2: column 'stars' holds 'x', not a finite number"):
        read_event_table(write(tmp_path / "b.csv", head + "1,2,3,a,1,x\n"), mapping)


def test_parquet_errors_name_row_and_column(tmp_path):
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [1.0, float("nan")], "timestamp": [1, 2],
                             "actions": ["a", "a"]}), tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"e.parquet row 1: column 'item_id' holds nan"):
        read_event_table(tmp_path / "e.parquet")


def test_duplicates_drop_keeps_first(tmp_path):
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp,actions\n1,2,3,a\n1,2,3,b\n1,4,3,b\n")
    log = read_event_table(path, duplicates="drop")
    assert len(log) == 2 and log.action_vocab == ("a", "b") and np.array_equal(log.actions, [1, 2])


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_event_table(tmp_path / "none.csv")
    with pytest.raises(DataError, match="unknown file type '.json'"):
        read_event_table(write(tmp_path / "e.json", "{}"))
    with pytest.raises(DataError, match="could not be read"):
        read_event_table(write(tmp_path / "e.parquet", "not parquet"))


def test_read_events_dispatch(tmp_path):
    path = write(tmp_path / "e.csv", CSV)
    check_example(read_events("events", str(path), columns=MAPPING))
    as_dict = {"user": "uid", "item": "iid", "timestamp": "ts", "actions": "acts", "surface": "page",
               "impression": "shown", "rating": "stars", "request": "req"}
    check_example(read_events("events", str(path), columns=as_dict))
    with pytest.raises(ConfigError, match=r"columns must map the fields"):
        read_events("events", str(path), columns={"usr": "uid"})
    with pytest.raises(ConfigError, match=r"unknown event source 'kafka'; choose one of \['movielens', 'amazon', 'amazon_ratings', 'events', 'log'\]"):
        read_events("kafka", str(path))
    with pytest.raises(ConfigError, match=r"takes no option\(s\) \['colums'\]"):
        read_events("events", str(path), colums=MAPPING)


@pytest.mark.parametrize("value", ["18446744073709551616", "-9223372036854775809"])
def test_ids_beyond_int64_name_the_line_and_column(tmp_path, value):
    path = write(tmp_path / "e.csv", f"uid,iid,ts\n1,2,100\n{value},3,200\n")
    with pytest.raises(DataError, match=rf"line 3: column 'uid' holds {value}, beyond the 64-bit integer range"):
        read_event_table(path, ColumnMapping(user="uid", item="iid", timestamp="ts", actions=None))


def test_unsigned_parquet_ids_beyond_int64_are_refused(tmp_path):
    table = pa.table({"user_id": pa.array([1, 2**64 - 1], pa.uint64()), "item_id": [1, 2], "timestamp": [5, 6]})
    pq.write_table(table, tmp_path / "e.parquet")
    with pytest.raises(DataError, match="beyond the 64-bit integer range"):
        read_event_table(tmp_path / "e.parquet", ColumnMapping(actions=None))


def test_timestamps_past_year_9999_are_refused_with_the_unit_hint(tmp_path):
    path = write(tmp_path / "e.csv", "uid,iid,ts\n1,2,100\n1,3,9223372036854775807\n")
    with pytest.raises(DataError, match="after the year 9999.*check the unit"):
        read_event_table(path, ColumnMapping(user="uid", item="iid", timestamp="ts", actions=None))


def test_invalid_utf8_names_the_file(tmp_path):
    path = tmp_path / "e.csv"
    path.write_bytes(b"uid,iid,ts\xff\n1,2,100\n")
    with pytest.raises(DataError, match=r"e\.csv cannot be read as an event table.*UTF-8"):
        read_event_table(path, ColumnMapping(user="uid", item="iid", timestamp="ts", actions=None))
