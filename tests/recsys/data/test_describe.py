import numpy as np

from recsys.data.describe import describe_log, format_description
from recsys.data.schema import EventLog


def test_describe_known_values():
    log = EventLog.from_arrays(
        user_id=[0, 0, 0, 1], item_id=[0, 1, 2, 0], timestamp=[0, 86400, 86400 * 40, 10],
        actions=[1, 3, 0, 2], surface=[0, 1, 1, 0], action_vocab=("click", "save"),
        surface_vocab=("home", "search"), num_users=3,
    )
    d = describe_log(log)
    assert (d["events"], d["users"], d["items"]) == (4, 3, 3)
    assert d["engaged_fraction"] == 0.75
    assert d["actions"] == {"click": 2, "save": 2} and d["surfaces"] == {"home": 2, "search": 2}
    assert d["time_range"] == ["1970-01-01", "1970-02-10"]
    assert d["events_per_user"] == {"p50": 1, "p90": 1, "p99": 1, "max": 3}  # counts 3, 1, 0
    assert d["history_length"]["max"] == 2
    text = format_description(d)
    assert "action save" in text and "1970-01-01 .. 1970-02-10" in text and "max 3" in text


def test_describe_empty_log():
    log = EventLog.from_arrays(user_id=np.zeros(0), item_id=np.zeros(0), timestamp=np.zeros(0), num_items=0)
    d = describe_log(log)
    assert d["events"] == 0 and d["time_range"] == [None, None]
    assert "events" in format_description(d)


def test_dates_beyond_the_calendar_print_as_seconds():
    from recsys.data.describe import _iso_date

    assert _iso_date(2**63 - 1) == f"{2**63 - 1} s"
    assert _iso_date(0) == "1970-01-01"
