"""The learned CLTV models trained inside the run: point in time (no event after the training
cut reaches the training features), BG/NBD kept on purchase-only data, fallbacks that never
crash the run."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from configs import config_from_mapping
from features.build import purchase_log
from features.events import day_end, load_events
from features.generator import generate
from pipelines import steps

DATA = Path(__file__).resolve().parents[1] / "data"
END = date(2025, 6, 30)
AS_OF = END - timedelta(days=60)
CONFIG = config_from_mapping(
    {"cltv": {"holdout_days": 60, "min_training_purchasers": 20}, "seed": 3}
)


def _connection(path: Path, before: date | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    load_events(con, str(path), future_tolerance_hours=1e6, earliest_event_time=date(1990, 1, 1))
    if before is not None:
        cut = day_end(before).isoformat(sep=" ")
        con.execute(f"DELETE FROM events WHERE event_time >= TIMESTAMP '{cut}'")
    return con


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    events, _ = generate(1500, 300, END, seed=11)
    path = tmp_path_factory.mktemp("gen") / "events.parquet"
    import pyarrow.parquet as pq

    pq.write_table(events, path)
    return path


def test_no_event_after_the_training_cut_reaches_the_training_features(generated):
    cut = AS_OF - timedelta(days=60)
    everything = _connection(generated, before=AS_OF)
    purchases = purchase_log(everything, AS_OF).rename(columns={"event_time": "day"})
    window = steps.training_inputs(everything, AS_OF, purchases, CONFIG)
    only_past = _connection(generated, before=cut)
    past = steps.training_inputs(only_past, AS_OF, purchases, CONFIG)
    # the same features and BG/NBD signals whether or not the later events are there
    pd.testing.assert_frame_equal(window.inputs, past.inputs)
    assert (window.is_buyer == past.is_buyer).all()
    labels = window.labels
    # the labels are the purchase days in (cut, AS_OF], counted again here with pandas
    raw = pd.read_parquet(generated)
    day = pd.to_datetime(raw["event_time"]).dt.tz_localize(None).dt.normalize()
    inside = (raw["event_type"] == "purchase") & (day > pd.Timestamp(cut))
    inside &= day <= pd.Timestamp(AS_OF)
    expected = raw[inside].assign(day=day[inside]).groupby("client_id")["day"].nunique()
    expected = expected.reindex(labels.index, fill_value=0).astype(float)
    assert expected.sum() > 0
    pd.testing.assert_series_equal(labels["purchases"], expected, check_names=False)


def test_the_run_scores_prospects_apart_from_buyers(generated, monkeypatch):
    con = _connection(generated, before=AS_OF)
    features = steps.compute_features(con, AS_OF, CONFIG)
    bundle = steps.fit_cltv(con, AS_OF, steps.btyd_inputs(features), CONFIG)
    assert bundle.choice is not None and bundle.choice.conversion_model is not None
    scores = steps.score_clients(bundle, features, CONFIG, "1").set_index("client_id")
    bought = features.set_index("client_id")["has_purchased"] > 0
    prospects, buyers = scores[~bought.reindex(scores.index)], scores[bought.reindex(scores.index)]
    assert len(prospects) > 0 and (prospects["cltv_model"] == "prospect").all()
    assert prospects["p_alive"].isna().all()
    assert prospects["p_purchase"].between(0, 1).all() and prospects["p_purchase"].nunique() > 1
    assert set(buyers["cltv_model"]) == {bundle.choice.champion}
    # a prospect who never bought is not worth more than the typical buyer
    assert prospects["predicted_cltv"].median() < buyers["predicted_cltv"].median()
    assert {"selection.btyd.purchases_rmse", "selection.lift.d01.actual_spend"} <= set(
        bundle.backtest
    )
    # scored in batches of clients, the rows are the same bits as scored all at once
    monkeypatch.setattr(steps, "SCORE_BATCH", 97)
    assert len(features) > 5 * 97
    batched = steps.score_clients(bundle, features, CONFIG, "1").set_index("client_id")
    pd.testing.assert_frame_equal(batched, scores, check_exact=True)


def test_purchase_only_data_keeps_bgnbd_champion(tmp_path):
    raw = pd.read_csv(
        DATA / "CDNOW_sample.txt",
        sep=r"\s+",
        header=None,
        names=["id", "master", "date", "qty", "amount"],
        dtype={"id": str, "date": str},
    )
    events = pd.DataFrame(
        {
            "client_id": "cd" + raw["id"],
            "event_time": pd.to_datetime(raw["date"], format="%Y%m%d") + pd.Timedelta(hours=12),
            "event_type": "purchase",
            "channel": "web",
            "amount": raw["amount"].astype(float),
        }
    )
    events.to_parquet(tmp_path / "cdnow.parquet")
    as_of = date(1998, 3, 31)
    con = _connection(tmp_path / "cdnow.parquet", before=as_of)
    config = config_from_mapping({"cltv": {"holdout_days": 90, "min_training_purchasers": 20}})
    features = steps.compute_features(con, as_of, config)
    bundle = steps.fit_cltv(con, as_of, steps.btyd_inputs(features), config)
    assert bundle.choice is not None and "learned.purchases_rmse" in bundle.choice.metrics
    assert bundle.choice.champion == "btyd", bundle.choice.reason  # judged, and not better
    scores = steps.score_clients(bundle, features, config, "1")
    assert (scores["cltv_model"] == "btyd").all()


def test_too_little_history_before_the_window_falls_back_to_bgnbd(generated):
    con = _connection(generated, before=AS_OF)
    config = config_from_mapping({"cltv": {"holdout_days": 290}})  # cut before the first event
    features = steps.compute_features(con, AS_OF, config)
    bundle = steps.fit_cltv(con, AS_OF, steps.btyd_inputs(features), config)
    assert bundle.choice is None
    scores = steps.score_clients(bundle, features, config, "1")
    bought = (features["has_purchased"] > 0).to_numpy()
    assert (scores.loc[bought, "cltv_model"] == "btyd").all()
    assert scores.loc[~bought, "predicted_cltv"].isna().all()
    assert np.isfinite(scores.loc[bought, "predicted_cltv"]).all()


def test_a_sampled_window_holds_the_same_rows_for_its_clients(generated):
    con = _connection(generated, before=AS_OF)
    purchases = purchase_log(con, AS_OF).rename(columns={"event_time": "day"})
    full = steps.training_inputs(con, AS_OF, purchases, CONFIG)
    part = steps.training_inputs(con, AS_OF, purchases, CONFIG, shards=3)
    assert 0.2 < len(part.inputs) / len(full.inputs) < 0.5
    mine = full.inputs.index.get_indexer(part.inputs.index)
    assert (mine >= 0).all()
    pd.testing.assert_frame_equal(part.labels, full.labels.iloc[mine])
    assert (part.is_buyer == full.is_buyer[mine]).all()
    # the behavioral features are the same; the BG/NBD signals come from a fit on the sample
    behavior = [c for c in part.inputs.columns if not c.startswith("bg_")]
    pd.testing.assert_frame_equal(part.inputs[behavior], full.inputs.iloc[mine][behavior])


def test_with_many_clients_the_backtest_and_windows_read_one_partition(generated):
    config = config_from_mapping(
        {
            "cltv": {"holdout_days": 60, "min_training_purchasers": 20, "window_clients": 1000},
            "seed": 3,
        }
    )
    con = _connection(generated, before=AS_OF)
    btyd = steps.btyd_inputs(steps.compute_features(con, AS_OF, config))
    assert steps.window_shards(len(btyd), config) == 2

    bundle = steps.fit_cltv(con, AS_OF, btyd, config)

    whole = purchase_log(con, AS_OF).rename(columns={"event_time": "day"})
    part = purchase_log(con, AS_OF, shards=2).rename(columns={"event_time": "day"})
    assert 0.3 < len(part) / len(whole) < 0.7
    # the backtest ran on the partition's clients: its count is the partition's calibration
    from models.backtest import split_btyd

    calibration, _ = split_btyd(part, AS_OF, 60)
    assert bundle.backtest["n_clients"] == len(calibration)
    assert len(calibration) < len(split_btyd(whole, AS_OF, 60)[0])
    # the learned windows are those of the whole log: their labels read that partition only
    assert bundle.choice is not None
    again = steps.select_learned_models(con, AS_OF, whole, config, clients=len(btyd))
    assert again is not None and again.metrics == bundle.choice.metrics


def test_events_without_amounts_still_get_alive_and_purchases(generated, tmp_path):
    # a click log with purchases but no amounts: spend cannot be modelled, alive-ness can
    events = pd.read_parquet(generated).drop(columns=["amount"])
    events.to_parquet(tmp_path / "no_amounts.parquet")
    con = _connection(tmp_path / "no_amounts.parquet", before=AS_OF)
    features = steps.compute_features(con, AS_OF, CONFIG)
    bundle = steps.fit_cltv(con, AS_OF, steps.btyd_inputs(features), CONFIG)
    assert np.isnan(bundle.model.gamma_gamma_.population_mean_)
    assert bundle.choice is None  # nothing to learn a value from
    scores = steps.score_clients(bundle, features, CONFIG, "1")
    buyers = scores[scores["cltv_model"] == "btyd"]
    assert len(buyers) and buyers["p_alive"].between(0, 1).all()
    assert (buyers["expected_purchases"] >= 0).all()
    # the value is unknown, not zero: no client is ranked as worth more than another
    assert scores["predicted_cltv"].isna().all() and scores["cltv_percentile"].isna().all()


def test_one_repeat_buyer_with_spend_gives_the_mean_spend(tmp_path):
    from models.btyd import MeanSpendModel
    from models.cltv import CltvModel

    btyd = pd.DataFrame(
        {
            "frequency": [3.0, 0.0, 2.0, 0.0, 1.0],
            "recency": [80.0, 0.0, 50.0, 0.0, 20.0],
            "T": [100.0, 90.0, 95.0, 30.0, 60.0],
            "monetary_value": [40.0, 0.0, 0.0, 0.0, 0.0],  # one repeat buyer with spend
        }
    )
    model = CltvModel().fit(btyd)
    assert isinstance(model.gamma_gamma_, MeanSpendModel)
    assert "at least 2 repeat buyers" in model.gamma_gamma_.reason_
    predicted = model.predict(btyd)
    assert (predicted["expected_avg_value"] == 40.0).all()
    assert np.isfinite(predicted["predicted_cltv"]).all()
