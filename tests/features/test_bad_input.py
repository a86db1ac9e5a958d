"""Hardening of the event input: comment-like lines, malformed CSV lines, implausible times,
wrong Parquet types, huge amounts, NUL bytes, and errors that name the file and column."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import load_config
from features.build import build_features
from features.events import EventContractError, load_configured_events, load_events

NOW = datetime(2025, 6, 30, tzinfo=UTC)
HEADER = b"client_id,event_time,event_type,amount\n"


def _load(path, **kwargs):
    con = duckdb.connect()
    report = load_events(con, path, now=NOW, **kwargs)
    return con, report


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _balanced(report) -> bool:
    return report.rows == report.valid + report.quarantined + report.duplicates


def _quarantine(con):
    return con.sql("SELECT * FROM quarantine ORDER BY line_number NULLS FIRST").df()


def test_a_line_starting_with_hash_is_not_a_comment_marker(tmp_path):
    """Issue item 1: `# exported` made the sniffer drop every row starting with `#`."""
    path = _write(
        tmp_path / "e.csv",
        HEADER + b"# exported\nc1,2025-05-01,purchase,10\n#42,2025-05-02,purchase,20\n"
        b"c2,2025-05-03,purchase,30\n",
    )
    con, report = _load(path)
    assert report.rows == 4
    assert report.valid == 3
    assert report.by_reason == {"malformed_line": 1}
    ids = {r[0] for r in con.execute("SELECT client_id FROM events").fetchall()}
    assert ids == {"c1", "#42", "c2"}
    row = _quarantine(con).iloc[0]
    assert (row["raw_line"], row["line_number"]) == ("# exported", 2)
    assert row["source_file"] == str(path)


MALFORMED = {
    "extra_field": b"c9,2025-05-02,purchase,20,surplus",
    "missing_field": b"c9,2025-05-02",
    "whitespace_only": b"   ",
    "nul_line": b"\x00\x00\x00",
    "invalid_utf8": b"c9,2025-05-02,purch\xff\xfease,20",
    "unescaped_quote_after_value": b'"c9"x,2025-05-02,purchase,20',
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_line_is_quarantined_with_its_raw_text_and_the_rest_loads(tmp_path, kind):
    """Issue item 2: one bad line rejected the whole file with a self-contradicting message."""
    bad = MALFORMED[kind]
    path = _write(
        tmp_path / "e.csv",
        HEADER + b"c1,2025-05-01,purchase,10\n" + bad + b"\nc2,2025-05-03,purchase,30\n",
    )
    con, report = _load(path)
    assert (report.rows, report.valid, report.by_reason) == (3, 2, {"malformed_line": 1})
    assert _balanced(report)
    row = _quarantine(con).iloc[0]
    assert row["reason"] == "malformed_line"
    assert row["line_number"] == 3
    assert "\x00" not in row["raw_line"]
    if kind not in {"nul_line", "invalid_utf8"}:
        assert row["raw_line"] == bad.decode()


def test_a_malformed_line_far_into_a_large_file_is_quarantined(tmp_path):
    """Past the sniffer's sample the failure was DuckDB's raw `CSV Error on Line ...`."""
    good = b"".join(b"c%d,2025-05-01,purchase,%d\n" % (i, i) for i in range(30_000))
    path = _write(tmp_path / "e.csv", HEADER + good + b"c9,2025-05-01,purchase,1,2\n" + good)
    _, report = _load(path)
    assert (report.rows, report.valid, report.by_reason) == (60_001, 60_000, {"malformed_line": 1})


def test_an_unterminated_quote_is_one_malformed_row(tmp_path):
    path = _write(
        tmp_path / "e.csv",
        HEADER + b'c1,2025-05-01,purchase,10\nc2,"2025-05-02,purchase,20\nc3,2025-05-03,x,1\n',
    )
    con, report = _load(path)
    assert report.valid == 1 and report.by_reason == {"malformed_line": 1}
    assert _balanced(report)
    assert _quarantine(con).iloc[0]["raw_line"].startswith('c2,"2025-05-02')


def test_quotes_escapes_bom_and_crlf_are_read_as_rfc_4180(tmp_path):
    path = _write(
        tmp_path / "e.csv",
        b"\xef\xbb\xbfclient_id,event_time,event_type,amount\r\n"
        b'"c,1",2025-05-01,purchase,"10"\r\n"c""2",2025-05-02,page_view,\r\n',
    )
    con, report = _load(path)
    assert report.valid == 2 and report.quarantined == 0
    ids = sorted(r[0] for r in con.execute("SELECT client_id FROM events").fetchall())
    assert ids == ['c"2', "c,1"]


def test_header_names_with_quotes_commas_or_nothing_are_read(tmp_path):
    path = _write(
        tmp_path / "e.csv",
        b'client_id,event_time,event_type,"a""b","x,y",,it\'s\nc1,2025-05-01,purchase,1,2,3,4\n',
    )
    _, report = _load(path)
    assert (report.rows, report.valid) == (1, 1)


def test_an_empty_csv_file_fails_naming_the_file_and_what_is_missing(tmp_path):
    """Issue item 14: a 0-byte CSV said `(found: column0)`."""
    path = _write(tmp_path / "empty.csv", b"")
    with pytest.raises(EventContractError, match=r"empty\.csv: is empty.*header line"):
        _load(path)


def test_a_csv_with_only_a_header_has_no_rows(tmp_path):
    _, report = _load(_write(tmp_path / "e.csv", HEADER))
    assert report.rows == 0


def test_csv_files_with_different_headers_in_one_folder_load_by_name(tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    _write(folder / "a.csv", HEADER + b"c1,2025-05-01,purchase,10\n")
    _write(folder / "b.csv", b"event_type,client_id,event_time\npage_view,c2,2025-05-02\n")
    con, report = _load(folder)
    assert report.valid == 2
    rows = sorted(con.execute("SELECT client_id, event_type, amount FROM events").fetchall())
    assert rows == [("c1", "purchase", 10.0), ("c2", "page_view", None)]


@pytest.mark.parametrize("value", ["0001-01-01", "0044-03-15 (BC)", "epoch", "-infinity"])
def test_implausible_event_times_are_quarantined(tmp_path, value):
    """Issue item 5: a BC event gave a client a tenure of 1.5M days."""
    path = _write(
        tmp_path / "e.csv",
        HEADER + b"c1,2025-05-01,purchase,10\nc2," + value.encode() + b",purchase,10\n",
    )
    con, report = _load(path)
    assert report.by_reason == {"implausible_event_time": 1}
    assert con.sql("SELECT event_time FROM quarantine").fetchall() == [(value,)]


def test_the_earliest_event_time_comes_from_the_config(tmp_path):
    path = _write(
        tmp_path / "e.csv", HEADER + b"c1,2010-05-01,purchase,10\nc2,1999-12-31,purchase,10\n"
    )
    config = load_config()
    assert config.events.earliest_event_time == date(2000, 1, 1)
    report = load_configured_events(duckdb.connect(), config, path, now=NOW)
    assert report.by_reason == {"implausible_event_time": 1}
    later = config.model_copy(
        update={
            "events": config.events.model_copy(update={"earliest_event_time": date(2011, 1, 1)})
        }
    )
    report = load_configured_events(duckdb.connect(), later, path, now=NOW)
    assert report.by_reason == {"implausible_event_time": 2}


def test_parquet_times_before_the_earliest_are_quarantined(tmp_path):
    table = pa.table(
        {
            "client_id": ["a", "b"],
            "event_time": pa.array([datetime(2024, 5, 1), datetime(1, 1, 1)], pa.timestamp("us")),
            "event_type": ["purchase", "purchase"],
        }
    )
    pq.write_table(table, tmp_path / "e.parquet")
    _, report = _load(tmp_path / "e.parquet")
    assert report.by_reason == {"implausible_event_time": 1}


def _parquet_with_client_id(path, client_id: pa.Array):
    n = len(client_id)
    pq.write_table(
        pa.table(
            {
                "client_id": client_id,
                "event_time": pa.array([datetime(2024, 5, 1)] * n, pa.timestamp("us")),
                "event_type": ["purchase"] * n,
            }
        ),
        path,
    )
    return path


@pytest.mark.parametrize(
    ("client_id", "dtype"),
    [
        (pa.array([1.0, float("nan")]), "DOUBLE"),
        (pa.array([["a"], ["b"]]), "VARCHAR[]"),
        (pa.array([True, False]), "BOOLEAN"),
    ],
)
def test_a_client_id_column_that_is_not_text_or_integer_fails_naming_it(tmp_path, client_id, dtype):
    """Issue item 6: NaN became client "nan", a list became client "[a]"."""
    path = _parquet_with_client_id(tmp_path / "e.parquet", client_id)
    with pytest.raises(
        EventContractError, match=rf"e\.parquet: column client_id has type {re.escape(dtype)}"
    ):
        _load(path)


def test_a_bad_client_id_type_in_one_file_of_a_folder_names_that_file(tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    _parquet_with_client_id(folder / "a.parquet", pa.array(["x", "y"]))
    _parquet_with_client_id(folder / "b.parquet", pa.array([1.5, 2.5]))
    with pytest.raises(EventContractError, match=r"b\.parquet: column client_id has type DOUBLE"):
        _load(folder)


def test_integer_client_ids_are_read_as_text_and_null_ids_are_missing(tmp_path):
    path = _parquet_with_client_id(tmp_path / "e.parquet", pa.array([7, None], pa.int64()))
    con, report = _load(path)
    assert report.valid == 1 and report.by_reason == {"missing_client_id": 1}
    assert con.sql("SELECT client_id FROM events").fetchall() == [("7",)]


def test_amounts_above_the_maximum_are_quarantined_and_the_build_runs(tmp_path):
    """Issue item 8: about 9.22e12 overflowed the feature build's integer micro-units."""
    path = _write(
        tmp_path / "e.csv",
        HEADER + b"c1,2025-05-01,purchase,10\nc1,2025-05-02,purchase,9.3e12\n"
        b"c2,2025-05-02,purchase,1e9\n",
    )
    con, report = _load(path)
    assert report.by_reason == {"amount_out_of_range": 1}
    table = build_features(con, date(2025, 6, 1), load_config().features)
    assert table.num_rows == 2
    _, strict = _load(path, max_amount=100.0)
    assert strict.by_reason == {"amount_out_of_range": 2}


@pytest.mark.parametrize("column", ["client_id", "event_type"])
def test_a_nul_byte_in_a_text_field_is_quarantined_and_stripped_from_raw_values(tmp_path, column):
    """Issue item 9: a NUL byte failed the PostgreSQL publish."""
    fields = {"client_id": b"c2", "event_type": b"purchase"}
    fields[column] = fields[column][:1] + b"\x00" + fields[column][1:]
    path = _write(
        tmp_path / "e.csv",
        HEADER
        + b"c1,2025-05-01,purchase,10\n"
        + fields["client_id"]
        + b",2025-05-02,"
        + fields["event_type"]
        + b",5\n",
    )
    con, report = _load(path)
    assert report.by_reason == {"nul_byte": 1}
    values = con.sql("SELECT client_id, event_type FROM quarantine").fetchall()[0]
    assert values == ("c2", "purchase")


def test_a_nul_byte_in_a_quarantined_raw_value_is_stripped(tmp_path):
    path = _write(tmp_path / "e.csv", HEADER + b"c1,2025-05-01,purchase,t\x00en\n")
    con, report = _load(path)
    assert report.by_reason == {"unparseable_amount": 1}
    assert con.sql("SELECT amount FROM quarantine").fetchall() == [("ten",)]


def test_a_parquet_time_out_of_range_names_the_file_and_the_column(tmp_path):
    """Issue item 14: `Could not convert Timestamp(MS) to Timestamp(US)`, naming nothing."""
    far = 300_000 * 365 * 86_400 * 1000  # year 300000 in milliseconds
    table = pa.table(
        {
            "client_id": ["a", "b"],
            "event_time": pa.array([0, far], pa.timestamp("ms")),
            "event_type": ["purchase", "purchase"],
        }
    )
    pq.write_table(table, tmp_path / "far.parquet")
    with pytest.raises(
        EventContractError, match=r"far\.parquet: column event_time .*cannot be read"
    ):
        _load(tmp_path / "far.parquet")


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Paris"])
def test_parquet_times_in_every_unit_with_or_without_zone(tmp_path, unit, tz):
    moment = datetime(2024, 5, 1, 10, tzinfo=UTC if tz else None)
    table = pa.table(
        {
            "client_id": ["a"],
            "event_time": pa.array([moment], pa.timestamp(unit, tz=tz)),
            "event_type": ["purchase"],
        }
    )
    pq.write_table(table, tmp_path / "e.parquet")
    con, report = _load(tmp_path / "e.parquet")
    assert report.valid == 1
    assert con.sql("SELECT event_time FROM events").fetchall() == [(datetime(2024, 5, 1, 10),)]


def test_byte_order_marks_inside_values_are_trimmed_like_spaces(tmp_path):
    """A BOM left inside a file by concatenated exports is not part of a value (and a client id
    starting with one came back without it from the PostgreSQL store)."""
    path = _write(
        tmp_path / "e.csv",
        HEADER
        + "\ufeffc1,2025-05-01,purchase,1\n \ufeffc2\ufeff ,2025-05-01,purchase,1\n".encode(),
    )
    con, report = _load(path)
    assert report.valid == 2
    assert sorted(con.sql("SELECT client_id FROM events").fetchall()) == [("c1",), ("c2",)]
