"""Fixtures for the store tests: a fresh store per test on DuckDB (a temp file) and on the
real PostgreSQL at 127.0.0.1:5432 (a unique schema per store, dropped afterwards)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from pipelines.store import Store, open_store

PG_URL = os.environ.get("SEGMENTATION_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_UNREACHABLE = "PostgreSQL not reachable at 127.0.0.1:5432"
BACKENDS = ["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _pg_error() -> str | None:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as con:
            con.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]
    return None


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL URL; skips when no server is reachable, fails instead when CI=true."""
    error = _pg_error()
    if error is not None:
        message = f"{PG_UNREACHABLE} ({error})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true requires the PostgreSQL tests to run")
        pytest.skip(message)
    return PG_URL


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_location(
    store_backend: str, tmp_path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], tuple[str, str]]]:
    """A factory of fresh (url, schema) locations on the test's backend, cleaned up after."""
    schemas: list[str] = []
    url = request.getfixturevalue("pg_url") if store_backend == "postgresql" else None

    def make() -> tuple[str, str]:
        name = f"t_{uuid.uuid4().hex[:8]}"
        if store_backend == "duckdb":
            return f"duckdb://{tmp_path / name}.duckdb", "segmentation"
        schemas.append(name)
        return url, name

    yield make
    for schema in schemas:
        drop_schema(url, schema)


@pytest.fixture
def make_store(store_location: Callable[[], tuple[str, str]]) -> Iterator[Callable[..., Store]]:
    """A factory of fresh, empty stores on the test's backend."""
    stores: list[Store] = []

    def make(**kwargs: float) -> Store:
        url, schema = store_location()
        store = open_store(url, schema, **{"lock_timeout": 10, "reader_retry": 10, **kwargs})
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., Store]) -> Store:
    """A fresh, empty store on the test's backend."""
    return make_store()
