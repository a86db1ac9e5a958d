"""What a killed run (kill -9) leaves is cleaned by the next run: scratch folders whose run is
gone, MLflow runs stuck in RUNNING; and a server a run starts does not outlive it."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines import scratch
from pipelines.scratch import SCRATCH_OWNER, remove_stale_scratch


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_scratch_folders_of_gone_runs_are_removed(tmp_path):
    dead = tmp_path / "duckdb-dead"  # its run was killed: the owner lock is free
    dead.mkdir()
    (dead / "events.duckdb").write_bytes(b"x" * 1000)
    (dead / SCRATCH_OWNER).touch()
    _age(dead / SCRATCH_OWNER, 60)
    live = tmp_path / "duckdb-live"  # a run in progress holds its lock
    live.mkdir()
    (live / SCRATCH_OWNER).touch()
    _age(live / SCRATCH_OWNER, 60)
    fd = os.open(live / SCRATCH_OWNER, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    starting = tmp_path / "duckdb-starting"  # just created: its owner is about to lock it
    starting.mkdir()
    (starting / SCRATCH_OWNER).touch()
    old = tmp_path / "duckdb-old"  # an older engine's folder, a day old
    old.mkdir()
    _age(old, 2 * 24 * 3600)
    other = tmp_path / "reports"
    other.mkdir()
    _age(other, 2 * 24 * 3600)
    try:
        assert remove_stale_scratch(tmp_path) == [dead, old]
    finally:
        os.close(fd)
    assert live.exists() and starting.exists() and other.exists()


def test_a_run_holds_its_scratch_folder_and_removes_it(tmp_path):
    from configs import config_from_mapping

    config = config_from_mapping({"workdir": str(tmp_path)}, source="<test>")
    with scratch.events_connection(config) as con:
        con.execute("SELECT 1")
        (folder,) = tmp_path.glob("duckdb-*")
        _age(folder / SCRATCH_OWNER, 60)
        assert remove_stale_scratch(tmp_path) == []  # in use
    assert not folder.exists()


def test_mlflow_runs_of_killed_processes_are_marked_failed(tmp_path):
    from pipelines.tracking import OWNER_HOST_TAG, OWNER_PROCESS_TAG, Tracker, _owner_tags

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "test")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = _owner_tags()[OWNER_HOST_TAG]
    client = tracker.client

    def running(tags: dict[str, str]) -> str:
        return client.create_run(tracker.experiment_id, tags=tags).info.run_id

    killed = running({OWNER_HOST_TAG: host, OWNER_PROCESS_TAG: f"{gone.pid}:1"})
    reused = running({OWNER_HOST_TAG: host, OWNER_PROCESS_TAG: f"{os.getpid()}:1"})
    alive = running(_owner_tags())
    elsewhere = running({OWNER_HOST_TAG: "another-host", OWNER_PROCESS_TAG: f"{gone.pid}:1"})
    untagged = running({})
    with tracker.start_run("next run") as run:  # the next run cleans up first
        assert (
            client.get_run(run.run_id).data.tags[OWNER_PROCESS_TAG]
            == _owner_tags()[OWNER_PROCESS_TAG]
        )
    status = {rid: client.get_run(rid).info.status for rid in (killed, reused, alive)}
    assert status == {killed: "FAILED", reused: "FAILED", alive: "RUNNING"}
    assert client.get_run(elsewhere).info.status == "RUNNING"
    assert client.get_run(untagged).info.status == "RUNNING"


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds (Linux)")
def test_a_child_server_dies_with_its_parent_even_on_kill_9(tmp_path):
    parent = textwrap.dedent(
        """
        import subprocess, sys, time
        from pipelines.prefect_utils import die_with_parent
        single = subprocess.Popen(["sleep", "300"])
        group = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"], start_new_session=True)
        die_with_parent(single.pid)
        die_with_parent(group.pid, group=True)
        print(single.pid, group.pid, flush=True)
        time.sleep(300)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", parent],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    single, group = (int(p) for p in process.stdout.readline().split())
    time.sleep(0.5)  # the watchdogs start
    os.kill(single, 0)
    os.killpg(group, 0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not _alive(single) and not _group_alive(group):
            break
        time.sleep(0.1)
    assert not _alive(single) and not _group_alive(group)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie waits to be reaped: it is gone


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(
        _alive(int(p.name))
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _pgid(p) == pgid
    )


def _pgid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (FileNotFoundError, ValueError, IndexError):
        return None
