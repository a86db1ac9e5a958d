"""File locks between processes: an flock with a bounded wait, released when its holder dies."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LockTimeoutError", "file_lock"]


class LockTimeoutError(TimeoutError):
    """Another process held a coordination lock for longer than the wait allowed."""


@contextmanager
def file_lock(
    path: str | os.PathLike[str],
    timeout: float = 300.0,
    error: Callable[[], Exception] | None = None,
) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing), waiting at most `timeout` s,
    then raising `error()` (default LockTimeoutError).

    The lock dies with the process that holds it, so a killed run never leaves it taken."""
    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    if error is not None:
                        raise error() from None
                    raise LockTimeoutError(
                        f"another process held {lock_path} for more than {timeout:g} s"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
