"""DuckDB backend: one file, short connections, a file lock for publishers, bounded retries."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from pipelines.locks import file_lock
from pipelines.store._common import (
    PublishLockedError,
    StoreBusyError,
    StoreConnectionError,
    StoreEmptyError,
)
from pipelines.store._schema import TYPES, validate_identifier

__all__ = ["DuckDbBackend", "DuckDbConnection"]


class DuckDbConnection:
    """One open DuckDB connection with the small API the store uses (`?` placeholders)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        catalog = str(con.execute("SELECT current_database()").fetchall()[0][0])
        self._catalog = '"' + catalog.replace('"', '""') + '"'

    def prefix(self, schema: str) -> str:
        """`"catalog".schema`: a file named like its schema would make `schema.x` ambiguous."""
        return f"{self._catalog}.{validate_identifier(schema, 'schema name')}"

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        """Run one statement."""
        self._con.execute(sql, list(params))

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run a query; its rows."""
        return self._con.execute(sql, list(params)).fetchall()

    def fetch_df(self, sql: str, params: Sequence[object] = ()) -> pd.DataFrame:
        """Run a query; its result as a DataFrame."""
        return self._con.execute(sql, list(params)).df()

    def create_temp(self, name: str, columns: Sequence[tuple[str, str]]) -> None:
        """Create (or replace) a temporary table of (column, logical type) pairs."""
        validate_identifier(name, "temporary table name")
        cols = ", ".join(f"{c} {TYPES[k]['duckdb']}" for c, k in columns)
        self._con.execute(f"CREATE OR REPLACE TEMP TABLE {name} ({cols})")

    def load(self, target: str, data: pa.Table) -> None:
        """Bulk insert an Arrow table (columns named as in the target) in one statement."""
        view = "_stage_arrow"
        cols = ", ".join(validate_identifier(c, "column") for c in data.column_names)
        self._con.register(view, data)
        try:
            self._con.execute(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {view}")
        finally:
            self._con.unregister(view)


class DuckDbBackend:
    """Opens the store file read-only for readers and read-write only for the publish step."""

    dialect = "duckdb"

    def __init__(self, path: Path, masked: str, lock_timeout: float, reader_retry: float) -> None:
        self.path = path
        self.masked = masked
        self.lock_timeout = lock_timeout
        self.reader_retry = reader_retry

    def describe(self) -> str:
        """The store URL (a DuckDB URL has no password)."""
        return self.masked

    def secret(self) -> str | None:
        """None: a DuckDB URL has no password."""
        return None

    def exists(self) -> bool:
        """Whether the store file was created."""
        return self.path.exists()

    @contextmanager
    def read(self) -> Iterator[DuckDbConnection]:
        """A read-only connection, retried with backoff while a writer holds the file."""
        if not self.path.exists():
            raise StoreEmptyError(
                f"store {self.masked} does not exist yet: publish a run (or migrate) first"
            )
        con = self._connect(read_only=True, wait=self.reader_retry)
        try:
            yield DuckDbConnection(con)
        finally:
            con.close()

    @contextmanager
    def write(self, after_commit: Callable[[], None] | None = None) -> Iterator[DuckDbConnection]:
        """One transaction on a read-write connection; committed on success, else rolled back.
        `after_commit` runs after COMMIT, before the connection closes (and checkpoints)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._connect(read_only=False, wait=self.lock_timeout)
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                yield DuckDbConnection(con)
            except BaseException:
                with suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            if after_commit is not None:
                after_commit()
        finally:
            con.close()

    @contextmanager
    def publish_lock(self) -> Iterator[None]:
        """An exclusive flock on `<file>.lock`, waited for at most lock_timeout seconds."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        with file_lock(lock_path, self.lock_timeout, error=self._lock_busy):
            yield

    def _lock_busy(self) -> PublishLockedError:
        return PublishLockedError(
            f"another publish holds the lock of {self.masked} (waited {self.lock_timeout:g} s)"
        )

    def close(self) -> None:
        """Nothing is held between calls."""

    def _connect(self, read_only: bool, wait: float) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + wait
        delay = 0.01
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise StoreConnectionError(f"cannot open {self.masked}: {exc}") from None
                if time.monotonic() >= deadline:
                    role = "read" if read_only else "write"
                    raise StoreBusyError(
                        f"cannot {role} {self.masked}: another process held the file for more"
                        f" than {wait:g} s (DuckDB lets no other process open a file while one"
                        " writes; use PostgreSQL for tools that read while the engine writes)"
                    ) from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 1.5, 0.25)
            except duckdb.Error as exc:
                raise StoreConnectionError(f"cannot open {self.masked}: {exc}") from None
