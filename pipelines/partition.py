"""Event input partitioned by client hash at ingestion (`segmentation partition`).

`partition_events` rewrites an event input (Parquet, CSV or JSON lines, read through the
config's column mapping, as the event contract reads it) as Parquet partitioned Hive-style by
the feature build's own shard key::

    OUT/_partition.json                 the manifest (shards, key, source, rows per shard)
    OUT/shard=0/data_0.parquet
    ...
    OUT/shard=<N-1>/data_0.parquet
    OUT/shard=none/data_0.parquet       rows without a client id

The key is ``hash(client_id) % N`` over the client id as the event contract normalizes it
(trimmed of spaces and byte order marks, empty as missing): the expression
`features.build.build_features_shard` and `pipelines.distributed` shard on (`client_key_sql`,
`shard_sql`), so the clients of ``shard=k`` are exactly the clients of the build's shard k.

Nothing is validated or dropped here: rows are routed, with their raw values (types as read,
CSV and JSON lines as text), under the contract's column names (the mapping of
``events.columns`` / ``events.preset`` applied, so the readers of the copy read it without
a column mapping; type aliases and the epoch unit still apply when it is validated). A row
whose client id is missing goes to ``shard=none``, so that validation quarantines it with its
reason. Every shard gets its folder (an empty file for a shard without clients).

Not partitioned by month inside a shard: the feature build reads every client's whole
history, so a reader of a shard reads all of its months anyway, and routing by month would
parse the event time before validation (an unparseable or epoch time would need its own
bucket) and multiply the files by the months (docs/scale.md, *Partitioned input*).

The folder is written next to OUT under a temporary name and renamed into place: a failure
leaves no partial folder, and an earlier partitioned folder at OUT is replaced only once the
new one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from configs import (
    CONTRACT_COLUMNS,
    IDENTIFIER_COLUMNS,
    EngineConfig,
    SegmentationError,
)

__all__ = [
    "MANIFEST_NAME",
    "NONE_SHARD",
    "PartitionError",
    "PartitionManifest",
    "client_key_sql",
    "config_for_partitioned",
    "partition_events",
    "partition_loaded",
    "read_manifest",
    "shard_glob",
    "shard_sql",
]

MANIFEST_NAME = "_partition.json"
NONE_SHARD = "none"
LAYOUT = "segmentation-partition/1"


class PartitionError(SegmentationError, ValueError):
    """The input cannot be partitioned (identifiers needing stitching, malformed lines, an
    output folder that is not a partitioned folder), or a partitioned folder does not fit the
    config it is read with; the message says which."""


@dataclass(frozen=True)
class PartitionManifest:
    """`_partition.json`: how a partitioned folder was written.

    `rows_by_shard` maps ``"0"`` .. ``"N-1"`` and ``"none"`` to the rows written there;
    `mapping` is the events column mapping that was applied (``columns``, ``preset``), which a
    reader of the folder must be configured with.
    """

    layout: str
    shards: int
    key: str
    source: str
    source_format: str
    columns: tuple[str, ...]
    mapping: dict[str, Any]
    rows: int
    rows_by_shard: dict[str, int]
    month_partitions: bool
    written_at: str

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "columns": list(self.columns)}, indent=2) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PartitionManifest:
        return cls(
            layout=str(raw["layout"]),
            shards=int(raw["shards"]),
            key=str(raw["key"]),
            source=str(raw["source"]),
            source_format=str(raw["source_format"]),
            columns=tuple(raw["columns"]),
            mapping=dict(raw["mapping"]),
            rows=int(raw["rows"]),
            rows_by_shard={str(k): int(v) for k, v in raw["rows_by_shard"].items()},
            month_partitions=bool(raw.get("month_partitions", False)),
            written_at=str(raw["written_at"]),
        )


def client_key_sql(columns: dict[str, tuple[str, str]]) -> str:
    """The shard key's client id over a reader with these source columns (`_source_columns`):
    the text the event contract loads as ``client_id`` (trimmed, byte order marks removed,
    empty as NULL), so the raw row and its loaded event fall in the same shard."""
    from features.events import _text

    return _text("client_id", columns, lower=False).removesuffix(" AS client_id")


def shard_sql(key: str, shards: int) -> str:
    """The feature build's partition of a client id expression: ``hash(key) % shards``."""
    return f"hash({key}) % {shards}"


def partition_events(
    config: EngineConfig,
    events_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    shards: int,
) -> PartitionManifest:
    """Rewrite `events_path` as Parquet partitioned by ``shard=hash(client_id) % shards``.

    Parameters
    ----------
    config : EngineConfig
        Its ``events`` mapping (``columns``, ``preset``) says where the contract's columns
        are in the input; its ``features.memory_limit`` bounds DuckDB (which spills).
    events_path : str or PathLike
        A Parquet, CSV or JSON lines file, a folder of them or a glob (one format), as
        `features.events.load_events` reads.
    out : str or PathLike
        The folder written (replaced if it holds an earlier partitioned folder).
    shards : int
        The number of shards, the ``execution.shards`` of the builds that read it.

    Returns
    -------
    PartitionManifest
        What `_partition.json` says: shards, key, source, rows per shard.

    Raises
    ------
    PartitionError
        `shards` < 1; the input carries identifiers besides client_id or the config names a
        links file (the shard key is then the person after identity stitching, unknown
        here); CSV or JSON lines with malformed lines (they have no client id to route by);
        `out` is inside the input, or exists and is not a partitioned folder.
    EventContractError
        The input or a required column is missing (as the one-process load says it).
    """
    if shards < 1:
        raise PartitionError(f"--shards must be at least 1, not {shards}")
    target = Path(out).resolve()
    _check_target(target, events_path)
    return _written_in_place(
        target, lambda partial: _write_partitions(config, events_path, partial, shards)
    )


def partition_loaded(
    con: Any, table: str, out: str | os.PathLike[str], shards: int, config: EngineConfig
) -> PartitionManifest:
    """Write the loaded events of DuckDB table `table` as a partitioned folder `out`
    (``shard=hash(client_id) % shards``, `_partition.json` included), for readers configured
    with `config` (whose column mapping must be none: the table is in the contract's columns).

    Used to shard events that this process has already validated and stitched into persons
    (`pipelines.distributed`): their client ids are the contract's (normalized) and identity
    stitching has removed the other identifier columns. Written as `partition_events` writes,
    through a temporary name.
    """
    target = Path(out).resolve()
    if target.exists():
        raise PartitionError(f"{target}: exists; write the loaded events to a new folder")

    def write(partial: Path) -> PartitionManifest:
        names = {row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()}
        written = tuple(c for c in CONTRACT_COLUMNS if c in names)
        select = ", ".join(written)
        route = (
            f"CASE WHEN client_id IS NULL THEN '{NONE_SHARD}'"
            f" ELSE CAST({shard_sql('client_id', shards)} AS VARCHAR) END"
        )
        con.execute(
            f"COPY (SELECT {select}, {route} AS shard FROM {table})"
            f" TO {_literal(partial)} (FORMAT parquet, PARTITION_BY (shard))"
        )
        _fill_empty_shards(con, partial, shards, select, table)
        return _manifest(config, partial, shards, f"loaded events ({table})", "parquet", written)

    return _written_in_place(target, write)


def read_manifest(path: str | os.PathLike[str]) -> PartitionManifest | None:
    """The manifest of a partitioned folder, or None when `path` is not one (a file, a glob,
    a plain folder). A manifest that cannot be read raises `PartitionError`."""
    text = str(path)
    if any(ch in text for ch in "*?[") or not Path(text).is_dir():
        return None
    file = Path(text) / MANIFEST_NAME
    if not file.is_file():
        return None
    try:
        raw = json.loads(file.read_text())
        manifest = PartitionManifest.from_dict(raw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PartitionError(f"{file}: not a readable partition manifest: {exc}") from exc
    if manifest.layout != LAYOUT:
        raise PartitionError(f"{file}: layout {manifest.layout!r}, expected {LAYOUT!r}")
    return manifest


def shard_glob(folder: str | os.PathLike[str], shard: int, *, with_none: bool) -> str:
    """The glob of shard `shard`'s files in a partitioned folder (`with_none`: and of
    ``shard=none``; shard numbers have no leading zeros, so ``shard=[0n]*`` is exactly
    ``shard=0`` and ``shard=none``)."""
    base = str(Path(folder))
    if with_none:
        if shard != 0:
            raise ValueError("shard=none is read with shard 0")
        return f"{base}/shard=[0n]*/**/*.parquet"
    return f"{base}/shard={shard}/**/*.parquet"


def config_for_partitioned(config: EngineConfig, manifest: PartitionManifest) -> EngineConfig:
    """`config` for reading a partitioned folder: its column mapping was applied when the
    folder was written, so the copy is read without one (type aliases and the epoch unit of
    the mapping still apply). Raises `PartitionError` when the config's mapping is not the
    one the folder was written with."""
    from features.events import event_mapping

    mapping = event_mapping(config)
    if _mapping_record(config) != manifest.mapping:
        raise PartitionError(
            f"the partitioned events were written with the column mapping {manifest.mapping},"
            f" the config has {_mapping_record(config)}: partition the input again with this"
            " config (segmentation partition)"
        )
    events = config.events.model_copy(
        update={
            "preset": None,
            "columns": {},
            "type_aliases": dict(mapping.type_aliases),
            "epoch_unit": mapping.epoch_unit,
        }
    )
    return config.model_copy(update={"events": events})


# ---------------------------------------------------------------------------------------------


def _mapping_record(config: EngineConfig) -> dict[str, Any]:
    from features.events import event_mapping

    columns = event_mapping(config).columns
    record = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in columns.items()}
    return {"preset": config.events.preset, "columns": dict(sorted(record.items()))}


def _check_target(target: Path, events_path: str | os.PathLike[str]) -> None:
    source = Path(str(events_path))
    if source.is_dir() and target.is_relative_to(source.resolve()):
        raise PartitionError(f"--out {target} is inside the input {source}: write it elsewhere")
    if target.exists():
        if not target.is_dir():
            raise PartitionError(f"--out {target} exists and is not a folder")
        if any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
            raise PartitionError(
                f"--out {target} exists and is not a partitioned folder (no {MANIFEST_NAME}):"
                " refusing to replace it"
            )


def _written_in_place(
    target: Path, write: Callable[[Path], PartitionManifest]
) -> PartitionManifest:
    """`write(partial)` fills a temporary folder next to `target` and returns its manifest,
    which is added; the folder is then swapped in as `target`. A failure leaves no partial
    folder and an earlier `target` as it was."""
    partial = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        manifest = write(partial)
        (partial / MANIFEST_NAME).write_text(manifest.to_json())
        _swap_in(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def _swap_in(partial: Path, target: Path) -> None:
    """Rename the finished folder into place; an earlier one is moved aside first and
    removed after."""
    if not target.exists():
        os.rename(partial, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(partial, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_partitions(
    config: EngineConfig, events_path: str | os.PathLike[str], partial: Path, shards: int
) -> PartitionManifest:
    """The partitioned Parquet files in `partial` (created); the manifest (not written)."""
    from features.events import (
        _plan_scans,
        _quoted,
        connect_duckdb,
        event_mapping,
        resolve_sources,
    )

    kind, files = resolve_sources(events_path)
    mapping = event_mapping(config)
    with tempfile.TemporaryDirectory(prefix="partition-spill-") as spill:
        con = connect_duckdb(config.features.memory_limit, spill)
        con.execute("SET enable_progress_bar = false")
        try:
            plan = _plan_scans(
                con,
                kind,
                files,
                events_path,
                dict(mapping.columns),
                mapping.lenient,
                encoding=mapping.encoding,
            )
            try:
                columns = plan.columns
                _refuse_identifiers(config, columns, events_path)
                written = tuple(c for c in CONTRACT_COLUMNS if c in columns)
                select = ", ".join(f"{_quoted(columns, c)} AS {c}" for c in written)
                key = client_key_sql(columns)
                route = (
                    f"CASE WHEN {key} IS NULL THEN '{NONE_SHARD}'"
                    f" ELSE CAST({shard_sql(key, shards)} AS VARCHAR) END"
                )
                con.execute(
                    f"COPY (SELECT {select}, {route} AS shard FROM {plan.scans[0]})"
                    f" TO {_literal(partial)} (FORMAT parquet, PARTITION_BY (shard))"
                )
                if plan.scans[2] is not None:
                    _refuse_malformed(con, plan.scans[2], events_path)
                _fill_empty_shards(con, partial, shards, select, plan.scans[0])
            finally:
                plan.release(con)
        finally:
            con.close()
    return _manifest(config, partial, shards, str(events_path), kind, written)


def _manifest(
    config: EngineConfig,
    partial: Path,
    shards: int,
    source: str,
    source_format: str,
    columns: tuple[str, ...],
) -> PartitionManifest:
    """The manifest of the shard folders written in `partial`, their rows counted."""
    counts = _rows_by_shard(partial, shards)
    return PartitionManifest(
        layout=LAYOUT,
        shards=shards,
        key=f"hash(client_id) % {shards}",
        source=source,
        source_format=source_format,
        columns=columns,
        mapping=_mapping_record(config),
        rows=sum(counts.values()),
        rows_by_shard=counts,
        month_partitions=False,
        written_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _refuse_identifiers(
    config: EngineConfig, columns: dict[str, tuple[str, str]], events_path: object
) -> None:
    found = [c for c in IDENTIFIER_COLUMNS if c in columns]
    if found or config.links_path:
        what = f"identifier columns {', '.join(found)}" if found else "identity.links_file"
        raise PartitionError(
            f"events at {events_path}: {what} need identity stitching, so a client's shard is"
            " its person's, unknown before stitching: partitioning by client_id would split"
            " persons (not supported yet)"
        )


def _refuse_malformed(con: Any, malformed_sql: str, events_path: object) -> None:
    rows = con.execute(
        f"SELECT count(*), min(source_file), min(line_number) FROM ({malformed_sql}) AS m"
    ).fetchall()
    n, file, line = rows[0]
    if n:
        raise PartitionError(
            f"events at {events_path}: {n} malformed line(s) (first in {file}, line {line}):"
            " they have no client id to route by; fix them, or validate the input in one"
            " process (execution.mode: local), which quarantines them"
        )


def _fill_empty_shards(con: Any, partial: Path, shards: int, select: str, reader: str) -> None:
    """An empty file with the same schema in each shard folder the COPY did not create."""
    import pyarrow.parquet as pq

    wanted = [*(str(k) for k in range(shards)), NONE_SHARD]
    missing = [s for s in wanted if not (partial / f"shard={s}").is_dir()]
    if not missing:
        return
    existing = sorted(partial.glob("shard=*/*.parquet"))
    if not existing:  # no row at all: the schema from the reader
        (partial / f"shard={NONE_SHARD}").mkdir(parents=True)
        empty = partial / f"shard={NONE_SHARD}" / "data_0.parquet"
        con.execute(
            f"COPY (SELECT {select} FROM {reader} LIMIT 0) TO {_literal(empty)} (FORMAT parquet)"
        )
        existing = [empty]
        missing.remove(NONE_SHARD)
    schema = pq.read_schema(existing[0])
    for s in missing:
        folder = partial / f"shard={s}"
        folder.mkdir(parents=True)
        pq.write_table(schema.empty_table(), folder / "data_0.parquet")


def _rows_by_shard(partial: Path, shards: int) -> dict[str, int]:
    """Rows per shard folder, from the Parquet footers."""
    import pyarrow.parquet as pq

    keys = [*(str(k) for k in range(shards)), NONE_SHARD]
    return {
        k: sum(
            pq.ParquetFile(f).metadata.num_rows for f in (partial / f"shard={k}").glob("*.parquet")
        )
        for k in keys
    }


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"
