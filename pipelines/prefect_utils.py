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

Process coordination around a run: `file_lock` (an flock with a bounded wait, released when
the process dies), `ensure_prefect_api` (start Prefect's temporary server once, under a lock,
before the first flow call: two first runs at once otherwise both create its database and
one times out) and `die_with_parent` (a watchdog that stops a child server when the process
that started it is gone, even after kill -9).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import duckdb
import psycopg
import sqlalchemy.exc

from configs import ScheduleConfig
from pipelines.locks import LockTimeoutError, file_lock

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import State, TaskRun

__all__ = [
    "PERMANENT_MESSAGES",
    "TRANSIENT_ERRORS",
    "LockTimeoutError",
    "RetryOptions",
    "die_with_parent",
    "ensure_prefect_api",
    "file_lock",
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


EPHEMERAL_STARTUP_SECONDS = 90.0  # first start creates the database: slow on a busy machine


def ensure_prefect_api() -> None:
    """Before the first flow call of a process: when no `PREFECT_API_URL` is set, start
    Prefect's temporary server now, once, under a lock in PREFECT_HOME (its database lives
    there: two processes creating it at once collide), and make it die with this process.
    Later flow calls reuse the running server. Nothing to do with an API URL set."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    server = SubprocessASGIServer()
    if server.running:
        return
    timeout = max(
        EPHEMERAL_STARTUP_SECONDS, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    )
    with file_lock(Path(PREFECT_HOME.value()) / "segmentation-server-start.lock", 2 * timeout):
        server.start(timeout=int(timeout))
    if server.server_process is not None:
        die_with_parent(server.server_process.pid)


# The watchdog: a tiny process of its own (standard library only) that waits on pidfds of the
# parent and the child and, once the parent is gone while the child runs, terminates the child
# (its whole process group with "group"), killing it after 5 s. A pidfd never names a recycled
# pid; the watchdog exits as soon as the child is gone.
_WATCHDOG = """
import contextlib, os, select, signal, sys
parent_pid, child_pid = int(sys.argv[1]), int(sys.argv[2])
group = sys.argv[3:] == ["group"]
with contextlib.suppress(ProcessLookupError):
    child = os.pidfd_open(child_pid)
    try:
        parent = os.pidfd_open(parent_pid)
        ready, _, _ = select.select([parent, child], [], [])
    except ProcessLookupError:
        ready = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if child in ready:
            break
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(child_pid, sig)
            else:
                signal.pidfd_send_signal(child, sig)
        ready, _, _ = select.select([child], [], [], 5.0)
"""


def die_with_parent(child_pid: int, *, group: bool = False) -> subprocess.Popen[bytes] | None:
    """Start a watchdog that stops `child_pid` (with `group`: its process group, for a child
    started in a session of its own) when this process dies, even by kill -9. None where
    pidfds are not available (not Linux): there a killed parent leaves the child running."""
    if not hasattr(os, "pidfd_open"):
        return None
    args = [str(os.getpid()), str(child_pid), *(["group"] if group else [])]
    watchdog = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _WATCHDOG, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the run's process group does not stop it early
    )
    _WATCHDOGS.append(watchdog)  # kept: it runs for as long as this process does
    return watchdog


_WATCHDOGS: list[subprocess.Popen[bytes]] = []
