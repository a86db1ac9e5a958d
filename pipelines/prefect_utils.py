"""Retry convention for Prefect tasks: retry transient infrastructure errors, never bad input.

A nightly task that fails because the database was locked, a connection dropped or a server
timed out is worth retrying after a delay; a task that fails on bad input (ValueError, a
missing column, a missing events file) fails the same way every time, so retrying only delays
the alert. Use:

    @task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_on_transient)
    def publish(...): ...

or, with the numbers from the config, `my_task.with_options(**retry_options(cfg.schedule))`.

What counts as transient (`is_transient`): an exception of one of `TRANSIENT_ERRORS`
(SQLAlchemy and psycopg OperationalError, DuckDB IOException, ConnectionError, TimeoutError)
whose message does not say the thing is missing or malformed (`PERMANENT_MESSAGES`: DuckDB
raises IOException for "No files found" too, SQLite raises OperationalError for "no such
table"). An exception raised *from* a transient one (`raise StoreError(...) from exc`) is
transient as well: the cause chain is followed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

import duckdb
import psycopg
import sqlalchemy.exc

from configs import ScheduleConfig

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import State, TaskRun

__all__ = [
    "PERMANENT_MESSAGES",
    "TRANSIENT_ERRORS",
    "RetryOptions",
    "is_transient",
    "retry_on_transient",
    "retry_options",
    "state_exception",
]

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    psycopg.OperationalError,
    duckdb.IOException,
    ConnectionError,
    TimeoutError,
)

PERMANENT_MESSAGES = re.compile(
    r"no files found|no such file|does not exist|no such table|no such column|syntax error"
    r"|permission denied|authentication failed|password authentication",
    re.IGNORECASE,
)


def is_transient(exc: BaseException | None) -> bool:
    """True when `exc` (or an exception in its cause chain) is a transient infrastructure error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TRANSIENT_ERRORS) and not PERMANENT_MESSAGES.search(str(exc)):
            return True
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return False


class RetryOptions(TypedDict):
    """The retry keywords of `@task(...)` and `task.with_options(...)`."""

    retries: int
    retry_delay_seconds: float
    retry_condition_fn: Callable[[Task[..., Any], TaskRun, State], bool]


def retry_on_transient(task: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    """Prefect `retry_condition_fn`: retry the failed task run only if its error is transient."""
    return is_transient(state_exception(state))


def retry_options(schedule_config: ScheduleConfig | None = None) -> RetryOptions:
    """Keyword arguments for `@task(...)` / `task.with_options(...)`: retries, delay, condition.

    Takes the `schedule` section of the engine config (retries, retry_delay_seconds); without
    one, its defaults: 2 retries 10 seconds apart.
    """
    schedule = schedule_config if schedule_config is not None else ScheduleConfig()
    return {
        "retries": int(schedule.retries),
        "retry_delay_seconds": float(schedule.retry_delay_seconds),
        "retry_condition_fn": retry_on_transient,
    }


def state_exception(state: State) -> BaseException | None:
    """The exception carried by a failed Prefect state, or None."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # the result itself could not be read: judge that error
        return exc
    return result if isinstance(result, BaseException) else None
