"""A shard's kept feature rows read alone get the types of the one-process feature frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.sharded import InMemoryFeatures, iter_kept, read_kept
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


def _frame(n: int) -> pd.DataFrame:
    ids = [f"c{k:04d}" for k in range(n)]
    return pd.DataFrame({"client_id": ids[::-1], "x": [float(k) for k in range(n)]})


def test_in_memory_fitting_rows_are_the_rows_of_the_clients_a_refit_samples() -> None:
    from configs.schema import config_from_mapping
    from segmentation.clustering import sample_client_ids

    config = config_from_mapping({"clustering": {"sample_size": 1000}}, "c.yaml")
    frame = _frame(3000)
    rows = InMemoryFeatures(frame).fitting_rows(config)
    chosen = sample_client_ids(frame["client_id"], 1000, config.seed)
    assert rows["client_id"].tolist() == chosen
    by_id = frame.set_index("client_id")["x"]
    assert rows["x"].tolist() == by_id.loc[chosen].tolist()
    small = InMemoryFeatures(_frame(10)).fitting_rows(config)  # fewer than the sample: all
    assert small["client_id"].tolist() == sorted(_frame(10)["client_id"])


def test_released_rows_are_freed_though_prefect_keeps_what_tasks_were_given(
    prefect_harness: object,
) -> None:
    """Prefect holds every task's arguments and result until the flow run ends; releasing the
    features frees the frame all the same (the nightly releases it before the journey map)."""
    import gc
    import weakref

    from prefect import flow, task

    @task(persist_result=False)
    def count(features: InMemoryFeatures) -> int:
        return features.clients

    @task(persist_result=False)
    def build() -> InMemoryFeatures:
        return InMemoryFeatures(_frame(50))

    @flow(persist_result=False)
    def night() -> tuple[bool, bool, int, list[str]]:
        features = build()
        assert count(features) == 50
        column = features.frame["x"].to_numpy()
        block = weakref.ref(column.base if column.base is not None else column)  # the memory
        del column
        gc.collect()
        alive_before = block() is not None
        features.release()
        gc.collect()
        return alive_before, block() is None, features.clients, features.names

    assert night() == (True, True, 50, ["x"])
