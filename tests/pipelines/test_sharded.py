"""A shard's kept feature rows read alone get the types of the one-process feature frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.sharded import read_kept
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
