"""End-to-end quality: clusters fit on generated journeys should recover the personas."""

from datetime import date, timedelta

import duckdb
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from features.build import build_features
from features.events import load_events
from features.generator import write_dataset
from segmentation.clustering import ClusterModel

END = date(2026, 6, 30)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured ARI 0.34 (HDBSCAN: 70% noise on 2.5k clients -> k-means fallback, k=4); "
    "the generated personas are not density-separated in the default feature set yet",
)
def test_clusters_recover_personas_before_the_shift(tmp_path):
    write_dataset(tmp_path, clients=3000, days=365, end=END, seed=7)
    truth = pd.read_parquet(tmp_path / "truth.parquet")
    shift = pd.Timestamp(truth["shift_date"].dropna().min()).date()
    con = duckdb.connect()
    load_events(con, str(tmp_path / "events"))
    features = build_features(con, shift - timedelta(days=1)).to_pandas()
    frame = features.merge(truth[["client_id", "persona_before"]], on="client_id")
    assert len(frame) > 2000

    model = ClusterModel().fit(frame)
    pred = model.predict(frame)

    assert adjusted_rand_score(frame["persona_before"], pred["segment_id"]) >= 0.6
