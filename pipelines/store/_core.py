"""The store: publish a run atomically, undo/replace runs, and read the published tables."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TypedDict

import duckdb
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from configs import as_date
from pipelines.store._analyses import DROPOFF_KINDS, JOURNEY_STAGE_VALUES
from pipelines.store._common import (
    Backend,
    Connection,
    OutOfOrderError,
    PublishInputError,
    PublishLockedError,
    SchemaVersionError,
    StoreArgumentError,
    StoreEmptyError,
    error_line,
)
from pipelines.store._deliveries import upsert_deliveries, validate_deliveries
from pipelines.store._request import (
    CleanRequest,
    PublishRequest,
    PublishResult,
    RunInfo,
    check_run_identity,
    check_run_info,
    to_arrow,
    validate_request,
)
from pipelines.store._schema import (
    AS_OF_TABLES,
    DESTINATION_DELIVERIES,
    HISTORY,
    HOLDOUT_OUTCOMES,
    IDENTITY_MAP,
    IDENTITY_MERGES,
    IDENTITY_UNDO_HISTORY,
    IDENTITY_UNDO_TRANSITIONS,
    JOURNEY_DROPOFFS,
    JOURNEY_STAGES,
    JOURNEY_TOUCHPOINTS,
    MEMBERSHIP,
    QUARANTINE,
    READABLE,
    RUNS,
    SCHEMA_VERSION,
    SCHEMA_VERSION_TABLE,
    SCORES,
    SEGMENTS,
    TRANSITIONS,
    Table,
    migration_statements,
    validate_identifier,
)
from segmentation.dynamics import STATE_COLUMNS, advance_arrow

__all__ = ["Reader", "StageHook", "Store"]

log = logging.getLogger("pipelines.store")

# A stage column in journey order ("*" first, "other" last), for readers' ORDER BY: the
# values are the store's constants, never input.
_STAGE_ORDER = (
    "CASE {c} "
    + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(JOURNEY_STAGE_VALUES))
    + " END"
)

_MISSING_TABLE = (
    duckdb.CatalogException,
    psycopg.errors.UndefinedTable,
    psycopg.errors.InvalidSchemaName,
)
StageHook = Callable[[str], None]


class Reader:
    """Reads of one consistent snapshot of the published tables (see `Store.snapshot`).

    Each method is the `Store` method of the same name, read inside the snapshot.
    """

    def __init__(self, con: Connection, schema: str) -> None:
        self._con = con
        self._s = con.prefix(schema)

    def membership(
        self, segment_id: str | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Current membership, one row per client (optionally of one segment, only some
        columns)."""
        where, params = (
            ("WHERE segment_id = ?", [str(segment_id)]) if segment_id is not None else ("", [])
        )
        return self._df(
            f"SELECT {_projection(MEMBERSHIP, columns)} FROM {self._s}.segment_membership"
            f" {where} ORDER BY client_id",
            params,
        )

    def membership_on(self, as_of: date) -> pd.DataFrame:
        """The membership on a past date, from segment_history: (client_id, segment_id,
        lifecycle_stage) of the stretches live that day (valid_from <= day < valid_to)."""
        return self._df(
            f"SELECT client_id, segment_id, lifecycle_stage FROM {self._s}.{HISTORY.name}"
            " WHERE valid_from <= ? AND (valid_to IS NULL OR valid_to > ?)"
            " ORDER BY client_id, valid_from",
            [as_of, as_of],
        )

    def segment_size_changes(self) -> pd.DataFrame:
        """(segment_id, day, change): how many history stretches of a segment start that day
        less how many end. A segment's size on a day is the sum of its changes up to it, so
        sizes over time are read without reading the history, which grows every night."""
        h = f"{self._s}.{HISTORY.name}"
        return self._df(
            "SELECT segment_id, day, CAST(sum(delta) AS BIGINT) AS change FROM ("
            f" SELECT segment_id, valid_from AS day, 1 AS delta FROM {h}"
            f" UNION ALL SELECT segment_id, valid_to AS day, -1 AS delta FROM {h}"
            " WHERE valid_to IS NOT NULL) AS d GROUP BY segment_id, day ORDER BY segment_id, day"
        )

    def client(self, client_id: str) -> pd.DataFrame:
        """A client's current segment and scores (`v_client_current`); empty when unknown."""
        return self._df(
            f"SELECT * FROM {self._s}.v_client_current WHERE client_id = ?", [str(client_id)]
        )

    def transitions(
        self, as_of: date | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Transitions published as of `as_of` (default: the latest published as_of),
        optionally only some columns."""
        if as_of is None:
            cond, params = f"as_of = ({self._latest_sql()})", []
        else:
            cond, params = "as_of = ?", [as_of]
        return self._df(
            f"SELECT {_projection(TRANSITIONS, columns)} FROM {self._s}.segment_transitions"
            f" WHERE {cond} ORDER BY client_id",
            params,
        )

    def segments(self) -> pd.DataFrame:
        """Every segment ever published; retired ones have size 0."""
        return self._df(f"SELECT * FROM {self._s}.segments ORDER BY segment_id")

    def runs(self) -> pd.DataFrame:
        """The run log: success, failed and replaced runs."""
        return self._df(f"SELECT * FROM {self._s}.runs ORDER BY started_at, run_id")

    def history(self, client_id: str | None = None) -> pd.DataFrame:
        """Membership stretches (valid_to null while current), optionally of one client."""
        where, params = (
            ("WHERE client_id = ?", [str(client_id)]) if client_id is not None else ("", [])
        )
        return self._df(
            f"SELECT * FROM {self._s}.segment_history {where} ORDER BY client_id, valid_from",
            params,
        )

    def scores(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Current client scores, one row per scored client (optionally only some columns)."""
        return self._df(
            f"SELECT {_projection(SCORES, columns)} FROM {self._s}.client_scores ORDER BY client_id"
        )

    def quarantine(self, run_id: str | None = None) -> pd.DataFrame:
        """Rejected event rows with their reason (optionally of one run)."""
        where, params = ("WHERE run_id = ?", [run_id]) if run_id is not None else ("", [])
        return self._df(f"SELECT * FROM {self._s}.quarantine {where}", params)

    def identity_map(self, person_id: str | None = None) -> pd.DataFrame:
        """The current identifier -> person map (optionally of one person)."""
        where, params = (
            ("WHERE person_id = ?", [str(person_id)]) if person_id is not None else ("", [])
        )
        return self._df(
            f"SELECT * FROM {self._s}.{IDENTITY_MAP.name} {where}"
            " ORDER BY person_id, id_type, id_value",
            params,
        )

    def identity_merges(self, since: date | None = None) -> pd.DataFrame:
        """The merge log (optionally only merges as of `since` or later)."""
        where, params = ("WHERE as_of >= ?", [since]) if since is not None else ("", [])
        return self._df(
            f"SELECT * FROM {self._s}.{IDENTITY_MERGES.name} {where} ORDER BY as_of, merged_id",
            params,
        )

    def journey_stages(
        self, as_of: date | None = None, segment_id: str | None = None
    ) -> pd.DataFrame:
        """The journey map's stages and stage-to-stage flow of one as_of (default: latest)."""
        order = f"segment_id, {_STAGE_ORDER.format(c='stage')},"
        order += f" {_STAGE_ORDER.format(c='to_stage')} NULLS FIRST"
        return self._of_as_of(JOURNEY_STAGES.name, as_of, segment_id, order)

    def journey_touchpoints(
        self, as_of: date | None = None, segment_id: str | None = None
    ) -> pd.DataFrame:
        """The journey map's touchpoints per stage of one as_of (default: latest)."""
        order = f"segment_id, {_STAGE_ORDER.format(c='stage')}, rank NULLS LAST, event_type,"
        order += " channel NULLS FIRST"
        return self._of_as_of(JOURNEY_TOUCHPOINTS.name, as_of, segment_id, order)

    def journey_dropoffs(
        self, as_of: date | None = None, segment_id: str | None = None
    ) -> pd.DataFrame:
        """The journey map's drop-off points, causes and moments of one as_of (default:
        latest)."""
        kinds = " ".join(f"WHEN '{k}' THEN {i}" for i, k in enumerate(DROPOFF_KINDS))
        order = f"segment_id, CASE kind {kinds} END, rank NULLS LAST, "
        order += _STAGE_ORDER.format(c="stage")
        return self._of_as_of(JOURNEY_DROPOFFS.name, as_of, segment_id, order)

    def holdout_outcomes(self, as_of: date | None = None) -> pd.DataFrame:
        """Treated members against held-out ones, per segment, of one as_of (default:
        latest)."""
        return self._of_as_of(HOLDOUT_OUTCOMES.name, as_of, None, "segment_id")

    def deliveries(
        self,
        status: str | None = None,
        destination: str | None = None,
        as_of: date | None = None,
    ) -> pd.DataFrame:
        """The batches sent to destinations, optionally of one status, destination or as_of."""
        filters = {"status": status, "destination": destination, "as_of": as_of}
        conds = [f"{col} = ?" for col, value in filters.items() if value is not None]
        params = [value for value in filters.values() if value is not None]
        where = f"WHERE {' AND '.join(conds)}" if conds else ""
        return self._df(
            f"SELECT * FROM {self._s}.{DESTINATION_DELIVERIES.name} {where}"
            " ORDER BY as_of, destination, segment_id, kind, batch_number, batch_id",
            params,
        )

    def latest_as_of(self) -> date | None:
        """The as_of of the latest successful run, or None before the first publish."""
        return _as_date(self._con.fetchall(self._latest_sql())[0][0])

    def read_sql(self, name: str) -> pd.DataFrame:
        """All rows of a published table or reader view, by name (see docs/store.md)."""
        if name not in READABLE:
            raise StoreArgumentError(
                f"unknown table or view {name!r}; readable: {', '.join(READABLE)}"
            )
        return self._df(f"SELECT * FROM {self._s}.{name}")

    def schema_version(self) -> int:
        """The store's schema version."""
        return int(self._con.fetchall(f"SELECT max(version) FROM {self._s}.schema_version")[0][0])

    def _latest_sql(self) -> str:
        return f"SELECT max(as_of) FROM {self._s}.runs WHERE status = 'success'"

    def _of_as_of(
        self, table: str, as_of: date | None, segment_id: str | None, order: str
    ) -> pd.DataFrame:
        """The rows of a per-as_of table for `as_of` (default: the latest published as_of)."""
        params: list[object] = []
        if as_of is None:
            conds = [f"as_of = ({self._latest_sql()})"]
        else:
            conds, params = ["as_of = ?"], [as_of]
        if segment_id is not None:
            conds.append("segment_id = ?")
            params.append(str(segment_id))
        return self._df(
            f"SELECT * FROM {self._s}.{table} WHERE {' AND '.join(conds)} ORDER BY {order}",
            params,
        )

    def _df(self, sql: str, params: Sequence[object] = ()) -> pd.DataFrame:
        return self._con.fetch_df(sql, params)


class Store:
    """The published tables of one schema in one DuckDB file or PostgreSQL database.

    Publishing is one transaction under a publish lock; readers see the previous or the new
    complete state. Reader methods open a short snapshot each; use `snapshot()` for several
    reads that must agree. Not for concurrent publishes from threads of one Store.
    """

    def __init__(
        self,
        backend: Backend,
        schema: str,
        *,
        lock_timeout: float,
        reader_retry: float,
    ) -> None:
        self._backend = backend
        self.schema = validate_identifier(schema, "schema name")
        self.lock_timeout = lock_timeout
        self.reader_retry = reader_retry
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._migrated = False

    # -- identity -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The store URL with any password masked."""
        return self._backend.describe()

    @property
    def backend(self) -> str:
        """`duckdb` or `postgresql`."""
        return self._backend.dialect

    def __repr__(self) -> str:
        return f"Store({self.url!r}, schema={self.schema!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections (PostgreSQL); nothing is held for DuckDB."""
        self._backend.close()

    # -- schema ---------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Create or upgrade the tables and views (idempotent); return the schema version."""
        with self.lock(), self._backend.write() as w:
            s = w.prefix(self.schema)
            w.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            for statement in SCHEMA_VERSION_TABLE.ddl(s, self.backend):
                w.execute(statement)
            current = w.fetchall(f"SELECT max(version) FROM {s}.schema_version")[0][0] or 0
            if current > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"store {self.url} schema {s!r} has version {current}, newer than this"
                    f" engine's {SCHEMA_VERSION}: upgrade the engine"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in migration_statements(version, s, self.backend):
                    w.execute(statement)
                w.execute(
                    f"INSERT INTO {s}.schema_version (version, applied_at) VALUES (?, ?)",
                    [version, _now()],
                )
                log.info("store %s schema %s migrated to version %d", self.url, s, version)
        self._migrated = True
        return SCHEMA_VERSION

    def schema_version(self) -> int | None:
        """The store's schema version, or None when nothing was created yet."""
        try:
            with self.snapshot() as r:
                return r.schema_version()
        except StoreEmptyError:
            return None

    # -- locking --------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the publish lock (re-entrant in this Store): no other publisher can run.

        DuckDB: an exclusive flock on `<file>.lock`; PostgreSQL: a session advisory lock
        per schema. Waits at most `lock_timeout` seconds, then raises PublishLockedError."""
        if not self._thread_lock.acquire(timeout=self.lock_timeout):
            raise PublishLockedError(f"another thread holds the publish lock of {self.url}")
        try:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            with self._backend.publish_lock():
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0
        finally:
            self._thread_lock.release()

    # -- publishing -----------------------------------------------------------------------------
    def publish(
        self,
        run: PublishRequest,
        *,
        rebuild_from: date | None = None,
        _after_stage: StageHook | None = None,
    ) -> PublishResult:
        """Publish one run atomically: membership, history, transitions, segments, scores,
        the identity map and merges, the journey map and holdout outcomes, the run log row
        and the quarantine, all in one transaction under the publish lock.

        Parameters
        ----------
        run : PublishRequest
            The run's id, as_of, start time and frames (columns in docs/store.md).
        rebuild_from : datetime.date, optional
            Undo every published run from this date on (marked `replaced`) before publishing;
            needed to publish an as_of older than the latest published one. At most `as_of`.
        _after_stage : callable, optional
            Test hook called with each stage name inside the transaction.

        Returns
        -------
        PublishResult
            Counts of clients, segments, entries, exits, moves and lifecycle changes, the
            replaced run ids and the time spent per stage.

        Raises
        ------
        PublishInputError
            The request breaks the contract (the message names the column or value).
        OutOfOrderError
            `as_of` is older than the latest published as_of and `rebuild_from` is not given.
        PublishLockedError
            Another publish held the lock for longer than `lock_timeout`.

        Notes
        -----
        Re-publishing the latest as_of replaces that run; history is never duplicated.
        Tonight's merges are applied to the previous state before transitions are computed:
        a merged id's history follows its person (docs/store.md, "Identity stitching").
        """
        started = time.perf_counter()
        stages: dict[str, float] = {}
        mark = _stage_timer(stages)
        req = validate_request(run)
        _check_rebuild_from(rebuild_from, req.as_of)
        hook = _after_stage or (lambda stage: None)
        mark("validate")

        with self.lock():
            if not self._migrated:
                self._ensure_migrated()
            plan = self._read_plan(req, rebuild_from)
            mark("read")
            # PostgreSQL maintains the identity map's indexes row by row: rows loaded in
            # index order touch each index page once (about half the load time for millions).
            work = _compute(req, plan, index_order=self.backend == "postgresql")
            mark("compute")
            hook("computed")
            with self._backend.write(after_commit=lambda: hook("committed")) as w:
                self._write(w, req, plan, work, hook, mark)
            mark("commit")

        result = PublishResult(
            run_id=req.run_id,
            as_of=req.as_of,
            clients=len(req.membership),
            segments=len(req.segments),
            replaced_run_ids=tuple(plan.replaced),
            seconds=time.perf_counter() - started,
            stage_seconds=stages,
            **work.counts,
        )
        self._log_published(result)
        return result

    def record_failed_run(
        self,
        run_id: str,
        as_of: date,
        started_at: datetime,
        *,
        finished_at: datetime | None = None,
        run_info: Mapping[str, object] | None = None,
        error: object = None,
    ) -> None:
        """Log a failed run (status `failed`) in `runs` without touching any other table.

        Parameters
        ----------
        run_id : str
            The failed run's id; a run id already logged with another status is refused.
        as_of, started_at : datetime.date, datetime.datetime
            The run's as-of date and start time (naive times are UTC).
        finished_at : datetime.datetime, optional
            When it failed (default: now).
        run_info : mapping, optional
            The known `runs` columns that are known for it (RUN_INFO_KEYS), e.g. mlflow_run_id.
        error : str or exception, optional
            Why it failed: stored in `runs.error` as one line, URL passwords masked, at most
            ERROR_CHARS characters (an exception is shown as `Type: message`).
        """
        run_id, as_of, started_at = check_run_identity(run_id, as_of, started_at)
        info = check_run_info(run_info)
        message = error_line(error, self._backend.secret())
        finished = finished_at if finished_at is not None else datetime.now(UTC)
        with self.lock():
            if not self._migrated:
                self._ensure_migrated()
            with self._backend.write() as w:
                s = w.prefix(self.schema)
                rows = w.fetchall(f"SELECT status FROM {s}.runs WHERE run_id = ?", [run_id])
                if rows and rows[0][0] != "failed":
                    raise PublishInputError(
                        f"run_id {run_id!r} is already logged with status {rows[0][0]!r};"
                        " a failed run needs its own run_id"
                    )
                w.execute(f"DELETE FROM {s}.runs WHERE run_id = ?", [run_id])
                self._insert_run(
                    w, run_id, as_of, started_at, finished, "failed", None, None, info, message
                )
        log.info("recorded failed run %s as of %s in %s", run_id, as_of, self.url)

    def record_deliveries(self, rows: pd.DataFrame) -> None:
        """Record batches sent (or to be sent) to destinations, in `destination_deliveries`.

        An upsert by batch_id (the idempotency key) in one transaction, under the publish
        lock, so it never interleaves with a publish (on DuckDB it opens the file for writing
        as a publish does). A re-run or rebuild of a run never deletes these rows.

        Parameters
        ----------
        rows : pandas.DataFrame
            DESTINATION_DELIVERIES_INPUT: batch_id, run_id, as_of, destination, segment_id,
            kind (entries, exits), batch_number, clients, status (pending, delivered,
            failed), attempts, and optionally first_attempt_at, last_attempt_at,
            delivered_at, error, location. One row per batch_id. A row replaces the stored
            row of its batch_id, except first_attempt_at, which keeps the earlier time.

        Raises
        ------
        PublishInputError
            A row breaks the contract (the message names the column).
        PublishLockedError
            A publish held the lock for longer than `lock_timeout`.
        """
        table = validate_deliveries(rows, self._backend.secret())
        if not table.num_rows:
            return
        with self.lock():
            if not self._migrated:
                self._ensure_migrated()
            with self._backend.write() as w:
                upsert_deliveries(w, w.prefix(self.schema), table)
        log.info("recorded %d delivery batch(es) in %s", table.num_rows, self.url)

    # -- reading --------------------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[Reader]:
        """One consistent read of several tables.

        DuckDB: holds the file (a publish waits, and readers retry up to `reader_retry` s
        while a publish writes), so keep it short. PostgreSQL: a REPEATABLE READ READ ONLY
        transaction that never waits for a publish.

        Yields
        ------
        Reader
            The readers of this class (`membership`, `transitions`, ...) on one snapshot.

        Raises
        ------
        StoreEmptyError
            Nothing was published (or migrated) yet.
        """
        try:
            with self._backend.read() as con:
                yield Reader(con, self.schema)
        except _MISSING_TABLE:
            raise StoreEmptyError(
                f"store {self.url} has no published tables in schema {self.schema!r} yet:"
                " publish a run (or call migrate()) first"
            ) from None

    def membership(
        self, segment_id: str | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Current membership, one row per client.

        Parameters
        ----------
        segment_id : str, optional
            Only the members of this segment.
        columns : sequence of str, optional
            Only these columns (a large membership read in a few columns takes far less
            memory); an unknown column raises StoreArgumentError.

        Returns
        -------
        pandas.DataFrame
            The `segment_membership` columns (docs/store.md), ordered by client_id.
        """
        with self.snapshot() as r:
            return r.membership(segment_id, columns)

    def membership_on(self, as_of: date) -> pd.DataFrame:
        """The membership on a date, from segment_history (the membership table keeps only
        the latest).

        Returns
        -------
        pandas.DataFrame
            (client_id, segment_id, lifecycle_stage) of the history stretches live on `as_of`
            (valid_from <= as_of < valid_to, or valid_to null), ordered by client_id.
        """
        with self.snapshot() as r:
            return r.membership_on(as_of)

    def segment_size_changes(self) -> pd.DataFrame:
        """Per segment and day, stretches started less stretches ended (sizes over time).

        Returns
        -------
        pandas.DataFrame
            (segment_id, day, change); a segment's size on a day is the sum of its changes
            on or before that day. One row per segment per day something changed, so it stays
            small while segment_history grows every night.
        """
        with self.snapshot() as r:
            return r.segment_size_changes()

    def client(self, client_id: str) -> pd.DataFrame:
        """A client's current segment and scores.

        Parameters
        ----------
        client_id : str
            The client.

        Returns
        -------
        pandas.DataFrame
            One row of the `v_client_current` view; empty when the client is unknown.
        """
        with self.snapshot() as r:
            return r.client(client_id)

    def transitions(
        self, as_of: date | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """The transitions (entries, exits, moves, lifecycle changes) published for one day.

        Parameters
        ----------
        as_of : datetime.date, optional
            The as-of date (default: the latest published as_of).
        columns : sequence of str, optional
            Only these columns (a first night has one row per client); an unknown column
            raises StoreArgumentError.

        Returns
        -------
        pandas.DataFrame
            The `segment_transitions` rows of that day, ordered by client_id.
        """
        with self.snapshot() as r:
            return r.transitions(as_of, columns)

    def segments(self) -> pd.DataFrame:
        """Every segment ever published.

        Returns
        -------
        pandas.DataFrame
            The `segments` table ordered by segment_id; retired segments have size 0.
        """
        with self.snapshot() as r:
            return r.segments()

    def runs(self) -> pd.DataFrame:
        """The run log.

        Returns
        -------
        pandas.DataFrame
            The `runs` table (success, failed and replaced runs), oldest first.
        """
        with self.snapshot() as r:
            return r.runs()

    def history(self, client_id: str | None = None) -> pd.DataFrame:
        """Membership stretches (valid_to null while current).

        Parameters
        ----------
        client_id : str, optional
            Only this client's stretches.

        Returns
        -------
        pandas.DataFrame
            The `segment_history` rows ordered by client_id and valid_from.
        """
        with self.snapshot() as r:
            return r.history(client_id)

    def scores(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Current client scores.

        Parameters
        ----------
        columns : sequence of str, optional
            Only these columns; an unknown column raises StoreArgumentError.

        Returns
        -------
        pandas.DataFrame
            The `client_scores` table, one row per scored client, ordered by client_id.
        """
        with self.snapshot() as r:
            return r.scores(columns)

    def quarantine(self, run_id: str | None = None) -> pd.DataFrame:
        """Rejected event rows with their reason and raw values.

        Parameters
        ----------
        run_id : str, optional
            Only the rows rejected by this run.

        Returns
        -------
        pandas.DataFrame
            The `quarantine` rows.
        """
        with self.snapshot() as r:
            return r.quarantine(run_id)

    def identity_map(self, person_id: str | None = None) -> pd.DataFrame:
        """Which person each identifier belongs to (the latest stitching run's map).

        Parameters
        ----------
        person_id : str, optional
            Only the identifiers of this person.

        Returns
        -------
        pandas.DataFrame
            The `identity_map` rows (id_type, id_value, person_id, first_seen, last_seen,
            as_of, run_id) ordered by person_id, id_type and id_value; empty when the latest
            run did no stitching.
        """
        with self.snapshot() as r:
            return r.identity_map(person_id)

    def identity_merges(self, since: date | None = None) -> pd.DataFrame:
        """The persons merged into another person, night by night.

        Parameters
        ----------
        since : datetime.date, optional
            Only merges published as of this date or later.

        Returns
        -------
        pandas.DataFrame
            The `identity_merges` rows (as_of, merged_id, into_id, evidence, run_id) ordered
            by as_of and merged_id. A tool re-keys what it holds under merged_id to into_id.
        """
        with self.snapshot() as r:
            return r.identity_merges(since)

    def journey_stages(
        self, as_of: date | None = None, segment_id: str | None = None
    ) -> pd.DataFrame:
        """The journey map's stages and the flow between them.

        Parameters
        ----------
        as_of : datetime.date, optional
            The as-of date (default: the latest published as_of).
        segment_id : str, optional
            Only this segment's rows ('*': the rows of all clients together).

        Returns
        -------
        pandas.DataFrame
            The `journey_stages` rows of that day, per segment in journey order: the row of
            each stage (to_stage null) first, then its flows to later stages.
        """
        with self.snapshot() as r:
            return r.journey_stages(as_of, segment_id)

    def journey_touchpoints(
        self, as_of: date | None = None, segment_id: str | None = None
    ) -> pd.DataFrame:
        """The touchpoints (event type and channel) of each journey stage.

        Parameters
        ----------
        as_of : datetime.date, optional
            The as-of date (default: the latest published as_of).
        segment_id : str, optional
            Only this segment's rows ('*': all clients).

        Returns
        -------
        pandas.DataFrame
            The `journey_touchpoints` rows of that day, per segment and stage by rank.
        """
        with self.snapshot() as r:
            return r.journey_touchpoints(as_of, segment_id)

    def journey_dropoffs(
        self, as_of: date | None = None, segment_id: str | None = None
    ) -> pd.DataFrame:
        """Where clients drop off, the likely causes, and the moments of truth.

        Parameters
        ----------
        as_of : datetime.date, optional
            The as-of date (default: the latest published as_of).
        segment_id : str, optional
            Only this segment's rows ('*': all clients).

        Returns
        -------
        pandas.DataFrame
            The `journey_dropoffs` rows of that day, per segment and kind by rank.
        """
        with self.snapshot() as r:
            return r.journey_dropoffs(as_of, segment_id)

    def holdout_outcomes(self, as_of: date | None = None) -> pd.DataFrame:
        """What the campaigns changed: treated members against the held-out ones.

        Parameters
        ----------
        as_of : datetime.date, optional
            The as-of date (default: the latest published as_of).

        Returns
        -------
        pandas.DataFrame
            The `holdout_outcomes` rows of that day, one per segment.
        """
        with self.snapshot() as r:
            return r.holdout_outcomes(as_of)

    def deliveries(
        self,
        status: str | None = None,
        destination: str | None = None,
        as_of: date | None = None,
    ) -> pd.DataFrame:
        """The batches recorded by `record_deliveries`, of every run (re-runs keep them).

        Parameters
        ----------
        status : str, optional
            Only batches of this status (pending, delivered, failed).
        destination : str, optional
            Only batches for this destination.
        as_of : datetime.date, optional
            Only batches of this as_of (default: every date).

        Returns
        -------
        pandas.DataFrame
            The `destination_deliveries` rows ordered by as_of, destination, segment_id,
            kind and batch_number.
        """
        with self.snapshot() as r:
            return r.deliveries(status, destination, as_of)

    def latest_as_of(self) -> date | None:
        """The as_of of the latest successful run.

        Returns
        -------
        datetime.date or None
            None when nothing was published yet.
        """
        try:
            with self.snapshot() as r:
                return r.latest_as_of()
        except StoreEmptyError:
            return None

    def read_sql(self, name: str) -> pd.DataFrame:
        """All rows of a published table or reader view, by name.

        Parameters
        ----------
        name : str
            One of READABLE: the tables and the `v_*` reader views of docs/store.md.

        Returns
        -------
        pandas.DataFrame
            Every row of that table or view.

        Raises
        ------
        StoreArgumentError
            `name` is not a readable table or view.
        """
        with self.snapshot() as r:
            return r.read_sql(name)

    # -- internals ------------------------------------------------------------------------------
    def _ensure_migrated(self) -> None:
        if self._backend.exists() and self.schema_version() == SCHEMA_VERSION:
            self._migrated = True
        else:
            self.migrate()

    def _log_published(self, result: PublishResult) -> None:
        log.info(
            "published run %s as of %s to %s (schema %s): %d clients, %d entries, %d exits,"
            " %d moves, %d lifecycle changes, replaced %s in %.2f s",
            result.run_id,
            result.as_of,
            self.url,
            self.schema,
            result.clients,
            result.entries,
            result.exits,
            result.moves,
            result.lifecycle_changes,
            list(result.replaced_run_ids) or "none",
            result.seconds,
        )

    def _read_plan(self, req: CleanRequest, rebuild_from: date | None) -> _Plan:
        with self.snapshot() as r:
            s = r._s
            version = r.schema_version()
            if version != SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"store {self.url} schema {s!r} has version {version}; this engine"
                    f" writes version {SCHEMA_VERSION}"
                )
            latest = r.latest_as_of()
            undo_from = _undo_point(req.as_of, latest, rebuild_from)
            cutoff = undo_from or req.as_of
            restore = undo_from is not None and bool(
                r._con.fetchall(
                    f"SELECT count(*) FROM {s}.{IDENTITY_UNDO_HISTORY.name} WHERE merge_as_of >= ?",
                    [undo_from],
                )[0][0]
            )
            previous = r._df(*_previous_sql(s, cutoff, restore))
            replaced: list[str] = []
            if undo_from is not None:
                replaced = [
                    row[0]
                    for row in r._con.fetchall(
                        f"SELECT run_id FROM {s}.runs WHERE status = 'success' AND as_of >= ?"
                        " ORDER BY as_of, run_id",
                        [undo_from],
                    )
                ]
            existing = r._con.fetchall(
                f"SELECT status, as_of FROM {s}.runs WHERE run_id = ?", [req.run_id]
            )
        if existing and existing[0][0] == "success" and req.run_id not in replaced:
            raise PublishInputError(
                f"run_id {req.run_id!r} was already published as of {_as_date(existing[0][1])};"
                " give this run its own run_id"
            )
        return _Plan(undo_from, previous, replaced, restore)

    def _write(
        self,
        w: Connection,
        req: CleanRequest,
        plan: _Plan,
        work: _Work,
        hook: StageHook,
        mark: Callable[[str], None],
    ) -> None:
        s = w.prefix(self.schema)
        if plan.undo_from is not None:
            _undo_runs(w, s, plan.undo_from, restore_rekeyed=plan.restore_rekeyed)
            hook("undo")
        w.execute(f"DELETE FROM {s}.quarantine WHERE run_id = ?", [req.run_id])
        w.execute(f"DELETE FROM {s}.runs WHERE run_id = ?", [req.run_id])

        w.execute(f"DELETE FROM {s}.segment_membership")
        w.load(f"{s}.segment_membership", work.membership)
        mark("write_membership")
        hook("membership")

        if work.rekey.num_rows:
            _rekey(w, s, req.as_of, work.rekey)
        closed = work.closed
        if closed.num_rows:
            w.create_temp("_closed", [("client_id", "text")])
            w.load("_closed", closed)
            w.execute(
                f"UPDATE {s}.segment_history SET valid_to = ?"
                " WHERE valid_to IS NULL AND client_id IN (SELECT client_id FROM _closed)",
                [req.as_of],
            )
        w.load(f"{s}.segment_history", work.history)
        mark("write_history")
        hook("history")

        w.load(f"{s}.segment_transitions", work.transitions)
        mark("write_transitions")
        hook("transitions")

        w.execute(f"DELETE FROM {s}.client_scores")
        w.load(f"{s}.client_scores", work.scores)
        mark("write_scores")
        hook("scores")

        self._upsert_segments(w, req.run_id, work.segments)
        hook("segments")

        w.execute(f"DELETE FROM {s}.{IDENTITY_MAP.name}")
        if work.identity_map is not None and work.identity_map.num_rows:
            w.load(f"{s}.{IDENTITY_MAP.name}", work.identity_map)
        if req.identity_merges is not None and req.identity_merges.num_rows:
            w.load(f"{s}.{IDENTITY_MERGES.name}", req.identity_merges)
        mark("write_identity")
        hook("identity")

        for table in AS_OF_TABLES:
            rows = req.analyses.get(table.name)
            if rows is not None and rows.num_rows:
                w.load(f"{s}.{table.name}", rows)
        mark("write_analyses")
        hook("analyses")

        if work.quarantine.num_rows:
            w.load(f"{s}.quarantine", work.quarantine)
        self._insert_run(
            w,
            req.run_id,
            req.as_of,
            req.started_at,
            datetime.now(UTC),
            "success",
            len(req.membership),
            len(req.segments),
            req.run_info,
        )
        mark("write_rest")
        hook("runs")

    def _upsert_segments(self, w: Connection, run_id: str, segments: pa.Table) -> None:
        """Upsert by segment_id: keep first_run_id, set last_run_id; segments absent from
        this run are retired (size 0, mean null, last_run_id unchanged); a segment first
        published by a replaced run and absent now is removed."""
        s = w.prefix(self.schema)
        cols = SEGMENTS.column_names
        w.create_temp("_segments", SEGMENTS.columns)
        w.load("_segments", segments)
        replaced = f"SELECT run_id FROM {s}.runs WHERE status = 'replaced'"
        w.execute(
            f"DELETE FROM {s}.segments WHERE segment_id NOT IN (SELECT segment_id FROM _segments)"
            f" AND (first_run_id IN ({replaced}) OR first_run_id = ?)",
            [run_id],
        )
        w.execute(
            f"UPDATE {s}.segments SET size = 0, mean_predicted_cltv = NULL"
            " WHERE segment_id NOT IN (SELECT segment_id FROM _segments)"
        )
        w.execute(
            f"UPDATE {s}.segments AS t SET segment_name = n.segment_name, kind = n.kind,"
            " definition = n.definition, size = n.size,"
            " mean_predicted_cltv = n.mean_predicted_cltv, model_version = n.model_version,"
            " last_run_id = n.last_run_id,"
            f" first_run_id = CASE WHEN t.first_run_id IN ({replaced})"
            " THEN n.first_run_id ELSE t.first_run_id END"
            " FROM _segments AS n WHERE t.segment_id = n.segment_id"
        )
        col_list = ", ".join(cols)
        w.execute(
            f"INSERT INTO {s}.segments ({col_list}) SELECT {col_list} FROM _segments"
            f" WHERE segment_id NOT IN (SELECT segment_id FROM {s}.segments)"
        )

    def _insert_run(
        self,
        w: Connection,
        run_id: str,
        as_of: date,
        started_at: datetime,
        finished_at: datetime,
        status: str,
        clients: int | None,
        segments: int | None,
        info: RunInfo,
        error: str | None = None,
    ) -> None:
        cols = RUNS.column_names
        values = [
            run_id,
            as_of,
            started_at,
            finished_at.astimezone(UTC).replace(tzinfo=None) if finished_at.tzinfo else finished_at,
            status,
            info.get("events_read"),
            info.get("events_quarantined"),
            clients,
            segments,
            info.get("cluster_model_version"),
            info.get("cltv_model_version"),
            info.get("mlflow_run_id"),
            error,
        ]
        marks = ", ".join("?" for _ in cols)
        w.execute(
            f"INSERT INTO {w.prefix(self.schema)}.runs ({', '.join(cols)}) VALUES ({marks})", values
        )


@dataclass(frozen=True)
class _Plan:
    """What a publish reads first: where to undo from, the state before it, replaced runs."""

    undo_from: date | None
    previous: pd.DataFrame
    replaced: list[str]
    # Whether the undo restores history that merges of the undone runs re-keyed.
    restore_rekeyed: bool = False


class _Counts(TypedDict):
    entries: int
    exits: int
    moves: int
    lifecycle_changes: int
    history_opened: int
    history_closed: int
    merges: int


@dataclass(frozen=True)
class _Work:
    """The Arrow tables a publish loads, in the columns of their tables, and its counts."""

    membership: pa.Table
    history: pa.Table
    closed: pa.Table
    transitions: pa.Table
    scores: pa.Table
    segments: pa.Table
    quarantine: pa.Table
    rekey: pa.Table
    identity_map: pa.Table | None
    counts: _Counts


def _check_rebuild_from(rebuild_from: object, as_of: date) -> None:
    if rebuild_from is None:
        return
    if isinstance(rebuild_from, datetime) or not isinstance(rebuild_from, date):
        raise PublishInputError(f"rebuild_from must be a datetime.date: {rebuild_from!r}")
    if rebuild_from > as_of:
        raise PublishInputError(
            f"rebuild_from {rebuild_from} is after as_of {as_of}: nothing to rebuild"
        )


def _compute(req: CleanRequest, plan: _Plan, *, index_order: bool = False) -> _Work:
    """Everything the write step loads, computed before the write connection is opened.
    `index_order`: sort a large identity map by (id_type, id_value) for loading."""
    membership = req.membership
    merges = req.identity_merges
    previous, silently_closed, rekey = _apply_merges(
        plan.previous, merges if merges is not None else _NO_MERGES
    )
    valid_from, moves = advance_arrow(
        previous, membership[STATE_COLUMNS], req.as_of, check=False, sort=False
    )
    frm, to = moves["from_segment_id"], moves["to_segment_id"]
    n_entries, n_exits = frm.null_count, to.null_count
    n_moves = pc.sum(pc.fill_null(pc.not_equal(frm, to), False)).as_py() or 0
    opened = moves.filter(pc.is_valid(to))
    history = pa.table(
        {
            "client_id": opened["client_id"],
            "segment_id": opened["to_segment_id"],
            "lifecycle_stage": opened["to_lifecycle"],
        }
    )
    closed = moves.filter(pc.is_valid(frm)).select(["client_id"])
    if len(silently_closed):
        closed = pa.concat_tables(
            [closed, pa.table({"client_id": pa.array(silently_closed, pa.string())})],
            promote_options="permissive",
        )

    segments = req.segments.copy()
    sizes, means = _segment_stats(membership, req.scores)
    segments["size"] = segments["segment_id"].map(sizes).fillna(0).astype("int64")
    segments["mean_predicted_cltv"] = segments["segment_id"].map(means).astype("float64")

    constants = {"as_of": req.as_of, "run_id": req.run_id}
    return _Work(
        membership=to_arrow(membership, MEMBERSHIP, {**constants, "valid_from": valid_from}),
        history=to_arrow(
            history, HISTORY, {"valid_from": req.as_of, "valid_to": None, "run_id": req.run_id}
        ),
        closed=to_arrow(closed, _CLOSED),
        transitions=to_arrow(moves, TRANSITIONS, constants),
        scores=to_arrow(req.scores, SCORES, constants),
        segments=to_arrow(
            segments, SEGMENTS, {"first_run_id": req.run_id, "last_run_id": req.run_id}
        ),
        quarantine=to_arrow(req.quarantine, QUARANTINE, {"run_id": req.run_id}),
        rekey=to_arrow(rekey, _REKEY),
        identity_map=_load_order(req.identity_map) if index_order else req.identity_map,
        counts={
            "entries": n_entries,
            "exits": n_exits,
            "moves": n_moves,
            "lifecycle_changes": moves.num_rows - n_entries - n_exits - n_moves,
            "history_opened": history.num_rows,
            "history_closed": closed.num_rows,
            "merges": merges.num_rows if merges is not None else 0,
        },
    )


def _segment_stats(
    membership: pd.DataFrame, scores: pd.DataFrame
) -> tuple[dict[str, int], dict[str, float | None]]:
    """Members per segment and their mean predicted CLTV (null when none is scored).

    The mean is taken over the members in client_id order on one thread, so it is the same
    bits whatever order the rows come in (a float sum depends on the order of its terms)."""
    membership = membership.sort_values("client_id", kind="stable")
    member_ids = pa.array(membership["client_id"], from_pandas=True)
    score_ids = pa.array(scores["client_id"], from_pandas=True)
    cltv = pa.array(pd.to_numeric(scores["predicted_cltv"]).astype("float64"), from_pandas=True)
    if len(score_ids):
        member_cltv = pc.take(cltv, pc.index_in(member_ids, value_set=score_ids))
    else:
        member_cltv = pa.nulls(len(member_ids), pa.float64())
    stats = (
        pa.table(
            {
                "segment_id": pa.array(membership["segment_id"], from_pandas=True),
                "cltv": member_cltv,
            }
        )
        .group_by("segment_id", use_threads=False)
        .aggregate([("cltv", "count", pc.CountOptions(mode="all")), ("cltv", "mean")])
    )
    ids = stats["segment_id"].to_pylist()
    return (
        dict(zip(ids, stats["cltv_count"].to_pylist(), strict=True)),
        dict(zip(ids, stats["cltv_mean"].to_pylist(), strict=True)),
    )


_CLOSED = Table("_closed", (("client_id", "text"),))
# Ids whose history a merge re-keys: (continued merged id, survivor) and (survivor, survivor).
_REKEY = Table("_rekey", (("client_id", "text"), ("into_id", "text")))
_UNDO_KEYS = Table("_undo_keys", (("client_id", "text"), ("merge_as_of", "date")))
_NO_MERGES = pa.table(
    {"merged_id": pa.array([], pa.string()), "into_id": pa.array([], pa.string())}
)


def _apply_merges(
    previous: pd.DataFrame, merges: pa.Table
) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """Tonight's merges applied to the previous state, so history follows the person.

    For each survivor (into_id) and the merged ids that have an open stretch: when the
    survivor has one too, the merged ids' stretches are closed silently (no transition: a
    merge is not an exit); otherwise the merged id whose stretch started earliest (tie:
    smallest id) is continued: its stretch becomes the survivor's previous state (and its
    rows are re-keyed to the survivor), the others are closed silently.

    Returns
    -------
    previous : pandas.DataFrame
        The previous state without the merged ids, with the continued stretches re-keyed.
    closed : list of str
        The merged ids whose open stretch is closed without a transition.
    rekey : pandas.DataFrame
        client_id, into_id: each continued merged id and its survivor, and each such
        survivor with itself (the ids whose history the write re-keys, saved for undo).
    """
    none = pd.DataFrame({"client_id": pd.Series(dtype=object), "into_id": pd.Series(dtype=object)})
    if not merges.num_rows or previous.empty:
        return previous, [], none
    merged_ids = merges["merged_id"].combine_chunks()
    ids = pa.array(previous["client_id"], type=pa.string(), from_pandas=True)
    # Arrow set lookups: pandas' isin on a million ids costs seconds
    involved = pc.is_in(ids, value_set=merged_ids).to_numpy(zero_copy_only=False)
    if not involved.any():
        return previous, [], none
    open_survivors = set(
        ids.filter(pc.is_in(ids, value_set=merges["into_id"].combine_chunks())).to_pylist()
    )
    pairs = pd.DataFrame(
        {"merged_id": merged_ids.to_pylist(), "into_id": merges["into_id"].to_pylist()}
    )
    stretches = pairs.merge(
        previous[involved].rename(columns={"client_id": "merged_id"}).astype({"merged_id": object}),
        on="merged_id",
    )
    survivor_open = stretches["into_id"].map(open_survivors.__contains__).astype(bool)
    continued = (
        stretches[~survivor_open]
        .sort_values(["into_id", "valid_from", "merged_id"], kind="stable")
        .drop_duplicates("into_id")
    )
    carried = continued[["into_id", "segment_id", "lifecycle_stage", "valid_from"]].rename(
        columns={"into_id": "client_id"}
    )
    kept = previous[~involved]
    state = pd.concat([kept, carried.astype(kept.dtypes.to_dict())], ignore_index=True)
    silent = set(stretches["merged_id"]) - set(continued["merged_id"])
    rekey = pd.DataFrame(
        {
            "client_id": [*continued["merged_id"], *continued["into_id"]],
            "into_id": [*continued["into_id"], *continued["into_id"]],
        }
    )
    return state, sorted(silent), rekey


_SORTED_FROM = 100_000


def _load_order(identity_map: pa.Table | None) -> pa.Table | None:
    """A large identity map sorted by (id_type, id_value), the order of its main index."""
    if identity_map is None or identity_map.num_rows < _SORTED_FROM:
        return identity_map
    keys = [("id_type", "ascending"), ("id_value", "ascending")]
    return identity_map.take(pc.sort_indices(identity_map, sort_keys=keys))


def _previous_sql(s: str, cutoff: date, restore: bool) -> tuple[str, list[object]]:
    """The open stretches as of `cutoff` once the runs from `cutoff` on are undone; with
    `restore`, the history that merges of those runs re-keyed is read as it was before."""
    state = (
        "SELECT client_id, segment_id, lifecycle_stage, valid_from FROM {h}"
        " WHERE valid_from < ? AND (valid_to IS NULL OR valid_to >= ?)"
    )
    if not restore:
        return state.format(h=f"{s}.{HISTORY.name}"), [cutoff, cutoff]
    history = (
        f"(WITH keys AS ({_undo_keys_sql(s)}) SELECT client_id, segment_id, lifecycle_stage,"
        f" valid_from, valid_to FROM {s}.{HISTORY.name}"
        " WHERE client_id NOT IN (SELECT client_id FROM keys)"
        " UNION ALL SELECT u.client_id, u.segment_id, u.lifecycle_stage, u.valid_from,"
        f" u.valid_to FROM {s}.{IDENTITY_UNDO_HISTORY.name} u JOIN keys"
        " ON u.client_id = keys.client_id AND u.merge_as_of = keys.merge_as_of) AS h"
    )
    return state.format(h=history), [cutoff, cutoff, cutoff, cutoff]


def _undo_keys_sql(s: str) -> str:
    """Each id re-keyed by a merge as of `?` or later (merged id or survivor), with the date
    of its earliest such merge: its saved history of that date is its history before."""
    undo = f"{s}.{IDENTITY_UNDO_HISTORY.name}"
    return (
        "SELECT client_id, min(merge_as_of) AS merge_as_of FROM ("
        f"SELECT client_id, merge_as_of FROM {undo} WHERE merge_as_of >= ?"
        f" UNION ALL SELECT into_id, merge_as_of FROM {undo} WHERE merge_as_of >= ?"
        ") AS k GROUP BY client_id"
    )


def _rekey(w: Connection, s: str, as_of: date, rekey: pa.Table) -> None:
    """Save the history and transitions of the continued merged ids and their survivors
    (for undo), then re-key the merged ids' rows to their survivor."""
    w.create_temp(_REKEY.name, _REKEY.columns)
    w.load(_REKEY.name, rekey)
    for table, undo, extra, key in (
        (HISTORY, IDENTITY_UNDO_HISTORY, "k.into_id, ", "into_id, "),
        (TRANSITIONS, IDENTITY_UNDO_TRANSITIONS, "", ""),
    ):
        cols = table.column_names
        w.execute(
            f"INSERT INTO {s}.{undo.name} (merge_as_of, {key}{', '.join(cols)})"
            f" SELECT ?, {extra}{', '.join('t.' + c for c in cols)} FROM {s}.{table.name} t"
            f" JOIN {_REKEY.name} k ON t.client_id = k.client_id",
            [as_of],
        )
        w.execute(
            f"UPDATE {s}.{table.name} AS t SET client_id = k.into_id FROM {_REKEY.name} AS k"
            " WHERE t.client_id = k.client_id AND k.client_id <> k.into_id"
        )


def _restore_rekeyed(w: Connection, s: str, undo_from: date) -> None:
    """Undo the re-keying of merges as of `undo_from` or later: every id they re-keyed gets
    back the history and transitions saved at its earliest such merge (the ordinary undo
    that follows then removes what runs from `undo_from` on added)."""
    w.create_temp(_UNDO_KEYS.name, _UNDO_KEYS.columns)
    w.execute(
        f"INSERT INTO {_UNDO_KEYS.name} (client_id, merge_as_of) {_undo_keys_sql(s)}",
        [undo_from, undo_from],
    )
    for table, undo in (
        (HISTORY, IDENTITY_UNDO_HISTORY),
        (TRANSITIONS, IDENTITY_UNDO_TRANSITIONS),
    ):
        cols = table.column_names
        w.execute(
            f"DELETE FROM {s}.{table.name}"
            f" WHERE client_id IN (SELECT client_id FROM {_UNDO_KEYS.name})"
        )
        w.execute(
            f"INSERT INTO {s}.{table.name} ({', '.join(cols)})"
            f" SELECT {', '.join('u.' + c for c in cols)} FROM {s}.{undo.name} u"
            f" JOIN {_UNDO_KEYS.name} k"
            " ON u.client_id = k.client_id AND u.merge_as_of = k.merge_as_of"
        )
        w.execute(f"DELETE FROM {s}.{undo.name} WHERE merge_as_of >= ?", [undo_from])


def _undo_runs(w: Connection, s: str, undo_from: date, *, restore_rekeyed: bool) -> None:
    """Undo every published run as of `undo_from` or later: their merges' re-keying, merges,
    quarantine, history, transitions and per-as_of rows (journey map, holdout outcomes) go,
    the stretches they closed reopen, and their runs are marked `replaced`. Deliveries stay:
    they record what was sent."""
    if restore_rekeyed:
        _restore_rekeyed(w, s, undo_from)
    w.execute(f"DELETE FROM {s}.{IDENTITY_MERGES.name} WHERE as_of >= ?", [undo_from])
    w.execute(
        f"DELETE FROM {s}.quarantine WHERE run_id IN"
        f" (SELECT run_id FROM {s}.runs WHERE status = 'success' AND as_of >= ?)",
        [undo_from],
    )
    w.execute(
        f"UPDATE {s}.runs SET status = 'replaced' WHERE status = 'success' AND as_of >= ?",
        [undo_from],
    )
    w.execute(f"DELETE FROM {s}.segment_history WHERE valid_from >= ?", [undo_from])
    w.execute(f"UPDATE {s}.segment_history SET valid_to = NULL WHERE valid_to >= ?", [undo_from])
    w.execute(f"DELETE FROM {s}.segment_transitions WHERE as_of >= ?", [undo_from])
    for table in AS_OF_TABLES:
        w.execute(f"DELETE FROM {s}.{table.name} WHERE as_of >= ?", [undo_from])


def _undo_point(as_of: date, latest: date | None, rebuild_from: date | None) -> date | None:
    """The date from which published runs are undone before this publish, or None."""
    if latest is None:
        return None
    if rebuild_from is not None:
        return rebuild_from if rebuild_from <= latest else None
    if as_of > latest:
        return None
    if as_of == latest:
        return as_of
    raise OutOfOrderError(
        f"as_of {as_of} is older than the latest published as_of {latest}: publish dates in"
        f" order, or pass rebuild_from={as_of.isoformat()} to undo every run from {as_of} on"
        " and rebuild from there"
    )


def _projection(table: Table, columns: Sequence[str] | None) -> str:
    """The SELECT list of `columns` of `table` (all when None); an unknown column is an error
    naming the ones there are (the names are then safe to put in SQL)."""
    if columns is None:
        return "*"
    known = table.column_names
    unknown = [c for c in columns if c not in known]
    if unknown or not columns:
        raise StoreArgumentError(
            f"{table.name} has no column(s) {', '.join(map(repr, unknown)) or '(none asked)'};"
            f" its columns: {', '.join(known)}"
        )
    return ", ".join(columns)


def _as_date(value: object) -> date | None:
    """A date from a database value (date, datetime, Timestamp); None for null."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return as_date(value)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _stage_timer(stages: dict[str, float]) -> Callable[[str], None]:
    last = [time.perf_counter()]

    def mark(stage: str) -> None:
        now = time.perf_counter()
        stages[stage] = round(now - last[0], 4)
        last[0] = now

    return mark
