"""The event contract: read journey events, normalize them, and quarantine every bad row with its reason.

Events are read and checked inside DuckDB (columnar, multi-threaded, spills to disk), so files
larger than memory never pass through pandas. The result is two DuckDB tables on the caller's
connection: the valid, normalized events (`events`) and the rejected rows with their reason and
raw values (`quarantine`). Nothing is dropped silently: duplicates by event_id are dropped and
counted; every other rejected row is kept with its reason.
"""

from __future__ import annotations

import glob as globlib
import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import yaml

from configs import (
    CONTRACT_COLUMNS,
    IDENTIFIER_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    STAGES,
    EngineConfig,
    FeaturesConfig,
    SegmentationError,
)
from configs.paths import CONFIG_DIR
from configs.schema import DEFAULT_PLACEHOLDERS
from features.csv_source import COMPRESSED_SUFFIXES, MALFORMED_LINE, CsvHeaderError, CsvSource
from features.identifiers import identifier_columns, normalized_sql
from features.json_source import JSON_SUFFIXES, JsonSource, Step

OTHER_STAGE = "other"
# Who starts an event: the client (a visit, a purchase, a click) or the brand (an ad shown, a
# message sent). Activity, recency and lifecycle read client-initiated events only.
INITIATORS = ("client", "brand")
DEFAULT_INITIATOR = "client"
logger = logging.getLogger(__name__)

# Order matters: a row with several problems is quarantined under the first that applies.
# `malformed_line` (a CSV line that does not parse) comes before them all: nothing of the line
# is typed.
REASONS = (
    MALFORMED_LINE,
    "missing_client_id",
    "no_identifier",  # identity stitching: neither client_id nor a usable other identifier
    "missing_event_time",
    "missing_event_type",
    "nul_byte",
    "unparseable_event_time",
    "implausible_event_time",
    "future_event_time",
    "unparseable_amount",
    "non_finite_amount",
    "negative_amount",
    "amount_out_of_range",
    "unparseable_sentiment",
    "sentiment_out_of_range",
)

# Normalized column types of the `events` table; event_time is naive and means UTC.
EVENT_SCHEMA = {
    "client_id": "VARCHAR",
    "event_time": "TIMESTAMP",
    "event_type": "VARCHAR",
    "stage": "VARCHAR",
    "channel": "VARCHAR",
    "amount": "DOUBLE",
    "category": "VARCHAR",
    "sentiment": "DOUBLE",
    "event_id": "VARCHAR",
    "by_client": "BOOLEAN",  # client-initiated (taxonomy); else brand-initiated (exposure)
}
TEXT_COLUMNS = ("client_id", "event_type", "channel", "category", "event_id", *IDENTIFIER_COLUMNS)
DEFAULT_EARLIEST_EVENT_TIME = date(2000, 1, 1)
# Far below the 9.22e12 where the feature build's integer micro-units overflow a BIGINT.
DEFAULT_MAX_AMOUNT = 1e9
_INTEGER_TYPES = frozenset(
    (
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "UHUGEINT",
    )
)


class EventContractError(SegmentationError, ValueError):
    """The input does not meet the event contract (missing file or required column)."""


class BadInputError(SegmentationError, ValueError):
    """The share of bad rows passes the configured threshold."""


@dataclass(frozen=True)
class Taxonomy:
    """Event type to journey stage and to who started it; unknown types map to stage `other`
    and count as client-initiated (they are reported as unknown anyway)."""

    stage_of: dict[str, str]
    initiator_of: dict[str, str] = field(default_factory=dict)
    # Types listed without a who, counted as DEFAULT_INITIATOR (warned about when loaded).
    defaulted: tuple[str, ...] = ()

    def stage(self, event_type: str) -> str:
        return self.stage_of.get(event_type, OTHER_STAGE)

    def initiator(self, event_type: str) -> str:
        return self.initiator_of.get(event_type, DEFAULT_INITIATOR)

    @property
    def brand_types(self) -> tuple[str, ...]:
        """The brand-initiated event types, sorted."""
        return tuple(sorted(t for t, who in self.initiator_of.items() if who == "brand"))


@dataclass(frozen=True)
class ValidationReport:
    """What reading the events found: the JSON summary of `segmentation validate`."""

    rows: int
    valid: int
    duplicates: int
    quarantined: int
    by_reason: dict[str, int]
    unknown_event_types: dict[str, int] = field(default_factory=dict)
    # Identity stitching: events whose identifier values identify nobody (placeholder, too
    # long, ...), by `type:reason` (the stitching step fills it in).
    ignored_identifiers: dict[str, int] = field(default_factory=dict)

    @property
    def bad_share(self) -> float:
        return self.quarantined / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, int | dict[str, int]]:
        return {
            "rows": self.rows,
            "valid": self.valid,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "by_reason": dict(self.by_reason),
            "unknown_event_types": dict(self.unknown_event_types),
            **(
                {"ignored_identifiers": dict(self.ignored_identifiers)}
                if self.ignored_identifiers
                else {}
            ),
        }


def load_taxonomy(
    path: str | os.PathLike[str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> Taxonomy:
    """Read a taxonomy YAML (stage -> event type -> client | brand) and add config extensions.

    A stage may also list its types (the older form): each then counts as client-initiated,
    as does a type mapped to nothing, with a warning naming the types. `extra` maps a type to a
    stage, or to a mapping (or object) with `stage` and `initiated_by`.
    """
    file = Path(path) if path else CONFIG_DIR / "taxonomy.yaml"
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EventContractError(f"{file}: cannot read the taxonomy: {exc}") from exc
    if not isinstance(raw, dict):
        raise EventContractError(f"{file}: must map journey stages to event types")
    stage_of: dict[str, str] = {}
    initiator_of: dict[str, str] = {}
    defaulted: list[str] = []
    for stage, entries in raw.items():
        if stage not in STAGES:
            raise EventContractError(f"{file}: key '{stage}': not a journey stage {STAGES}")
        if isinstance(entries, list):
            entries = dict.fromkeys(entries)
        if not isinstance(entries, dict):
            raise EventContractError(
                f"{file}: key '{stage}': must map event types to client or brand (or list them)"
            )
        for event_type, who in entries.items():
            name = str(event_type).strip().lower()
            stage_of[name] = stage
            _set_initiator(name, who, initiator_of, defaulted, f"{file}: key '{stage}.{name}'")
    for event_type, spec in (extra or {}).items():
        name = event_type.strip().lower()
        stage = spec if isinstance(spec, str) else _field(spec, "stage")
        stage_of[name] = str(stage)
        who = None if isinstance(spec, str) else _field(spec, "initiated_by")
        where = f"events.extra_event_types.{event_type}"
        _set_initiator(name, who, initiator_of, defaulted, where)
    if defaulted:
        logger.warning(
            "taxonomy %s: no initiator (client or brand) for %s: counted as %s-initiated",
            file,
            ", ".join(sorted(defaulted)),
            DEFAULT_INITIATOR,
        )
    return Taxonomy(stage_of, initiator_of, tuple(sorted(defaulted)))


def _field(spec: object, key: str) -> object:
    return spec.get(key) if isinstance(spec, Mapping) else getattr(spec, key, None)


def _set_initiator(
    name: str, who: object, initiator_of: dict[str, str], defaulted: list[str], where: str
) -> None:
    if who is None:
        initiator_of[name] = DEFAULT_INITIATOR
        defaulted.append(name)
    elif who in INITIATORS:
        initiator_of[name] = str(who)
    else:
        raise EventContractError(f"{where}: initiator {who!r} is not one of {INITIATORS}")


# The formats by file name ending (lower case): a compressed CSV or JSON lines file is read by
# DuckDB through its extension; Parquet carries its own compression.
_FORMAT_OF = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".csv.zst": "csv",
    **{s + z: "json" for s in JSON_SUFFIXES for z in ("", *COMPRESSED_SUFFIXES)},
}
_FORMAT_NAMES = {"parquet": "Parquet", "csv": "CSV", "json": "JSON lines"}


def file_format(file: str) -> str | None:
    """'parquet', 'csv' or 'json' (JSON lines) by the file's name ending, or None."""
    name = Path(file).name.lower()
    return next((kind for end, kind in _FORMAT_OF.items() if name.endswith(end)), None)


def resolve_sources(path: str | os.PathLike[str]) -> tuple[str, list[str]]:
    """The format ('parquet', 'csv' or 'json') and the files of a path, directory or glob.

    CSV may be plain, `.csv.gz` or `.csv.zst`; JSON lines `.jsonl` or `.ndjson`, plain, `.gz`
    or `.zst`. A folder is searched recursively (Hive partitions included); one format only.
    """
    text = str(path)
    if any(ch in text for ch in "*?["):
        files = sorted(globlib.glob(text, recursive=True))
    elif Path(text).is_dir():
        files = sorted(str(p) for p in Path(text).rglob("*") if p.is_file() and file_format(str(p)))
    elif Path(text).is_file():
        files = [text]
    else:
        raise EventContractError(f"events not found: {text}")
    if not files:
        raise EventContractError(f"no Parquet, CSV or JSON lines files at {text}")
    kinds = {file_format(f) for f in files}
    if None in kinds:
        endings = sorted(
            {"".join(Path(f).suffixes[-2:]).lower() for f in files if not file_format(f)}
        )
        raise EventContractError(
            f"unsupported event files at {text}: {endings} (read: .parquet, .csv, .csv.gz,"
            " .csv.zst, .jsonl, .ndjson, .jsonl.gz, .ndjson.gz)"
        )
    if len(kinds) > 1:
        names = " and ".join(sorted(_FORMAT_NAMES[k] for k in kinds if k))
        raise EventContractError(f"mixed {names} files at {text}: use one format")
    return next(k for k in kinds if k), files


def load_events(
    con: duckdb.DuckDBPyConnection,
    path: str | os.PathLike[str],
    *,
    taxonomy: Taxonomy | None = None,
    future_tolerance_hours: float = 24.0,
    now: datetime | None = None,
    events_table: str = "events",
    quarantine_table: str = "quarantine",
    earliest_event_time: date = DEFAULT_EARLIEST_EVENT_TIME,
    max_amount: float = DEFAULT_MAX_AMOUNT,
    column_map: ColumnMap | None = None,
    type_aliases: Mapping[str, str] | None = None,
    epoch_unit: str | None = None,
    time_zone: str = "UTC",
    lenient_columns: frozenset[str] = frozenset(),
    placeholders: Sequence[str] = DEFAULT_PLACEHOLDERS,
    time_formats: Sequence[str] = (),
    encoding: str = "utf-8",
) -> ValidationReport:
    """Read events into `events_table` and rejected rows into `quarantine_table` on `con`.

    Timestamps are converted to naive UTC (a naive input means UTC). A row later than `now`
    plus the tolerance is quarantined as a future event; every other bad row is quarantined
    with the first reason of `REASONS` that applies, and duplicates by event_id are dropped
    (the first by time, client and type is kept) and counted.

    One scan of the input: a typed pass writes every row, a rejected one with its reason and
    raw text in one extra column (NULL, never built, for the valid rows); the rejected rows
    then move to the quarantine (JSON lines are scanned once for their keys and once into a
    temporary table that the pass reads). Deduplication finds repeated event_ids by their
    hash first and ranks only the rows whose hash repeats.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The connection that receives the two tables (its time zone is set to UTC).
    path : str or os.PathLike
        A Parquet, CSV or JSON lines file, a folder of them (searched recursively), or a glob;
        one format.
    taxonomy : Taxonomy, optional
        Event type to journey stage; default the shipped ``configs/taxonomy.yaml``.
    future_tolerance_hours : float, default 24.0
        How far past `now` an event may be before it is quarantined as a future event.
    now : datetime.datetime, optional
        The time future events are measured against; default the current time.
    events_table, quarantine_table : str
        Names of the tables created (replaced if they exist).
    earliest_event_time : datetime.date, default 2000-01-01
        Events before this day (UTC) are quarantined as implausible (`0001-01-01`, BC dates,
        `epoch`, `-infinity`).
    max_amount : float, default 1e9
        Amounts above this are quarantined as out of range (the feature build sums money in
        integer micro-units, which overflow from about 9.22e12).
    column_map : mapping of str to str or list of str, optional
        Contract column -> source column, or a path into a JSON object or a Parquet struct
        (``properties.revenue``, ``items[0].item_category``,
        ``event_params[key=currency].value.string_value``: see `parse_path`), or a list of
        them whose first non-empty value wins per row (``["userId", "anonymousId"]``). A
        mapped source column missing from a file (for a list: all of them) fails at once,
        naming the source column, the contract column and the file.
    type_aliases : mapping of str to str, optional
        Source event name -> taxonomy event type (``{"Order Completed": "purchase"}``),
        matched trimmed and case-insensitively; other names are kept as they are.
    epoch_unit : {"s", "ms", "us", "ns"}, optional
        The unit of integer event times (and of integer text); without it they are
        unparseable. An epoch time out of range is quarantined as unparseable_event_time.
    time_zone : str, default "UTC"
        The zone of naive event times (no offset), converted to UTC.
    time_formats : sequence of str
        strptime formats of text (or integer) event times the ISO reader does not know
        (CDNOW's ``%Y%m%d``, ``%m/%d/%Y %H:%M``), tried in order before it; a format with
        ``%z`` reads the offset, the others read naive times in `time_zone`.
    encoding : {"utf-8", "latin-1", "utf-16"}, default "utf-8"
        The text encoding of CSV files (`CSV_ENCODINGS`); a line that does not decode is
        quarantined as ``malformed_line`` with the rest of the file loaded.
    lenient_columns : frozenset of str
        Contract columns of `column_map` that may be absent (a preset's optional columns):
        they are then read as missing instead of failing.
    placeholders : sequence of str
        client_id values that identify nobody (`null`, `nan`, `unknown`..., compared
        case-insensitively; the config's `identity.placeholders`): such a row is quarantined
        as ``missing_client_id``, not merged into one client made of every row that lost its
        id in an export.

    An input with identifiers besides client_id (`IDENTIFIER_COLUMNS`) needs no client_id
    column: a row with none of them is quarantined as ``no_identifier``, and the identifier
    columns are kept in `events_table` for the identity graph (`features.identity`, which
    also judges each distinct value: placeholders and the like identify nobody).

    Returns
    -------
    ValidationReport
        Rows read, valid, duplicates dropped and quarantined (by reason), and the unknown
        event types (kept with stage ``other``).

    Raises
    ------
    EventContractError
        The input, or a required column in any of its files, is missing (the message names
        the file and the column).
    """
    taxonomy = taxonomy or load_taxonomy()
    kind, files = resolve_sources(path)
    con.execute("SET TimeZone = 'UTC'")
    plan = _plan_scans(
        con, kind, files, path, dict(column_map or {}), lenient_columns, encoding=encoding
    )
    columns = plan.columns
    now = now or datetime.now(UTC)
    cutoff = now.astimezone(UTC).replace(tzinfo=None) + timedelta(hours=future_tolerance_hours)
    limits = _Limits(
        cutoff,
        datetime.combine(earliest_event_time, datetime.min.time()),
        max_amount,
        tuple(placeholders),
    )
    try:
        _create_tables(
            con,
            columns,
            plan.scans,
            taxonomy,
            limits,
            events_table,
            quarantine_table,
            type_aliases,
            (epoch_unit, time_zone, tuple(time_formats)),
        )
    except duckdb.Error as exc:
        raise _read_error(con, kind, files, columns, path, exc) from exc
    finally:
        plan.release(con)
    duplicates = _drop_duplicates(con, events_table) if "event_id" in columns else 0
    return _validation_report(con, events_table, quarantine_table, duplicates)


@dataclass(frozen=True)
class _ScanPlan:
    """How to read the input: the contract columns found (source name and type) and the three
    scans (typed rows, raw text of rejected rows, malformed lines)."""

    columns: dict[str, tuple[str, str]]
    scans: tuple[str, str, str | None]
    csv_source: CsvSource | None
    temp_table: str | None = None  # JSON lines: the lines read once (dropped after the load)

    def release(self, con: duckdb.DuckDBPyConnection) -> None:
        """Drop what the scans left on the connection (CSV rejects, the JSON lines table)."""
        if self.csv_source:
            self.csv_source.drop_rejects(con)
        if self.temp_table:
            con.execute(f"DROP TABLE IF EXISTS {self.temp_table}")
            con.execute(f"DROP TABLE IF EXISTS {self.temp_table}_bad")


def _plan_scans(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    files: list[str],
    path: str | os.PathLike[str],
    mapping: ColumnMap,
    lenient_columns: frozenset[str],
    *,
    encoding: str = "utf-8",
) -> _ScanPlan:
    """The readers of the input's format with the configured column mapping applied; fails
    at once, naming file and column, when a required or mapped column is missing.

    JSON lines are read here, once, into a temporary table (after the columns are checked):
    the typed pass, the raw pass and the malformed lines all read that table."""
    where = f"events at {path}"
    if kind == "json":
        for sample in (True, False):  # a key the first lines lack may come later: look at all
            json_source = _json_source(con, files, sample=sample)
            try:
                found = _contract_columns(json_source.columns(), mapping, where, lenient_columns)
                columns = {c: (c, "VARCHAR") for c in found}
                _check_required(
                    con, files, columns, path, None, json_source, mapping, lenient_columns
                )
                break
            except EventContractError:
                if not sample:
                    raise
        table = f"_json_lines_{uuid.uuid4().hex[:8]}"
        wanted = {c: source.paths for c, source in found.items()}
        try:
            reader, malformed = json_source.materialize(con, wanted, table)
        except duckdb.Error as exc:
            con.execute(f"DROP TABLE IF EXISTS {table}")
            con.execute(f"DROP TABLE IF EXISTS {table}_bad")
            raise _read_error(con, kind, files, columns, path, exc) from exc
        return _ScanPlan(columns, (reader, reader, malformed), None, table)
    csv_source = _csv_source(files, encoding) if kind == "csv" else None
    reader = csv_source.reader("a") if csv_source else _reader_sql(files)
    csv_reader_b = csv_source.reader("b") if csv_source else None
    columns = _source_columns(con, reader)
    if mapping:
        sources = _contract_columns(columns, mapping, where, lenient_columns)
        exprs = _mapped_exprs(con, reader, sources, mapping, path, lenient_columns)
        reader = _mapped_reader(reader, exprs)
        columns = _source_columns(con, reader)
        csv_reader_b = _mapped_reader(csv_reader_b, exprs) if csv_reader_b else None
    _check_required(con, files, columns, path, csv_source, None, mapping, lenient_columns)
    if csv_source and csv_reader_b:
        return _ScanPlan(columns, (reader, csv_reader_b, csv_source.malformed_sql()), csv_source)
    return _ScanPlan(columns, (reader, reader, None), None)


@dataclass(frozen=True)
class _Limits:
    """The bounds of plausible values: latest and earliest event time, largest amount."""

    cutoff: datetime
    earliest: datetime
    max_amount: float
    placeholders: tuple[str, ...] = ()

    def client_id_missing_sql(self) -> str:
        """SQL true when the typed client_id is absent or a placeholder (`null`, `nan`...):
        text that identifies nobody."""
        if not self.placeholders:
            return "client_id IS NULL"
        words = ", ".join(_sql_text(p.strip().lower()) for p in self.placeholders)
        longest = max(len(p.strip()) for p in self.placeholders)
        # the length test first: most ids are longer than every placeholder
        return (
            f"(client_id IS NULL OR (length(client_id) <= {longest}"
            f" AND lower(client_id) IN ({words})))"
        )


# A contract column's source: a column, a path (`properties.revenue`, `items[0].item_category`,
# `event_params[key=currency].value.string_value`), or a list of them (the first non-empty
# value of a row wins).
ColumnMap = Mapping[str, str | Sequence[str]]
_PATH_STEP = re.compile(
    r"(?P<name>[^.\[\]]+)"
    r"|\[\s*(?P<index>\d+)\s*\]"
    r"|\[\s*(?P<field>[^=\[\]]+?)\s*=\s*(?P<value>'[^']*'|\"[^\"]*\"|[^\]]*?)\s*\]"
)


def parse_path(source: str) -> tuple[Step, ...]:
    """The steps of a source path: `a.b` (fields of a JSON object or struct), `a[0]` (a list
    element, 0-based), `a[key=x]` (the first list element whose `key` is `x`; quotes around
    `x` are optional). Raises ValueError on other text."""
    steps: list[Step] = []
    pos = 0
    while pos < len(source):
        dot = bool(steps) and source.startswith(".", pos)
        match = _PATH_STEP.match(source, pos + dot)
        is_name = match is not None and match.group("name") is not None
        if match is None or is_name != (dot or not steps):
            raise ValueError(
                f"{source!r} is not a column or path (a.b, a[0].b, a[key=x].b) at character"
                f" {pos + 1}"
            )
        if is_name:
            steps.append(match.group("name"))
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
        else:
            value = match.group("value")
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            steps.append((match.group("field"), value))
        pos = match.end()
    if not steps:
        raise ValueError("the source path is empty")
    return tuple(steps)


def path_text(steps: tuple[Step, ...]) -> str:
    """A path as written in a config (`event_params[key=currency].value`)."""
    text = ""
    for step in steps:
        if isinstance(step, int):
            text += f"[{step}]"
        elif isinstance(step, tuple):
            text += f"[{step[0]}={step[1]}]"
        else:
            text += ("." if text else "") + step
    return text


@dataclass(frozen=True)
class _Source:
    """Where a contract column is read from: its alternatives, each a path of steps from a
    column of the source (the first non-empty value of a row wins), and the type of a single
    plain column ("" otherwise: only DuckDB knows it)."""

    paths: tuple[tuple[Step, ...], ...]
    dtype: str = ""

    @property
    def name(self) -> str:
        return " or ".join(path_text(p) for p in self.paths)


def _alternatives(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _source_text(value: str | Sequence[str]) -> str:
    options = _alternatives(value)
    return repr(options[0]) if len(options) == 1 else " or ".join(repr(o) for o in options)


def _contract_columns(
    found: dict[str, tuple[str, str]],
    mapping: ColumnMap,
    where: str,
    lenient: frozenset[str] = frozenset(),
) -> dict[str, _Source]:
    """The contract columns of a source: its own columns named as the contract, replaced by
    the mapped ones (contract -> source column, path, or list of them). A mapping fails when
    none of its alternatives is there (the head column of a path is checked; DuckDB checks
    the rest of a Parquet path); a lenient one falls back to the contract's own column."""
    by_name = {name: (name, dtype) for name, dtype in found.values()}
    result = {
        c: _Source(((found[c][0],),), found[c][1])
        for c in CONTRACT_COLUMNS
        if c in found and c not in mapping
    }
    for contract, value in mapping.items():
        paths: list[tuple[tuple[Step, ...], str]] = []
        for source in _alternatives(value):
            hit = by_name.get(source) or found.get(source.strip().lower())
            if hit:
                paths.append(((hit[0],), hit[1]))
                continue
            try:
                steps = parse_path(source)
            except ValueError as exc:
                raise EventContractError(
                    f"{where}: events.columns {contract}: {exc}; a column of that name is"
                    f" missing too"
                ) from exc
            head = steps[0]
            top = by_name.get(head) if isinstance(head, str) else None
            top = top or (found.get(head.strip().lower()) if isinstance(head, str) else None)
            if top is not None and len(steps) > 1:
                paths.append(((top[0], *steps[1:]), ""))
        if paths:
            dtype = paths[0][1] if len(paths) == 1 else ""
            result[contract] = _Source(tuple(p for p, _ in paths), dtype)
            continue
        if contract in lenient:
            if contract in found:  # the contract's own column, as without a mapping
                result[contract] = _Source(((found[contract][0],),), found[contract][1])
            continue
        several = len(_alternatives(value)) > 1
        raise EventContractError(
            f"{where}: column{'s' if several else ''} {_source_text(value)} (mapped to"
            f" {contract} by events.columns) {'are all' if several else 'is'} missing"
            f" (found: {', '.join(n for n, _ in found.values()) or 'none'})"
        )
    return result


def _path_sql(steps: tuple[Step, ...]) -> str:
    """A path into a Parquet struct or list as SQL: fields by name, list elements by 0-based
    index, and `[key=x]` as the first element of `list_filter`."""
    expr = _ident(str(steps[0]))
    for step in steps[1:]:
        if isinstance(step, int):
            expr = f"({expr})[{step + 1}]"
        elif isinstance(step, tuple):
            field, value = step
            expr = f"list_filter({expr}, lambda _e: _e.{_ident(field)} = {_sql_text(value)})[1]"
        else:
            expr = f"({expr}).{_ident(step)}"
    return expr


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _mapped_reader(reader: str, exprs: dict[str, str]) -> str:
    """`reader` with its columns renamed to the contract (`exprs`: contract -> SQL)."""
    selected = [f"{e} AS {_ident(c)}" for c, e in exprs.items()]
    return f"(SELECT {', '.join([*selected, 'source_file'])} FROM {reader}) AS mapped"


def _mapped_exprs(
    con: duckdb.DuckDBPyConnection,
    reader: str,
    sources: dict[str, _Source],
    mapping: ColumnMap,
    path: str | os.PathLike[str],
    lenient: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """The SQL of each contract column over `reader`: a column or path, or the coalesce of
    its alternatives. An alternative DuckDB cannot read (a struct field that is not there) is
    left out; a contract column with none left fails naming the source path, the contract
    column and the input (a lenient one is left out)."""
    alternatives = {c: [_path_sql(p) for p in s.paths] for c, s in sources.items()}
    flat = {f"{c}\x1f{k}": e for c, es in alternatives.items() for k, e in enumerate(es)}
    try:
        types = _expr_types(con, reader, flat)
    except EventContractError:
        types = {}
        for contract, exprs in alternatives.items():
            error: EventContractError | None = None
            for k, expr in enumerate(exprs):
                try:
                    types.update(_expr_types(con, reader, {f"{contract}\x1f{k}": expr}))
                except EventContractError as exc:
                    error = error or exc
            if any(a.startswith(f"{contract}\x1f") for a in types) or error is None:
                continue
            if contract in lenient:
                continue
            source = mapping.get(contract, sources[contract].name)
            raise EventContractError(
                f"events at {path}: column {_source_text(source)} (mapped to {contract} by"
                f" events.columns) cannot be read: {error}"
            ) from error
    result = {}
    for contract, exprs in alternatives.items():
        typed = [(e, types.get(f"{contract}\x1f{k}")) for k, e in enumerate(exprs)]
        typed = [(e, t) for e, t in typed if t is not None]
        if typed:
            result[contract] = _coalesced(typed)
    return result


def _expr_types(
    con: duckdb.DuckDBPyConnection, reader: str, exprs: dict[str, str]
) -> dict[str, str | None]:
    """The DuckDB type of each expression over `reader` (an EventContractError if one fails)."""
    if not exprs:
        return {}
    select = ", ".join(f"{e} AS {_ident(a)}" for a, e in exprs.items())
    try:
        described = con.execute(f"DESCRIBE SELECT {select} FROM {reader}").fetchall()
    except duckdb.Error as exc:
        raise EventContractError(str(exc).strip().splitlines()[0]) from exc
    types: dict[str, str | None] = dict.fromkeys(exprs)
    types.update({name: str(dtype).upper() for name, dtype, *_ in described})
    return types


def _coalesced(typed: list[tuple[str, str | None]]) -> str:
    """The first non-empty value of several expressions (text trimmed to test emptiness; of
    mixed types other than numbers, compared as text)."""
    if len(typed) == 1:
        return typed[0][0]
    kinds = {t for _, t in typed}
    if kinds == {"VARCHAR"}:
        parts = [f"CASE WHEN trim({e}) <> '' THEN {e} END" for e, _ in typed]
    elif len(kinds) == 1 or all(str(t).startswith(_NUMERIC) for t in kinds):
        parts = [e for e, _ in typed]
    else:
        parts = [
            f"CASE WHEN trim(CAST({e} AS VARCHAR)) <> '' THEN CAST({e} AS VARCHAR) END"
            for e, _ in typed
        ]
    return f"coalesce({', '.join(parts)})"


def _csv_source(files: list[str], encoding: str = "utf-8") -> CsvSource:
    try:
        return CsvSource.of(files, encoding)
    except CsvHeaderError as exc:
        raise EventContractError(str(exc)) from exc


def _json_source(
    con: duckdb.DuckDBPyConnection, files: list[str], sample: bool = False
) -> JsonSource:
    try:
        return JsonSource.of(con, files, sample)
    except duckdb.Error as exc:
        culprit = files[0]
        for file in files if len(files) > 1 else []:  # the file that cannot be read
            try:
                JsonSource.of(con, [file])
            except duckdb.Error:
                culprit = file
                break
        detail = str(exc).strip().splitlines()[0]
        raise EventContractError(f"events file {culprit}: cannot be read: {detail}") from exc


def _create_tables(
    con: duckdb.DuckDBPyConnection,
    columns: dict[str, tuple[str, str]],
    scans: tuple[str, str, str | None],
    taxonomy: Taxonomy,
    limits: _Limits,
    events_table: str,
    quarantine_table: str,
    aliases: Mapping[str, str] | None = None,
    times: tuple[str | None, str, tuple[str, ...]] = (None, "UTC", ()),
) -> None:
    """One typed pass over the input into `events_table`, the rejected rows moved from there
    into `quarantine_table`, then the malformed lines appended to the quarantine. `scans` is
    the reader of the input, a second reader of it (unused here: `pipelines.partition` shares
    the plan), and the SQL of the malformed lines (CSV: stored by the pass; JSON lines: the
    lines that are not objects) or None. The quarantine has the contract columns,
    `source_file`, and `line_number` and `raw_line` (set for a malformed line only).

    The pass computes each row's reason once, in the projection that types it, and keeps
    every row: a filter on the reason would be pushed below that projection by DuckDB and
    parse and trim every text column a second time. A rejected row carries its raw values in
    extra columns, NULL (nearly free to store) on valid rows; the rejected rows are then
    copied to the quarantine and deleted, and the extra columns dropped.
    """
    reader, _, malformed = scans
    typed = _typed_sql(columns, reader, True, aliases, times)
    derived = {
        "stage": f"{_stage_sql(taxonomy)} AS stage",
        "by_client": f"{_by_client_sql(taxonomy)} AS by_client",
    }
    kept = [derived.get(c, c) for c in [*EVENT_SCHEMA, *identifier_columns(list(columns))]]
    present = [c for c in CONTRACT_COLUMNS if c in columns]
    # A rejected row's reason, raw values (NUL bytes removed: PostgreSQL text cannot hold
    # them) and file, as one list; NULL for a valid row, whose reason is never worked out.
    rejected = ", ".join(
        [
            _reason_sql(columns, limits),
            *(f"replace(CAST(src_{c} AS VARCHAR), chr(0), '')" for c in present),
            "source_file",
        ]
    )
    con.execute(
        f"CREATE OR REPLACE TABLE {events_table} AS SELECT {', '.join(kept)},"
        f" CASE WHEN {_valid_sql(columns, limits)} THEN NULL ELSE [{rejected}] END AS {_REJECTED}"
        f" FROM ({typed}) AS t"
    )
    position = {c: k + 2 for k, c in enumerate(present)}
    raw_cols = ", ".join(
        f"{_REJECTED}[{position[c]}] AS {c}" if c in position else f"NULL::VARCHAR AS {c}"
        for c in CONTRACT_COLUMNS
    )
    con.execute(
        f"CREATE OR REPLACE TABLE {quarantine_table} AS"
        f" SELECT {_REJECTED}[1] AS reason, {raw_cols},"
        f" {_REJECTED}[{len(present) + 2}] AS source_file,"
        "  NULL::BIGINT AS line_number, NULL::VARCHAR AS raw_line, NULL::VARCHAR AS detail"
        f" FROM {events_table} WHERE {_REJECTED} IS NOT NULL"
    )
    if con.execute(f"SELECT count(*) FROM {quarantine_table}").fetchall()[0][0]:
        con.execute(f"DELETE FROM {events_table} WHERE {_REJECTED} IS NOT NULL")
    con.execute(f"ALTER TABLE {events_table} DROP COLUMN {_REJECTED}")
    if malformed:
        con.execute(
            f"INSERT INTO {quarantine_table} (reason, source_file, line_number, raw_line)"
            f" SELECT '{MALFORMED_LINE}', source_file, line_number, raw_line"
            f" FROM ({malformed}) AS m"
        )


# The column that carries a rejected row's reason and raw values through the typed pass
# (dropped from the events table once the rows are in the quarantine).
_REJECTED = "_rejected_row"


def _validation_report(
    con: duckdb.DuckDBPyConnection, events_table: str, quarantine_table: str, duplicates: int
) -> ValidationReport:
    """The counts of a load: valid rows, quarantined rows by reason, unknown event types."""
    by_reason = dict(
        con.execute(
            f"SELECT reason, count(*) FROM {quarantine_table} GROUP BY reason ORDER BY reason"
        ).fetchall()
    )
    unknown = dict(
        con.execute(
            f"SELECT event_type, count(*) FROM {events_table} WHERE stage = '{OTHER_STAGE}'"
            " GROUP BY event_type ORDER BY event_type"
        ).fetchall()
    )
    valid = con.execute(f"SELECT count(*) FROM {events_table}").fetchall()[0][0]
    quarantined = sum(by_reason.values())
    return ValidationReport(
        rows=valid + duplicates + quarantined,
        valid=valid,
        duplicates=duplicates,
        quarantined=quarantined,
        by_reason=by_reason,
        unknown_event_types=unknown,
    )


def connect_duckdb(
    memory_limit: str | None = None,
    temp_directory: str | os.PathLike[str] | None = None,
    *,
    database: str | os.PathLike[str] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for event work: bounded memory, spilling to a folder.

    With `database` (a file path, normally inside the run's temporary folder) the events live
    in DuckDB's compressed storage there, read through its buffer cache: about a third of the
    memory of an in-memory table for the same events, which keeps a build on 20M events under
    3 GB. Without it everything is in memory (faster to load, for small inputs and tests).
    Outputs are sorted explicitly, so insertion order is not kept (DuckDB can then stream).
    """
    con = duckdb.connect(str(database) if database is not None else ":memory:")
    if temp_directory:
        con.execute(f"SET temp_directory = '{temp_directory}'")
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET preserve_insertion_order = false")
    # DuckDB's allocator (jemalloc on Linux) keeps freed memory for reuse unless it is purged:
    # after the feature build on 28M events this process held 1.6 GB that DuckDB itself no
    # longer used (`duckdb_memory()`: 130 MB). Background purging returns it within seconds
    # (3.30 -> 1.74 GB), which is what the later steps' pandas frames then use.
    con.execute("SET allocator_background_threads = true")
    if database is not None:
        # Dictionary+FSST would halve the size of client and event ids but double the load
        # time (20M events: 9 s against 5 s). See benchmarks/bench_features.py --storage.
        con.execute("SET disabled_compression_methods = 'dict_fsst'")
    return con


@contextmanager
def scan_memory(con: duckdb.DuckDBPyConnection, share: int = 4) -> Iterator[None]:
    """DuckDB's memory limit lowered to `share` of itself (at least 256 MiB) while a step only
    scans the events for a small result, then restored.

    Scanning the events table (on disk) loads its blocks into DuckDB's buffer pool, which
    keeps them up to the memory limit: at 100M events one read of a partition's purchases
    took this process from 5.4 to 7.4 GB, on top of the feature frame. A filter and a small
    aggregate need little memory (a 60k-client window built in 128 MB as fast as in 1.8 GB),
    and the lower limit evicts the cached blocks when it is set."""
    (current,) = con.execute("SELECT current_setting('memory_limit')").fetchone() or ("",)
    total = _size_bytes(str(current))
    if total is None:  # no limit we can read: leave it
        yield
        return
    lowered = max(256 * 2**20, total // share)
    con.execute(f"SET memory_limit = '{lowered // 2**20}MiB'")
    try:
        yield
    finally:
        con.execute(f"SET memory_limit = '{current}'")


def _size_bytes(text: str) -> int | None:
    """'1.8 GiB', '512MB', '2GB' as bytes; None for anything else."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]i?B|B|bytes)?\s*", text, re.IGNORECASE)
    if not match:
        return None
    unit = (match.group(2) or "B").upper()
    power = {"B": 0, "BYTES": 0, "K": 1, "M": 2, "G": 3, "T": 4}[
        unit[0] if unit[0] in "KMGT" else unit
    ]
    base = 1024 if "I" in unit else 1000
    return int(float(match.group(1)) * base**power)


def connect_for_events(
    features: FeaturesConfig, scratch: str | os.PathLike[str]
) -> duckdb.DuckDBPyConnection:
    """`connect_duckdb` as a features config (`FeaturesConfig`) asks: its memory limit, and the
    events on disk in `scratch` (an existing folder the caller removes) or in memory."""
    database = Path(scratch) / "events.duckdb" if features.event_storage == "disk" else None
    return connect_duckdb(features.memory_limit, scratch, database=database)


def load_configured_events(
    con: duckdb.DuckDBPyConnection,
    config: EngineConfig,
    path: str | os.PathLike[str],
    now: datetime | None = None,
) -> ValidationReport:
    """`load_events` with the taxonomy and tolerance of an engine config.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The connection that receives the ``events`` and ``quarantine`` tables.
    config : EngineConfig
        Its ``events`` section gives the taxonomy file, the extra event types and the
        future-time tolerance.
    path : str or os.PathLike
        A Parquet or CSV file, a folder of them, or a glob.
    now : datetime.datetime, optional
        The time future events are measured against; default the current time.

    Returns
    -------
    ValidationReport
        Rows read, valid, duplicates dropped and quarantined (by reason), and the unknown
        event types.

    Raises
    ------
    EventContractError
        The input, or a required column in any of its files, is missing, or the taxonomy
        file is bad (the message names the file and key).
    """
    taxonomy = load_taxonomy(
        config.config_file(config.events.taxonomy_file), config.events.extra_event_types
    )
    mapping = event_mapping(config)
    return load_events(
        con,
        path,
        taxonomy=taxonomy,
        future_tolerance_hours=config.events.future_tolerance_hours,
        now=now,
        earliest_event_time=config.events.earliest_event_time,
        max_amount=config.events.max_amount,
        column_map=mapping.columns,
        type_aliases=mapping.type_aliases,
        epoch_unit=mapping.epoch_unit,
        time_zone=config.events.time_zone,
        lenient_columns=mapping.lenient,
        time_formats=config.events.time_formats,
        encoding=config.events.encoding,
        placeholders=config.identity.placeholders,
    )


@dataclass(frozen=True)
class EventMapping:
    """The source-to-contract mapping of a config: its preset, overridden by its own keys."""

    columns: dict[str, str | list[str]]
    type_aliases: dict[str, str]
    epoch_unit: str | None
    lenient: frozenset[str]  # optional contract columns mapped by the preset only
    encoding: str = "utf-8"  # of CSV files (events.encoding)


PRESET_DIR = CONFIG_DIR / "presets"


def load_preset(name: str) -> dict[str, Any]:
    """A preset file (`configs/presets/<name>.yaml`: columns, type_aliases, epoch_unit)."""
    file = PRESET_DIR / f"{name}.yaml"
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EventContractError(f"{file}: events.preset {name!r}: cannot be read: {exc}") from exc
    if not isinstance(raw, dict):
        raise EventContractError(f"{file}: events.preset {name!r}: the top level must be a mapping")
    unknown = set(raw) - {"columns", "type_aliases", "epoch_unit"}
    if unknown:
        raise EventContractError(f"{file}: events.preset {name!r}: unknown keys {sorted(unknown)}")
    return raw


def event_mapping(config: EngineConfig) -> EventMapping:
    """The columns, type aliases and epoch unit of `config.events`: the preset's entries,
    each replaced by the config's own (`events.columns`, `events.type_aliases`,
    `events.epoch_unit`)."""
    events = config.events
    preset = load_preset(events.preset) if events.preset else {}
    preset_columns: dict[str, str | list[str]] = {
        str(k): [str(x) for x in v] if isinstance(v, list) else str(v)
        for k, v in (preset.get("columns") or {}).items()
    }
    columns = {**preset_columns, **events.columns}
    aliases = {
        **{str(k): str(v) for k, v in (preset.get("type_aliases") or {}).items()},
        **events.type_aliases,
    }
    preset_unit = preset.get("epoch_unit")
    epoch_unit = events.epoch_unit or (str(preset_unit) if preset_unit else None)
    optional = set(OPTIONAL_COLUMNS) | set(IDENTIFIER_COLUMNS)
    if any(c in IDENTIFIER_COLUMNS for c in preset_columns):
        optional.add("client_id")  # an export may hold anonymous calls only
    lenient = frozenset(c for c in preset_columns if c in optional and c not in events.columns)
    return EventMapping(columns, aliases, epoch_unit, lenient, events.encoding)


def check_bad_share(report: ValidationReport, max_bad_share: float) -> None:
    """Fail with a clear message when the share of quarantined rows passes the threshold."""
    if report.rows and report.bad_share > max_bad_share:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(report.by_reason.items()))
        top = max(report.by_reason.items(), key=lambda item: item[1], default=("", 0))[0]
        hint = _BAD_SHARE_HINTS.get(top, "")
        raise BadInputError(
            f"{report.quarantined} of {report.rows} event rows ({report.bad_share:.1%}) are bad,"
            f" above the allowed {max_bad_share:.1%} ({reasons}){hint}"
        )


# What to look at when one reason dominates the bad rows (the setting that usually fixes it).
_BAD_SHARE_HINTS = {
    "unparseable_event_time": "; if the times are in a format of their own, set"
    " events.time_formats (e.g. ['%Y%m%d'] or ['%m/%d/%Y %H:%M']), or events.epoch_unit for"
    " integer epochs",
    "implausible_event_time": "; events before events.earliest_event_time are implausible:"
    " lower it for older history",
    "negative_amount": "; refunds go as their own event type with a positive amount",
    "malformed_line": "; lines that do not parse as CSV, or do not decode: if the files are"
    " not UTF-8 (older tools and Excel often write Latin-1), set events.encoding",
}


def day_end(as_of: date) -> datetime:
    """The exclusive upper bound of 'as of D': the start of D+1, naive UTC."""
    return datetime(as_of.year, as_of.month, as_of.day) + timedelta(days=1)


def _reader_sql(files: list[str]) -> str:
    """The Parquet reader of `files` (CSV goes through `CsvSource`, its dialect pinned)."""
    listing = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
    return f"read_parquet({listing}, union_by_name = true, filename = 'source_file')"


def _source_columns(con: duckdb.DuckDBPyConnection, reader: str) -> dict[str, tuple[str, str]]:
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
    except duckdb.Error as exc:
        raise EventContractError(f"cannot read events: {exc}") from exc
    return {
        name.strip().lower(): (name, dtype.upper())
        for name, dtype, *_ in described
        if name != "source_file"
    }


def _check_required(
    con: duckdb.DuckDBPyConnection,
    files: list[str],
    columns: dict[str, tuple[str, str]],
    path: str | os.PathLike[str],
    csv_source: CsvSource | None = None,
    json_source: JsonSource | None = None,
    mapping: ColumnMap | None = None,
    lenient: frozenset[str] = frozenset(),
) -> None:
    """Every required column in the union and in each file (a stray file fails, named), and a
    client_id of text or integers (a float id would turn NaN into a client "nan")."""
    missing = _missing_required(columns)
    if missing:
        raise EventContractError(
            f"events at {path}: missing required column(s) {', '.join(missing)}"
            f" (found: {', '.join(columns) or 'none'})"
        )
    per_file: dict[str, dict[str, tuple[str, str]]] = {}
    if len(files) > 1:
        for file in files:
            if csv_source:
                found = {n.strip().lower(): (n, "VARCHAR") for n in csv_source.header_of(file)}
            elif json_source:
                found = json_source.columns(file)
            else:
                found = _source_columns(con, _reader_sql([file]))
            if mapping or json_source:
                sources = _contract_columns(found, mapping or {}, f"events file {file}", lenient)
                found = {c: (s.name, s.dtype) for c, s in sources.items()}
            per_file[file] = found
            lacking = _missing_required(found)
            if lacking:
                raise EventContractError(
                    f"events file {file}: missing required column(s) {', '.join(lacking)}"
                )
    else:
        per_file[files[0]] = columns
    for file, found in per_file.items():
        if "client_id" not in found:
            continue
        name, dtype = found["client_id"]
        # "NULL": a Parquet column with no value at all (pandas writes one for an all-None column)
        if dtype and dtype not in ("VARCHAR", '"NULL"', "NULL") and dtype not in _INTEGER_TYPES:
            raise EventContractError(
                f"events file {file}: column {name} has type {dtype}; client ids must be"
                " text or integers"
            )


def _missing_required(found: Mapping[str, object]) -> list[str]:
    """The required columns not in `found`; client_id may be missing when another identifier
    column is there (identity stitching)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in found]
    if "client_id" in missing and identifier_columns(list(found)):
        missing.remove("client_id")
    return missing


def _read_error(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    files: list[str],
    columns: dict[str, tuple[str, str]],
    path: str | os.PathLike[str],
    exc: duckdb.Error,
) -> EventContractError:
    """A read that failed (a Parquet timestamp out of range, a corrupt file) as an error naming
    the file and the column, found by reading each contract column of each file alone."""
    reason = str(exc).strip().splitlines()[0]
    for file in files if kind == "parquet" else []:
        reader = _reader_sql([file])
        try:
            found = _source_columns(con, reader)
        except EventContractError as inner:
            return EventContractError(f"events file {file}: cannot be read: {inner}")
        for col in CONTRACT_COLUMNS:
            if col not in found:
                continue
            try:
                con.execute(f"SELECT max({_quoted(found, col)}) FROM {reader}").fetchall()
            except duckdb.Error as inner:
                detail = str(inner).strip().splitlines()[0]
                name, dtype = found[col]
                return EventContractError(
                    f"events file {file}: column {name} ({dtype}) cannot be read: {detail}"
                    + (
                        " (a time outside the years DuckDB can hold)"
                        if "Timestamp" in detail
                        else ""
                    )
                )
    return EventContractError(f"events at {path}: cannot be read: {reason}")


def _quoted(columns: dict[str, tuple[str, str]], col: str) -> str:
    return '"' + columns[col][0].replace('"', '""') + '"'


def _typed_sql(
    columns: dict[str, tuple[str, str]],
    reader: str,
    keep_source: bool = False,
    aliases: Mapping[str, str] | None = None,
    times: tuple[str | None, str, tuple[str, ...]] = (None, "UTC", ()),
) -> str:
    """Every contract column parsed to its type (NULL when absent or unparseable); event types
    renamed by `aliases` (source name, trimmed and lower-cased -> taxonomy type)."""
    event_type = _text("event_type", columns, lower=True)
    if aliases:
        value = event_type.removesuffix(" AS event_type")
        whens = " ".join(
            f"WHEN {_sql_text(k.strip().lower())} THEN {_sql_text(v.strip().lower())}"
            for k, v in aliases.items()
        )
        event_type = f"CASE {value} {whens} ELSE {value} END AS event_type"
    parts = [
        _text("client_id", columns, lower=False),
        event_type,
        _text("channel", columns, lower=True),
        _text("category", columns, lower=False),
        _text("event_id", columns, lower=False),
        *(_identifier(c, columns) for c in identifier_columns(list(columns))),
        _timestamp(columns, *times),
        _number("amount", columns),
        _number("sentiment", columns),
    ]
    for col in ("event_time", "amount", "sentiment"):
        # whether the raw value was present at all, to tell "missing" from "unparseable"
        if col not in columns:
            present = "false"
        elif columns[col][1] == "VARCHAR":
            present = f"nullif(trim({_quoted(columns, col)}), '') IS NOT NULL"
        else:  # typed: no text to inspect (casting every value to text is slow)
            present = f"{_quoted(columns, col)} IS NOT NULL"
        parts.append(f"{present} AS has_{col}")
    # A NUL in a text field, checked on the source columns (cheaper than on the trimmed text;
    # trimming keeps NUL bytes). Integer client ids hold none.
    nul = [
        f"contains({_quoted(columns, c)}, chr(0))"
        for c in TEXT_COLUMNS
        if c in columns and columns[c][1] == "VARCHAR"
    ]
    parts.append(f"coalesce({' OR '.join(nul) or 'false'}, false) AS has_nul")
    if keep_source:
        parts += [f"{_quoted(columns, c)} AS src_{c}" for c in CONTRACT_COLUMNS if c in columns]
        parts.append("source_file")
    return f"SELECT {', '.join(parts)} FROM {reader}"


def _identifier(col: str, columns: dict[str, tuple[str, str]]) -> str:
    """An identifier column as text, trimmed, lower-cased where its type is case-blind."""
    text = _text(col, columns, lower=False).removesuffix(f" AS {col}")
    return f"{normalized_sql(text, col)} AS {col}"


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _text(col: str, columns: dict[str, tuple[str, str]], lower: bool) -> str:
    """A text field, trimmed of spaces and of byte order marks (U+FEFF, left inside values by
    concatenated exports; a value starting with one loses it when read back through COPY and
    Arrow's CSV reader). The BOM trim, twice the cost of a plain trim, runs only where one is."""
    if col not in columns:
        return f"NULL::VARCHAR AS {col}"
    raw = f"CAST({_quoted(columns, col)} AS VARCHAR)"
    if columns[col][1] == "VARCHAR":
        trimmed = (
            f"CASE WHEN contains({raw}, '\ufeff') THEN trim({raw}, ' \ufeff') ELSE trim({raw}) END"
        )
    else:
        trimmed = f"trim({raw})"
    value = f"nullif({trimmed}, '')"
    return f"{'lower(' + value + ')' if lower else value} AS {col}"


_EPOCH_TO_MICROS = {"s": " * 1000000", "ms": " * 1000", "us": "", "ns": " // 1000"}
# A time written with its offset (`Z`, `+02`, `+02:00`, `-0500`) at the end.
_OFFSET = r"([zZ]|[+-]\d\d(:?\d\d)?)$"


def _timestamp(
    columns: dict[str, tuple[str, str]],
    epoch_unit: str | None = None,
    time_zone: str = "UTC",
    formats: tuple[str, ...] = (),
) -> str:
    """event_time as naive UTC: zoned times converted, naive ones read in `time_zone`,
    integers (and integer text) as epoch times in `epoch_unit` when one is given. A value that
    does not parse or cannot be held (an epoch out of range) is NULL: quarantined as
    unparseable_event_time, never a failure of the run."""
    _, dtype = columns["event_time"]
    quoted = _quoted(columns, "event_time")
    zone = _sql_text(time_zone)
    utc = time_zone.upper() == "UTC"
    if "WITH TIME ZONE" in dtype or dtype.startswith("TIMESTAMPTZ"):  # TIMESTAMPTZ_NS too
        expr = f"timezone('UTC', CAST({quoted} AS TIMESTAMPTZ))"
    elif dtype.startswith("TIMESTAMP") or dtype == "DATE":
        expr = f"CAST({quoted} AS TIMESTAMP)"
        if not utc:
            expr = f"timezone('UTC', timezone({zone}, {expr}))"
    elif epoch_unit and dtype in _INTEGER_TYPES:
        expr = f"try(make_timestamp(CAST({quoted} AS BIGINT){_EPOCH_TO_MICROS[epoch_unit]}))"
    else:
        text = f"nullif(trim(CAST({quoted} AS VARCHAR)), '')"
        expr = f"timezone('UTC', TRY_CAST({text} AS TIMESTAMPTZ))"
        if not utc:
            naive = f"timezone('UTC', timezone({zone}, TRY_CAST({text} AS TIMESTAMP)))"
            expr = f"CASE WHEN regexp_matches({text}, '{_OFFSET}') THEN {expr} ELSE {naive} END"
        if epoch_unit:
            number = f"TRY_CAST({text} AS BIGINT){_EPOCH_TO_MICROS[epoch_unit]}"
            expr = (
                f"CASE WHEN regexp_full_match({text}, '-?[0-9]+')"
                f" THEN try(make_timestamp({number})) ELSE {expr} END"
            )
        # the configured formats first, in order (`try_strptime` gives NULL, not an error,
        # for a value no format fits); then the readers above
        for fmt in reversed(formats):
            parsed = f"try_strptime({text}, {_sql_text(fmt)})"
            if "%z" in fmt or "%Z" in fmt:
                parsed = f"timezone('UTC', {parsed})"
            elif not utc:
                parsed = f"timezone('UTC', timezone({zone}, {parsed}))"
            expr = f"coalesce({parsed}, {expr})"
    return f"{expr} AS event_time"


_NUMERIC = (
    "DOUBLE",
    "FLOAT",
    "REAL",
    "DECIMAL",
    "INTEGER",
    "BIGINT",
    "SMALLINT",
    "TINYINT",
    "HUGEINT",
    "UBIGINT",
    "UINTEGER",
)


def _number(col: str, columns: dict[str, tuple[str, str]]) -> str:
    if col not in columns:
        return f"NULL::DOUBLE AS {col}"
    _, dtype = columns[col]
    quoted = _quoted(columns, col)
    if dtype.startswith(_NUMERIC):
        return f"CAST({quoted} AS DOUBLE) AS {col}"
    return f"TRY_CAST(nullif(trim(CAST({quoted} AS VARCHAR)), '') AS DOUBLE) AS {col}"


def _stage_sql(taxonomy: Taxonomy) -> str:
    """Event type to stage as one CASE (cheaper than a join over every event)."""
    by_stage: dict[str, list[str]] = {}
    for event_type, stage in sorted(taxonomy.stage_of.items()):
        by_stage.setdefault(stage, []).append("'" + event_type.replace("'", "''") + "'")
    if not by_stage:
        return f"'{OTHER_STAGE}'"
    whens = " ".join(
        f"WHEN event_type IN ({', '.join(types)}) THEN '{stage}'"
        for stage, types in by_stage.items()
    )
    return f"CASE {whens} ELSE '{OTHER_STAGE}' END"


def _by_client_sql(taxonomy: Taxonomy) -> str:
    """True for a client-initiated event (any type the taxonomy does not mark `brand`)."""
    brand = ", ".join("'" + t.replace("'", "''") + "'" for t in taxonomy.brand_types)
    return f"event_type NOT IN ({brand})" if brand else "true"


# The key that finds repeated event_ids before they are compared as text (any function of the
# id will do: equal ids always share it).
_ID_HASH = "hash({})"


def _drop_duplicates(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """Keep the first row of each event_id (by time, client, type); return how many went.

    The repeated ids are found by their 64-bit hash first (a group-by on a fixed-width key,
    much cheaper than on the text), and only the rows whose hash repeats are ranked by
    event_id: a hash collision between two distinct ids puts both in the ranking, each first
    of its own id, so nothing else is dropped."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _dup_hashes AS SELECT {_ID_HASH.format('event_id')} AS h"
        f" FROM {table} WHERE event_id IS NOT NULL GROUP BY h HAVING count(*) > 1"
    )
    if not con.execute("SELECT count(*) FROM _dup_hashes").fetchall()[0][0]:
        con.execute("DROP TABLE _dup_hashes")
        return 0
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _dup_rows AS
        SELECT rid FROM (
            SELECT e.rid, row_number() OVER (
                PARTITION BY e.event_id
                ORDER BY e.event_time, e.client_id, e.event_type, e.channel, e.amount,
                         e.category, e.sentiment) AS copy
            FROM (SELECT rowid AS rid, * FROM {table} WHERE event_id IS NOT NULL) e
            SEMI JOIN _dup_hashes d ON {_ID_HASH.format("e.event_id")} = d.h
        ) WHERE copy > 1
        """
    )
    dropped = con.execute("SELECT count(*) FROM _dup_rows").fetchall()[0][0]
    con.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rid FROM _dup_rows)")
    con.execute("DROP TABLE _dup_rows")
    con.execute("DROP TABLE _dup_hashes")
    return dropped


def _valid_sql(columns: dict[str, tuple[str, str]], limits: _Limits) -> str:
    """True exactly for the rows `_reason_sql` finds no reason for (NULL or false otherwise):
    one conjunction, cheap on the valid rows, so that the reasons are worked out for the
    rejected rows only. A NaN or infinite amount or sentiment fails `isfinite`."""
    latest = limits.cutoff.strftime("%Y-%m-%d %H:%M:%S.%f")
    earliest = limits.earliest.strftime("%Y-%m-%d %H:%M:%S.%f")
    ids = identifier_columns(list(columns))
    who = (
        f"coalesce(client_id, {', '.join(ids)}) IS NOT NULL"
        if ids
        else f"NOT {limits.client_id_missing_sql()}"
    )
    return f"""({who}
        AND has_event_time
        AND event_type IS NOT NULL
        AND NOT has_nul
        AND event_time BETWEEN TIMESTAMP '{earliest}' AND TIMESTAMP '{latest}'
        AND (amount IS NULL AND NOT has_amount
             OR amount BETWEEN 0 AND {float(limits.max_amount)!r} AND isfinite(amount))
        AND (sentiment IS NULL AND NOT has_sentiment
             OR sentiment BETWEEN -1 AND 1 AND isfinite(sentiment)))"""


def _reason_sql(columns: dict[str, tuple[str, str]], limits: _Limits) -> str:
    """The first reason that applies to a typed row, or NULL for a valid row.

    `NOT isfinite` rather than `isnan`: DuckDB 2.0 answers isnan() false for NaN read from
    Parquet (checked with a file written by pyarrow), while isfinite() is right. A NUL byte in
    any text field is quarantined: PostgreSQL text cannot hold it. Each range is one BETWEEN,
    split into its two reasons only for the rows outside it: every reference to a typed column
    parses the text again (a CSV time costs a TIMESTAMPTZ parse per reference).
    """
    latest = limits.cutoff.strftime("%Y-%m-%d %H:%M:%S.%f")
    earliest = limits.earliest.strftime("%Y-%m-%d %H:%M:%S.%f")
    ids = identifier_columns(list(columns))
    if ids:
        who = f"WHEN coalesce(client_id, {', '.join(ids)}) IS NULL THEN 'no_identifier'"
    else:
        who = f"WHEN {limits.client_id_missing_sql()} THEN 'missing_client_id'"
    return f"""CASE
        {who}
        WHEN NOT has_event_time THEN 'missing_event_time'
        WHEN event_type IS NULL THEN 'missing_event_type'
        WHEN has_nul THEN 'nul_byte'
        WHEN NOT coalesce(event_time BETWEEN TIMESTAMP '{earliest}' AND TIMESTAMP '{latest}', false)
            THEN CASE WHEN event_time IS NULL THEN 'unparseable_event_time'
                      WHEN event_time < TIMESTAMP '{earliest}' THEN 'implausible_event_time'
                      ELSE 'future_event_time' END
        WHEN has_amount AND amount IS NULL THEN 'unparseable_amount'
        WHEN amount IS NOT NULL AND NOT isfinite(amount) THEN 'non_finite_amount'
        WHEN amount NOT BETWEEN 0 AND {float(limits.max_amount)!r} THEN
            CASE WHEN amount < 0 THEN 'negative_amount' ELSE 'amount_out_of_range' END
        WHEN has_sentiment AND sentiment IS NULL THEN 'unparseable_sentiment'
        WHEN sentiment IS NOT NULL AND NOT isfinite(sentiment) THEN 'sentiment_out_of_range'
        WHEN sentiment < -1 OR sentiment > 1 THEN 'sentiment_out_of_range'
        ELSE NULL END"""
