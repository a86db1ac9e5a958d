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


def test_the_first_files_columns_are_checked_after_the_mapping(config, tmp_path):
    events = tmp_path / "bad"
    events.mkdir()
    (events / "a.csv").write_text("client_id,ts,event_type\nc1,2025-01-01,login\n")
    with pytest.raises(EventContractError, match="missing required column.*event_time"):
        preflight(config, as_of=date(2025, 6, 30), events=str(events), today=TODAY)
    mapped = config.model_copy(
        update={"events": config.events.model_copy(update={"columns": {"event_time": "ts"}})}
    )
    preflight(mapped, as_of=date(2025, 1, 1), events=str(events), today=TODAY)
    wrong = config.model_copy(
        update={"events": config.events.model_copy(update={"columns": {"event_time": "when"}})}
    )
    with pytest.raises(EventContractError, match="'when' \\(mapped to event_time"):
        preflight(wrong, as_of=date(2025, 1, 1), events=str(events), today=TODAY)


def _parquet_events(path, last: str, tz: str | None = None) -> None:
    import pandas as pd

    times = pd.to_datetime(["2025-01-01 10:00", last])
    frame = pd.DataFrame(
        {
            "client_id": ["c1", "c2"],
            "event_time": times.tz_localize(tz) if tz else times,
            "event_type": ["login", "purchase"],
        }
    )
    path.mkdir(exist_ok=True)
    frame.to_parquet(path / "part-0.parquet", index=False)


def test_an_as_of_past_the_newest_event_needs_allow_future(config, tmp_path):
    events = tmp_path / "pq"
    _parquet_events(events, "2025-03-10 23:30", tz="UTC")
    preflight(config, as_of=date(2025, 3, 11), events=str(events), today=TODAY)  # + 1 day
    with pytest.raises(FutureAsOfError, match=r"newest event \(2025-03-10\)"):
        preflight(config, as_of=date(2025, 3, 12), events=str(events), today=TODAY)
    preflight(config, as_of=date(2025, 3, 12), events=str(events), today=TODAY, allow_future=True)
    # CSV has no statistics: not checked
    preflight(config, as_of=date(2026, 3, 1), today=TODAY)


def test_every_check_fails_within_3_seconds_in_a_fresh_process(config, tmp_path):
    import subprocess
    import sys

    events = tmp_path / "pq2"
    _parquet_events(events, "2025-03-10 12:00")
    command = [sys.executable, "-m", "pipelines.cli", "run", "--config", "", "--events"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"workdir: {tmp_path / 'work'}\n")
    command[5] = str(cfg)
    started = time.perf_counter()
    done = subprocess.run(
        [*command, str(events), "--as-of", "2025-06-01"], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 1 and "newest event (2025-03-10)" in done.stderr
    assert seconds < 10, seconds  # about 2 s on an idle 2-core machine (README)


def _on_dask(config, tmp_path, **execution):
    """The config with `execution: dask` and Parquet events (the sharded build reads those)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    events = tmp_path / "parquet-events"
    events.mkdir(exist_ok=True)
    pq.write_table(
        pa.table({"client_id": ["c1"], "event_time": ["2025-01-01"], "event_type": ["login"]}),
        events / "part.parquet",
    )
    return config.model_copy(
        update={
            "execution": config.execution.model_copy(update={"mode": "dask", **execution}),
            "events": config.events.model_copy(update={"path": str(events)}),
        }
    )


def test_an_unreachable_dask_scheduler_fails_in_seconds_naming_it(config, tmp_path):
    from pipelines.distributed import ClusterUnreachableError

    on_dask = _on_dask(
        config, tmp_path, scheduler_address="tcp://127.0.0.1:9", connect_timeout_seconds=2.0
    )
    started = time.perf_counter()
    with pytest.raises(ClusterUnreachableError, match=r"scheduler_address 'tcp://127.0.0.1:9'"):
        preflight(on_dask, as_of=date(2025, 1, 1), today=TODAY)
    assert time.perf_counter() - started < 15


def test_what_the_dask_build_cannot_shard_is_refused_before_any_read(config, tmp_path):
    from pipelines.distributed import DistributedBuildError

    on_dask = _on_dask(config, tmp_path)
    preflight(on_dask, as_of=date(2025, 1, 1), today=TODAY)  # Parquet, a LocalCluster: fine
    csv = on_dask.model_copy(update={"events": config.events})  # the fixture's CSV events
    with pytest.raises(DistributedBuildError, match="CSV files.*Parquet only"):
        preflight(csv, as_of=date(2025, 1, 1), today=TODAY)
    links = tmp_path / "links.csv"
    links.write_text("identifier_a,identifier_b\nc1,e@x\n")
    stitched = on_dask.model_copy(
        update={"identity": on_dask.identity.model_copy(update={"links_file": str(links)})}
    )
    preflight(stitched, as_of=date(2025, 1, 1), today=TODAY)  # stitched before sharding
    missing = _on_dask(config, tmp_path, shared_dir=str(tmp_path / "no-such-folder"))
    with pytest.raises(DistributedBuildError, match="shared_dir .*no-such-folder: not a folder"):
        preflight(missing, as_of=date(2025, 1, 1), today=TODAY)
