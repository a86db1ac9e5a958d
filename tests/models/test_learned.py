"""Tests of the learned purchase and conversion models and their training labels."""

from datetime import date

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from models.learned import (
    ConversionModel,
    PurchaseModel,
    model_inputs,
    shift_to_level,
    window_labels,
)
from models.selection import calibration_table


def _planted(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Inputs where `intent` drives next-window purchases; `noise` says nothing."""
    rng = np.random.default_rng(seed)
    intent = rng.gamma(1.0, 1.0, n)
    X = pd.DataFrame({"intent": intent, "noise": rng.normal(size=n)})
    purchases = rng.poisson(0.8 * intent).astype(float)
    spend = purchases * rng.gamma(5.0, 10.0, n)
    return X, pd.DataFrame({"purchases": purchases, "spend": spend})


def test_window_labels_count_purchase_days_inside_the_window_only():
    purchases = pd.DataFrame(
        {
            "client_id": ["a", "a", "a", "a", "b", "c"],
            "day": pd.to_datetime(
                ["2024-01-10", "2024-01-11", "2024-01-11", "2024-01-31", "2024-01-01", "2024-02-01"]
            ),
            "amount": [10.0, 5.0, 7.0, 1.0, 99.0, 3.0],
        }
    )
    out = window_labels(purchases, date(2024, 1, 1), date(2024, 1, 31))
    # a: Jan 10, Jan 11 (two orders, one day), Jan 31 (the window's last day); b on Jan 1
    # (the cut day itself) and c on Feb 1 are outside.
    assert list(out.index) == ["a"]
    assert out.loc["a", "purchases"] == 3.0
    assert out.loc["a", "spend"] == pytest.approx(23.0)


def test_purchase_model_learns_a_planted_signal_and_keeps_totals():
    X, y = _planted(6000, 0)
    model = PurchaseModel(max_iter=100).fit(X.iloc[:4000], y.iloc[:4000])
    pred = model.predict(X.iloc[4000:])
    assert list(pred.columns) == ["purchases", "spend", "p_purchase"]
    actual = y.iloc[4000:]
    mean_only = np.sqrt(np.mean((actual["purchases"] - y["purchases"].iloc[:4000].mean()) ** 2))
    rmse = np.sqrt(np.mean((actual["purchases"] - pred["purchases"]) ** 2))
    assert rmse < 0.85 * mean_only
    assert pred["purchases"].sum() == pytest.approx(actual["purchases"].sum(), rel=0.08)
    assert roc_auc_score(actual["purchases"] > 0, pred["p_purchase"]) > 0.7
    assert ((pred.to_numpy() >= 0).all()) and (pred["p_purchase"] <= 1).all()


def test_missing_values_are_information_not_dropped_rows():
    X, y = _planted(3000, 1)
    X["intent"] = X["intent"].mask(X.index % 3 == 0)  # a third missing
    X["never_seen"] = np.nan  # missing in every row: left out of the fit
    model = PurchaseModel(max_iter=50).fit(X, y)
    assert "never_seen" not in model.feature_names_in_
    pred = model.predict(X)
    assert len(pred) == len(X) and np.isfinite(pred.to_numpy()).all()


def test_purchase_model_samples_rows_over_max_rows_deterministically():
    X, y = _planted(3000, 2)
    a = PurchaseModel(max_iter=20, max_rows=1000, random_state=3).fit(X, y)
    b = PurchaseModel(max_iter=20, max_rows=1000, random_state=3).fit(X, y)
    assert a.n_train_ == 1000
    pd.testing.assert_frame_equal(a.predict(X), b.predict(X))


def test_conversion_model_ranks_converters_and_falls_back_to_the_base_rate():
    X, y = _planted(4000, 3)
    converted = y["purchases"].to_numpy() > 0
    model = ConversionModel(max_iter=80).fit(X.iloc[:3000], converted[:3000])
    p = model.predict_proba(X.iloc[3000:])
    assert roc_auc_score(converted[3000:], p) > 0.7
    assert p.sum() == pytest.approx(converted[3000:].sum(), rel=0.15)
    few = np.zeros(3000, dtype=bool)
    few[:5] = True  # five converters: too few to learn who converts
    base = ConversionModel().fit(X.iloc[:3000], few)
    assert base.classifier_ is None
    assert np.allclose(base.predict_proba(X.iloc[3000:]), 5 / 3000)


def test_shift_to_level_keeps_the_order_and_sets_the_mean():
    p = np.random.default_rng(0).beta(1.0, 5.0, 5000)
    q = shift_to_level(p, 0.3)
    assert q.mean() == pytest.approx(0.3, abs=1e-9)
    assert (np.argsort(p, kind="stable") == np.argsort(q, kind="stable")).all()
    assert np.array_equal(shift_to_level(p, 0.0), p)  # no level to reach: unchanged
    assert shift_to_level(np.zeros(0), 0.3).size == 0


def test_a_conversion_level_never_makes_a_row_depend_on_its_batch():
    X, y = _planted(4000, 3)
    converted = y["purchases"].to_numpy() > 0
    model = ConversionModel(max_iter=40).fit(X.iloc[:3000], converted[:3000])
    assert model.level_ is None
    raw = model.predict_proba(X.iloc[3000:])
    model.level_ = 0.5  # applied over the population by models.scoring.level_prospects
    assert np.array_equal(model.predict_proba(X.iloc[3000:]), raw)
    assert np.array_equal(model.predict_proba(X.iloc[3000:3010]), raw[:10])


def test_labels_must_be_counts_and_amounts():
    X, y = _planted(200, 4)
    with pytest.raises(ValueError, match="labels lack columns"):
        PurchaseModel().fit(X, y[["purchases"]])
    y.loc[0, "spend"] = -1.0
    with pytest.raises(ValueError, match=">= 0"):
        PurchaseModel().fit(X, y)


def test_model_inputs_keep_numeric_features_and_join_signals_by_client():
    features = pd.DataFrame(
        {"client_id": [1, 2], "n": [3, 4], "top_category": ["a", "b"], "x": [0.5, None]}
    )
    signals = pd.DataFrame({"bg_p_alive": [0.9]}, index=pd.Index(["2"], name="client_id"))
    out = model_inputs(features, signals)
    assert list(out.index) == ["1", "2"]
    assert list(out.columns) == ["n", "x", "bg_p_alive"]
    assert np.isnan(out.loc["1", "bg_p_alive"]) and out.loc["2", "bg_p_alive"] == 0.9


def _with_baseline(n: int, seed: int, signal: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """BG/NBD's expected purchases as the baseline; `intent` multiplies the true rate by up to
    e^signal (0: the baseline is the truth)."""
    rng = np.random.default_rng(seed)
    baseline = rng.gamma(1.2, 1.0, n)
    intent = rng.normal(size=n)
    rate = baseline * np.exp(signal * intent - signal**2 / 2)
    X = pd.DataFrame({"bg_expected_purchases": baseline, "intent": intent})
    purchases = rng.poisson(rate).astype(float)
    return X, pd.DataFrame({"purchases": purchases, "spend": purchases * 30.0})


def test_the_hybrid_keeps_bgnbd_when_behavior_adds_nothing():
    X, y = _with_baseline(6000, 5, signal=0.0)
    model = PurchaseModel().fit(X.iloc[:4000], y.iloc[:4000])
    assert model.baseline_in_ == "bg_expected_purchases"
    pred = model.predict(X.iloc[4000:])["purchases"].to_numpy()
    ratio = pred / X["bg_expected_purchases"].iloc[4000:].to_numpy()
    assert np.median(np.abs(ratio - 1.0)) < 0.1  # the forecast stays on BG/NBD's


def test_the_hybrid_learns_the_residual_that_bgnbd_misses():
    X, y = _with_baseline(8000, 6, signal=0.6)
    test, truth = X.iloc[6000:], y["purchases"].iloc[6000:].to_numpy()

    def rmse(pred: np.ndarray) -> float:
        return float(np.sqrt(np.mean((pred - truth) ** 2)))

    hybrid = PurchaseModel().fit(X.iloc[:6000], y.iloc[:6000]).predict(test)["purchases"]
    direct = PurchaseModel(baseline=None).fit(X.iloc[:6000], y.iloc[:6000])
    assert direct.baseline_in_ is None
    bg = rmse(test["bg_expected_purchases"].to_numpy())
    assert rmse(hybrid.to_numpy()) < 0.95 * bg
    assert rmse(hybrid.to_numpy()) <= rmse(direct.predict(test)["purchases"].to_numpy()) * 1.02


def test_p_purchase_is_calibrated_on_held_out_clients():
    # Reliability: in every well-filled bin of predicted p, the share who bought is close.
    X, y = _planted(12000, 7)
    model = PurchaseModel().fit(X.iloc[:8000], y.iloc[:8000])
    p = model.predict(X.iloc[8000:])["p_purchase"].to_numpy()
    bought = y["purchases"].iloc[8000:].to_numpy() > 0
    table = calibration_table(p, bought)
    filled = table[table["clients"] >= 200]
    assert len(filled) >= 3
    assert (filled["mean_predicted"] - filled["actual_rate"]).abs().max() < 0.06, table
    assert p.sum() == pytest.approx(bought.sum(), rel=0.05)


def test_a_single_class_falls_back_to_the_base_rate():
    X, y = _planted(2000, 8)
    y["purchases"] = np.maximum(y["purchases"], 1.0)  # everyone bought: one class
    y["spend"] = y["purchases"] * 20.0
    model = PurchaseModel(max_iter=20).fit(X, y)
    assert model.buy_model_ is None and model.base_rate_ == 1.0
    assert np.allclose(model.predict(X)["p_purchase"], 1.0)
    nobody = ConversionModel().fit(X, np.zeros(len(X), dtype=bool))
    assert nobody.classifier_ is None and np.allclose(nobody.predict_proba(X), 0.0)
