"""Tests of the nightly schedule (deployment, Prefect server) and the transient-retry convention."""

from __future__ import annotations

import datetime as dt
import socket
import time
from zoneinfo import ZoneInfo

import duckdb
import psycopg
import pytest
import sqlalchemy.exc
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.schedules import CronSchedule
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_API_URL, temporary_settings

import pipelines.schedule as schedule_module
from configs import config_from_mapping
from pipelines.prefect_utils import is_transient, retry_on_transient, retry_options
from pipelines.schedule import ScheduleError, build_deployment, prefect_api, serve_nightly


@flow(name="nightly-test")
def nightly_stub(config_path: str | None = None, as_of: str | None = None) -> str | None:
    return as_of


def _config(tmp_path=None, **schedule):
    raw = {"schedule": {"cron": "30 3 * * 1-5", "timezone": "Europe/Paris", **schedule}}
    if tmp_path is not None:
        raw["workdir"] = str(tmp_path / "work")
    return config_from_mapping(raw)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_deployment_carries_configured_schedule() -> None:
    config = _config(deployment_name="nightly-eu")
    deployment = build_deployment(nightly_stub, config, parameters={"config_path": "/c.yaml"})
    assert deployment.name == "nightly-eu"
    assert deployment.flow_name == "nightly-test"
    assert deployment.entrypoint == f"{__name__}.nightly_stub"  # importable module path
    assert deployment.parameters == {"config_path": "/c.yaml"}
    [entry] = deployment.schedules
    assert isinstance(entry.schedule, CronSchedule)
    assert (entry.schedule.cron, entry.schedule.timezone) == ("30 3 * * 1-5", "Europe/Paris")
    assert entry.active


@pytest.mark.parametrize(
    ("cron", "timezone", "message"),
    [("61 2 * * *", "UTC", "Invalid cron"), ("0 2 * * *", "Mars/Olympus", "Invalid timezone")],
)
def test_bad_schedule_fails_naming_the_key(cron: str, timezone: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=f"schedule.cron=.*{message}"):
        build_deployment(nightly_stub, _config(cron=cron, timezone=timezone))


def test_applied_deployment_is_stored_with_its_schedule(prefect_harness) -> None:
    deployment = build_deployment(nightly_stub, _config(), parameters={"config_path": "/c.yaml"})
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
        flow_name = client.read_flow(stored.flow_id).name
    assert (flow_name, stored.name) == ("nightly-test", "nightly")
    assert stored.parameters == {"config_path": "/c.yaml"}
    [entry] = stored.schedules
    assert (entry.schedule.cron, entry.schedule.timezone) == ("30 3 * * 1-5", "Europe/Paris")


def test_transient_errors_are_classified() -> None:
    assert is_transient(ConnectionError("reset by peer"))
    assert is_transient(TimeoutError())
    assert is_transient(duckdb.IOException('Could not set lock on file "x.duckdb"'))
    assert is_transient(psycopg.OperationalError("connection refused"))
    assert is_transient(sqlalchemy.exc.OperationalError("select 1", {}, "database is locked"))
    assert not is_transient(ValueError("bad amount"))
    assert not is_transient(KeyError("client_id"))
    assert not is_transient(duckdb.IOException('No files found that match the pattern "e/*"'))
    assert not is_transient(sqlalchemy.exc.OperationalError("q", {}, "no such table: runs"))
    assert not is_transient(None)
    try:
        try:
            raise ConnectionError("dropped")
        except ConnectionError as exc:
            raise RuntimeError("publish failed") from exc
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    assert retry_options(_config().schedule)["retries"] == 2
    assert retry_options()["retry_condition_fn"] is retry_on_transient


ATTEMPTS: dict[str, int] = {}


@task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_transient)
def flaky(kind: str) -> str:
    ATTEMPTS[kind] = ATTEMPTS.get(kind, 0) + 1
    if ATTEMPTS[kind] == 1:
        raise ConnectionError("dropped") if kind == "transient" else ValueError("bad input")
    return "ok"


@flow
def flaky_flow(kind: str) -> str:
    return flaky(kind)


def test_only_transient_failures_are_retried(prefect_harness) -> None:
    ATTEMPTS.clear()
    assert flaky_flow("transient") == "ok"
    assert ATTEMPTS["transient"] == 2
    state = flaky_flow("bad", return_state=True)
    assert state.is_failed()
    assert ATTEMPTS["bad"] == 1
    with pytest.raises(ValueError, match="bad input"):
        state.result()


def test_serving_without_a_server_fails_with_instructions(tmp_path) -> None:
    port = _free_port()
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        pytest.raises(ScheduleError, match="prefect server start"),
        prefect_api(_config(tmp_path), server="external", port=port),
    ):
        pass


@pytest.mark.slow
def test_serve_starts_a_scheduling_server(tmp_path, monkeypatch) -> None:
    """serve_nightly with no API configured starts `prefect server start`, whose scheduler
    creates the runs; the blocking `prefect.serve` loop is replaced by a check."""
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "1")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    config = _config(tmp_path, cron="0 2 * * *", timezone="America/New_York")
    server_log = tmp_path / "work" / "prefect" / "server.log"
    seen: dict = {"runs": []}

    def fake_serve(deployment, limit=None):
        seen["api"] = PREFECT_API_URL.value()
        deployment_id = deployment.apply()
        with get_client(sync_client=True) as client:
            for _ in range(40):
                runs = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=5)
                seen["runs"] = [run for run in runs if run.deployment_id == deployment_id]
                if seen["runs"] or "schedule_deployments" in server_log.read_text():
                    break  # runs created, or the scheduler logged an error
                time.sleep(0.5)

    monkeypatch.setattr("prefect.serve", fake_serve)
    port = _free_port()
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        serve_nightly(nightly_stub, config, parameters={"as_of": None}, port=port)
    assert seen["api"] == f"http://127.0.0.1:{port}/api"
    assert not schedule_module.server_healthy(seen["api"])  # stopped with the serve loop
    assert (tmp_path / "work" / "prefect" / "prefect.db").is_file()
    assert seen["runs"], "no scheduled run; server log tail: " + server_log.read_text()[-300:]
    local = seen["runs"][0].expected_start_time.astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (2, 0)
    assert local > dt.datetime.now(ZoneInfo("America/New_York"))
