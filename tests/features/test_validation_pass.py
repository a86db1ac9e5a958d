"""The one-pass validation: the quick validity test agrees with the reasons on every edge, the
rejected rows leave nothing behind in the events table, and the hash-first deduplication
keeps exactly the first copy of each repeated event_id."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.events import EVENT_SCHEMA, load_events

NOW = datetime(2024, 6, 1, tzinfo=UTC)
T = datetime(2024, 5, 1, 10)

# (event_id, amount, sentiment, expected reason or None)
EDGES = [
    ("a0", 0.0, None, None),
    ("a1", 1e9, None, None),
    ("a2", 1e9 * (1 + 1e-15), None, "amount_out_of_range"),
    ("a3", -0.0, None, None),
    ("a4", -1e-300, None, "negative_amount"),
    ("a5", math.nan, None, "non_finite_amount"),
    ("a6", math.inf, None, "non_finite_amount"),
    ("a7", -math.inf, None, "non_finite_amount"),
    ("s0", None, -1.0, None),
    ("s1", None, 1.0, None),
    ("s2", None, 1.0000001, "sentiment_out_of_range"),
    ("s3", None, math.nan, "sentiment_out_of_range"),
    ("s4", None, -math.inf, "sentiment_out_of_range"),
    ("s5", -1.0, math.nan, "negative_amount"),  # the first reason that applies
]


def _parquet(path, rows):
    table = pa.table(
        {
            "client_id": [r.get("client_id", "c1") for r in rows],
            "event_time": pa.array([r.get("event_time", T) for r in rows], pa.timestamp("us")),
            "event_type": [r.get("event_type", "purchase") for r in rows],
            "channel": [r.get("channel", "web") for r in rows],
            "amount": pa.array([r.get("amount") for r in rows], pa.float64()),
            "category": [r.get("category") for r in rows],
            "sentiment": pa.array([r.get("sentiment") for r in rows], pa.float64()),
            "event_id": [r.get("event_id") for r in rows],
        }
    )
    pq.write_table(table, path)
    return path


def test_the_quick_validity_test_agrees_with_the_reasons_on_the_edges(tmp_path):
    rows = [{"event_id": e, "amount": a, "sentiment": s} for e, a, s, _ in EDGES]
    rows += [
        {"event_id": "t0", "event_time": datetime(2000, 1, 1)},
        {"event_id": "t1", "event_time": datetime(1999, 12, 31, 23, 59, 59)},
        {"event_id": "t2", "event_time": datetime(2024, 6, 2, 0, 0)},
        {"event_id": "t3", "event_time": datetime(2024, 6, 2, 0, 0, 1)},
        {"event_id": "t4", "event_time": None},
        {"event_id": "n0", "client_id": "c\x001"},
        {"event_id": "n1", "client_id": " \ufeff "},
        {"event_id": "n2", "event_type": "  "},
    ]
    expected = {e: reason for e, _, _, reason in EDGES}
    expected |= {
        "t0": None,
        "t1": "implausible_event_time",
        "t2": None,
        "t3": "future_event_time",
        "t4": "missing_event_time",
        "n0": "nul_byte",
        "n1": "missing_client_id",
        "n2": "missing_event_type",
    }
    con = duckdb.connect()
    report = load_events(con, _parquet(tmp_path / "e.parquet", rows), now=NOW)
    got = dict(con.execute("SELECT event_id, reason FROM quarantine").fetchall())
    got |= {e: None for (e,) in con.execute("SELECT event_id FROM events").fetchall()}
    assert got == expected
    assert report.valid == sum(r is None for r in expected.values())
    assert report.quarantined == sum(r is not None for r in expected.values())
    # the raw values of a rejected row, as text
    raw = con.execute("SELECT amount, sentiment FROM quarantine WHERE event_id = 's5'").fetchall()
    assert raw == [("-1.0", "nan")]


def test_the_events_table_keeps_its_schema_and_no_helper_is_left(tmp_path):
    rows = [{"event_id": "e1"}, {"event_id": "e1"}, {"event_id": "e2", "amount": -5.0}]
    con = duckdb.connect()
    load_events(con, _parquet(tmp_path / "e.parquet", rows), now=NOW)
    assert [c for c, *_ in con.execute("DESCRIBE events").fetchall()] == list(EVENT_SCHEMA)
    tables = {t for (t,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert tables == {"events", "quarantine"}
    assert [c for c, *_ in con.execute("DESCRIBE quarantine").fetchall()] == [
        "reason",
        "client_id",
        "event_time",
        "event_type",
        "channel",
        "amount",
        "category",
        "sentiment",
        "event_id",
        "anonymous_id",
        "device_id",
        "email_hash",
        "phone_hash",
        "source_file",
        "line_number",
        "raw_line",
        "detail",
    ]


@pytest.mark.parametrize("copies", [2, 3])
def test_repeated_ids_keep_their_first_copy_across_clients(tmp_path, copies):
    rows = []
    for k in range(200):  # many ids, most unique: the hash pass finds the few repeated
        rows.append({"event_id": f"id{k}", "client_id": f"c{k % 7}", "amount": float(k)})
    for c in range(copies):  # one id under several clients and times: the earliest wins
        rows.append({"event_id": "dup", "client_id": f"z{c}", "event_time": T.replace(day=9 - c)})
    rows.append({"event_id": None})
    rows.append({"event_id": None})
    con = duckdb.connect()
    report = load_events(con, _parquet(tmp_path / "e.parquet", rows), now=NOW)
    assert report.duplicates == copies - 1
    kept = con.execute("SELECT client_id FROM events WHERE event_id = 'dup'").fetchall()
    assert kept == [(f"z{copies - 1}",)]
    assert con.execute("SELECT count(*) FROM events WHERE event_id IS NULL").fetchall() == [(2,)]
    assert report.valid == 200 + 1 + 2


def test_a_hash_collision_drops_nothing(tmp_path, monkeypatch):
    """Distinct ids sharing a hash are all ranked, each first of its own id."""
    import features.events as events

    monkeypatch.setattr(events, "_ID_HASH", "(hash({}) % 2)")  # collisions everywhere
    rows = [{"event_id": f"u{k}"} for k in range(20)]
    rows += [{"event_id": "y", "client_id": "c0"}, {"event_id": "y", "client_id": "c2"}]
    con = duckdb.connect()
    report = load_events(con, _parquet(tmp_path / "e.parquet", rows), now=NOW)
    assert report.duplicates == 1
    assert report.valid == 21
    got = con.execute("SELECT event_id, client_id FROM events ORDER BY event_id").fetchall()
    assert got == [*sorted((f"u{k}", "c1") for k in range(20)), ("y", "c0")]


def test_placeholder_client_ids_are_quarantined_not_merged_into_one_client(tmp_path):
    ids = ["nan", "NULL", " None ", "Unknown", "n/a", "7", "1111", "nana", "c-42", "guest"]
    rows = [{"client_id": c, "event_id": f"e{i}"} for i, c in enumerate(ids)]
    con = duckdb.connect()
    report = load_events(con, _parquet(tmp_path / "e.parquet", rows), now=NOW)

    kept = {r[0] for r in con.execute("SELECT client_id FROM events").fetchall()}
    assert kept == {"7", "1111", "nana", "c-42"}
    quarantined = con.execute(
        "SELECT reason, client_id FROM quarantine ORDER BY client_id"
    ).fetchall()
    assert {reason for reason, _ in quarantined} == {"missing_client_id"}
    # the raw value is kept, so the export that lost its ids can be found
    assert sorted(c for _, c in quarantined) == sorted(
        [" None ", "NULL", "Unknown", "guest", "n/a", "nan"]
    )
    assert report.by_reason == {"missing_client_id": 6}


def test_the_placeholders_are_the_configured_ones(tmp_path):
    rows = [{"client_id": c, "event_id": c} for c in ("nan", "0", "x1")]
    con = duckdb.connect()
    load_events(con, _parquet(tmp_path / "e.parquet", rows), now=NOW, placeholders=("0",))
    kept = sorted(r[0] for r in con.execute("SELECT client_id FROM events").fetchall())
    assert kept == ["nan", "x1"]
