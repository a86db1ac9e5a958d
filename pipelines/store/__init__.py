"""The store that publishes the engine's tables to DuckDB (a file) or PostgreSQL, atomically.

    store = open_store("duckdb:///abs/path/store.duckdb")
    store.publish(PublishRequest(...))          # one transaction under a publish lock
    store.membership(segment_id="3")            # readers: pandas DataFrames
    store.record_deliveries(rows)               # after the publish: batches sent, by batch_id

Tables, views and guarantees are documented in docs/store.md.
"""

from __future__ import annotations

from pipelines.store._common import (
    Backend,
    OutOfOrderError,
    PublishInputError,
    PublishLockedError,
    SchemaVersionError,
    StoreArgumentError,
    StoreBusyError,
    StoreConnectionError,
    StoreEmptyError,
    StoreError,
    mask_url,
    parse_store_url,
)
from pipelines.store._core import Reader, Store
from pipelines.store._deliveries import (
    DELIVERY_KINDS,
    DELIVERY_STATUSES,
    DESTINATION_DELIVERIES_INPUT,
)
from pipelines.store._request import (
    HOLDOUT_OUTCOMES_INPUT,
    IDENTITY_MAP_INPUT,
    IDENTITY_MERGES_INPUT,
    JOURNEY_DROPOFFS_INPUT,
    JOURNEY_STAGES_INPUT,
    JOURNEY_TOUCHPOINTS_INPUT,
    MEMBERSHIP_INPUT,
    SCORES_INPUT,
    PublishRequest,
    PublishResult,
)
from pipelines.store._schema import READABLE, SCHEMA_VERSION, TABLES, VIEWS, validate_identifier

__all__ = [
    "DELIVERY_KINDS",
    "DELIVERY_STATUSES",
    "DESTINATION_DELIVERIES_INPUT",
    "HOLDOUT_OUTCOMES_INPUT",
    "IDENTITY_MAP_INPUT",
    "IDENTITY_MERGES_INPUT",
    "JOURNEY_DROPOFFS_INPUT",
    "JOURNEY_STAGES_INPUT",
    "JOURNEY_TOUCHPOINTS_INPUT",
    "MEMBERSHIP_INPUT",
    "READABLE",
    "SCHEMA_VERSION",
    "SCORES_INPUT",
    "TABLES",
    "VIEWS",
    "OutOfOrderError",
    "PublishInputError",
    "PublishLockedError",
    "PublishRequest",
    "PublishResult",
    "Reader",
    "SchemaVersionError",
    "Store",
    "StoreArgumentError",
    "StoreBusyError",
    "StoreConnectionError",
    "StoreEmptyError",
    "StoreError",
    "mask_url",
    "open_store",
    "parse_store_url",
    "validate_identifier",
]


def open_store(
    url: str,
    schema: str = "segmentation",
    *,
    lock_timeout: float = 30,
    reader_retry: float = 30,
) -> Store:
    """Open the store at `url` (nothing is created until `migrate()` or the first publish).

    Parameters
    ----------
    url : str
        `duckdb:///abs/path/file.duckdb` (also `duckdb:////abs/...` and
        `duckdb:relative/file.duckdb`) or `postgresql://user[:password]@host[:port]/db`
        (credentials from the URL or the libpq environment: PGUSER, PGPASSWORD, ...).
    schema : str
        The database schema of the tables: a plain lower-case identifier.
    lock_timeout : float
        Seconds a publish waits for the publish lock (and, on DuckDB, for readers to release
        the file), then PublishLockedError or StoreBusyError.
    reader_retry : float
        Seconds a DuckDB reader retries while a publish holds the file, then StoreBusyError.

    Returns
    -------
    Store
        The store; connections are opened per call (pooled on PostgreSQL: `close()` them).

    Raises
    ------
    StoreArgumentError
        The URL, the schema name or a timeout cannot be used (the message masks passwords).
    """
    validate_identifier(schema, "schema name")
    if lock_timeout <= 0 or reader_retry < 0:
        raise StoreArgumentError("lock_timeout must be > 0 and reader_retry >= 0 (seconds)")
    parsed = parse_store_url(url)
    backend: Backend
    if parsed.path is not None:
        from pipelines.store._duckdb import DuckDbBackend

        backend = DuckDbBackend(parsed.path, parsed.masked, lock_timeout, reader_retry)
    else:
        from pipelines.store._postgres import PostgresBackend

        assert parsed.sqlalchemy_url is not None  # parse_store_url sets a path or a URL
        backend = PostgresBackend(parsed.sqlalchemy_url, parsed.masked, schema, lock_timeout)
    return Store(backend, schema, lock_timeout=lock_timeout, reader_retry=reader_retry)
