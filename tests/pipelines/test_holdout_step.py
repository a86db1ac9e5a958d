"""The nightly's holdout step on a real events table: entry dates from the published
membership, never after the as-of (a rebuild reads a membership published later), and the
smallest `journey.min_clients` the config allows; and a preview in a fresh folder."""

from __future__ import annotations

from datetime import date, datetime

import duckdb
import pandas as pd

from configs import config_from_mapping
from features.events import load_events
from features.generator import write_dataset
from pipelines.preview import preview
from pipelines.steps import holdout_outcomes

AS_OF = date(2025, 6, 20)


def _con(tmp_path) -> duckdb.DuckDBPyConnection:
    rows = []
    for k in range(80):
        rows.append((f"c{k:02d}", datetime(2025, 6, 1), "purchase", 10.0))
        rows.append((f"c{k:02d}", datetime(2025, 6, 15), "purchase", 20.0))
    frame = pd.DataFrame(rows, columns=["client_id", "event_time", "event_type", "amount"])
    frame.to_parquet(tmp_path / "e.parquet")
    con = duckdb.connect()
    load_events(con, tmp_path / "e.parquet", now=datetime(2025, 7, 1))
    return con


def _membership() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "client_id": [f"c{k:02d}" for k in range(80)],
            "segment_id": "S",
            "segment_name": "S",
            "holdout": [k % 4 == 0 for k in range(80)],
        }
    )


def test_an_entry_published_after_the_as_of_counts_from_the_as_of(tmp_path):
    config = config_from_mapping({"journey": {"min_clients": 1}})  # the smallest allowed
    previous = _membership().assign(valid_from=pd.Timestamp("2025-06-29"))  # a later run
    result = holdout_outcomes(_con(tmp_path), AS_OF, _membership(), previous, config)
    row = result.iloc[0]
    assert row["treated_clients"] == 60 and row["holdout_clients"] == 20
    assert row["days_after_entry_mean"] == 0  # entered tonight: nothing observed yet
    earlier = _membership().assign(valid_from=pd.Timestamp("2025-06-10"))
    row = holdout_outcomes(_con(tmp_path), AS_OF, _membership(), earlier, config).iloc[0]
    assert row["days_after_entry_mean"] == 10
    assert row["treated_purchases_mean"] == 1.0  # the purchase of 06-15, not the one of 06-01


def test_preview_in_a_fresh_folder(tmp_path, monkeypatch):
    for name in ("SEGMENTATION_STORE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    write_dataset(tmp_path / "data", clients=400, days=120, end=AS_OF, seed=3)
    config = config_from_mapping(
        {"workdir": str(tmp_path / "fresh" / "work"), "clustering": {"sample_size": 400}}
    )
    result = preview(config, events=str(tmp_path / "data" / "events"), as_of=AS_OF)
    assert result.moved == result.clients > 0  # nothing published: everyone enters
    assert any("nothing is published yet" in n for n in result.notes)
    assert not (tmp_path / "fresh" / "work" / "store.duckdb").exists()
