"""Events as exporters write them: compressed CSV, JSON lines, presets, mappings, epoch times.

Each exporter-shaped file must give the same validated `events` table as the equivalent plain
CSV or Parquet file of the contract.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import ConfigError
from configs.schema import config_from_mapping, load_config
from features.events import (
    CONTRACT_COLUMNS,
    EVENT_SCHEMA,
    EventContractError,
    load_configured_events,
    load_events,
)

NOW = datetime(2025, 1, 1, tzinfo=UTC)

# (client, ISO time, contract type, source event name (Segment), GA4 name, amount, category)
ROWS = [
    ("c1", "2024-03-01T10:00:00Z", "product_view", "Product Viewed", "view_item", None, "shoes"),
    ("c1", "2024-03-01T10:05:00Z", "add_to_cart", "Product Added", "add_to_cart", None, "shoes"),
    ("c1", "2024-03-01T10:09:30Z", "purchase", "Order Completed", "purchase", 59.9, "shoes"),
    ("c2", "2024-03-02T08:00:00Z", "search", "Products Searched", "search", None, None),
    ("c2", "2024-03-03T09:00:00Z", "login", "Signed In", "login", None, None),
    ("c3", "2024-03-04T11:00:00Z", "refund", "Order Refunded", "refund", 12.5, "hats"),
]
HEADER = "client_id,event_time,event_type,amount,category\n"


def _plain_csv(path: Path) -> str:
    lines = [
        f"{c},{t},{e},{'' if a is None else a},{cat or ''}\n" for c, t, e, _, _, a, cat in ROWS
    ]
    return HEADER + "".join(lines)


def _events(path: Path | str, **kwargs: object) -> tuple[list[tuple[object, ...]], dict]:
    con = duckdb.connect()
    report = load_events(con, path, now=NOW, **kwargs)  # type: ignore[arg-type]
    rows = con.execute("SELECT * FROM events ORDER BY ALL").fetchall()
    return rows, report.to_dict()


def _configured(path: Path | str, events: dict, tmp_path: Path) -> tuple[list, dict]:
    config = config_from_mapping({"events": events}, str(tmp_path / "config.yaml"))
    con = duckdb.connect()
    report = load_configured_events(con, config, path, now=NOW)
    columns = ", ".join(EVENT_SCHEMA)  # identifier columns a preset maps are compared apart
    return con.execute(f"SELECT {columns} FROM events ORDER BY ALL").fetchall(), report.to_dict()


@pytest.fixture
def plain(tmp_path: Path) -> tuple[list, dict]:
    file = tmp_path / "plain" / "events.csv"
    file.parent.mkdir()
    file.write_text(_plain_csv(file))
    rows, report = _events(file)
    assert report["valid"] == len(ROWS)
    return rows, report


def test_gzip_and_zstd_csv_equal_plain_csv(tmp_path: Path, plain: tuple[list, dict]) -> None:
    text = _plain_csv(tmp_path)
    gz = tmp_path / "events.csv.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as handle:
        handle.write("\ufeff" + text)  # a BOM before the header, as some exporters write
    zst = tmp_path / "events.csv.zst"
    with pa.output_stream(str(zst), compression="zstd") as stream:
        stream.write(text.encode())
    assert _events(gz) == plain
    assert _events(zst) == plain


def test_compressed_csv_keeps_malformed_lines(tmp_path: Path) -> None:
    gz = tmp_path / "events.csv.gz"
    body = _plain_csv(tmp_path) + 'c9,2024-03-01T00:00:00Z,login,"unterminated\n'
    with gzip.open(gz, "wt") as handle:
        handle.write(body)
    con = duckdb.connect()
    report = load_events(con, gz, now=NOW)
    assert report.rows == len(ROWS) + 1
    assert report.by_reason == {"malformed_line": 1}


def _accented_csv(tmp_path: Path) -> str:
    """The plain file with accented categories and an accented column name (Latin-1 has them)."""
    header = HEADER.replace("category", "catégorie")
    return header + _plain_csv(tmp_path)[len(HEADER) :].replace("shoes", "chaussures élégantes")


def test_latin1_and_utf16_csv_read_as_configured(tmp_path: Path) -> None:
    text = _accented_csv(tmp_path)
    (tmp_path / "utf8").mkdir()
    (tmp_path / "utf8" / "events.csv").write_bytes(text.encode("utf-8"))
    expected = _configured(tmp_path / "utf8", {"columns": {"category": "catégorie"}}, tmp_path)
    assert sum("chaussures élégantes" in row for row in expected[0]) == 3
    for encoding, codec in [("latin-1", "latin-1"), ("utf-16", "utf-16-le")]:
        folder = tmp_path / encoding
        folder.mkdir()
        body = text.replace("\n", "\r\n") if encoding == "utf-16" else text  # as Windows writes
        raw = body.encode(codec)
        (folder / "events.csv").write_bytes((b"\xff\xfe" if encoding == "utf-16" else b"") + raw)
        events = {"columns": {"category": "catégorie"}, "encoding": encoding}
        assert _configured(folder, events, tmp_path) == expected, encoding
        with gzip.open(folder / "more.csv.gz", "wb") as handle:  # compressed: the same reading
            handle.write(raw)
        rows, report = _configured(folder, events, tmp_path)
        assert report["valid"] == 2 * len(ROWS) and report["by_reason"] == {}
        assert sorted(rows) == sorted(expected[0] * 2)


def test_latin1_read_as_utf8_loses_nothing_and_names_the_setting(tmp_path: Path) -> None:
    """Undecodable lines are quarantined with their reason, the rest loads, and a file whose
    bad share passes the threshold names `events.encoding`; a Latin-1 header fails at once."""
    from features.events import BadInputError, check_bad_share, load_events

    body = _plain_csv(tmp_path).replace("shoes", "chaussures élégantes").encode("latin-1")
    file = tmp_path / "events.csv"
    file.write_bytes(body)
    con = duckdb.connect()
    report = load_events(con, file, now=NOW)
    assert report.rows == len(ROWS)
    assert report.by_reason == {"malformed_line": 3}  # the three lines with accents
    assert report.valid == len(ROWS) - 3
    kept = con.execute("SELECT raw_line FROM quarantine ORDER BY line_number").fetchall()
    assert [line.startswith("c1,") for (line,) in kept] == [True, True, True]
    with pytest.raises(BadInputError, match="events.encoding"):
        check_bad_share(report, 0.05)
    assert load_events(duckdb.connect(), file, now=NOW, encoding="latin-1").valid == len(ROWS)

    file.write_bytes(_accented_csv(tmp_path).encode("latin-1"))
    with pytest.raises(EventContractError, match="not UTF-8.*events.encoding"):
        load_events(duckdb.connect(), file, now=NOW)


def test_big_endian_utf16_is_refused_by_name(tmp_path: Path) -> None:
    file = tmp_path / "events.csv"
    file.write_bytes(b"\xfe\xff" + _plain_csv(tmp_path).encode("utf-16-be"))
    with pytest.raises(EventContractError, match="big-endian"):
        load_events(duckdb.connect(), file, now=NOW, encoding="utf-16")


def test_an_unknown_encoding_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="encoding"):
        config_from_mapping({"events": {"encoding": "cp1252"}}, str(tmp_path / "c.yaml"))


def test_json_lines_equal_plain_csv(tmp_path: Path, plain: tuple[list, dict]) -> None:
    records = [
        {"client_id": c, "event_time": t, "event_type": e, "amount": a, "category": cat}
        for c, t, e, _, _, a, cat in ROWS
    ]
    text = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "events.jsonl").write_text(text)
    with gzip.open(tmp_path / "events.ndjson.gz", "wt") as handle:
        handle.write(text)
    assert _events(tmp_path / "events.jsonl") == plain
    assert _events(tmp_path / "events.ndjson.gz") == plain
    with pa.output_stream(str(tmp_path / "events.jsonl.zst"), compression="zstd") as stream:
        stream.write(text.encode())
    assert _events(tmp_path / "events.jsonl.zst") == plain


def test_malformed_json_line_is_quarantined_with_its_text(tmp_path: Path) -> None:
    good = {"client_id": "c1", "event_time": "2024-03-01T10:00:00Z", "event_type": "login"}
    file = tmp_path / "events.jsonl"
    file.write_text(json.dumps(good) + '\n{"client_id": "c2", "event_ti\n\n[1, 2]\n')
    con = duckdb.connect()
    report = load_events(con, file, now=NOW)
    assert (report.rows, report.valid, report.by_reason) == (3, 1, {"malformed_line": 2})
    raw = con.execute(
        "SELECT raw_line, source_file, line_number FROM quarantine ORDER BY raw_line"
    ).fetchall()
    assert raw == [("[1, 2]", str(file), 4), ('{"client_id": "c2", "event_ti', str(file), 2)]


def test_segment_export_with_preset_equals_plain_csv(
    tmp_path: Path, plain: tuple[list, dict]
) -> None:
    file = tmp_path / "segment.jsonl"
    with file.open("w") as handle:
        for k, (c, t, _, name, _, amount, cat) in enumerate(ROWS):
            properties: dict[str, object] = {"category": cat} if cat else {}
            if amount is not None:
                properties["revenue"] = amount
            record = {
                "type": "track",
                "userId": c,
                "anonymousId": f"anon-{c}",
                "timestamp": t.replace("Z", ".000Z"),
                "event": name,
                "properties": properties,
                "context": {"library": {"name": "analytics.js"}},
                "messageId": f"m{k}",
            }
            handle.write(json.dumps(record) + "\n")
    rows, report = _configured(file, {"preset": "segment"}, tmp_path)
    plain_rows, plain_report = plain
    # The preset maps messageId to event_id: the only difference from the plain file.
    skip = list(EVENT_SCHEMA).index("event_id")
    assert [r[:skip] + r[skip + 1 :] for r in rows] == [
        r[:skip] + r[skip + 1 :] for r in plain_rows
    ]
    assert report == plain_report


def _ga4_table(with_ecommerce: bool = True) -> pa.Table:
    records = []
    for c, t, _, _, name, amount, _ in ROWS:
        micros = int(datetime.fromisoformat(t).timestamp() * 1_000_000)
        record: dict[str, object] = {
            "event_date": t[:10].replace("-", ""),
            "event_timestamp": micros,
            "event_name": name,
            "user_pseudo_id": c,
            "event_params": [{"key": "page_location", "value": {"string_value": "https://shop/x"}}],
        }
        if with_ecommerce:
            record["ecommerce"] = {"purchase_revenue": amount, "transaction_id": None}
        records.append(record)
    return pa.Table.from_pylist(records)


def test_ga4_parquet_with_preset_equals_plain_parquet(tmp_path: Path) -> None:
    pq.write_table(_ga4_table(), tmp_path / "ga4.parquet")
    plain = pd.DataFrame(
        {
            "client_id": [r[0] for r in ROWS],
            "event_time": pd.to_datetime([r[1] for r in ROWS], utc=True),
            "event_type": [r[2] for r in ROWS],
            "amount": [r[5] for r in ROWS],
        }
    )
    plain.to_parquet(tmp_path / "plain.parquet")
    expected = _events(tmp_path / "plain.parquet")
    assert _configured(tmp_path / "ga4.parquet", {"preset": "ga4"}, tmp_path) == expected


def test_preset_optional_column_may_be_absent(tmp_path: Path) -> None:
    pq.write_table(_ga4_table(with_ecommerce=False), tmp_path / "ga4.parquet")
    rows, report = _configured(tmp_path / "ga4.parquet", {"preset": "ga4"}, tmp_path)
    assert report["valid"] == len(ROWS)
    assert all(r[5] is None for r in rows)


def test_user_mapping_overrides_preset_and_missing_column_names_everything(
    tmp_path: Path,
) -> None:
    pq.write_table(_ga4_table(), tmp_path / "ga4.parquet")
    events = {"preset": "ga4", "columns": {"client_id": "user_id"}}
    with pytest.raises(EventContractError) as err:
        _configured(tmp_path / "ga4.parquet", events, tmp_path)
    message = str(err.value)
    assert "'user_id'" in message and "client_id" in message
    assert "events.columns" in message and "ga4.parquet" in message


def test_missing_mapped_column_in_one_file_of_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    folder.mkdir()
    (folder / "a.csv").write_text("uid,ts,name\nc1,2024-03-01T10:00:00Z,login\n")
    (folder / "b.csv").write_text("user,ts,name\nc2,2024-03-01T10:00:00Z,login\n")
    mapping = {"client_id": "uid", "event_time": "ts", "event_type": "name"}
    with pytest.raises(EventContractError, match=r"b\.csv.*'uid'.*client_id.*events\.columns"):
        _events(folder, column_map=mapping)
    rows, _ = _events(folder / "a.csv", column_map=mapping)
    assert rows[0][:3] == ("c1", datetime(2024, 3, 1, 10), "login")


def test_missing_nested_path_names_source_and_contract(tmp_path: Path) -> None:
    pq.write_table(_ga4_table(), tmp_path / "ga4.parquet")
    events = {"preset": "ga4", "columns": {"amount": "ecommerce.value"}}
    with pytest.raises(EventContractError, match=r"'ecommerce\.value'.*amount.*events\.columns"):
        _configured(tmp_path / "ga4.parquet", events, tmp_path)


def test_type_aliases_and_unknown_names_counted(tmp_path: Path) -> None:
    file = tmp_path / "events.csv"
    file.write_text(
        "client_id,event_time,event_type\n"
        "c1,2024-03-01T10:00:00Z,Order Completed\n"
        "c1,2024-03-01T10:00:01Z,  order completed \n"
        "c1,2024-03-01T10:00:02Z,Coupon Entered\n"
    )
    rows, report = _events(file, type_aliases={"Order Completed": "purchase"})
    assert [r[2:4] for r in rows] == [
        ("purchase", "purchase"),
        ("purchase", "purchase"),
        ("coupon entered", "other"),
    ]
    assert report["unknown_event_types"] == {"coupon entered": 1}


def test_epoch_units_time_zone_and_bad_times(tmp_path: Path) -> None:
    file = tmp_path / "events.jsonl"
    lines = [
        {"client_id": "c1", "event_time": 1709287200000, "event_type": "login"},
        {"client_id": "c2", "event_time": "2024-03-01 11:00:00", "event_type": "login"},
        {"client_id": "c3", "event_time": "2024-03-01T10:00:00+00:00", "event_type": "login"},
        {"client_id": "c4", "event_time": 10**30, "event_type": "login"},
        {"client_id": "c5", "event_time": "yesterday-ish", "event_type": "login"},
    ]
    file.write_text("".join(json.dumps(r) + "\n" for r in lines))
    con = duckdb.connect()
    report = load_events(con, file, now=NOW, epoch_unit="ms", time_zone="Europe/Paris")
    times = dict(con.execute("SELECT client_id, event_time FROM events").fetchall())
    assert times == {
        "c1": datetime(2024, 3, 1, 10),
        "c2": datetime(2024, 3, 1, 10),  # naive, read in Paris (UTC+1)
        "c3": datetime(2024, 3, 1, 10),
    }
    assert report.by_reason == {"unparseable_event_time": 2}
    # Integer Parquet times in microseconds.
    micros = pa.table(
        {
            "client_id": ["c1", "c2"],
            "event_time": pa.array([1709287200000000, 2**62], pa.int64()),
            "event_type": ["login", "login"],
        }
    )
    pq.write_table(micros, tmp_path / "micros.parquet")
    rows, report2 = _events(tmp_path / "micros.parquet", epoch_unit="us")
    assert rows[0][1] == datetime(2024, 3, 1, 10)
    assert report2["quarantined"] == 1


def test_mixed_formats_in_a_folder_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(b"client_id\n"))
    (tmp_path / "b.jsonl").write_text("{}\n")
    with pytest.raises(EventContractError, match="mixed CSV and JSON lines files"):
        load_events(duckdb.connect(), tmp_path, now=NOW)


def test_config_keys_are_checked(tmp_path: Path) -> None:
    source = str(tmp_path / "my.yaml")
    with pytest.raises(ConfigError, match=r"my\.yaml.*events.columns.*'revenue'"):
        config_from_mapping({"events": {"columns": {"revenue": "properties.revenue"}}}, source)
    with pytest.raises(ConfigError, match=r"my\.yaml.*events.preset"):
        config_from_mapping({"events": {"preset": "mixpanel"}}, source)
    with pytest.raises(ConfigError, match=r"my\.yaml.*events.time_zone"):
        config_from_mapping({"events": {"time_zone": "Mars/Olympus"}}, source)
    with pytest.raises(ConfigError, match=r"my\.yaml.*events.epoch_unit"):
        config_from_mapping({"events": {"epoch_unit": "minutes"}}, source)
    defaults = load_config().events
    assert (defaults.preset, defaults.columns, defaults.type_aliases) == (None, {}, {})
    assert (defaults.epoch_unit, defaults.time_zone) == (None, "UTC")


def test_schema_contract_matches_features() -> None:
    with pytest.raises(ConfigError):
        config_from_mapping({"events": {"columns": {"stage": "x"}}})
    config = config_from_mapping({"events": {"columns": dict.fromkeys(CONTRACT_COLUMNS, "x")}})
    assert set(config.events.columns) == set(CONTRACT_COLUMNS)


def test_docs_example_loads(tmp_path: Path) -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "examples"
    config = load_config(docs / "segment-config.yaml")
    con = duckdb.connect()
    report = load_configured_events(con, config, docs / "segment-export.jsonl", now=NOW)
    assert (report.rows, report.valid) == (10, 9)
    assert report.by_reason == {"malformed_line": 1}
    assert report.unknown_event_types == {}
    # The anonymous visitor (anonymousId only) has no client_id: stitching makes a person.
    assert con.execute(
        "SELECT count(*) FROM events WHERE client_id IS NULL AND anonymous_id = 'a-91'"
    ).fetchall() == [(1,)]
    assert con.execute("SELECT line_number FROM quarantine").fetchall() == [(10,)]
    types = {r[0] for r in con.execute("SELECT DISTINCT event_type FROM events").fetchall()}
    assert types == {
        "search",
        "product_view",
        "add_to_cart",
        "checkout_start",
        "purchase",
        "login",
        "refund",
    }


@pytest.mark.parametrize("name", ["bad.csv.gz", "bad.csv.zst", "bad.jsonl.gz"])
def test_corrupt_compressed_file_names_the_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"\x1f\x8b\x08\x00 not really compressed")
    with pytest.raises(EventContractError, match=rf"events file .*{name}: cannot be read"):
        load_events(duckdb.connect(), tmp_path / name, now=NOW)


# GA4 as BigQuery exports it: parameters as key/value records, the value in the field of its
# type; items as a list of structs.
_GA4_VALUE = pa.struct(
    [
        ("string_value", pa.string()),
        ("int_value", pa.int64()),
        ("float_value", pa.float64()),
        ("double_value", pa.float64()),
    ]
)
_GA4_SCHEMA = pa.schema(
    [
        ("event_date", pa.string()),
        ("event_timestamp", pa.int64()),
        ("event_name", pa.string()),
        ("user_pseudo_id", pa.string()),
        ("event_params", pa.list_(pa.struct([("key", pa.string()), ("value", _GA4_VALUE)]))),
        ("items", pa.list_(pa.struct([("item_id", pa.string()), ("item_category", pa.string())]))),
        (
            "ecommerce",
            pa.struct([("purchase_revenue", pa.float64()), ("refund_value", pa.float64())]),
        ),
    ]
)


def _ga4_records() -> list[dict[str, object]]:
    """The ROWS as GA4 writes them: the purchase's amount in ecommerce.purchase_revenue, the
    refund's in the `value` parameter (double_value), categories from items or a parameter."""
    records = []
    for k, (c, t, _, _, name, amount, cat) in enumerate(ROWS):
        params: list[dict[str, object]] = [
            {"key": "ga_session_id", "value": {"int_value": 1000 + k}},
            {"key": "page_location", "value": {"string_value": "https://shop.example/p"}},
        ]
        items: list[dict[str, object]] = []
        ecommerce: dict[str, object] | None = None
        if name == "refund":
            params.append({"key": "value", "value": {"double_value": amount}})
            params.append({"key": "item_category", "value": {"string_value": cat}})
        elif cat:
            items = [
                {"item_id": "sku-1", "item_category": cat},
                {"item_id": "x", "item_category": "y"},
            ]
        if name == "purchase":
            ecommerce = {"purchase_revenue": amount, "refund_value": None}
        records.append(
            {
                "event_date": t[:10].replace("-", ""),
                "event_timestamp": int(datetime.fromisoformat(t).timestamp() * 1_000_000),
                "event_name": name,
                "user_pseudo_id": c,
                "event_params": params,
                "items": items,
                "ecommerce": ecommerce,
            }
        )
    return records


def test_ga4_nested_params_and_items_from_parquet_equal_plain_csv(
    tmp_path: Path, plain: tuple[list, dict]
) -> None:
    table = pa.Table.from_pylist(_ga4_records(), schema=_GA4_SCHEMA)
    pq.write_table(table, tmp_path / "ga4.parquet")
    assert _configured(tmp_path / "ga4.parquet", {"preset": "ga4"}, tmp_path) == plain


def test_ga4_nested_params_and_items_from_json_lines_equal_plain_csv(
    tmp_path: Path, plain: tuple[list, dict]
) -> None:
    file = tmp_path / "ga4.jsonl.gz"
    with gzip.open(file, "wt") as handle:
        for record in _ga4_records():
            # BigQuery's JSON export writes 64-bit integers as strings.
            record["event_timestamp"] = str(record["event_timestamp"])
            handle.write(json.dumps(record) + "\n")
    assert _configured(file, {"preset": "ga4"}, tmp_path) == plain


def test_path_filter_and_index_pick_the_right_entry(tmp_path: Path) -> None:
    file = tmp_path / "events.jsonl"
    record = {
        "uid": "c1",
        "ts": "2024-03-01T10:00:00Z",
        "name": "purchase",
        "params": [
            {"key": "a", "v": "1"},
            {"key": "value", "v": "7.5"},
            {"key": "value", "v": "9"},
        ],
        "items": [{"cat": "first"}, {"cat": "second"}],
    }
    file.write_text(json.dumps(record) + "\n")
    mapping = {
        "client_id": "uid",
        "event_time": "ts",
        "event_type": "name",
        "amount": "params[key='value'].v",
        "category": "items[1].cat",
    }
    rows, _ = _events(file, column_map=mapping)
    assert (rows[0][5], rows[0][6]) == (7.5, "second")
    mapping["category"] = "items[key=value"
    with pytest.raises(EventContractError, match=r"events\.columns category: 'items\[key=value'"):
        _events(file, column_map=mapping)


def test_column_fallback_takes_the_first_non_empty_source(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    folder.mkdir()
    (folder / "a.csv").write_text(
        "userId,anonymousId,ts,name\n"
        "u1,a1,2024-03-01T10:00:00Z,login\n"
        ",a2,2024-03-01T10:01:00Z,login\n"
        "  ,a3,2024-03-01T10:02:00Z,login\n"
        ",,2024-03-01T10:03:00Z,login\n"
    )
    # anonymousId is missing from this file: its rows read it as NULL.
    (folder / "b.csv").write_text("userId,ts,name\nu4,2024-03-01T10:04:00Z,login\n")
    mapping = {"client_id": ["userId", "anonymousId"], "event_time": "ts", "event_type": "name"}
    con = duckdb.connect()
    report = load_events(con, folder, now=NOW, column_map=mapping)
    clients = [
        r[0] for r in con.execute("SELECT client_id FROM events ORDER BY event_time").fetchall()
    ]
    assert clients == ["u1", "a2", "a3", "u4"]
    assert report.by_reason == {"missing_client_id": 1}


def test_segment_preset_keeps_anonymous_id_for_stitching(tmp_path: Path) -> None:
    file = tmp_path / "segment.jsonl"
    calls = [
        {"userId": "u1", "anonymousId": "a1", "event": "Signed Up"},
        {"userId": None, "anonymousId": "a2", "event": "Product Viewed"},
        {"anonymousId": "a3", "event": "Product Viewed"},
    ]
    file.write_text(
        "".join(json.dumps({**c, "timestamp": "2024-03-01T10:00:00Z"}) + "\n" for c in calls)
    )
    config = config_from_mapping({"events": {"preset": "segment"}}, str(tmp_path / "c.yaml"))
    con = duckdb.connect()
    report = load_configured_events(con, config, file, now=NOW)
    rows = con.execute(
        "SELECT client_id, anonymous_id, event_type FROM events ORDER BY anonymous_id"
    ).fetchall()
    assert rows == [
        ("u1", "a1", "sign_up"),
        (None, "a2", "product_view"),
        (None, "a3", "product_view"),
    ]
    assert report.valid == 3


def test_csv_names_with_punctuation_can_be_mapped(tmp_path: Path) -> None:
    file = tmp_path / "export.csv"
    file.write_text(
        '#user,time:utc,event/name,revenue (USD),"say ""what"""\n'
        "c1,2024-03-01T10:00:00Z,purchase,12.5,x\n"
    )
    mapping = {
        "client_id": "#user",
        "event_time": "time:utc",
        "event_type": "event/name",
        "amount": "revenue (USD)",
        "category": 'say "what"',
    }
    rows, report = _events(file, column_map=mapping)
    assert report["valid"] == 1
    assert rows[0][:3] + rows[0][5:7] == ("c1", datetime(2024, 3, 1, 10), "purchase", 12.5, "x")


def test_config_accepts_fallback_lists_and_names_a_bad_one(tmp_path: Path) -> None:
    config = config_from_mapping({"events": {"columns": {"client_id": ["userId", "anonymousId"]}}})
    assert config.events.columns == {"client_id": ["userId", "anonymousId"]}
    source = str(tmp_path / "my.yaml")
    with pytest.raises(ConfigError, match=r"my\.yaml.*events.columns.*'client_id'.*empty"):
        config_from_mapping({"events": {"columns": {"client_id": []}}}, source)
    with pytest.raises(ConfigError, match=r"my\.yaml.*events.columns"):
        config_from_mapping({"events": {"columns": {"client_id": {"a": 1}}}}, source)


def test_json_keys_first_seen_after_the_sampled_lines_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import features.json_source as json_source

    monkeypatch.setattr(json_source, "KEY_SAMPLE_LINES", 2)
    file = tmp_path / "late.jsonl"
    lines = [
        {"client_id": "c1", "event_time": "2024-03-01T10:00:00Z", "event_type": "login"},
        {"client_id": "c2", "event_time": "2024-03-01T10:01:00Z", "event_type": "login"},
        # after the sample: an optional contract key, and the key a mapping reads
        {"client_id": "c3", "event_time": "2024-03-01T10:02:00Z", "event_type": "review",
         "sentiment": "0.8", "props": {"cat": "shoes"}},
    ]  # fmt: skip
    file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows, _ = _events(file)
    assert [r[0] for r in rows] == ["c1", "c2", "c3"]
    sentiment = duckdb.connect()
    load_events(sentiment, file, now=NOW)
    assert sentiment.execute("SELECT sentiment FROM events WHERE client_id = 'c3'").fetchone() == (
        0.8,
    )
    con = duckdb.connect()
    load_events(con, file, now=NOW, column_map={"category": "props.cat"})
    assert con.execute("SELECT category FROM events WHERE client_id = 'c3'").fetchone() == (
        "shoes",
    )
    with pytest.raises(EventContractError, match="props_missing"):
        load_events(duckdb.connect(), file, now=NOW, column_map={"category": "props_missing.x"})


def test_time_formats_read_times_in_formats_of_their_own(tmp_path: Path) -> None:
    # CDNOW's yyyymmdd (as text, and as an integer column), Online Retail's m/d/Y H:M, and
    # an offset read by %z; an ISO time still parses; a value no format fits is quarantined
    text = tmp_path / "text.csv"
    text.write_text(
        "client_id,event_time,event_type\n"
        "a,19970101,purchase\n"
        "b,1/2/2023 15:16,purchase\n"
        "c,2023-01-03 10:00 +0200,purchase\n"
        "d,2023-01-04T00:00:00,purchase\n"
        "e,31.12.2023,purchase\n"
    )
    formats = ["%Y%m%d", "%m/%d/%Y %H:%M", "%Y-%m-%d %H:%M %z"]
    old = {"earliest_event_time": "1990-01-01"}  # CDNOW is from 1997
    rows, report = _configured(text, {"time_formats": formats, **old}, tmp_path)
    times = {r[0]: r[1] for r in rows}
    assert times == {
        "a": datetime(1997, 1, 1),
        "b": datetime(2023, 1, 2, 15, 16),
        "c": datetime(2023, 1, 3, 8, 0),
        "d": datetime(2023, 1, 4),
    }
    assert report["by_reason"] == {"unparseable_event_time": 1}

    integers = tmp_path / "int.parquet"
    pq.write_table(
        pa.table(
            {
                "client_id": ["a"],
                "event_time": pa.array([19970101], pa.int64()),
                "event_type": ["purchase"],
            }
        ),
        integers,
    )
    rows, _ = _configured(integers, {"time_formats": ["%Y%m%d"], **old}, tmp_path)
    assert rows[0][1] == datetime(1997, 1, 1)
    # naive formatted times are read in the configured zone, like any naive time
    rows, _ = _configured(
        integers, {"time_formats": ["%Y%m%d"], "time_zone": "America/New_York", **old}, tmp_path
    )
    assert rows[0][1] == datetime(1997, 1, 1, 5, 0)


def test_a_bad_share_of_unreadable_times_names_the_setting(tmp_path: Path) -> None:
    from features.events import BadInputError, check_bad_share

    text = tmp_path / "cdnow.csv"
    text.write_text("client_id,event_time,event_type\na,19970101,purchase\nb,19970102,purchase\n")
    con = duckdb.connect()
    report = load_events(con, text, now=NOW)
    with pytest.raises(BadInputError, match=r"events\.time_formats"):
        check_bad_share(report, 0.05)
    with pytest.raises(ConfigError, match="unknown directive"):
        config_from_mapping({"events": {"time_formats": ["%Q"]}})
