"""The nightly schedule: a Prefect deployment of a flow on the config's cron, and serving it.

`build_deployment(flow, config)` returns the Prefect `RunnerDeployment` (name, cron schedule
with time zone, default parameters) without contacting any server, so it can be checked or
applied. `serve_nightly(flow, config)` serves it: the process registers the deployment, polls
the Prefect API for scheduled runs and executes each run in a subprocess until stopped.

What serving needs (Prefect 3.8.8): a Prefect *server with its scheduler service*. The
temporary server Prefect starts on its own when `PREFECT_API_URL` is unset is an ephemeral
one that runs without services, so a deployment served against it is registered but never
scheduled (Prefect warns "Cannot schedule flows on an ephemeral server"). So `serve_nightly`:
1. uses `PREFECT_API_URL` when it is set (a `prefect server start` elsewhere, or Prefect Cloud);
2. otherwise uses a Prefect server already answering on 127.0.0.1:`port` (default 4200);
3. otherwise (`server="auto"`) starts `prefect server start` itself, with its database under
   `<workdir>/prefect`, for as long as it serves, and stops it on exit (Ctrl-C, SIGTERM).
With `server="external"` it never starts one and fails with instructions instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import ValidationError

from configs import EngineConfig, SegmentationError
from pipelines.prefect_utils import die_with_parent

__all__ = [
    "DEFAULT_PORT",
    "SERVER_STARTUP_TIMEOUT",
    "ScheduleError",
    "build_deployment",
    "cron_schedule",
    "local_server",
    "next_run",
    "next_run_text",
    "prefect_api",
    "serve_nightly",
    "server_healthy",
]

DEFAULT_PORT = 4200
SERVER_STARTUP_TIMEOUT = 120.0

P = ParamSpec("P")
R = TypeVar("R")


class ScheduleError(SegmentationError, RuntimeError):
    """The schedule cannot be built or served; the message says what to change."""


def build_deployment(
    flow: Flow[P, R],
    config: EngineConfig,
    *,
    parameters: Mapping[str, object] | None = None,
    tags: list[str] | None = None,
) -> RunnerDeployment:
    """The flow's deployment on `config.schedule` (cron, timezone, deployment_name).

    `parameters` are the default parameters of every scheduled run (e.g. the config path).
    Returns a `prefect.deployments.runner.RunnerDeployment`; nothing is sent to a server
    until it is applied (`deployment.apply()`) or served. The entrypoint is the flow's module
    path (`pipelines.nightly.<function>`), so runs work from any directory where the package
    is installed; a flow defined in a script (`__main__`) falls back to its file path.
    """
    schedule = config.schedule
    cron_schedule(schedule.cron, schedule.timezone)  # fail early, naming the config key
    module = getattr(flow, "__module__", None)
    entrypoint_type = (
        EntrypointType.FILE_PATH if module in (None, "__main__") else EntrypointType.MODULE_PATH
    )
    deployment = flow.to_deployment(
        entrypoint_type=entrypoint_type,
        name=schedule.deployment_name,
        schedules=[Cron(schedule.cron, timezone=schedule.timezone)],
        parameters=dict(parameters or {}),
        tags=list(tags) if tags is not None else ["segmentation", "nightly"],
        description=(
            f"Nightly segmentation run, cron {schedule.cron!r} in {schedule.timezone} "
            "(publishes as of the previous day)."
        ),
    )
    if not isinstance(deployment, RunnerDeployment):  # Prefect's coroutine, in an event loop
        deployment.close()
        raise ScheduleError("build_deployment is synchronous: call it outside an event loop")
    return deployment


def cron_schedule(cron: str, timezone: str) -> CronSchedule:
    """The Prefect cron schedule; a bad cron or time zone raises ScheduleError naming it."""
    try:
        return CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        messages = "; ".join(error["msg"] for error in exc.errors())
        raise ScheduleError(
            f"schedule.cron={cron!r} / schedule.timezone={timezone!r}: {messages}"
        ) from None


def serve_nightly(
    flow: Flow[P, R],
    config: EngineConfig,
    *,
    parameters: Mapping[str, object] | None = None,
    server: Literal["auto", "external"] = "auto",
    port: int = DEFAULT_PORT,
    limit: int | None = 1,
) -> None:
    """Serve `flow` on the config's schedule until interrupted (blocks).

    `limit` caps concurrent runs (one nightly run at a time by default). See the module
    docstring for how the Prefect server is found or started.
    """
    deployment = build_deployment(flow, config, parameters=parameters)
    with prefect_api(config, server=server, port=port) as api_url:
        from prefect import serve

        print(f"Serving {flow.name}/{deployment.name} against {api_url}", file=sys.stderr)
        print(next_run_text(config.schedule.cron, config.schedule.timezone), file=sys.stderr)
        serve(deployment, limit=limit)


def next_run(cron: str, timezone: str, *, after: datetime | None = None) -> datetime:
    """When the cron fires next after `after` (default now), in the schedule's time zone,
    as Prefect's scheduler computes it (daylight saving included).

    Raises
    ------
    ScheduleError
        A bad cron or time zone, naming the config keys.
    """
    import asyncio

    from prefect.server.schemas.schedules import CronSchedule as ServerCronSchedule

    cron_schedule(cron, timezone)  # the config's own error for a bad cron or zone
    start = (after or datetime.now(UTC)).astimezone(UTC) + timedelta(seconds=1)
    dates = asyncio.run(ServerCronSchedule(cron=cron, timezone=timezone).get_dates(1, start=start))
    return dates[0].astimezone(ZoneInfo(timezone))


def next_run_text(cron: str, timezone: str, *, after: datetime | None = None) -> str:
    """One line for `serve`: when the next scheduled run is, and in how long."""
    now = after or datetime.now(UTC)
    when = next_run(cron, timezone, after=now)
    minutes = max(int((when - now).total_seconds() // 60), 0)
    wait = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    return (
        f"Next run: {when:%Y-%m-%d %H:%M} {timezone} (in {wait}; cron {cron!r}),"
        " publishing as of the day before"
    )


@contextlib.contextmanager
def prefect_api(
    config: EngineConfig,
    *,
    server: Literal["auto", "external"] = "auto",
    port: int = DEFAULT_PORT,
) -> Iterator[str]:
    """Yield the URL of a Prefect API with a scheduler, starting a local server if allowed."""
    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    local = f"http://127.0.0.1:{port}/api"
    if server_healthy(local):
        with _use_api(local):
            yield local
        return
    if server != "auto":
        raise ScheduleError(
            "serving the schedule needs a Prefect server: run `prefect server start` and set "
            f"PREFECT_API_URL={local} (or use server='auto' to start one)"
        )
    workdir = Path(config.workdir_path) / "prefect"
    with local_server(workdir, port=port) as url, _use_api(url):
        yield url


@contextlib.contextmanager
def local_server(
    home: str | os.PathLike[str],
    *,
    port: int = DEFAULT_PORT,
    timeout: float = SERVER_STARTUP_TIMEOUT,
    ui: bool = True,
) -> Iterator[str]:
    """Run `prefect server start` (scheduler on) with its database in `home`; yield its API URL.

    The server is stopped when the block ends; its output goes to `home/server.log`.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}/api"
    if server_healthy(url):
        raise ScheduleError(f"a Prefect server already answers on {url}: use it or another port")
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
    }
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--scheduler"]
    log = (home / "server.log").open("ab")
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    die_with_parent(process.pid, group=True)  # not left serving after a kill -9 of this process
    try:
        deadline = time.monotonic() + timeout
        while not server_healthy(url):
            if process.poll() is not None:
                raise ScheduleError(
                    f"`prefect server start` exited with code {process.returncode}; "
                    f"see {home / 'server.log'}"
                )
            if time.monotonic() > deadline:
                raise ScheduleError(f"Prefect server did not answer on {url} within {timeout} s")
            time.sleep(0.5)
        yield url
    finally:
        _stop(process)
        log.close()


def server_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True when a Prefect API answers its health check at `api_url`."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def _use_api(url: str) -> Iterator[None]:
    # Prefect settings for this process, and the environment for the flow-run subprocesses
    # the runner starts.
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def _stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Stop the server's process group: SIGTERM, then SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn workers
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
