"""A shard's kept feature rows read alone get the types of the one-process feature frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.sharded import iter_kept, read_kept
from pipelines.steps import _feature_frame


def test_a_part_without_nulls_is_typed_as_the_whole_with_them(tmp_path: Path) -> None:
    whole = pa.table(
        {
            "client_id": ["a", "b", "c", "d"],
            "purchases": pa.array([1, 2, None, 4], pa.int64()),
            "has_cart": pa.array([True, False, True, None]),
            "spend": [1.5, None, 2.0, 3.0],
            "sessions": pa.array([3, 1, 2, 5], pa.int32()),
        }
    )
    part = whole.slice(0, 2)  # a shard whose clients have no null
    file = tmp_path / "features-00000.parquet"
    pq.write_table(part, file)
    nullable = frozenset({"purchases", "has_cart", "spend"})

    expected = _feature_frame(whole).iloc[:2].reset_index(drop=True)
    got = read_kept(str(file), nullable)
    pd.testing.assert_frame_equal(got, expected)
    assert got["purchases"].dtype == "float64" and got["has_cart"].dtype == object
    assert got["sessions"].dtype == "int32"  # no null anywhere: stays an integer

    one = read_kept(str(file), nullable, ["b"])
    pd.testing.assert_frame_equal(one, expected.iloc[[1]].reset_index(drop=True))


def test_kept_rows_read_in_batches_are_the_whole_shard(tmp_path: Path) -> None:
    whole = pa.table(
        {
            "client_id": [f"c{i:03d}" for i in range(10)],
            "purchases": pa.array([1, 2, 3, 4, 5, 6, 7, 8, None, 10], pa.int64()),
            "has_cart": pa.array([True, False] * 4 + [None, True]),
        }
    )
    file = tmp_path / "features-00000.parquet"
    pq.write_table(whole, file, row_group_size=4)
    nullable = frozenset({"purchases", "has_cart"})

    parts = list(iter_kept(str(file), nullable, batch_rows=3))
    assert [len(p) for p in parts] == [3, 3, 3, 1]
    # the first batches have no null, yet are typed as the whole shard is
    assert all(p["purchases"].dtype == "float64" for p in parts)
    assert all(p["has_cart"].dtype == object for p in parts)
    together = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(together, read_kept(str(file), nullable))


def test_a_shard_without_clients_gives_one_empty_frame_of_its_columns(tmp_path: Path) -> None:
    empty = pa.table({"client_id": pa.array([], pa.string()), "spend": pa.array([], pa.float64())})
    file = tmp_path / "features-00001.parquet"
    pq.write_table(empty, file)

    parts = list(iter_kept(str(file), frozenset(), batch_rows=100))
    assert len(parts) == 1 and parts[0].empty
    assert list(parts[0].columns) == ["client_id", "spend"]
