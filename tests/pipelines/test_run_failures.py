"""Failures around a run: the failed run is logged in `runs` with its error (one line, secrets
masked), and an unreachable store is reported once, before any heavy work."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import pytest

from pipelines import flow_params, nightly
from pipelines.store import StoreConnectionError, open_store

SECRET = "s3cr3t-PW"
AS_OF = date(2025, 5, 1)
STARTED = datetime(2025, 5, 2, 2, 0, tzinfo=UTC)


def test_a_failed_run_is_logged_with_its_error(tmp_path):
    store = open_store(f"duckdb://{tmp_path / 'store.duckdb'}")
    error = ValueError(f"bad input\nwhile reading postgresql://u:{SECRET}@h/db")
    nightly._record_failure(store, "run-1", AS_OF, STARTED, "mlflow-1", error)
    run = store.runs().set_index("run_id").loc["run-1"]
    assert run["status"] == "failed" and run["mlflow_run_id"] == "mlflow-1"
    assert run["error"] == "ValueError: bad input while reading postgresql://u:***@h/db"
    store.close()


def test_an_unreachable_store_is_one_error_not_two(caplog):
    store = open_store(f"postgresql://postgres:{SECRET}@127.0.0.1:1/test")
    with pytest.raises(StoreConnectionError) as info:
        nightly._latest_as_of(store)  # raised before the heavy work, not taken for "empty"
    with caplog.at_level(logging.INFO):
        nightly._record_failure(store, "run-1", AS_OF, STARTED, None, info.value)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "could not record the failed run" in caplog.text  # still there with -v
    assert SECRET not in caplog.text
    store.close()


def test_a_new_store_has_no_latest_date(tmp_path):
    store = open_store(f"duckdb://{tmp_path / 'store.duckdb'}")
    assert nightly._latest_as_of(store) is None
    store.close()


def test_a_run_that_fails_before_its_flow_starts_is_logged(tmp_path, monkeypatch):
    from configs import config_from_mapping

    for name in ("SEGMENTATION_STORE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    config = config_from_mapping({"workdir": str(tmp_path / "work")}, source="<test>")

    def no_server() -> None:
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(nightly, "ensure_prefect_api", no_server)
    with pytest.raises(RuntimeError, match="Timed out"):
        nightly.run_nightly(config, as_of=AS_OF)
    with pytest.raises(RuntimeError, match="Timed out"):
        nightly.run_backfill(config, start=AS_OF, end=AS_OF)
    store = open_store(config.store_url)
    runs = store.runs()
    store.close()
    assert runs["status"].tolist() == ["failed", "failed"]
    assert (runs["as_of"].dt.date == AS_OF).all()
    assert runs["error"].str.startswith("RuntimeError: Timed out while attempting").all()
    assert not flow_params._SECRETS and not flow_params._STARTED


def test_first_use_of_a_sqlite_mlflow_database_is_serialised(tmp_path):
    import threading

    from pipelines.prefect_utils import file_lock
    from pipelines.tracking import make_client

    db = tmp_path / "mlflow" / "mlflow.db"
    uri = f"sqlite:///{db}"
    done = threading.Event()
    errors: list[BaseException] = []

    def first_use() -> None:
        try:
            make_client(uri)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    with file_lock(db.with_name("mlflow.db.init.lock")):  # another process initialising it
        worker = threading.Thread(target=first_use)
        worker.start()
        assert not done.wait(1.5)  # it waits for the lock
        assert not db.exists()
    assert done.wait(120) and not errors
    worker.join()
    assert make_client(uri).search_experiments()  # tables and the default experiment exist


def test_file_lock_waits_then_times_out(tmp_path):
    from pipelines.prefect_utils import LockTimeoutError, file_lock

    with (
        file_lock(tmp_path / "x.lock"),
        pytest.raises(LockTimeoutError, match="x.lock"),
        file_lock(tmp_path / "x.lock", 0.2),
    ):
        pass
    with file_lock(tmp_path / "x.lock", 0.2):  # free again
        pass
