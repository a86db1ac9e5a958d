"""The per-client feature build shard by shard on a Dask cluster (`execution: dask`).

Clients are hash-partitioned with the feature build's own partition,
``hash(client_id) % shards`` on the normalized client id (`features.build`). Each shard is one
Dask task: it reads the raw events of its clients only (one filtered scan of the input, written
to the worker's scratch folder), validates them with the event contract
(`features.events.load_configured_events`), and builds their features with DuckDB inside the
worker (`features.build.build_features`). The driver sums the validation counts and
concatenates the shards' Arrow tables sorted by client_id, as the one-process build does; the
result equals `pipelines.steps.read_events` followed by `pipelines.steps.compute_features` on
the same events, as of the same day and `now`.

When `events_path` is a folder partitioned by `pipelines.partition` (a `_partition.json`)
with as many shards, each task reads its own ``shard=k`` folder only (shard 0 also reads
``shard=none``); with another shard count the tasks scan the whole folder as they scan any
input. Each task's DuckDB gets the one-process memory budget divided by the shards
(`task_memory_limit`).

A shard holds whole clients, so every per-client value, and the duplicates by event_id of a
client's own events, are judged where all of that client's events are.

Identity stitching is resolved before sharding: when the events carry identifiers besides
client_id (or a links file is configured), a person's events may sit under several ids that
hash to different shards. This process then validates the events and stitches them exactly as
the one-process run does (`pipelines.steps.read_events`, `pipelines.steps.stitch_identities`,
in its DuckDB, which spills), writes the stitched events partitioned by person
(`pipelines.partition.partition_loaded`), and the shards build their persons' features from
their own partition. What this step does not do yet (docs/scale.md): the stitching itself on
the workers, CSV and JSON lines inputs (refused: convert to Parquet), and a mapped client_id
column without stitching (refused: `segmentation partition` applies the mapping).

Dask is imported inside the functions only, so importing this module (and `segmentation
validate`) stays cheap.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from configs import IDENTIFIER_COLUMNS, EngineConfig, SegmentationError, as_date
from configs.schema import ExecutionConfig
from features.events import ValidationReport, check_bad_share
from models.cltv import BTYD_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa
    from distributed import Client

    from features.identity import Stitching

__all__ = [
    "ClusterUnreachableError",
    "DistributedBuildError",
    "DistributedFeatures",
    "KeptFeatures",
    "ShardOutput",
    "build_features_on_dask",
    "build_shard",
    "check_ready",
    "combined_report",
    "dask_client",
    "events_file_name",
    "events_view",
    "feature_file_name",
    "gather_by_shard",
    "plain_events_config",
    "stitching_needed",
    "task_memory_limit",
    "worker_connection",
    "write_shard_events",
]

_KEY_PREFIX = "segmentation-features"
INDEX_COLUMNS = ("client_id", *BTYD_COLUMNS)  # what the driver gets when the rows stay
MIN_TASK_MEMORY = 256 * 2**20
_UNITS = {
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}  # fmt: skip


class DistributedBuildError(SegmentationError, RuntimeError):
    """The sharded build failed: a shard's task failed or its worker died (the message names
    the shard), or the input is one this step cannot shard yet."""


class ClusterUnreachableError(DistributedBuildError):
    """No Dask scheduler answered at the configured address within the connect timeout."""


@dataclass(frozen=True)
class ShardOutput:
    """What one shard's task returns: its feature rows, its validation counts, its time, and
    its quarantined rows (the `quarantine` table of `features.events`, ``source_file`` naming
    the input's file, rows sorted by every column)."""

    shard: int
    table: pa.Table
    report: ValidationReport
    seconds: float
    quarantine: pa.Table
    columns: tuple[str, ...] = ()  # the feature table's columns
    nullable: tuple[str, ...] = ()  # with rows kept: the columns with a null in this shard


@dataclass(frozen=True)
class KeptFeatures:
    """Feature rows the shards kept in the shared folder: one file per shard, the feature
    table's columns, those with a null in any shard (so a part read alone gets the
    one-process frame's types), and each shard's client ids."""

    files: tuple[str, ...]
    columns: tuple[str, ...]
    nullable: frozenset[str]
    shard_ids: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class _ShardFailure:
    """A shard that failed on purpose (a `SegmentationError`): returned, not raised, so that
    Dask does not retry a failure that would only repeat."""

    shard: int
    error: SegmentationError


@dataclass(frozen=True)
class DistributedFeatures:
    """The sharded build's result.

    `features` is the frame `pipelines.steps.compute_features` returns (one row per client,
    sorted by client_id, nulls as NaN, client ids as text); `report` the validation counts
    summed over the shards (`pipelines.steps.read_events`'s report); `shard_clients` the
    number of clients of each shard, and `shard_seconds` each task's time in its worker.
    `quarantine` is the frame `pipelines.steps.read_events` returns as
    `EventsRead.quarantine` (the rejected rows with their reasons, ``source_file`` naming the
    input's file), the shards' rows concatenated in shard order, each shard's sorted by every
    column: the same rows as the one-process quarantine, in another order.
    """

    features: pd.DataFrame
    report: ValidationReport
    shards: int
    shard_clients: tuple[int, ...] = field(default=())
    shard_seconds: tuple[float, ...] = field(default=())
    input_layout: str = "scan"
    quarantine: pd.DataFrame = field(default_factory=pd.DataFrame)
    kept: KeptFeatures | None = None  # with `shared`: where the feature rows are
    # With identifiers besides client_id (or a links file): the stitching done before sharding.
    stitching: Stitching | None = None


def build_features_on_dask(
    config: EngineConfig,
    events_path: str | Path,
    as_of: date,
    *,
    client: Client | None = None,
    now: datetime | None = None,
    shared: str | Path | None = None,
    history: Callable[[], tuple[date | None, Mapping[str, str]]] | None = None,
) -> DistributedFeatures:
    """Validate the events and build the feature table shard by shard on Dask.

    When the events need identity stitching (`stitching_needed`), this process validates and
    stitches them first, as the one-process run does, and the shards build the features of
    the persons of their partition (`input_layout` "stitched"; `stitching` set).

    Parameters
    ----------
    config : EngineConfig
        Its ``execution`` section gives the shards and the cluster (used when `client` is
        None: ``scheduler_address``, else a LocalCluster of ``workers`` processes); its
        ``events`` and ``features`` sections are applied in every shard as in one process.
    events_path : str or Path
        A Parquet file, a folder of them or a glob, readable from every worker.
    as_of : datetime.date
        The as-of day of the features.
    client : distributed.Client, optional
        A connected client to run on (it is left open).
    now : datetime.datetime, optional
        The time future events are measured against, the same in every shard; default the
        current time when the call starts.
    shared : str or Path, optional
        An existing folder every worker and this process can read and write. Each shard
        writes there its valid events (``events-<k>.parquet``, the one-process ``events``
        table's rows of its clients, same columns and types), for the nightly's later steps
        that read events (the CLTV training windows, the journey map, the holdout outcomes),
        and its feature rows (``features-<k>.parquet``), which stay there: `features` then
        holds only client_id and the BTYD inputs (`pipelines.sharded`).
    history : callable, optional
        For stitching, called only then: the as-of date of the last published run and the ids
        merged by earlier runs (`pipelines.steps.stitch_identities`'s `previous_as_of` and
        `merged_before`); none by default (a first run).

    Returns
    -------
    DistributedFeatures
        The feature frame (equal to `steps.compute_features`; with `shared`, its client_id
        and BTYD columns only), the summed validation report (equal to
        `steps.read_events`'s) and the quarantined rows (the rows of `steps.read_events`'s
        quarantine, in shard order).

    Raises
    ------
    ClusterUnreachableError
        No scheduler answered at ``execution.scheduler_address`` within
        ``execution.connect_timeout_seconds``.
    DistributedBuildError
        A shard failed (the message names it and why), its worker died twice, or the input
        needs what this step does not do yet (identity stitching, CSV or JSON lines).
    BadInputError
        The summed share of bad rows passes ``events.max_bad_share``.
    NothingToSegmentError
        No client has an event up to `as_of`.
    """
    from features.build import _sorted_by_client  # the one-process build's shard merge
    from pipelines.partition import config_for_partitioned, read_manifest
    from pipelines.steps import NothingToSegmentError, _feature_frame

    manifest = read_manifest(events_path)
    if manifest is not None:  # its column mapping was applied when it was written
        config = config_for_partitioned(config, manifest)
    as_of = as_date(as_of)
    now = now or datetime.now(UTC)
    if stitching_needed(config, events_path):
        return _stitch_then_shard(config, events_path, as_of, now, client, shared, history)
    _check_shardable(config)
    shards = config.execution.shards
    per_shard = manifest is not None and manifest.shards == shards
    with _client_for(config.execution, client) as dask:
        outputs = _run_shards(
            dask,
            config,
            str(events_path),
            as_of,
            now,
            shards,
            per_shard,
            str(shared) if shared is not None else None,
        )
    report = combined_report([o.report for o in outputs])
    check_bad_share(report, config.events.max_bad_share)
    counts = tuple(o.table.num_rows for o in outputs)
    seconds = tuple(round(o.seconds, 3) for o in outputs)
    quarantine = _quarantine_frame([o.quarantine for o in outputs])
    kept = _kept_features(outputs, shared)
    table = _sorted_by_client([o.table for o in outputs])
    del outputs
    if table.num_rows == 0:
        raise NothingToSegmentError(f"no client has an event up to {as_of}: nothing to segment")
    return DistributedFeatures(
        _feature_frame(table),
        report,
        shards,
        shard_clients=counts,
        shard_seconds=seconds,
        input_layout="partitioned" if per_shard else "scan",
        quarantine=quarantine,
        kept=kept,
    )


def build_shard(
    config: EngineConfig,
    events_path: str,
    as_of: date,
    shard: int,
    shards: int,
    now: datetime,
    *,
    partitioned: bool = False,
    shared: str | None = None,
) -> ShardOutput:
    """One shard's work, as a Dask task runs it (callable anywhere, for tests).

    With `partitioned`, `events_path` is a folder written by `pipelines.partition` with
    `shards` shards: the task reads its own ``shard=<shard>`` folder only (shard 0 also reads
    ``shard=none``, the rows without a client id). Otherwise it reads the raw rows of the
    clients with ``hash(client_id) % shards == shard`` (client_id normalized as the event
    contract does) into Parquet files in a scratch folder, one per input file. It then loads
    and validates them as `load_configured_events` does, and builds the features of its
    clients in DuckDB. Its quarantined rows are returned as an Arrow table, ``source_file``
    naming the input's file (not the scratch copy). With `shared`, its valid events are
    written there as ``events-<shard>.parquet`` (atomically: a retried task replaces it). The
    scratch folder (in the worker's local directory) is removed after.
    """
    from features.build import build_features
    from features.events import load_configured_events
    from features.identity import needs_stitching
    from pipelines.partition import shard_glob

    started = time.perf_counter()
    with worker_connection(config, shards, f"shard-{shard}-") as (con, scratch):
        try:
            copies: dict[str, str] = {}
            if partitioned:
                shard_input = shard_glob(events_path, shard, with_none=shard == 0)
            else:
                shard_input, copies = _write_shard_input(
                    con, config, events_path, shard, shards, scratch
                )
            report = load_configured_events(con, config, shard_input, now=now)
            if needs_stitching(con, config.links_path):
                raise DistributedBuildError(
                    f"events at {events_path} carry identifiers besides client_id: identity"
                    " stitching across shards is not done by the Dask build yet"
                    " (execution.mode: local)"
                )
            quarantine = _shard_quarantine(con, copies)
            if shared is not None:
                write_shard_events(con, shared, shard)
            table = build_features(con, as_of, config.features, shards=config.features.shards)
        finally:
            con.close()
        nullable: tuple[str, ...] = ()
        names = tuple(table.column_names)
        if shared is not None:  # the rows stay in the shared folder; the driver gets the index
            nullable = tuple(n for n, c in zip(names, table.columns, strict=True) if c.null_count)
            _write_parquet(table, Path(shared) / feature_file_name(shard))
            table = table.select(list(INDEX_COLUMNS))
    return ShardOutput(
        shard, table, report, time.perf_counter() - started, quarantine, names, nullable
    )


@contextmanager
def worker_connection(
    config: EngineConfig, shards: int, prefix: str
) -> Iterator[tuple[duckdb.DuckDBPyConnection, Path]]:
    """A DuckDB connection for one shard's task on a worker, and its scratch folder (in the
    worker's local directory, where DuckDB spills): the worker's threads, and the one-process
    memory budget shared by the shards (`task_memory_limit`). Both are gone afterwards."""
    from features.events import connect_for_events

    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=_local_directory()))
    try:
        con = connect_for_events(config.features, scratch)
        try:
            threads = _worker_threads()
            if threads:
                con.execute(f"SET threads = {threads}")
            limit = task_memory_limit(
                config.features.memory_limit, shards, _worker_memory_limit(), threads or 1
            )
            con.execute(f"SET memory_limit = '{limit}'")
            yield con, scratch
        finally:
            con.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        _release_arrow_memory()


def events_view(con: duckdb.DuckDBPyConnection, files: str) -> None:
    """An ``events`` view on `con` over the shards' events files (a file or a glob), read as
    the one-process ``events`` table."""
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet({_sql_text(files)})")


def events_file_name(shard: int) -> str:
    """The file a shard's valid events are written to, in the run's shared folder."""
    return f"events-{shard:05d}.parquet"


def feature_file_name(shard: int) -> str:
    """The file a shard's feature rows are kept in, in the run's shared folder."""
    return f"features-{shard:05d}.parquet"


def _write_parquet(table: pa.Table, final: Path) -> None:
    """`table` to `final` through a temporary name (a retried shard replaces it whole)."""
    import pyarrow.parquet as pq

    with _partial(final) as partial:
        pq.write_table(table, partial)


@contextmanager
def _partial(final: Path) -> Iterator[Path]:
    """A temporary name next to `final`, renamed to it once written: a reader never sees
    half a file, and a retried shard replaces its file whole."""
    partial = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
    yield partial
    partial.replace(final)


def _kept_features(
    outputs: Sequence[ShardOutput], shared: str | Path | None
) -> KeptFeatures | None:
    """Where the shards kept their feature rows, and what a reader needs to rebuild the
    one-process frame's types from a part of them (None: the rows came back)."""
    if shared is None:
        return None
    import pyarrow.compute as pc

    return KeptFeatures(
        files=tuple(str(Path(shared) / feature_file_name(o.shard)) for o in outputs),
        columns=outputs[0].columns,
        nullable=frozenset(n for o in outputs for n in o.nullable),
        shard_ids=tuple(
            tuple(pc.cast(o.table.column("client_id"), "string").to_pylist()) for o in outputs
        ),
    )


def write_shard_events(con: duckdb.DuckDBPyConnection, folder: str, shard: int) -> Path:
    """Write the connection's ``events`` table to ``folder/events-<shard>.parquet`` through a
    temporary name, so a reader never sees half a file and a retried shard replaces it."""
    final = Path(folder) / events_file_name(shard)
    with _partial(final) as partial:
        con.execute(f"COPY events TO {_sql_text(str(partial))} (FORMAT parquet)")
    return final


def task_memory_limit(
    one_process_limit: str, shards: int, worker_limit: int | None = None, threads: int = 1
) -> str:
    """DuckDB's memory limit for one shard's task: the one-process budget
    (``features.memory_limit``) shared by the shards, so a shard gets the same memory per
    event as the whole input gets in one process, at least `MIN_TASK_MEMORY` (below it
    DuckDB's fixed buffers dominate and joins spill for nothing), and at most half of the
    worker's memory limit per thread (the rest is Python, Arrow and the returned table)."""
    budget = max(_bytes(one_process_limit) // max(shards, 1), MIN_TASK_MEMORY)
    if worker_limit:
        budget = min(budget, max(worker_limit // (2 * max(threads, 1)), MIN_TASK_MEMORY))
    return f"{budget // 2**20}MiB"


def combined_report(reports: Sequence[ValidationReport]) -> ValidationReport:
    """The validation counts of the shards summed: rows, valid, duplicates, quarantined, and
    the counts by reason and by unknown event type (keys sorted)."""

    def summed(parts: Sequence[dict[str, int]]) -> dict[str, int]:
        total: dict[str, int] = {}
        for part in parts:
            for key, n in part.items():
                total[key] = total.get(key, 0) + int(n)
        return dict(sorted(total.items()))

    return ValidationReport(
        rows=sum(r.rows for r in reports),
        valid=sum(r.valid for r in reports),
        duplicates=sum(r.duplicates for r in reports),
        quarantined=sum(r.quarantined for r in reports),
        by_reason=summed([r.by_reason for r in reports]),
        unknown_event_types=summed([r.unknown_event_types for r in reports]),
    )


@contextmanager
def dask_client(execution: ExecutionConfig) -> Iterator[Client]:
    """A Dask client as the ``execution`` section says, closed on exit.

    With ``scheduler_address``, a client of that scheduler (the cluster is left running);
    an address that does not answer within ``connect_timeout_seconds`` raises
    `ClusterUnreachableError` naming it. Without, a `distributed.LocalCluster` of ``workers``
    processes (``threads_per_worker`` threads and ``memory_limit_per_worker`` each, no
    dashboard), shut down on exit.
    """
    from distributed import Client, LocalCluster

    address = execution.scheduler_address
    if address is None:
        with (
            LocalCluster(
                n_workers=execution.workers,
                threads_per_worker=execution.threads_per_worker,
                memory_limit=execution.memory_limit_per_worker,
                processes=True,
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as local,
        ):
            yield local
        return
    timeout = execution.connect_timeout_seconds
    try:
        remote = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterUnreachableError(
            f"execution.scheduler_address {address!r}: no Dask scheduler answered within"
            f" {timeout:g} s ({type(exc).__name__}: {exc})"
        ) from None
    try:
        yield remote
    finally:
        remote.close()


def check_ready(config: EngineConfig, events_path: str | Path, kind: str) -> None:
    """The cheap checks of a run with ``execution.mode: dask``, before any event is read:
    the input is one the sharded build takes (Parquet; a mapped client_id only with identity
    stitching, which this process does before sharding), the shared folder exists, and the
    scheduler answers within ``connect_timeout_seconds``.

    Raises
    ------
    DistributedBuildError, ClusterUnreachableError
    """
    from pipelines.partition import config_for_partitioned, read_manifest

    manifest = read_manifest(events_path)
    if manifest is not None:  # its column mapping was applied when it was written
        config = config_for_partitioned(config, manifest)
    if kind != "parquet":
        raise DistributedBuildError(
            f"events are {kind.upper()} files: the Dask build reads Parquet only, so far"
            " (convert them with 'segmentation partition', or execution.mode: local)"
        )
    if not stitching_needed(config, events_path):
        _check_shardable(config)
    shared = config.execution.shared_dir
    if shared is not None and not Path(shared).is_dir():
        raise DistributedBuildError(
            f"execution.shared_dir {shared}: not a folder (it must exist, readable and"
            " writable by every worker and by this process)"
        )
    if config.execution.scheduler_address is not None:
        with dask_client(config.execution):
            pass


# ---------------------------------------------------------------------------------------------


@contextmanager
def _client_for(execution: ExecutionConfig, client: Client | None) -> Iterator[Client]:
    if client is not None:
        yield client
    else:
        with dask_client(execution) as made:
            yield made


def stitching_needed(config: EngineConfig, events_path: str | Path) -> bool:
    """True when the events must be stitched into persons before they are sharded: a links
    file is configured, or the input (Parquet, after the config's column mapping) has an
    identifier column besides client_id. Reads the files' schemas only. A folder written by
    `segmentation partition` never is (it refuses such inputs; `_check_shardable` refuses a
    links file with one)."""
    from features.events import _plan_scans, event_mapping, resolve_sources
    from pipelines.partition import read_manifest

    if read_manifest(events_path) is not None:  # partitioned by client: never stitched
        return False
    if config.links_path:
        return True
    kind, files = resolve_sources(events_path)
    if kind != "parquet":  # refused by the cheap checks and the shards
        return False
    mapping = event_mapping(config)
    con = duckdb.connect()
    try:
        plan = _plan_scans(con, kind, files, events_path, dict(mapping.columns), mapping.lenient)
        plan.release(con)
    finally:
        con.close()
    return any(c in plan.columns for c in IDENTIFIER_COLUMNS)


def plain_events_config(config: EngineConfig) -> EngineConfig:
    """`config` for reading events already loaded, validated and stitched by it: no column
    mapping, no type aliases, times already in UTC, no links file (the rest, validation
    included, unchanged: validating such events again keeps every row as it is)."""
    events = config.events.model_copy(
        update={
            "preset": None,
            "columns": {},
            "type_aliases": {},
            "epoch_unit": None,
            "time_zone": "UTC",
        }
    )
    identity = config.identity.model_copy(update={"links_file": None})
    return config.model_copy(update={"events": events, "identity": identity})


def _stitch_then_shard(
    config: EngineConfig,
    events_path: str | Path,
    as_of: date,
    now: datetime,
    client: Client | None,
    shared: str | Path | None,
    history: Callable[[], tuple[date | None, Mapping[str, str]]] | None,
) -> DistributedFeatures:
    """Identity stitching before sharding: validate and stitch in this process as the
    one-process run does, partition the stitched events by person, build on the shards."""
    from pipelines.partition import partition_loaded
    from pipelines.scratch import events_connection, shared_folder
    from pipelines.steps import read_events, stitch_identities

    plain = plain_events_config(config)
    with shared_folder(config, "stitched", inside=shared) as where:
        folder = where / "events"  # partition_loaded writes a folder that does not exist yet
        with events_connection(config) as con:
            read = read_events(con, config, str(events_path), now=now)
            previous_as_of, merged_before = history() if history is not None else (None, {})
            read = stitch_identities(con, config, as_of, read, previous_as_of, merged_before)
            written = partition_loaded(con, "events", folder, config.execution.shards, plain)
        built = build_features_on_dask(plain, folder, as_of, client=client, now=now, shared=shared)
    again = built.report
    if again.rows != written.rows or again.valid != written.rows:
        raise DistributedBuildError(
            f"the shards' validation of the {written.rows:,} stitched events kept"
            f" {again.valid:,} of {again.rows:,} ({dict(again.by_reason)}): validating them"
            " again should keep every row; please report this"
        )
    return replace(
        built,
        report=read.report,
        quarantine=read.quarantine,
        input_layout="stitched",
        stitching=read.stitching,
    )


def _check_shardable(config: EngineConfig) -> None:
    """Refuse, before any cluster is touched, what the sharded build cannot do yet (an input
    that needs stitching is stitched before sharding and does not come here, but for a
    partitioned folder, which is sharded by client already)."""
    from features.events import event_mapping

    if config.links_path:
        raise DistributedBuildError(
            "identity.links_file is set, but the events are a folder partitioned by client"
            " ('segmentation partition'), whose shards are not persons: run on the events as"
            " they came (they are stitched before sharding)"
        )
    mapped = [c for c in ("client_id", *IDENTIFIER_COLUMNS) if c in event_mapping(config).columns]
    if mapped:
        raise DistributedBuildError(
            f"events.columns (or events.preset) maps {', '.join(mapped)}: without identity"
            " stitching the Dask build shards on a plain client_id column only, so far (write"
            " the input with 'segmentation partition', which applies the mapping, or"
            " execution.mode: local)"
        )


def _run_shards(
    client: Client,
    config: EngineConfig,
    events_path: str,
    as_of: date,
    now: datetime,
    shards: int,
    partitioned: bool,
    shared: str | None = None,
) -> list[ShardOutput]:
    """Submit one task per shard (retried once if its worker dies) and gather them in shard
    order; the first failure cancels the rest and is raised naming its shard."""
    run = uuid.uuid4().hex[:8]
    futures = [
        client.submit(
            _shard_task,
            config,
            events_path,
            as_of,
            k,
            shards,
            now,
            partitioned,
            shared,
            key=f"{_KEY_PREFIX}-{run}-shard-{k}-of-{shards}",
            retries=1,
            pure=False,
        )
        for k in range(shards)
    ]
    return gather_by_shard(client, futures)


def gather_by_shard(client: Client, futures: Sequence[Any], step: str | None = None) -> list[Any]:
    """The results of one task per shard (future k is shard k's), in shard order. The first
    failure cancels the rest and is raised as a `DistributedBuildError` naming the shard (and
    `step`): a task that raised or whose worker died past its retries, or a `_ShardFailure`
    it returned."""
    from distributed import as_completed

    where = f"{step}: " if step else ""
    shard_of = {future.key: k for k, future in enumerate(futures)}
    n = len(futures)
    results: dict[int, Any] = {}
    try:
        for future in as_completed(futures):
            k = shard_of[future.key]
            try:
                out = future.result()
            except Exception as exc:  # the worker died past its retries, or a bug in the task
                raise DistributedBuildError(
                    f"{where}shard {k} of {n} failed on the cluster: {type(exc).__name__}: {exc}"
                ) from exc
            if isinstance(out, _ShardFailure):
                raise DistributedBuildError(f"{where}shard {k} of {n}: {out.error}") from out.error
            results[k] = out
    finally:
        client.cancel([f for f in futures if not f.done()])
    return [results[k] for k in range(n)]


def _shard_task(
    config: EngineConfig,
    events_path: str,
    as_of: date,
    shard: int,
    shards: int,
    now: datetime,
    partitioned: bool,
    shared: str | None = None,
) -> ShardOutput | _ShardFailure:
    try:
        return build_shard(
            config,
            events_path,
            as_of,
            shard,
            shards,
            now,
            partitioned=partitioned,
            shared=shared,
        )
    except SegmentationError as exc:
        return _ShardFailure(shard, exc)


def _write_shard_input(
    con: duckdb.DuckDBPyConnection,
    config: EngineConfig,
    events_path: str,
    shard: int,
    shards: int,
    scratch: Path,
) -> tuple[str, dict[str, str]]:
    """The raw rows of the shard's clients, all columns as read, in ``scratch/input``: one
    Parquet file per input file (``part-<i>.parquet`` for the i-th), and the map from each
    copy's path to its input file's, with which the quarantine names the input's files.

    The shard key is the feature build's ``hash(client_id) % shards`` over the client id as
    the event contract normalizes it (`features.events` trims it, byte order marks too), so a
    client's rows, however their id was padded, land in one shard, and rows without a client
    id in one shard, where they are quarantined and counted once. The input's files are first
    checked as the one-process load checks them (a required column missing from one file
    fails naming it), since the shard's single file could no longer tell.
    """
    from features.events import (
        _plan_scans,
        _reader_sql,
        _source_columns,
        event_mapping,
        resolve_sources,
    )
    from pipelines.partition import client_key_sql, shard_sql

    kind, files = resolve_sources(events_path)
    if kind != "parquet":
        raise DistributedBuildError(
            f"events at {events_path} are {kind.upper()} files: the Dask build reads Parquet"
            " only, so far (convert them, or execution.mode: local)"
        )
    mapping = event_mapping(config)
    _plan_scans(con, kind, files, events_path, dict(mapping.columns), mapping.lenient).release(con)
    reader = _reader_sql(files)
    columns = _source_columns(con, reader)
    key = client_key_sql(columns)
    folder = scratch / "input"
    folder.mkdir()
    copies: dict[str, str] = {}
    for i, file in enumerate(files):  # the union's schema in every copy, as in one process
        out = folder / f"part-{i:05d}.parquet"
        con.execute(
            f"COPY (SELECT * EXCLUDE (source_file) FROM {reader}"
            f" WHERE source_file = {_sql_text(file)} AND {shard_sql(key, shards)} = {shard})"
            f" TO {_sql_text(str(out))} (FORMAT parquet)"
        )
        copies[str(out)] = file
    return str(folder), copies


def _shard_quarantine(con: duckdb.DuckDBPyConnection, copies: dict[str, str]) -> pa.Table:
    """The shard's `quarantine` table as Arrow, sorted by every column, ``source_file`` mapped
    from the scratch copies back to the input's files (`copies`; empty when the task read the
    input's own files)."""
    if not copies:
        return con.sql("SELECT * FROM quarantine ORDER BY ALL").to_arrow_table()
    pairs = ", ".join(f"({_sql_text(c)}, {_sql_text(f)})" for c, f in copies.items())
    return con.sql(
        "SELECT q.* REPLACE (coalesce(m.original, q.source_file) AS source_file)"
        f" FROM quarantine AS q LEFT JOIN (VALUES {pairs}) AS m(scratch_file, original)"
        " ON q.source_file = m.scratch_file ORDER BY ALL"
    ).to_arrow_table()


def _quarantine_frame(tables: Sequence[pa.Table]) -> pd.DataFrame:
    """The shards' quarantine tables concatenated in shard order, as pandas exactly as
    `pipelines.steps.read_events` gets it (DuckDB's conversion)."""
    import pyarrow as pa

    con = duckdb.connect()
    try:
        con.register("shard_quarantine", pa.concat_tables(tables))
        return con.execute("SELECT * FROM shard_quarantine").df()
    finally:
        con.close()


def _sql_text(text: str) -> str:
    """`text` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _worker_threads() -> int | None:
    """The threads of the Dask worker running this (DuckDB uses as many), or None outside."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError):
        return None


def _local_directory() -> str | None:
    """The Dask worker's local directory (its scratch space), or None outside a worker."""
    try:
        from distributed import get_worker

        return str(get_worker().local_directory)
    except (ImportError, ValueError):
        return None


def _worker_memory_limit() -> int | None:
    """The Dask worker's memory limit in bytes, or None outside a worker or without one."""
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):
        return None
    return int(limit) if limit else None


def _bytes(size: str) -> int:
    """A memory size as the config writes it (``2GB``, ``1.5 GiB``: the schema's pattern)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)\s*", size, flags=re.IGNORECASE)
    if not match:
        raise DistributedBuildError(f"features.memory_limit {size!r}: not a memory size")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _release_arrow_memory() -> None:
    """Give the memory Arrow's pool keeps after a task back to the system (jemalloc and
    mimalloc keep freed pages for reuse)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
