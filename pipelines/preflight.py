"""Cheap checks before a run: a wrong path, rule, store or date fails in seconds, not minutes.

Why: a nightly run starts Prefect's server and reads every event before it would notice a
missing events folder, a bad rules file or an as-of date out of order. These checks read no
event and start no server; `segmentation run` and `backfill` call them first.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from configs import EngineConfig, SegmentationError

__all__ = [
    "FutureAsOfError",
    "check_first_file_columns",
    "newest_event_date",
    "preflight",
]


class FutureAsOfError(SegmentationError, ValueError):
    """The as-of date is after today, or more than a day after the newest event: every
    client would look churned."""


def preflight(
    config: EngineConfig,
    *,
    as_of: date,
    events: str | None = None,
    store_url: str | None = None,
    rebuild: bool = False,
    allow_future: bool = False,
    today: date | None = None,
) -> None:
    """Fail at once, naming what is wrong, when a run as of `as_of` cannot succeed.

    Checks, in order: the as-of date is not after today (UTC) unless `allow_future` (a run
    far ahead of the data makes every client churned and a clustering fitted on that state
    champion, and every later normal run then fails as out of order); the events path
    resolves to files of one format; the first file has the contract's required columns
    after the config's column mapping or preset (its header or schema only, read by the event
    loader's own column resolution); the as-of is not more than a day after the newest event
    unless `allow_future` (Parquet only, from the files' row-group statistics of event_time;
    skipped where a file has none, and for CSV and JSON lines); the identity-links file
    exists when configured; the rules file loads; the store opens, its schema is not newer
    than this engine's, and `as_of` is not older than its latest published date unless
    `rebuild`. With ``execution.mode: dask``, the input is one the sharded build takes and the
    scheduler answers within its connect timeout. Neither Prefect nor MLflow is imported, and
    no event row is read.

    Raises
    ------
    FutureAsOfError, EventContractError, RuleError, StoreError, OutOfOrderError,
    DistributedBuildError
    """
    today = today or datetime.now(UTC).date()
    if as_of > today and not allow_future:
        raise FutureAsOfError(
            f"as_of {as_of} is after today ({today}): a run as of a future date sees every"
            " client as gone quiet; pass --allow-future if that is what you want"
        )
    from features.events import EventContractError, resolve_sources

    path = events or config.events_path
    kind, files = resolve_sources(path)
    check_first_file_columns(config, kind, files)
    if not allow_future:
        newest = newest_event_date(config, kind, files)
        if newest is not None and as_of > newest + timedelta(days=1):
            raise FutureAsOfError(
                f"as_of {as_of} is more than a day after the newest event ({newest}) in"
                f" {path}: a run ahead of its data sees every client as gone quiet; run as of"
                f" {newest} or earlier, or pass --allow-future if that is what you want"
            )
    links = config.links_path
    if links and not any(c in links for c in "*?[") and not Path(links).exists():
        raise EventContractError(f"identity.links_file {links}: not found")
    if config.execution.mode == "dask":  # Dask is imported only for such a run
        from pipelines.distributed import check_ready

        check_ready(config, path, kind)
    from segmentation.rules import load_rules

    load_rules(config.config_file(config.rules.file))
    _check_store(config, store_url or config.store_url, as_of, rebuild)


def check_first_file_columns(config: EngineConfig, kind: str, files: list[str]) -> None:
    """The first events file has every required contract column after the config's mapping.

    Only its header (CSV), schema (Parquet) or keys (JSON lines: a sample of lines, all of
    them when the sample lacks a mapped key, as the loader does) are read, through the event
    loader's own column resolution, so the check and the run cannot disagree.

    Raises
    ------
    EventContractError
        Naming the file, the missing column and, for a mapped one, its source column.
    """
    import duckdb

    from features import events as ev

    mapping = ev.event_mapping(config)
    first = files[:1]
    con = duckdb.connect()
    try:
        if kind != "json":
            plan = ev._plan_scans(
                con,
                kind,
                first,
                first[0],
                mapping.columns,
                mapping.lenient,
                encoding=mapping.encoding,
            )
            plan.release(con)
            return
        for sample in (True, False):  # a key the first lines lack may come later
            source = ev._json_source(con, first, sample=sample)
            try:
                found = ev._contract_columns(
                    source.columns(), mapping.columns, f"events at {first[0]}", mapping.lenient
                )
                columns = {c: (c, "VARCHAR") for c in found}
                ev._check_required(
                    con, first, columns, first[0], None, source, mapping.columns, mapping.lenient
                )
                return
            except ev.EventContractError:
                if not sample:
                    raise
    finally:
        con.close()


def newest_event_date(config: EngineConfig, kind: str, files: list[str]) -> date | None:
    """The UTC date of the newest event, from Parquet row-group statistics of event_time.

    None when it cannot be known cheaply: CSV or JSON lines, event_time mapped to a path or
    to several columns, text times, or a file or row group without statistics."""
    if kind != "parquet":
        return None
    import pyarrow.parquet as pq

    from features.events import event_mapping

    mapping = event_mapping(config)
    source = mapping.columns.get("event_time", "event_time")
    if not isinstance(source, str) or any(ch in source for ch in ".[]"):
        return None
    newest: datetime | None = None
    for file in files:
        try:
            meta = pq.ParquetFile(file).metadata
        except Exception:  # an unreadable file: the run names it
            return None
        names = [meta.schema.column(i).path.lower() for i in range(meta.num_columns)]
        if source.lower() not in names:
            return None
        index = names.index(source.lower())
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(index).statistics
            if meta.row_group(g).num_rows == 0:
                continue
            if stats is None or not stats.has_min_max:
                return None
            value = _as_utc(stats.max, config, mapping.epoch_unit)
            if value is None:
                return None
            newest = value if newest is None else max(newest, value)
    return newest.date() if newest is not None else None


_EPOCH_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _as_utc(value: object, config: EngineConfig, epoch_unit: str | None) -> datetime | None:
    """A statistics value as a naive UTC datetime (None for a type we do not read)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=ZoneInfo(config.events.time_zone))
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, int) and epoch_unit in _EPOCH_PER_SECOND:
        seconds = value / _EPOCH_PER_SECOND[epoch_unit]
        try:
            return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _check_store(config: EngineConfig, url: str, as_of: date, rebuild: bool) -> None:
    """The store opens, its schema is one this engine knows, and `as_of` is in order with
    what it published (the nightly's own order check, without importing the flow)."""
    from pipelines.store import SCHEMA_VERSION, OutOfOrderError, SchemaVersionError, open_store

    store = open_store(
        url,
        config.store.schema_name,
        lock_timeout=config.store.lock_timeout_seconds,
        reader_retry=config.store.reader_retry_seconds,
    )
    try:
        version = store.schema_version()
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"store {store.url} has schema version {version}, newer than this engine's"
                f" {SCHEMA_VERSION}: upgrade the engine"
            )
        latest = store.latest_as_of()
    finally:
        store.close()
    if latest is not None and as_of < latest and not rebuild:
        raise OutOfOrderError(
            f"as_of {as_of} is older than the latest published as_of {latest}: run dates in"
            f" order, or pass --rebuild to undo every run from {as_of} on and rebuild from there"
        )
