"""The sharded feature build on Dask gives the one-process build's table and counts, exactly,
from the original input and from a copy partitioned by client hash (`pipelines.partition`).

One LocalCluster for the module: 2 worker processes (processes=True, as on a real cluster:
each shard's DuckDB runs in its own process, and the tasks and results really cross a process
boundary through pickling; the cluster starts in about 3 s here), 4 shards.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from distributed.diagnostics.plugin import WorkerPlugin

from configs import EngineConfig
from configs.schema import config_from_mapping
from features.events import ValidationReport, connect_for_events
from features.generator import write_dataset
from pipelines import steps
from pipelines.distributed import (
    ClusterUnreachableError,
    DistributedBuildError,
    build_features_on_dask,
    check_ready,
    combined_report,
    dask_client,
    stitching_needed,
    task_memory_limit,
)
from pipelines.partition import partition_events

AS_OF = date(2026, 6, 30)
NOW = datetime(2026, 7, 1, 6, 0, tzinfo=UTC)


def _config(**execution: object) -> EngineConfig:
    return config_from_mapping({"execution": {"mode": "dask", "workers": 2, **execution}})


def _add_bad_rows(events: Path) -> None:
    """A part file of rows the contract rejects, duplicates by event_id of a client's own
    events, padded client ids (the same clients) and unknown event types."""
    part = pq.read_table(sorted(events.glob("*.parquet"))[0])
    head = part.slice(0, 200)
    n = head.num_rows

    def with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
        return table.set_column(table.schema.get_field_index(name), name, values)

    def ids(table: pa.Table, tag: str) -> pa.Array:
        return pa.array([f"{tag}-{k}" for k in range(table.num_rows)], pa.string())

    no_client = with_column(head.slice(0, 20), "client_id", pa.nulls(20, pa.string()))
    negative = with_column(head.slice(20, 20), "amount", pa.array([-5.0] * 20))
    negative = with_column(negative, "event_id", ids(negative, "neg"))
    padded = head.slice(40, 30)
    padded = with_column(
        padded, "client_id", pc.binary_join_element_wise("  ", padded["client_id"], " ", "")
    )
    padded = with_column(padded, "event_id", ids(padded, "pad"))
    unknown = head.slice(70, 10)
    unknown = with_column(unknown, "event_type", pa.array(["mystery_event"] * 10))
    unknown = with_column(unknown, "event_id", ids(unknown, "unk"))
    future = head.slice(80, 5)
    future_time = pa.array(
        [datetime(2031, 1, 1, tzinfo=UTC)] * 5, part.schema.field("event_time").type
    )
    future = with_column(future, "event_time", future_time)
    future = with_column(future, "event_id", ids(future, "fut"))
    duplicates = head.slice(100, n - 100)  # the same events again: same ids, same clients
    bad = pa.concat_tables([no_client, negative, padded, unknown, future, duplicates])
    pq.write_table(bad, events / "part-bad.parquet")


@pytest.fixture(scope="module")
def dataset() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        summary = write_dataset(folder, clients=1_500, days=400, end=AS_OF, seed=11)
        events = Path(summary["events_dir"])
        _add_bad_rows(events)
        yield events


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    with dask_client(_config().execution) as made:
        yield made


def _one_process(
    config: EngineConfig, events: Path
) -> tuple[pd.DataFrame, ValidationReport, pd.DataFrame]:
    """The one-process build: features, validation counts and quarantined rows."""
    with tempfile.TemporaryDirectory() as scratch:
        con = connect_for_events(config.features, scratch)
        try:
            read = steps.read_events(con, config, str(events), now=NOW)
            return steps.compute_features(con, AS_OF, config), read.report, read.quarantine
        finally:
            con.close()


def _assert_same_rows(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """The same rows (a multiset), dtypes and columns, whatever the order."""

    def by_all_columns(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.sort_values(list(frame.columns), ignore_index=True)

    pd.testing.assert_frame_equal(by_all_columns(actual), by_all_columns(expected))


def test_four_shards_on_two_workers_equal_the_one_process_build(dataset, client):
    config = _config(shards=4)
    expected, report, quarantine = _one_process(config, dataset)
    assert report.duplicates == 100 and report.quarantined == 45  # the bad rows are there
    assert report.unknown_event_types == {"mystery_event": 10}

    result = build_features_on_dask(config, dataset, AS_OF, client=client, now=NOW)

    pd.testing.assert_frame_equal(result.features, expected, check_exact=True)
    assert result.report == report
    _assert_same_rows(result.quarantine, quarantine)
    assert len(result.quarantine) == 45
    assert set(result.quarantine["source_file"]) == {str(dataset / "part-bad.parquet")}
    assert result.shards == 4 and sum(result.shard_clients) == len(expected) > 1_400
    assert all(n > 0 for n in result.shard_clients)


def test_more_shards_than_clients_leaves_empty_shards_and_the_same_table(tmp_path, client):
    summary = write_dataset(tmp_path, clients=3, days=60, end=AS_OF, seed=3)
    config = _config(shards=8)
    expected, report, quarantine = _one_process(config, Path(summary["events_dir"]))

    result = build_features_on_dask(config, summary["events_dir"], AS_OF, client=client, now=NOW)

    assert result.shard_clients.count(0) >= 5
    pd.testing.assert_frame_equal(result.features, expected, check_exact=True)
    assert result.report == report
    _assert_same_rows(result.quarantine, quarantine)  # empty, with the quarantine's columns


def test_a_failing_shard_fails_the_call_naming_the_shard(tmp_path, client):
    (tmp_path / "events.csv").write_text("client_id,event_time,event_type\nc1,2026-06-01,visit\n")

    with pytest.raises(DistributedBuildError, match=r"shard \d of 4: .*CSV files.*Parquet"):
        build_features_on_dask(_config(shards=4), tmp_path, AS_OF, client=client, now=NOW)


def test_an_unreachable_scheduler_fails_in_seconds_naming_the_address(dataset):
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    config = _config(scheduler_address=address, connect_timeout_seconds=2)

    started = time.monotonic()
    with pytest.raises(ClusterUnreachableError, match=f"scheduler_address '{address}'"):
        build_features_on_dask(config, dataset, AS_OF, now=NOW)
    assert time.monotonic() - started < 10


def test_a_mapped_client_id_without_stitching_is_refused_before_any_cluster(tmp_path):
    config = config_from_mapping(
        {"execution": {"mode": "dask"}, "events": {"columns": {"client_id": ["userId"]}}}
    )
    table = pa.table(
        {
            "userId": ["u1"],
            "event_time": pa.array([datetime(2026, 6, 1, tzinfo=UTC)]),
            "event_type": ["page_view"],
            "channel": ["web"],
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    with pytest.raises(DistributedBuildError, match="maps client_id.*segmentation partition"):
        build_features_on_dask(config, tmp_path / "events.parquet", AS_OF, client=None, now=NOW)


@pytest.fixture(scope="module")
def identities() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        write_dataset(folder, clients=600, days=300, end=AS_OF, seed=17, identities=True)
        yield Path(folder)


def test_identifiers_are_stitched_before_sharding_into_the_one_process_persons(
    identities, client, tmp_path
):
    config = config_from_mapping(
        {
            "workdir": str(tmp_path / "work"),
            "execution": {"mode": "dask", "workers": 2, "shards": 4},
            "identity": {"links_file": str(identities / "identity_links.parquet")},
            # naive times read as New York time: the stitched events, in UTC, must not move
            "events": {"time_zone": "America/New_York"},
        }
    )
    events = identities / "events"
    with tempfile.TemporaryDirectory() as scratch:
        con = connect_for_events(config.features, scratch)
        try:
            read = steps.read_events(con, config, str(events), now=NOW)
            read = steps.stitch_identities(con, config, AS_OF, read)
            expected = steps.compute_features(con, AS_OF, config)
        finally:
            con.close()
    assert read.stitching is not None

    result = build_features_on_dask(config, events, AS_OF, client=client, now=NOW)

    assert result.input_layout == "stitched" and result.stitching is not None
    pd.testing.assert_frame_equal(result.features, expected, check_exact=True)
    assert result.report == read.report
    pd.testing.assert_frame_equal(result.quarantine, read.quarantine)
    assert result.stitching.identity_map.equals(read.stitching.identity_map)
    assert len(expected) <= result.stitching.summary["persons"]
    assert result.stitching.summary["persons"] < result.stitching.summary["identifiers"]
    assert sum(result.shard_clients) == len(expected) and min(result.shard_clients) > 0
    assert not list((tmp_path / "work").glob("**/stitched-*"))  # the partition is removed


def test_a_partitioned_folder_is_never_stitched_and_refuses_a_links_file(dataset, tmp_path):
    partitioned = tmp_path / "by-client"
    partition_events(_config(shards=4), dataset, partitioned, shards=4)
    # the mapping's source names are not looked for in the copy (it has the contract's)
    mapped = config_from_mapping(
        {"execution": {"mode": "dask"}, "events": {"columns": {"client_id": ["userId"]}}}
    )
    assert not stitching_needed(mapped, partitioned)
    assert not stitching_needed(_config(), partitioned)
    links = tmp_path / "links.csv"
    links.write_text("id_type,id_value,client_id\nemail_hash,e1,c1\n")
    with_links = config_from_mapping(
        {"execution": {"mode": "dask"}, "identity": {"links_file": str(links)}}
    )
    assert stitching_needed(with_links, dataset)
    with pytest.raises(DistributedBuildError, match="links_file is set, but .* partitioned"):
        check_ready(with_links, partitioned, "parquet")


def test_combined_report_sums_counts_and_reasons():
    a = ValidationReport(10, 7, 1, 2, {"negative_amount": 2}, {"x": 1})
    b = ValidationReport(5, 4, 0, 1, {"missing_client_id": 1, "negative_amount": 0}, {})
    assert combined_report([a, b]) == ValidationReport(
        15, 11, 1, 3, {"missing_client_id": 1, "negative_amount": 2}, {"x": 1}
    )
    assert combined_report([]) == ValidationReport(0, 0, 0, 0, {}, {})


def test_a_partitioned_input_is_read_shard_by_shard_and_equals_the_original(
    dataset, client, tmp_path
):
    config = _config(shards=4)
    expected, report, _ = _one_process(config, dataset)
    partitioned = tmp_path / "by-client"
    partition_events(config, dataset, partitioned, shards=4)
    _, _, quarantine = _one_process(config, partitioned)  # source_file names the shard files

    result = build_features_on_dask(config, partitioned, AS_OF, client=client, now=NOW)

    assert result.input_layout == "partitioned"
    pd.testing.assert_frame_equal(result.features, expected, check_exact=True)
    assert result.report == report  # shard=none's rows quarantined once, in shard 0
    _assert_same_rows(result.quarantine, quarantine)


def test_a_partitioned_input_with_another_shard_count_falls_back_to_scanning(
    dataset, client, tmp_path
):
    config = _config(shards=4)
    expected, report, _ = _one_process(config, dataset)
    partitioned = tmp_path / "by-client-3"
    partition_events(config, dataset, partitioned, shards=3)
    _, _, quarantine = _one_process(config, partitioned)

    result = build_features_on_dask(config, partitioned, AS_OF, client=client, now=NOW)

    assert result.input_layout == "scan"
    pd.testing.assert_frame_equal(result.features, expected, check_exact=True)
    assert result.report == report
    _assert_same_rows(result.quarantine, quarantine)


def test_task_memory_limit_is_the_one_process_budget_shared_by_the_shards():
    assert task_memory_limit("2GB", 1) == "1907MiB"
    assert task_memory_limit("2GB", 4) == "476MiB"
    assert task_memory_limit("2GB", 64) == "256MiB"  # the floor
    assert task_memory_limit("2GB", 1, worker_limit=2 * 2**30, threads=2) == "512MiB"


class _KillOnce(WorkerPlugin):
    """Kills the worker process (``os._exit(1)``, no cleanup, as a crash or the OOM killer
    would) when the task whose key contains `key_part` starts executing there, once: the
    first worker to remove `marker` dies, the task's later attempts run normally."""

    def __init__(self, key_part: str, marker: str) -> None:
        self.key_part = key_part
        self.marker = marker

    def transition(self, key: object, start: str, finish: str, **kwargs: object) -> None:
        if finish != "executing" or self.key_part not in str(key):
            return
        try:
            os.remove(self.marker)
        except FileNotFoundError:
            return
        os._exit(1)


def test_a_worker_dying_mid_task_is_rescheduled_and_the_table_is_the_same(dataset, tmp_path):
    """Its own LocalCluster (2 worker processes), so the module's cluster is not disturbed:
    the worker running shard 1's task dies once; the nanny restarts it, the scheduler
    reschedules the task, and the build still equals the one-process build."""
    config = _config(shards=4)
    expected, report, quarantine = _one_process(config, dataset)
    marker = tmp_path / "kill-once"
    marker.touch()

    with dask_client(config.execution) as own:
        own.register_plugin(_KillOnce("-shard-1-of-4", str(marker)), name="kill-once")
        result = build_features_on_dask(config, dataset, AS_OF, client=own, now=NOW)

    assert not marker.exists()  # a worker did die running shard 1
    pd.testing.assert_frame_equal(result.features, expected, check_exact=True)
    assert result.report == report
    _assert_same_rows(result.quarantine, quarantine)


def test_the_features_command_on_dask_writes_the_one_process_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.cli import main

    monkeypatch.delenv("SEGMENTATION_CONFIG", raising=False)
    write_dataset(tmp_path / "data", clients=300, days=120, end=AS_OF, seed=4)
    events = str(tmp_path / "data" / "events")
    local = tmp_path / "local.yaml"
    local.write_text(f"workdir: {tmp_path / 'work'}\n")
    dask = tmp_path / "dask.yaml"
    dask.write_text(
        f"workdir: {tmp_path / 'work'}\nexecution:\n  mode: dask\n  workers: 2\n  shards: 3\n"
    )
    for name, config in (("local", local), ("dask", dask)):
        out = tmp_path / f"{name}.parquet"
        args = ["features", "--events", events, "--as-of", str(AS_OF), "--out", str(out)]
        assert main([*args, "--config", str(config)]) == 0
    one, sharded = (
        pq.read_table(tmp_path / "local.parquet"),
        pq.read_table(tmp_path / "dask.parquet"),
    )
    assert one.num_rows > 250 and sharded.equals(one)
    assert not [p for p in (tmp_path / "work").iterdir() if p.name.startswith("duckdb-")]
