"""Store errors, URL parsing, credential masking and the backend interface shared by both
backends (`Backend`, `Connection`: what `Store` needs from DuckDB and PostgreSQL)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.engine import URL, make_url

from configs import SegmentationError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = [
    "ERROR_CHARS",
    "Backend",
    "Connection",
    "OutOfOrderError",
    "PublishInputError",
    "PublishLockedError",
    "SchemaVersionError",
    "StoreArgumentError",
    "StoreBusyError",
    "StoreConnectionError",
    "StoreEmptyError",
    "StoreError",
    "StoreUrl",
    "error_line",
    "mask_url",
    "parse_store_url",
    "scrub",
]


class StoreError(SegmentationError, RuntimeError):
    """A store operation failed; the message never contains credentials."""


class StoreConnectionError(StoreError):
    """The store's database cannot be reached or opened."""


class StoreBusyError(StoreError):
    """The DuckDB file stayed held by another process for longer than the bounded wait."""


class PublishLockedError(StoreError):
    """Another publish held the store's publish lock for longer than `lock_timeout`."""


class OutOfOrderError(StoreError):
    """A publish for a date older than the latest published one, without `rebuild_from`."""


class StoreEmptyError(StoreError):
    """The store has no published tables yet (nothing was migrated or published)."""


class SchemaVersionError(StoreError):
    """The store's schema was written by a newer engine than this one."""


class PublishInputError(SegmentationError, ValueError):
    """A publish request that breaks the contract (missing column, duplicate client, ...)."""


class StoreArgumentError(SegmentationError, ValueError):
    """A store URL, schema or table name, or timeout the store cannot use; the message names
    it (with any password masked)."""


class Connection(Protocol):
    """One open database connection as the store uses it (`?` placeholders in SQL)."""

    def prefix(self, schema: str) -> str:
        """The qualifier to put before table names of `schema`."""
        ...

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        """Run one statement."""
        ...

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run a query; its rows (database values)."""
        ...

    def fetch_df(self, sql: str, params: Sequence[object] = ()) -> pd.DataFrame:
        """Run a query; its result as a DataFrame."""
        ...

    def create_temp(self, name: str, columns: Sequence[tuple[str, str]]) -> None:
        """Create a temporary table of (column, logical type) pairs."""
        ...

    def load(self, target: str, data: pa.Table) -> None:
        """Bulk insert an Arrow table whose columns are named as in `target`."""
        ...


class Backend(Protocol):
    """A store database: short read snapshots, one write transaction, the publish lock."""

    @property
    def dialect(self) -> str:
        """`duckdb` or `postgresql`."""
        ...

    def describe(self) -> str:
        """The URL with any password masked."""
        ...

    def exists(self) -> bool:
        """False while a DuckDB file has not been created (PostgreSQL: always True)."""
        ...

    def secret(self) -> str | None:
        """The password the backend connects with (to scrub from messages), else None."""
        ...

    def read(self) -> AbstractContextManager[Connection]:
        """A consistent read-only snapshot."""
        ...

    def write(
        self, after_commit: Callable[[], None] | None = None
    ) -> AbstractContextManager[Connection]:
        """One transaction, committed when the block succeeds, else rolled back."""
        ...

    def publish_lock(self) -> AbstractContextManager[None]:
        """Hold the store's publish lock (bounded wait, then PublishLockedError)."""
        ...

    def close(self) -> None:
        """Release pooled connections."""
        ...


# user:password@ in a URL; the password runs to the last `@` before a space or a quote, so an
# unencoded `@` inside it is masked too (masking too much is safe, too little is not).
_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*:)(?P<pw>[^\s'\"]*)@")
# password=... as a URL query parameter or a libpq keyword (`password=x host=...`).
_PASSWORD_PARAM = re.compile(r"(?P<head>(?:\b|[?&])password=)(?P<pw>[^&\s'\"]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***` (safe for logs and errors): in the
    user-info part and in a `password=` query parameter."""
    text = _USERINFO.sub(lambda m: f"{m.group('head')}***@", str(url))
    return _PASSWORD_PARAM.sub(lambda m: f"{m.group('head')}***", text)


def scrub(text: str, secret: str | None) -> str:
    """Remove a secret and any URL password from a message."""
    text = mask_url(str(text))
    if secret:
        text = text.replace(secret, "***")
    return text


ERROR_CHARS = 1000


def error_line(error: object, secret: str | None = None) -> str | None:
    """`error` (a message or an exception, shown as `Type: message`) as one line for
    `runs.error`: whitespace collapsed, URL passwords and `secret` masked, at most ERROR_CHARS
    characters; None for None."""
    if error is None:
        return None
    if isinstance(error, BaseException):
        text = str(error).strip()
        error = f"{type(error).__name__}: {text}" if text else type(error).__name__
    line = " ".join(scrub(str(error), secret).split())
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 3] + "..."


@dataclass(frozen=True)
class StoreUrl:
    """A parsed store URL: the backend, and a DuckDB path or a SQLAlchemy URL."""

    backend: str  # "duckdb" | "postgresql"
    masked: str
    path: Path | None = None
    sqlalchemy_url: URL | None = None

    @property
    def password(self) -> str | None:
        """The password in a PostgreSQL URL (to scrub from messages), else None."""
        return self.sqlalchemy_url.password if self.sqlalchemy_url is not None else None


def parse_store_url(url: str) -> StoreUrl:
    """Parse `duckdb:///abs/file.duckdb`, `duckdb:////abs/file.duckdb`,
    `duckdb:relative/file.duckdb` or `postgresql://user[:password]@host[:port]/db`.

    Raises StoreArgumentError (a ValueError) naming what is wrong with the URL."""
    if not isinstance(url, str) or not url.strip():
        raise StoreArgumentError(
            "store URL is empty: use duckdb:///path/file.duckdb or postgresql://..."
        )
    url = url.strip()
    scheme = url.split(":", 1)[0].lower()
    if scheme == "duckdb":
        rest = url[len("duckdb:") :]
        if rest.startswith("//"):
            rest = rest[2:]  # duckdb:///abs -> /abs ; duckdb:////abs -> //abs
            if rest.startswith("//"):
                rest = rest[1:]
        if not rest or rest in {"/", ":memory:", "/:memory:"}:
            raise StoreArgumentError(
                f"store URL {url!r}: a DuckDB store needs a file path, e.g."
                " duckdb:///abs/path/store.duckdb (in-memory stores cannot be shared)"
            )
        path = Path(rest).expanduser()
        path = path if path.is_absolute() else Path.cwd() / path
        return StoreUrl("duckdb", masked=f"duckdb://{path}", path=path.resolve())
    if scheme in {"postgresql", "postgres", "postgresql+psycopg"}:
        try:
            parsed = make_url(_encode_password_at(url))
        except Exception:
            raise StoreArgumentError(
                f"store URL {mask_url(url)!r} is not a valid PostgreSQL URL"
            ) from None
        parsed = parsed.set(drivername="postgresql+psycopg")
        query = dict(parsed.query)
        if "password" in query:  # ?password=...: move it where it is masked and scrubbed
            password = query.pop("password")
            password = password[-1] if isinstance(password, tuple) else password
            parsed = parsed.set(password=password, query=query)
        if not parsed.database:
            raise StoreArgumentError(f"store URL {mask_url(url)!r} names no database")
        masked = parsed.set(drivername="postgresql").render_as_string(hide_password=True)
        return StoreUrl("postgresql", masked=masked, sqlalchemy_url=parsed)
    raise StoreArgumentError(
        f"store URL {mask_url(url)!r}: unsupported scheme {scheme!r}; use"
        " duckdb:///path/file.duckdb or postgresql://user@host:port/db"
    )


def _encode_password_at(url: str) -> str:
    """`scheme://user:p@ss@host/db` with the password's unencoded `@` percent-encoded: the
    user info ends at the last `@` before the path, as libpq reads it (SQLAlchemy would
    otherwise end the password at the first `@` and take the rest for the host)."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@", 0, rest.find("?") if "?" in rest else len(rest))
    if not sep or at < 0:
        return url
    userinfo, tail = rest[:at], rest[at:]
    if "@" not in userinfo or ":" not in userinfo:
        return url
    user, _, password = userinfo.partition(":")
    return f"{scheme}://{user}:{password.replace('@', '%40')}{tail}"
