"""Atomicity of the store across processes, on DuckDB and PostgreSQL: a publisher killed in
the middle leaves the previous state intact and readable, and readers polling during
publishes always see one complete state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipelines.store import open_store
from tests.pipelines.store_worker import make_request
from tests.pipelines.test_store import published_tables, rows

ROOT = Path(__file__).resolve().parents[2]
N = 500
DAYS = [date(2024, 6, 1) + timedelta(days=i) for i in range(4)]


def start_publisher(url, schema, days, tmp_path, stage, seconds) -> tuple[subprocess.Popen, str]:
    signal_prefix = str(tmp_path / "paused")
    command = [
        sys.executable,
        "-m",
        "tests.pipelines.store_worker",
        "--url",
        url,
        "--schema",
        schema,
        "--dates",
        ",".join(d.isoformat() for d in days),
        "--clients",
        str(N),
        "--pause-stage",
        stage,
        "--pause-seconds",
        str(seconds),
        "--signal",
        signal_prefix,
    ]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    return process, signal_prefix


def wait_for(path: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            raise AssertionError(f"publisher exited early: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"publisher never reached {path}")
        time.sleep(0.05)


def location(store_location) -> tuple[str, str]:
    return store_location()


@pytest.mark.parametrize("stage", ["history", "identity", "runs"])
def test_killed_publisher_leaves_previous_state_and_next_run_succeeds(
    store_location, tmp_path, stage
):
    url, schema = location(store_location)
    store = open_store(url, schema, lock_timeout=20, reader_retry=20)
    store.publish(make_request(DAYS[0], N, identity=True))
    before = published_tables(store)
    runs_before = store.runs()
    identity_before = store.identity_map()

    process, prefix = start_publisher(url, schema, DAYS[1:2], tmp_path, stage, 120)
    wait_for(f"{prefix}.{DAYS[1].isoformat()}", process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)

    assert published_tables(store) == before
    assert store.latest_as_of() == DAYS[0]
    pd.testing.assert_frame_equal(store.runs(), runs_before)
    pd.testing.assert_frame_equal(store.identity_map(), identity_before)

    request = make_request(DAYS[1], N)
    result = store.publish(request)  # the lock and the file are free again
    assert result.clients == N and store.latest_as_of() == DAYS[1]
    assert rows(store.membership(), ["client_id", "segment_id"]) == rows(
        request.membership, ["client_id", "segment_id"]
    )
    assert len(store.transitions()) == result.entries + result.exits + result.moves + (
        result.lifecycle_changes
    )
    store.close()


def test_publisher_killed_after_commit_keeps_the_new_state(store_location, tmp_path):
    """Killed after COMMIT but before the connection closed (DuckDB: before the checkpoint,
    so the run lives only in the write-ahead log): the new state is complete on reopen."""
    url, schema = location(store_location)
    store = open_store(url, schema, lock_timeout=20, reader_retry=20)
    store.publish(make_request(DAYS[0], N))
    process, prefix = start_publisher(url, schema, DAYS[1:2], tmp_path, "committed", 120)
    wait_for(f"{prefix}.{DAYS[1].isoformat()}", process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)

    if store.backend == "duckdb":
        assert Path(url.removeprefix("duckdb://") + ".wal").exists()
    assert store.latest_as_of() == DAYS[1]
    assert rows(store.membership(), ["client_id", "segment_id"]) == rows(
        make_request(DAYS[1], N).membership, ["client_id", "segment_id"]
    )
    store.publish(make_request(DAYS[2], N))
    assert store.latest_as_of() == DAYS[2]
    store.close()


def consistency_problems(store) -> tuple[date | None, list[str]]:
    """Check, in one snapshot, that every table belongs to the latest successful run."""
    with store.snapshot() as r:
        runs = r.runs()
        membership = r.membership()
        scores = r.scores()
        history = r.history()
        transitions = r.transitions()
        segments = r.segments()
        identity = r.identity_map()
    latest = runs[runs["status"] == "success"].sort_values("as_of").iloc[-1]
    problems = []
    if len(membership) != latest.clients:
        problems.append(f"membership has {len(membership)} rows, run says {latest.clients}")
    if set(membership["run_id"]) != {latest.run_id}:
        problems.append(f"membership runs {set(membership['run_id'])} != {latest.run_id}")
    if set(scores["run_id"]) != {latest.run_id} or len(scores) != latest.clients:
        problems.append("scores do not belong to the latest run")
    open_rows = history[history["valid_to"].isna()]
    cols = ["client_id", "segment_id", "lifecycle_stage"]
    if rows(open_rows, cols) != rows(membership, cols):
        problems.append("open history stretches differ from membership")
    if (history["valid_from"] > latest.as_of).any():
        problems.append("history has stretches after the latest run")
    if len(transitions) == 0 or set(transitions["run_id"]) != {latest.run_id}:
        problems.append("transitions of the latest as_of do not belong to the latest run")
    if segments["size"].sum() != latest.clients:
        problems.append("segment sizes do not add up to the membership")
    if set(identity["run_id"]) != {latest.run_id}:
        problems.append("the identity map does not belong to the latest run")
    return pd.Timestamp(latest.as_of).date(), problems


def test_readers_polling_during_publishes_see_old_or_new_complete_state(store_location, tmp_path):
    url, schema = location(store_location)
    store = open_store(url, schema, lock_timeout=30, reader_retry=30)
    store.publish(make_request(DAYS[0], N, identity=True))
    # Each publish pauses inside its transaction, after writing membership and history.
    process, prefix = start_publisher(url, schema, DAYS[1:], tmp_path, "history", 0.4)

    seen: list[date] = []
    during_pause: list[date] = []
    failures: list[str] = []
    while process.poll() is None:
        paused = {d for d in DAYS[1:] if os.path.exists(f"{prefix}.{d.isoformat()}")}
        as_of, problems = consistency_problems(store)
        seen.append(as_of)
        failures.extend(f"as of {as_of}: {p}" for p in problems)
        if paused and as_of < max(paused):
            during_pause.append(as_of)
        time.sleep(0.02)
    assert process.returncode == 0, process.stderr.read()
    as_of, problems = consistency_problems(store)
    seen.append(as_of)

    assert failures == []
    assert problems == []
    assert seen[0] in (DAYS[0], DAYS[1]) and seen[-1] == DAYS[-1]
    assert seen == sorted(seen)  # never back to an older state
    if store.backend == "postgresql":
        assert during_pause, "no read happened while a publish was in progress"
    store.close()
