"""Events partitioned by client hash (`pipelines.partition`, `segmentation partition`).

Every row lands in exactly one shard folder, the one whose clients the feature build puts in
that shard (`hash(client_id) % shards` over the loaded, normalized client id), rows without a
client id in `shard=none`; the folder appears whole or not at all; the manifest says what was
written. The Dask build from a partitioned copy is in test_distributed.py.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from configs.schema import config_from_mapping
from features.events import connect_for_events, load_configured_events
from features.generator import write_dataset
from pipelines import partition as part
from pipelines import steps
from pipelines.cli import main
from pipelines.partition import (
    MANIFEST_NAME,
    PartitionError,
    partition_events,
    partition_loaded,
    read_manifest,
    shard_glob,
)

AS_OF = date(2026, 6, 30)
NOW = datetime(2026, 7, 1, 6, 0, tzinfo=UTC)
CONFIG = config_from_mapping({})


@pytest.fixture(scope="module")
def events() -> Iterator[Path]:
    """300 clients, plus 7 rows without a client id (null, empty, spaces) and 5 rows of a
    client whose id is padded with spaces."""
    with tempfile.TemporaryDirectory() as folder:
        summary = write_dataset(folder, clients=300, days=120, end=AS_OF, seed=4)
        path = Path(summary["events_dir"])
        first = pq.read_table(sorted(path.glob("*.parquet"))[0])
        column = first.schema.get_field_index("client_id")
        missing = first.slice(0, 7).set_column(
            column, "client_id", pa.array([None, None, None, "", " ", "  ", ""], pa.string())
        )
        padded = first.slice(10, 5)
        padded = padded.set_column(
            column, "client_id", pc.binary_join_element_wise(" ", padded["client_id"], "  ", "")
        )
        pq.write_table(pa.concat_tables([missing, padded]), path / "part-odd.parquet")
        yield path


def _rows(folder: Path) -> pd.DataFrame:
    files = sorted(folder.glob("shard=*/*.parquet"))
    frames = [pq.read_table(f).to_pandas().assign(shard=f.parent.name[6:]) for f in files]
    return pd.concat(frames, ignore_index=True)


def test_every_row_lands_in_exactly_one_shard_the_builds_one(events, tmp_path):
    out = tmp_path / "by-client"
    manifest = partition_events(CONFIG, events, out, shards=4)

    source = pd.read_parquet(events)
    written = _rows(out)
    assert len(written) == len(source) == manifest.rows
    key = ["event_id", "client_id", "event_time", "event_type"]
    pd.testing.assert_frame_equal(  # the same rows, each once, with their raw values
        written[key].sort_values(key, ignore_index=True),
        source[key].astype(written[key].dtypes.to_dict()).sort_values(key, ignore_index=True),
    )
    # the shard of every loaded event is the build's `hash(client_id) % 4`
    for k in range(4):
        con = duckdb.connect()
        load_configured_events(con, CONFIG, shard_glob(out, k, with_none=False), now=NOW)
        shards = con.execute("SELECT DISTINCT hash(client_id) % 4 FROM events").fetchall()
        assert shards == [(k,)]
        con.close()
    # padded ids are the same clients: one shard per client
    trimmed = written.assign(client=written["client_id"].str.strip())
    assert (trimmed.groupby("client")["shard"].nunique() == 1).all()
    none = written[written["shard"] == "none"]
    assert len(none) == 7 and none["client_id"].fillna("").str.strip().eq("").all()


def test_rows_without_a_client_are_quarantined_from_shard_none(events, tmp_path):
    out = tmp_path / "by-client"
    partition_events(CONFIG, events, out, shards=2)
    con = duckdb.connect()
    report = load_configured_events(con, CONFIG, shard_glob(out, 0, with_none=True), now=NOW)
    assert report.by_reason.get("missing_client_id") == 7
    con.close()


def test_the_manifest_says_shards_key_source_and_rows(events, tmp_path):
    out = tmp_path / "by-client"
    manifest = partition_events(CONFIG, events, out, shards=3)

    raw = json.loads((out / MANIFEST_NAME).read_text())
    assert raw["shards"] == 3 and raw["key"] == "hash(client_id) % 3"
    assert raw["source"] == str(events) and raw["source_format"] == "parquet"
    assert set(raw["rows_by_shard"]) == {"0", "1", "2", "none"}
    assert raw["rows_by_shard"]["none"] == 7
    assert sum(raw["rows_by_shard"].values()) == raw["rows"] == len(pd.read_parquet(events))
    assert raw["month_partitions"] is False
    assert read_manifest(out) == manifest
    assert read_manifest(events) is None


def test_a_shard_without_clients_gets_an_empty_file(tmp_path):
    summary = write_dataset(tmp_path / "small", clients=2, days=30, end=AS_OF, seed=2)
    out = tmp_path / "by-client"
    manifest = partition_events(CONFIG, summary["events_dir"], out, shards=6)
    assert list(manifest.rows_by_shard.values()).count(0) >= 4
    for k in [*map(str, range(6)), "none"]:
        files = list((out / f"shard={k}").glob("*.parquet"))
        assert (
            files
            and sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            == (manifest.rows_by_shard[k])
        )


def test_loaded_events_are_partitioned_by_their_client_and_read_back_whole(events, tmp_path):
    with tempfile.TemporaryDirectory() as scratch:
        con = connect_for_events(CONFIG.features, scratch)
        try:
            load_configured_events(con, CONFIG, str(events), now=NOW)
            loaded = con.execute("SELECT * FROM events").to_arrow_table()
            manifest = partition_loaded(con, "events", tmp_path / "loaded", 3, CONFIG)
            with pytest.raises(PartitionError, match="exists"):
                partition_loaded(con, "events", tmp_path / "loaded", 3, CONFIG)
        finally:
            con.close()
    assert read_manifest(tmp_path / "loaded") == manifest
    assert manifest.rows == loaded.num_rows and manifest.rows_by_shard["none"] == 0
    rows = _rows(tmp_path / "loaded")
    expected = duckdb.sql("SELECT client_id, CAST(hash(client_id) % 3 AS VARCHAR) AS k FROM rows")
    assert (rows["shard"] == expected.df()["k"]).all()
    columns = list(manifest.columns)
    back = rows[columns].sort_values("event_id", ignore_index=True)
    front = loaded.select(columns).to_pandas().sort_values("event_id", ignore_index=True)
    pd.testing.assert_frame_equal(back, front, check_dtype=False)


def test_a_failure_leaves_no_half_folder_and_keeps_the_earlier_one(events, tmp_path, monkeypatch):
    out = tmp_path / "by-client"

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(part, "_fill_empty_shards", boom)
    with pytest.raises(OSError, match="disk full"):
        partition_events(CONFIG, events, out, shards=2)
    assert list(tmp_path.iterdir()) == []  # neither OUT nor its temporary folder

    monkeypatch.undo()
    first = partition_events(CONFIG, events, out, shards=2)
    monkeypatch.setattr(part, "_fill_empty_shards", boom)
    with pytest.raises(OSError):
        partition_events(CONFIG, events, out, shards=5)
    assert read_manifest(out) == first  # the earlier folder, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["by-client"]


def test_an_output_that_is_not_a_partitioned_folder_is_refused(events, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(PartitionError, match="not a partitioned folder"):
        partition_events(CONFIG, events, tmp_path, shards=2)
    with pytest.raises(PartitionError, match="inside the input"):
        partition_events(CONFIG, events, events / "by-client", shards=2)


def test_identifier_columns_are_refused(tmp_path):
    table = pa.table({"client_id": ["a"], "event_time": ["2026-06-01"], "event_type": ["visit"]})
    pq.write_table(table.append_column("device_id", pa.array(["d1"])), tmp_path / "e.parquet")
    with pytest.raises(PartitionError, match="identity stitching"):
        partition_events(CONFIG, tmp_path / "e.parquet", tmp_path / "out", shards=2)


def test_a_mapped_csv_input_partitions_to_the_same_features(tmp_path):
    """CSV through a column mapping: the copy holds the contract's columns as text, and the
    one-process build on it equals the build on the CSV."""
    summary = write_dataset(tmp_path / "g", clients=80, days=90, end=AS_OF, seed=8)
    table = pq.read_table(summary["events_dir"]).rename_columns(
        [
            "userId" if c == "client_id" else c
            for c in pq.read_schema(sorted(Path(summary["events_dir"]).glob("*.parquet"))[0]).names
        ]
    )
    csv = tmp_path / "events.csv"
    pcsv.write_csv(table, csv)
    config = config_from_mapping({"events": {"columns": {"client_id": "userId"}}})
    out = tmp_path / "by-client"
    manifest = partition_events(config, csv, out, shards=3)
    assert manifest.source_format == "csv" and "client_id" in manifest.columns

    def build(cfg: object, path: Path) -> pd.DataFrame:
        with tempfile.TemporaryDirectory() as scratch:
            con = connect_for_events(config.features, scratch)
            steps.read_events(con, cfg, str(path), now=NOW)  # type: ignore[arg-type]
            return steps.compute_features(con, AS_OF, cfg)  # type: ignore[arg-type]

    from pipelines.partition import config_for_partitioned

    pd.testing.assert_frame_equal(
        build(config_for_partitioned(config, manifest), out), build(config, csv), check_exact=True
    )
    with pytest.raises(PartitionError, match="column mapping"):
        config_for_partitioned(CONFIG, manifest)


def test_the_cli_partitions_and_prints_the_counts(events, tmp_path, capsys):
    out = tmp_path / "by-client"
    code = main(["partition", "--events", str(events), "--out", str(out), "--shards", "2"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["shards"] == 2 and printed["rows_by_shard"]["none"] == 7
    assert (out / MANIFEST_NAME).is_file()
