"""Property-based fuzzing of event files (CSV and Parquet) through validation, the feature build
and a publish on both store backends.

Whatever the file holds (ragged lines, quotes, a BOM, NUL bytes, invalid UTF-8, mixed types,
extreme numbers and dates), validation either fails at once with an `EventContractError`
naming the file, or loads it with rows in = valid + quarantined + duplicates; and everything
it lets through survives the feature build and a publish on DuckDB and on PostgreSQL.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs import load_config
from features.build import build_features
from features.events import EventContractError, day_end, load_events
from pipelines.store import PublishRequest, Store, open_store

NOW = datetime(2025, 6, 30, tzinfo=UTC)
AS_OF = date(2025, 7, 1)
PG_URL = os.environ.get("SEGMENTATION_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
FUZZ = settings(
    max_examples=int(os.environ.get("SEGMENTATION_FUZZ_EXAMPLES", "30")),
    deadline=None,
    derandomize=os.environ.get("SEGMENTATION_FUZZ_EXAMPLES") is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Field values: plausible ones, and the kinds of trouble exporters produce.
WEIRD_TEXT = st.sampled_from(
    ["", " ", "\x00", "a\x00b", '"', 'x"y', ",", "a,b", "\n", "a\r\nb", "#42", "NaN", "null",
     "\ufeffc", "é", "😀", "  padded  ", "x" * 300, "-1", "1e309"]
)  # fmt: skip
CLIENT = st.one_of(st.sampled_from(["c1", "c2", "c3", "#c4", "c 5"]), WEIRD_TEXT)
TIME = st.one_of(
    st.sampled_from(
        ["2025-05-01", "2025-06-01T10:00:00", "2025-06-01T10:00:00+14:00", "2024-02-29 23:59:59",
         "0001-01-01", "0044-03-15 (BC)", "epoch", "-infinity", "infinity", "294247-01-10",
         "1999-12-31T23:59:59", "2025-07-05", "2025-13-01", "1e10", "now", "today"]
    ),
    st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31)).map(lambda d: d.isoformat()),
    WEIRD_TEXT,
)  # fmt: skip
TYPE = st.one_of(st.sampled_from(["purchase", "page_view", "Add_To_Cart", "webinar"]), WEIRD_TEXT)
NUMBER = st.one_of(
    st.sampled_from(["", "0", "10.5", "-1", "1e9", "1.0000001e9", "9.3e12", "1e308", "-0", "inf",
                     "-inf", "nan", "1,5", "0x10", "1_000"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**70), 2**70).map(str),
    WEIRD_TEXT,
)  # fmt: skip
SENTIMENT = st.one_of(st.sampled_from(["", "0.5", "-1", "1", "1.0001", "nan"]), NUMBER)
EVENT_ID = st.one_of(st.sampled_from(["", "e1", "e2", "e3"]), WEIRD_TEXT)
COLUMNS = ["client_id", "event_time", "event_type", "amount", "sentiment", "event_id"]
FIELDS = [CLIENT, TIME, TYPE, NUMBER, SENTIMENT, EVENT_ID]


def _quote(value: str, always: bool) -> str:
    if always or any(ch in value for ch in ',"\r\n') or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, int]:
    """A CSV file as bytes and the number of records (rows in) it holds."""
    header = draw(st.permutations(COLUMNS).map(list))
    header = header[: draw(st.integers(3, len(header)))]
    if not {"client_id", "event_time", "event_type"} <= set(header):
        header = ["client_id", "event_time", "event_type", *header]
        header = list(dict.fromkeys(header))
    extra = draw(st.sampled_from([None, "note", 'a"b', "x,y", "", "é", "it's", " Channel "]))
    if extra is not None:
        header.append(extra)
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    always_quote = draw(st.booleans())
    names = ",".join(_quote(name, always_quote) for name in header).encode()
    head = (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + names
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 12))):
        mutation = draw(
            st.sampled_from(["row"] * 6 + ["extra", "missing", "garbage", "nul", "latin1", "blank"])
        )
        values = [draw(FIELDS[COLUMNS.index(c)] if c in COLUMNS else WEIRD_TEXT) for c in header]
        if mutation == "extra":
            values.append(draw(NUMBER))
        elif mutation == "missing":
            values = values[: draw(st.integers(1, len(values) - 1))]
        line = ",".join(_quote(v, always_quote) for v in values).encode()
        if mutation == "garbage":
            line = draw(st.sampled_from([b"# exported", b"   ", b'"c1"x,a,b', b"\t", b";;;"]))
        elif mutation == "nul":
            line = b"\x00" * draw(st.integers(1, 4))
        elif mutation == "latin1":
            line = line + b",\xe9\xff"
        elif mutation == "blank":
            line = b"  "
        if line == b"":  # an empty line holds no record (a single empty field would be one)
            line = b'""'
        lines.append(line)
    records = len(lines)
    if draw(st.booleans()) and records:
        lines.append(b'c9,"2025-05-01,purchase')  # unterminated quote: one last record
        records += 1
    data = newline.encode().join([head, *lines])
    if draw(st.booleans()):
        data += newline.encode()
    return data, records


_UNITS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


@st.composite
def parquet_tables(draw: st.DrawFn) -> pa.Table:
    """A Parquet table with contract columns in the types exporters write, extreme values."""
    n = draw(st.integers(0, 10))
    columns: dict[str, pa.Array] = {}
    if draw(st.booleans()):
        ints = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
        columns["client_id"] = pa.array(draw(st.lists(ints, min_size=n, max_size=n)), pa.int64())
    else:
        texts = st.one_of(st.none(), CLIENT)
        columns["client_id"] = pa.array(draw(st.lists(texts, min_size=n, max_size=n)), pa.string())
    time_kind = draw(st.sampled_from(["text", "s", "ms", "us", "ns"]))
    if time_kind == "text":
        texts = st.one_of(st.none(), TIME)
        columns["event_time"] = pa.array(draw(st.lists(texts, min_size=n, max_size=n)))
    else:
        # seconds since 1970 within what DuckDB holds in microseconds, and the unit can hold
        bound = min(9_000_000_000_000, (2**63 - 1) // _UNITS[time_kind])
        seconds = st.one_of(
            st.none(),
            st.integers(-bound, bound),
            st.integers(946_684_800, 1_751_328_000),
        )
        values = [
            None if s is None else s * _UNITS[time_kind]
            for s in draw(st.lists(seconds, min_size=n, max_size=n))
        ]
        zone = draw(st.sampled_from([None, "UTC", "Asia/Tokyo"]))
        columns["event_time"] = pa.array(values, pa.timestamp(time_kind, tz=zone))
    types = st.one_of(st.none(), TYPE)
    columns["event_type"] = pa.array(draw(st.lists(types, min_size=n, max_size=n)), pa.string())
    floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
    for col in ("amount", "sentiment"):
        if draw(st.booleans()):
            columns[col] = pa.array(draw(st.lists(floats, min_size=n, max_size=n)), pa.float64())
        elif draw(st.booleans()):
            texts = st.one_of(st.none(), NUMBER)
            columns[col] = pa.array(draw(st.lists(texts, min_size=n, max_size=n)), pa.string())
    if draw(st.booleans()):
        ids = st.one_of(st.none(), EVENT_ID)
        columns["event_id"] = pa.array(draw(st.lists(ids, min_size=n, max_size=n)), pa.string())
    return pa.table(columns)


def _pg_reachable() -> bool:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as con:
            con.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


@pytest.fixture(scope="module")
def stores() -> Iterator[list[Store]]:
    """One DuckDB store and one PostgreSQL store (a fresh schema) for every example."""
    folder = tempfile.TemporaryDirectory()
    opened = [open_store(f"duckdb://{folder.name}/fuzz.duckdb", "segmentation")]
    schema = f"fuzz_{uuid.uuid4().hex[:8]}"
    if _pg_reachable():
        opened.append(open_store(PG_URL, schema))
    elif os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL not reachable at {PG_URL}; CI=true requires it")
    yield opened
    for store in opened:
        store.close()
    if len(opened) > 1:
        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    folder.cleanup()


def _request(con: duckdb.DuckDBPyConnection, clients: list[str]) -> PublishRequest:
    """Tonight's quarantine and a trivial membership: every client in one segment."""
    quarantine = con.sql("SELECT * FROM quarantine").df()
    membership = {
        "client_id": pd.Series(clients, dtype="str"),
        "segment_id": "s0",
        "segment_name": "all",
        "segment_source": "rule",
        "cluster_id": None,
        "confidence": 1.0,
        "lifecycle_stage": "active",
        "journey_stage": "purchase",
        "reason": "fuzz",
    }
    return PublishRequest(
        run_id="fuzz",
        as_of=AS_OF,
        started_at=NOW,
        membership=pd.DataFrame(membership),
        segments=pd.DataFrame(
            {
                "segment_id": ["s0"],
                "segment_name": ["all"],
                "kind": ["rule"],
                "definition": ["client_id is not null"],
                "model_version": ["1"],
            }
        ),
        quarantine=quarantine,
        run_info={"events_read": 0, "events_quarantined": len(quarantine)},
    )


def _run(path: Path, stores: list[Store], records: int, may_fail_on: str | None = None) -> None:
    """Validate, build features and publish; check the invariants on the way.

    Validation may refuse the file only where `may_fail_on` says (a column that can hold a
    value DuckDB cannot read), with a message naming the file and that column.
    """
    con = duckdb.connect()
    try:
        report = load_events(con, path, now=NOW)
    except EventContractError as exc:
        if may_fail_on is None:
            raise
        assert f"{path}: column {may_fail_on}" in str(exc)
        return
    assert report.rows == report.valid + report.quarantined + report.duplicates
    assert report.rows == records
    table = build_features(con, AS_OF, load_config().features)
    expected = con.execute(
        "SELECT count(DISTINCT client_id) FROM events WHERE event_time < ?", [day_end(AS_OF)]
    ).fetchall()[0][0]
    assert table.num_rows == expected
    clients = sorted(str(c) for c in table.column("client_id").to_pylist())
    request = _request(con, clients)
    for store in stores:
        store.publish(request)
        assert sorted(store.membership()["client_id"]) == clients
        assert len(store.quarantine("fuzz")) == report.quarantined


@FUZZ
@given(csv_files())
def test_fuzzed_csv_files_load_balanced_and_publish_on_both_backends(stores, case):
    data, records = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.csv"
        path.write_bytes(data)
        _run(path, stores, records)


@FUZZ
@given(parquet_tables())
def test_fuzzed_parquet_files_load_balanced_and_publish_on_both_backends(stores, table):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.parquet"
        pq.write_table(table, path)
        _run(path, stores, table.num_rows, may_fail_on="event_time")
