"""PostgreSQL backend: SQLAlchemy engine with psycopg 3, COPY for bulk load and bulk read."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.pool import PoolProxiedConnection

from pipelines.store._common import PublishLockedError, StoreConnectionError, scrub
from pipelines.store._schema import TYPES, validate_identifier

__all__ = ["PostgresBackend", "PostgresConnection", "arrow_to_pandas"]

# PostgreSQL type OIDs -> Arrow types for reading COPY output.
_OID_ARROW = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int32(),
    23: pa.int32(),
    700: pa.float64(),
    701: pa.float64(),
    1700: pa.float64(),
    1082: pa.date32(),
    1114: pa.timestamp("us"),
}
_BATCH_ROWS = 200_000


class PostgresConnection:
    """One psycopg connection with the small API the store uses (`?` placeholders)."""

    def __init__(self, con: psycopg.Connection) -> None:
        self._con = con

    def prefix(self, schema: str) -> str:
        """The schema qualifier for table names."""
        return validate_identifier(schema, "schema name")

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        """Run one statement."""
        with self._con.cursor() as cur:
            cur.execute(_pg(sql, params), list(params) or None)

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run a query; its rows."""
        with self._con.cursor() as cur:
            cur.execute(_pg(sql, params), list(params) or None)
            return cur.fetchall()

    def fetch_df(self, sql: str, params: Sequence[object] = ()) -> pd.DataFrame:
        """Run a query and read its result with COPY ... TO STDOUT (fast for large results)."""
        query = _pg(sql, params)
        args = list(params) or None
        with self._con.cursor() as cur:
            cur.execute(f"SELECT * FROM ({query}) AS q LIMIT 0", args)
            columns = cur.description or []  # None only for statements without a result
            names = [d.name for d in columns]
            types = {d.name: _OID_ARROW.get(d.type_code, pa.string()) for d in columns}
            buffer = io.BytesIO()
            with cur.copy(f"COPY ({query}) TO STDOUT (FORMAT csv)", args) as copy:
                for block in copy:
                    buffer.write(block)
        schema = pa.schema([(n, types[n]) for n in names])
        if buffer.tell() == 0:
            table = schema.empty_table()
        else:
            buffer.seek(0)
            table = pacsv.read_csv(
                buffer,
                read_options=pacsv.ReadOptions(column_names=names),
                # a null in a one-column result is an empty line, not one to skip
                parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
                convert_options=pacsv.ConvertOptions(
                    column_types=types,
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                    null_values=[""],
                    true_values=["t"],  # how COPY writes a boolean
                    false_values=["f"],
                ),
            )
        return arrow_to_pandas(table)

    def create_temp(self, name: str, columns: Sequence[tuple[str, str]]) -> None:
        """Create a temporary table of (column, logical type) pairs, dropped at commit."""
        validate_identifier(name, "temporary table name")
        cols = ", ".join(f"{c} {TYPES[k]['postgresql']}" for c, k in columns)
        self.execute(f"CREATE TEMP TABLE {name} ({cols}) ON COMMIT DROP")

    def load(self, target: str, data: pa.Table) -> None:
        """Bulk load an Arrow table with COPY FROM STDIN (CSV written by Arrow, in batches)."""
        cols = ", ".join(validate_identifier(c, "column") for c in data.column_names)
        options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
        with (
            self._con.cursor() as cur,
            cur.copy(f"COPY {target} ({cols}) FROM STDIN (FORMAT csv)") as copy,
        ):
            for batch in data.to_batches(max_chunksize=_BATCH_ROWS):
                buffer = io.BytesIO()
                pacsv.write_csv(batch, buffer, options)
                copy.write(buffer.getbuffer())


class PostgresBackend:
    """Pooled connections; readers use REPEATABLE READ READ ONLY snapshots (MVCC)."""

    dialect = "postgresql"

    def __init__(self, url: URL, masked: str, schema: str, lock_timeout: float) -> None:
        self.masked = masked
        self.lock_timeout = lock_timeout
        self._password = url.password
        digest = hashlib.sha256(f"segmentation-store:{schema}".encode()).digest()
        self.lock_key = int.from_bytes(digest[:8], "big", signed=True)
        self._engine = sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=2,
            max_overflow=4,
            connect_args={"connect_timeout": 10, "application_name": "segmentation-store"},
        )

    def describe(self) -> str:
        """The store URL with the password masked."""
        return self.masked

    def secret(self) -> str | None:
        """The password in the store URL, if any."""
        return self._password

    def exists(self) -> bool:
        """Always True: the database exists (the schema may not yet)."""
        return True

    @contextmanager
    def read(self) -> Iterator[PostgresConnection]:
        """A consistent read-only snapshot: readers never wait for a publish."""
        raw, driver = self._raw()
        try:
            con = PostgresConnection(driver)
            con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield con
        finally:
            with suppress(Exception):
                raw.rollback()
            raw.close()

    @contextmanager
    def write(self, after_commit: Callable[[], None] | None = None) -> Iterator[PostgresConnection]:
        """One transaction; committed on success, rolled back on any error."""
        raw, driver = self._raw()
        try:
            try:
                yield PostgresConnection(driver)
            except BaseException:
                with suppress(Exception):
                    raw.rollback()
                raise
            raw.commit()
            if after_commit is not None:
                after_commit()
        finally:
            raw.close()

    @contextmanager
    def publish_lock(self) -> Iterator[None]:
        """A session advisory lock (per schema), waited for at most lock_timeout seconds.

        PostgreSQL releases it when the holder's session ends, so a killed publisher
        never leaves the store locked."""
        raw, con = self._raw()
        try:
            con.autocommit = True
            deadline = time.monotonic() + self.lock_timeout
            delay = 0.02
            try_lock = "SELECT pg_try_advisory_lock(%s)"
            while not con.execute(try_lock, [self.lock_key]).fetchall()[0][0]:
                if time.monotonic() >= deadline:
                    raise PublishLockedError(
                        f"another publish holds the lock of {self.masked}"
                        f" (waited {self.lock_timeout:g} s)"
                    )
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)
            try:
                yield
            finally:
                con.execute("SELECT pg_advisory_unlock(%s)", [self.lock_key])
        finally:
            with suppress(Exception):
                con.autocommit = False
            raw.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._engine.dispose()

    def _raw(self) -> tuple[PoolProxiedConnection, psycopg.Connection]:
        """A pooled connection (to close) and the psycopg connection inside it."""
        try:
            raw = self._engine.raw_connection()
        except (sa.exc.SQLAlchemyError, psycopg.Error) as exc:
            detail = getattr(exc, "orig", None) or exc
            message = scrub(str(detail).strip().splitlines()[0], self._password)
            raise StoreConnectionError(f"cannot connect to {self.masked}: {message}") from None
        driver = raw.driver_connection
        if not isinstance(driver, psycopg.Connection):  # None once invalidated
            raw.close()
            raise StoreConnectionError(f"cannot connect to {self.masked}: connection closed")
        return raw, driver


def arrow_to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas like DuckDB's `.df()`: dates as datetime64[us], nullable ints."""
    frame = table.to_pandas(
        date_as_object=False,
        types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}.get,
    )
    for name, field in zip(table.column_names, table.schema, strict=True):
        if pa.types.is_date(field.type) or pa.types.is_timestamp(field.type):
            frame[name] = frame[name].astype("datetime64[us]")
        elif pa.types.is_integer(field.type) and not frame[name].isna().any():
            frame[name] = frame[name].astype(field.type.to_pandas_dtype())
    return frame


def _pg(sql: str, params: Sequence[object]) -> str:
    """Store SQL uses `?` placeholders; psycopg uses `%s` (and `%%` only when binding)."""
    if not params:
        return sql
    return sql.replace("%", "%%").replace("?", "%s")
