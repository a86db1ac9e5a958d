"""Cheap checks before a run: each mistake fails fast, naming what is wrong."""

from __future__ import annotations

import time
from datetime import date

import pytest

from configs import SegmentationError, config_from_mapping
from features.events import EventContractError
from pipelines.cli import main
from pipelines.preflight import FutureAsOfError, preflight
from pipelines.store import OutOfOrderError, open_store
from tests.pipelines.store_worker import make_request

TODAY = date(2026, 12, 1)


@pytest.fixture
def config(tmp_path, monkeypatch):
    for name in ("SEGMENTATION_STORE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    events = tmp_path / "events"
    events.mkdir()
    (events / "part.csv").write_text("client_id,event_time,event_type\nc1,2025-01-01,login\n")
    return config_from_mapping(
        {"workdir": str(tmp_path / "work"), "events": {"path": str(events)}},
        source=str(tmp_path / "config.yaml"),
    )


def test_a_sound_run_passes(config):
    preflight(config, as_of=date(2025, 6, 30), today=TODAY)


def test_a_future_as_of_needs_allow_future(config):
    with pytest.raises(FutureAsOfError, match="after today.*--allow-future"):
        preflight(config, as_of=date(2027, 6, 1), today=TODAY)
    preflight(config, as_of=date(2027, 6, 1), today=TODAY, allow_future=True)
    preflight(config, as_of=TODAY, today=TODAY)  # today itself is fine


def test_a_missing_events_path_is_named(config, tmp_path):
    with pytest.raises(EventContractError, match="nowhere"):
        preflight(config, as_of=date(2025, 6, 30), events=str(tmp_path / "nowhere"), today=TODAY)


def test_a_missing_links_file_is_named(tmp_path, config):
    broken = config.model_copy(
        update={"identity": config.identity.model_copy(update={"links_file": "/no/links.csv"})}
    )
    with pytest.raises(EventContractError, match="links_file /no/links.csv"):
        preflight(broken, as_of=date(2025, 6, 30), today=TODAY)


def test_a_bad_rules_file_fails(tmp_path, config):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: x\n    when: recency_days >>> 3\n")
    broken = config.model_copy(
        update={"rules": config.rules.model_copy(update={"file": str(rules)})}
    )
    with pytest.raises(SegmentationError):
        preflight(broken, as_of=date(2025, 6, 30), today=TODAY)


def test_an_as_of_older_than_the_store_fails_unless_rebuild(config):
    store = open_store(config.store_url)
    store.publish(make_request(date(2025, 6, 30), n_clients=50))
    store.close()
    with pytest.raises(OutOfOrderError, match="older than the latest published"):
        preflight(config, as_of=date(2025, 6, 1), today=TODAY)
    preflight(config, as_of=date(2025, 6, 1), today=TODAY, rebuild=True)
    preflight(config, as_of=date(2025, 6, 30), today=TODAY)  # a re-run of the latest


def test_run_fails_within_seconds_on_a_future_date(config, capsys):
    started = time.perf_counter()
    code = main(["run", "--events", config.events_path, "--as-of", "2099-01-01"])
    assert code == 1
    assert "after today" in capsys.readouterr().err
    assert time.perf_counter() - started < 15  # no Prefect server, no event read
