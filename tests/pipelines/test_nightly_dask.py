"""The nightly flow with `execution: dask` (a LocalCluster of 2 worker processes, 4 shards)
publishes the same tables as the one-process flow on the same events: membership, history,
transitions, scores, segments, the journey tables, the holdout outcomes and the quarantine.
On Dask the shards keep their feature rows: the refits fit on the sample rows gathered from
them, and the shards score and assign their own clients (`pipelines.sharded`).

Two nights each way, so the second night has a previous membership (transitions, history
stretches, sticky clusters, champion models). The input has rows the contract rejects and
duplicates, so the quarantine and the counts are compared too. With identifiers besides
client_id and a links file, the events are stitched into persons before sharding: the identity
map and merges are compared as well.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import EngineConfig, config_from_mapping
from features.generator import write_dataset
from pipelines.nightly import run_nightly
from pipelines.store import open_store

END = date(2025, 6, 30)
FIRST = date(2025, 5, 1)
SECOND = FIRST + timedelta(days=1)


@pytest.fixture(autouse=True)
def _no_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEGMENTATION_STORE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("journeys")
    write_dataset(out, clients=1200, days=240, end=END, seed=5)
    folder = out / "events"
    first = pq.read_table(sorted(folder.glob("*.parquet"))[0])
    head = first.slice(0, 60)
    no_client = head.slice(0, 10).set_column(
        head.schema.get_field_index("client_id"), "client_id", pa.nulls(10, pa.string())
    )
    repeated = head.slice(10, 50)  # the same events again: duplicates of a client's own
    pq.write_table(pa.concat_tables([no_client, repeated]), folder / "zz-bad.parquet")
    return folder


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("identity-journeys")
    write_dataset(out, clients=800, days=240, end=END, seed=5, identities=True)
    return out


def _config(root: Path, links: Path | None = None, **execution: object) -> EngineConfig:
    """The same settings but `execution` and the workdir (and the identity links file)."""
    return config_from_mapping(
        {
            "workdir": str(root / "work"),
            "clustering": {"sample_size": 1200, "min_cluster_size": 25},
            "schedule": {"retries": 0},
            "execution": execution or {"mode": "local"},
            "identity": {"links_file": str(links) if links else None},
        },
        source=str(root / "config.yaml"),
    )


def _tables(config: EngineConfig) -> dict[str, pd.DataFrame]:
    store = open_store(config.store_url)
    try:
        tables = {
            "identity_map": store.identity_map(),
            "identity_merges": store.identity_merges(),
            "membership": store.membership(),
            "history": store.history(),
            "transitions": store.transitions(),
            "scores": store.scores(),
            "segments": store.segments(),
            "quarantine": store.quarantine(),
            "journey_stages": store.journey_stages(),
            "journey_touchpoints": store.journey_touchpoints(),
            "journey_dropoffs": store.journey_dropoffs(),
            "holdout_outcomes": store.holdout_outcomes(),
        }
    finally:
        store.close()
    return {name: _comparable(frame) for name, frame in tables.items()}


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame without run identities and timestamps of the run, rows in a fixed order."""
    run_columns = [c for c in frame.columns if c.endswith(("run_id", "_at"))]
    kept = frame.drop(columns=run_columns)
    if kept.empty:
        return kept.reset_index(drop=True)
    order = list(kept.columns)
    return kept.sort_values(order, kind="stable", na_position="first").reset_index(drop=True)


@pytest.mark.slow
def test_the_nightly_on_dask_publishes_the_one_process_tables(
    prefect_harness: object, events: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines import steps

    # This process scores and assigns its clients 250 at a time (the workers, a shard whole):
    # batches give the same rows.
    monkeypatch.setattr(steps, "SCORE_BATCH", 250)
    local = _config(tmp_path / "local")
    dask = _config(tmp_path / "dask", mode="dask", workers=2, shards=4)

    assert local.digest() == dask.digest()  # the same rules and model versions
    summaries, tables = {}, {}
    for name, config in (("local", local), ("dask", dask)):
        summaries[name] = [
            run_nightly(config, as_of=day, events=str(events)) for day in (FIRST, SECOND)
        ]
        tables[name] = _tables(config)

    for one, sharded in zip(summaries["local"], summaries["dask"], strict=True):
        for key in ("events_read", "events_quarantined", "duplicates", "clients", "segments"):
            assert one[key] == sharded[key], key
        for key in ("entries", "exits", "moves", "refit", "cluster_model_version"):
            assert one[key] == sharded[key], key
    assert summaries["local"][0]["events_quarantined"] >= 10  # the rows without a client
    assert summaries["local"][0]["duplicates"] >= 50

    expected, got = tables["local"], tables["dask"]
    for name, frame in expected.items():
        assert len(frame) > 0 or name in {"journey_dropoffs", "holdout_outcomes", *_IDENTITY}
        pd.testing.assert_frame_equal(got[name], frame, check_exact=True, obj=name)
    assert len(expected["transitions"]) > 0
    assert not list((tmp_path / "dask" / "work").glob("duckdb-*"))  # scratch removed


_IDENTITY = ("identity_map", "identity_merges")


@pytest.mark.slow
def test_identities_are_stitched_before_sharding_into_the_one_process_persons(
    prefect_harness: object, identities: Path, tmp_path: Path
) -> None:
    links = identities / "identity_links.parquet"
    local = _config(tmp_path / "local", links)
    dask = _config(tmp_path / "dask", links, mode="dask", workers=2, shards=4)
    nights = (FIRST, END)  # anonymous visitors of the first night log in by the second
    summaries, tables = {}, {}
    for name, config in (("local", local), ("dask", dask)):
        summaries[name] = [
            run_nightly(config, as_of=day, events=str(identities / "events")) for day in nights
        ]
        tables[name] = _tables(config)

    for one, sharded in zip(summaries["local"], summaries["dask"], strict=True):
        for key in ("events_read", "events_quarantined", "clients", "entries", "exits"):
            assert one[key] == sharded[key], key
    expected, got = tables["local"], tables["dask"]
    assert len(expected["identity_merges"]) > 0  # persons were merged on the second night
    assert (expected["quarantine"]["reason"] == "identifier_over_linked").any()
    for name, frame in expected.items():
        assert len(frame) > 0 or name in {"journey_dropoffs", "holdout_outcomes"}, name
        pd.testing.assert_frame_equal(got[name], frame, check_exact=True, obj=name)
    assert not list((tmp_path / "dask" / "work").glob("duckdb-*"))  # scratch removed
    assert not list((tmp_path / "dask" / "work").glob("**/stitched-*"))


@pytest.mark.slow
def test_a_shard_that_fails_fails_the_run_and_leaves_the_tables(
    prefect_harness: object, events: Path, tmp_path: Path
) -> None:
    import shutil

    from pipelines.distributed import DistributedBuildError

    config = _config(tmp_path / "dask", mode="dask", workers=2, shards=4)
    run_nightly(config, as_of=FIRST, events=str(events))
    before = _tables(config)

    # A file whose footer and schema read fine (the cheap checks pass) but whose category
    # pages are garbage: every shard that scans it fails.
    broken = tmp_path / "broken"
    shutil.copytree(events, broken)
    _corrupt_column(sorted(broken.glob("*.parquet"))[0], broken / "zz-corrupt.parquet")
    with pytest.raises(DistributedBuildError, match=r"shard \d of 4"):
        run_nightly(config, as_of=SECOND, events=str(broken))

    store = open_store(config.store_url)
    try:
        runs = store.runs()
    finally:
        store.close()
    assert list(runs["status"]) == ["success", "failed"]
    assert re.search(r"shard \d of 4", runs["error"].iloc[-1])
    after = _tables(config)
    for name, frame in before.items():
        pd.testing.assert_frame_equal(after[name], frame, obj=name)
    assert not list((tmp_path / "dask" / "work").glob("duckdb-*"))  # scratch removed


def _corrupt_column(source: Path, target: Path, column: str = "category") -> None:
    """A zstd copy of 200 rows of `source` whose `column` chunk is zeroed: its schema and
    statistics read, its rows do not."""
    pq.write_table(pq.read_table(source).slice(0, 200), target, compression="zstd")
    meta = pq.ParquetFile(target).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(names.index(column))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(target.read_bytes())
    data[start : start + chunk.total_compressed_size] = bytes(chunk.total_compressed_size)
    target.write_bytes(bytes(data))


@pytest.mark.slow
def test_the_preview_on_dask_is_the_one_process_preview(
    prefect_harness: object, events: Path, tmp_path: Path
) -> None:
    from pipelines.preview import preview

    local = _config(tmp_path)
    run_nightly(local, as_of=FIRST, events=str(events))  # champions and a published membership
    dask = _config(tmp_path, mode="dask", workers=2, shards=4)  # the same store and models
    one = preview(local, events=str(events), as_of=SECOND)
    sharded = preview(dask, events=str(events), as_of=SECOND)
    assert one.clients == sharded.clients > 0
    assert one.moved == sharded.moved > 0
    pd.testing.assert_frame_equal(sharded.by_segment, one.by_segment, check_exact=True)
    pd.testing.assert_frame_equal(sharded.examples, one.examples, check_exact=True)
    assert not list((tmp_path / "work").glob("duckdb-*"))  # scratch removed
