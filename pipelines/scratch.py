"""Scratch folders for a run's events: a copy of the events on disk, removed when the run ends
and, when a killed run left one behind, by the next run.

A folder's owner lock (flock) is held by the run using it for as long as that run lives, so a
free lock means its process is gone, whatever killed it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import duckdb

from configs import EngineConfig
from features.events import connect_for_events

__all__ = [
    "SCRATCH_OWNER",
    "SCRATCH_PREFIX",
    "events_connection",
    "remove_stale_scratch",
    "scratch_folder",
    "shared_folder",
]

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "duckdb-"
SCRATCH_OWNER = ".owner.lock"  # flocked by the run using the folder, for as long as it runs
UNOWNED_SCRATCH_SECONDS = 24 * 3600  # a folder without an owner lock (older engine): stale after


@contextmanager
def events_connection(config: EngineConfig) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection for tonight's events, spilling to a scratch folder in the workdir.

    The folder (which holds a copy of the events) is removed at the end; one left by a killed
    run is removed by the next run: its owner lock is free once its process is gone."""
    with scratch_folder(config) as folder:
        con = connect_for_events(config.features, folder)
        try:
            yield con
        finally:
            con.close()


@contextmanager
def scratch_folder(config: EngineConfig) -> Iterator[Path]:
    """A scratch folder in the workdir, owned (flocked) by this process until the end, then
    removed; one left by a killed run is removed by the next run."""
    remove_stale_scratch(config.workdir_path)
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=config.workdir_path) as tmp:
        owner = os.open(Path(tmp) / SCRATCH_OWNER, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield Path(tmp)
        finally:
            os.close(owner)


@contextmanager
def shared_folder(
    config: EngineConfig, prefix: str, inside: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """A new folder, ``<prefix>-<random>``, for files this process and the Dask workers share:
    in `inside` (a folder already shared), else in ``execution.shared_dir`` (which every worker
    and this process mount at the same path), else in a scratch folder of the workdir (enough
    for a LocalCluster). Removed at the end, failed or not."""
    with ExitStack() as stack:
        parent = inside or config.execution.shared_dir
        if parent is None:
            config.workdir_path.mkdir(parents=True, exist_ok=True)
            parent = stack.enter_context(scratch_folder(config))
        out = Path(parent) / f"{prefix}-{uuid.uuid4().hex[:8]}"
        out.mkdir(parents=True)
        stack.callback(shutil.rmtree, out, ignore_errors=True)
        yield out


def remove_stale_scratch(workdir: Path) -> list[Path]:
    """Remove the scratch folders in `workdir` whose run is gone; return them."""
    removed = []
    for folder in sorted(workdir.glob(f"{SCRATCH_PREFIX}*")):
        if folder.is_dir() and not _scratch_in_use(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        log.info("removed %d scratch folder(s) left by killed runs: %s", len(removed), removed)
    return removed


def _scratch_in_use(folder: Path) -> bool:
    """True while a live run holds the folder's owner lock (or it is too new to judge)."""
    try:
        fd = os.open(folder / SCRATCH_OWNER, os.O_RDWR)
    except FileNotFoundError:  # no owner lock: being created now, or left by an older engine
        try:
            return time.time() - folder.stat().st_mtime < UNOWNED_SCRATCH_SECONDS
        except FileNotFoundError:
            return True
    try:
        if time.time() - os.fstat(fd).st_mtime < 10:  # its owner may be about to lock it
            return True
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False
