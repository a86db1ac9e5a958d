"""A scan for a small result runs under a lowered DuckDB memory limit, restored afterwards."""

from __future__ import annotations

import duckdb
import pytest

from features.events import _size_bytes, scan_memory


def _limit(con: duckdb.DuckDBPyConnection) -> int:
    (text,) = con.execute("SELECT current_setting('memory_limit')").fetchone()
    value = _size_bytes(text)
    assert value is not None
    return value


def test_the_limit_is_lowered_inside_and_restored_after() -> None:
    con = duckdb.connect()
    con.execute("SET memory_limit = '2GiB'")
    with scan_memory(con, share=4):
        assert _limit(con) == pytest.approx(512 * 2**20, rel=0.01)
    assert _limit(con) == pytest.approx(2 * 2**30, rel=0.01)


def test_the_limit_never_goes_below_256_mib_and_comes_back_after_a_failure() -> None:
    con = duckdb.connect()
    con.execute("SET memory_limit = '512MiB'")
    with pytest.raises(RuntimeError), scan_memory(con, share=8):
        assert _limit(con) == pytest.approx(256 * 2**20, rel=0.01)
        raise RuntimeError("the step failed")
    assert _limit(con) == pytest.approx(512 * 2**20, rel=0.01)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.8 GiB", int(1.8 * 2**30)), ("512MB", 512 * 10**6), ("100 bytes", 100), ("n/a", None)],
)
def test_sizes_as_duckdb_writes_them(text: str, expected: int | None) -> None:
    assert _size_bytes(text) == expected
