"""Purchases and net spend after entry into a segment, on a hand-made events table."""

from __future__ import annotations

from datetime import date, datetime

import duckdb
import pandas as pd
import pytest

from features.events import EVENT_SCHEMA
from features.outcomes import OUTCOME_COLUMNS, outcomes_since

AS_OF = date(2026, 3, 10)

# (client_id, event_time, event_type, amount)
EVENTS = [
    # a entered on 03-01: the entry day is left out, from its first to its last instant
    ("a", datetime(2026, 3, 1, 0, 0, 0), "purchase", 10.0),
    ("a", datetime(2026, 3, 1, 23, 59, 59, 999999), "purchase", 20.0),
    ("a", datetime(2026, 3, 2, 0, 0, 0), "purchase", 30.0),  # first instant counted
    ("a", datetime(2026, 3, 3, 9, 0), "page_view", None),  # not money
    ("a", datetime(2026, 3, 4, 9, 0), "purchase", None),  # counts, no money
    ("a", datetime(2026, 3, 5, 9, 0), "refund", 5.0),
    ("a", datetime(2026, 3, 6, 9, 0), "return", 2.5),
    ("a", datetime(2026, 3, 10, 23, 59, 59, 999999), "purchase", 40.0),  # end of as_of: in
    ("a", datetime(2026, 3, 11, 0, 0, 0), "purchase", 100.0),  # after as_of: out
    ("a", datetime(2026, 3, 12, 8, 0), "refund", 30.0),  # after as_of: out
    # b entered on 03-05; bought before, was refunded after: net spend negative
    ("b", datetime(2026, 3, 3, 12, 0), "purchase", 15.0),
    ("b", datetime(2026, 3, 7, 12, 0), "refund", 15.0),
    ("b", datetime(2026, 3, 7, 13, 0), "add_to_cart", None),
    # c entered on as_of: nothing observed yet
    ("c", datetime(2026, 3, 10, 12, 0), "purchase", 99.0),
    # e is no member: ignored
    ("e", datetime(2026, 3, 5, 12, 0), "purchase", 1000.0),
]


@pytest.fixture
def con():
    connection = duckdb.connect()
    columns = ", ".join(f"{name} {kind}" for name, kind in EVENT_SCHEMA.items())
    connection.execute(f"CREATE TABLE events ({columns})")
    connection.executemany(
        "INSERT INTO events (client_id, event_time, event_type, amount) VALUES (?, ?, ?, ?)",
        EVENTS,
    )
    yield connection
    connection.close()


def since(**days: object) -> pd.DataFrame:
    return pd.DataFrame({"client_id": list(days), "since": list(days.values())})


def test_hand_checked_outcomes(con):
    frame = since(
        d=date(2026, 3, 2),  # no events at all: zeros, not missing
        a=date(2026, 3, 1),
        b=pd.Timestamp("2026-03-05"),
        c=datetime(2026, 3, 10, 17, 30),  # a time of day: its day counts
    )
    out = outcomes_since(con, frame, AS_OF)
    assert tuple(out.columns) == OUTCOME_COLUMNS
    expected = pd.DataFrame(
        {
            "client_id": ["d", "a", "b", "c"],
            "days_since_entry": [8, 9, 5, 0],
            "purchases": [0, 3, 0, 0],
            "spend": [0.0, 30.0 + 40.0 - 5.0 - 2.5, -15.0, 0.0],
        }
    )
    pd.testing.assert_frame_equal(out, expected, check_dtype=False)
    assert out["purchases"].dtype == "int64" and out["spend"].dtype == "float64"
    assert out["days_since_entry"].dtype == "int64"


def test_as_of_bounds_the_window(con):
    # as of 03-05: a's purchases of 03-02 and 03-04 and the refund of 03-05
    out = outcomes_since(con, since(a=date(2026, 3, 1)), date(2026, 3, 5))
    assert out.loc[0, "purchases"] == 2 and out.loc[0, "spend"] == pytest.approx(25.0)
    assert out.loc[0, "days_since_entry"] == 4
    # as of 03-11: the purchase at the first instant of 03-11 now counts
    later = outcomes_since(con, since(a=date(2026, 3, 1)), date(2026, 3, 11))
    assert later.loc[0, "purchases"] == 4 and later.loc[0, "spend"] == pytest.approx(162.5)


def test_timezone_aware_since_is_read_in_utc(con):
    aware = pd.Series(pd.to_datetime(["2026-03-01 23:30"]).tz_localize("America/New_York"))
    out = outcomes_since(con, pd.DataFrame({"client_id": ["a"], "since": aware}), AS_OF)
    # 23:30 in New York on 03-01 is 04:30 UTC on 03-02: observed from 03-03
    assert out.loc[0, "days_since_entry"] == 8
    assert out.loc[0, "purchases"] == 2  # 03-04 (no amount) and 03-10


def test_empty_and_other_table(con):
    empty = outcomes_since(con, since(), AS_OF)
    assert tuple(empty.columns) == OUTCOME_COLUMNS and len(empty) == 0
    con.execute("CREATE SCHEMA s; CREATE TABLE s.ev AS SELECT * FROM events WHERE client_id = 'b'")
    out = outcomes_since(con, since(a=date(2026, 3, 1), b=date(2026, 3, 5)), AS_OF, "s.ev")
    assert out["purchases"].tolist() == [0, 0] and out["spend"].tolist() == [0.0, -15.0]


def test_bad_input(con):
    with pytest.raises(ValueError, match="duplicate client_id"):
        outcomes_since(con, pd.DataFrame({"client_id": ["a", "a"], "since": [AS_OF] * 2}), AS_OF)
    with pytest.raises(ValueError, match="entered after as_of"):
        outcomes_since(con, since(a=date(2026, 3, 11)), AS_OF)
    with pytest.raises(ValueError, match="no valid date"):
        outcomes_since(con, since(a=None), AS_OF)
    with pytest.raises(ValueError, match="no column"):
        outcomes_since(con, pd.DataFrame({"client_id": ["a"]}), AS_OF)
    with pytest.raises(ValueError, match="not a table name"):
        outcomes_since(con, since(a=AS_OF), AS_OF, "events; DROP TABLE events")
