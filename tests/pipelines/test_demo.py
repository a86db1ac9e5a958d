"""The demo's work directory: starting over removes only what a demo made; --rebuild keeps
its store and models; a store or events it did not make are never touched."""

from __future__ import annotations

import json
from datetime import date

import pytest

from pipelines.demo import DEMO_MANIFEST, DemoWorkdirError, demo_end, reset_workdir


def _demo_layout(work):
    (work / "events").mkdir(parents=True)
    (work / "events" / "part-00000.parquet").write_bytes(b"x")
    for name in ("store.duckdb", "mlflow.db", "truth.parquet"):
        (work / name).write_bytes(b"x")
    (work / "reports").mkdir()
    (work / "mlartifacts").mkdir()
    (work / DEMO_MANIFEST).write_text(
        json.dumps(
            {
                "paths": [
                    "events",
                    "store.duckdb",
                    "mlflow.db",
                    "truth.parquet",
                    "reports",
                    "mlartifacts",
                    "../outside",
                    "/etc",
                ]
            }
        )
    )
    (work / "my-notes.txt").write_text("mine")


def test_starting_over_removes_only_the_demos_own_files(tmp_path):
    work = tmp_path / "w"
    _demo_layout(work)
    (tmp_path / "outside").write_text("not the demo's")
    removed = reset_workdir(work)
    assert sorted(removed) == sorted(
        ["events", "store.duckdb", "mlflow.db", "truth.parquet", "reports", "mlartifacts"]
    )
    assert sorted(p.name for p in work.iterdir()) == [DEMO_MANIFEST, "my-notes.txt"]
    assert (tmp_path / "outside").exists()


def test_rebuild_keeps_the_store_and_the_models(tmp_path):
    work = tmp_path / "w"
    _demo_layout(work)
    removed = reset_workdir(work, keep_store=True)
    assert "store.duckdb" not in removed and (work / "store.duckdb").exists()
    assert (work / "mlflow.db").exists() and (work / "mlartifacts").exists()
    assert not (work / "events").exists()


def test_a_store_or_events_the_demo_did_not_make_are_refused(tmp_path):
    work = tmp_path / "w"
    (work / "events").mkdir(parents=True)
    (work / "store.duckdb").write_bytes(b"x")
    with pytest.raises(DemoWorkdirError, match="store.duckdb, events that the demo did not make"):
        reset_workdir(work)
    assert (work / "store.duckdb").exists()
    assert reset_workdir(tmp_path / "empty") == []


def test_a_demo_of_the_old_layout_is_recognized(tmp_path):
    work = tmp_path / "w"
    (work / "data" / "events").mkdir(parents=True)
    (work / "data" / "truth.parquet").write_bytes(b"x")
    (work / "store.duckdb").write_bytes(b"x")
    assert sorted(reset_workdir(work)) == ["data", "store.duckdb"]


def test_the_demo_data_ends_yesterday():
    assert demo_end(date(2026, 12, 1)) == date(2026, 11, 30)
