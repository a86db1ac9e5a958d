"""Shared test fixtures: one Prefect test server for the whole session (request it by name)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# Before Prefect is imported anywhere: tests never read or write the user's ~/.prefect.
_PREFECT_HOME = tempfile.mkdtemp(prefix="prefect-home-")
atexit.register(shutil.rmtree, _PREFECT_HOME, True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server and database for every flow run in the session (~8 s start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
