"""Tests of client scoring (buyers by BG/NBD or the learned model, prospects by conversion)
and of BG/NBD's probability of a purchase in a window."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special

from models.cltv import CltvModel
from models.learned import ConversionModel, PurchaseModel, btyd_signals
from models.scoring import SCORED_COLUMNS, level_prospects, score_clients

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def cdnow():
    d = pd.read_csv(DATA / "cdnow_customers_summary_with_transactions.csv")
    df = pd.DataFrame(
        {"frequency": d["x"], "recency": d["t_x"] * 7, "T": d["T"] * 7, "monetary_value": d["zbar"]}
    )
    df.index = pd.Index("c" + d["ID"].astype(str), name="client_id")
    return df


@pytest.fixture(scope="module")
def model(cdnow):
    return CltvModel(horizon_days=365, annual_discount_rate=0.10).fit(cdnow)


def _p_none_by_integration(params, x, tx, T, t):
    """P(no purchase in (T, T+t]) by integrating the BG/NBD likelihood over lambda and p."""
    r, alpha, a, b = params["r"], params["alpha"], params["a"], params["b"]

    def prior(lam, p):
        g = np.exp(r * np.log(alpha) + (r - 1) * np.log(lam) - alpha * lam - special.gammaln(r))
        return g * p ** (a - 1) * (1 - p) ** (b - 1) / special.beta(a, b)

    def joint(lam, p, extra):
        alive = (1 - p) ** x * lam**x * np.exp(-lam * (T + extra))
        dead = p * (1 - p) ** (x - 1) * lam**x * np.exp(-lam * tx) if x > 0 else 0.0
        return (alive + dead) * prior(lam, p)

    opts = {"epsabs": 1e-13, "epsrel": 1e-9}
    num = integrate.dblquad(lambda lam, p: joint(lam, p, t), 0, 1, 0, 2.0, **opts)[0]
    den = integrate.dblquad(lambda lam, p: joint(lam, p, 0.0), 0, 1, 0, 2.0, **opts)[0]
    return num / den


@pytest.mark.parametrize("x,tx,T", [(0, 0.0, 200.0), (2, 150.0, 270.0), (5, 100.0, 270.0)])
def test_p_purchase_matches_numerical_integration(model, x, tx, T):
    row = pd.DataFrame([[x, tx, T, 20.0]], columns=["frequency", "recency", "T", "monetary_value"])
    p = model.p_purchase(row, 90)[0]
    assert p == pytest.approx(
        1 - _p_none_by_integration(model.bgnbd_.params_, x, tx, T, 90), abs=2e-4
    )


def test_p_purchase_grows_with_the_window(model, cdnow):
    rows = cdnow.iloc[:200]
    short, long = model.p_purchase(rows, 30), model.p_purchase(rows, 365)
    assert ((short >= 0) & (short <= long) & (long <= 1)).all()
    assert np.allclose(model.p_purchase(rows, 0), 0)


def test_new_client_outlook_counts_the_first_purchase_and_discounts(model):
    n, discounted, value = model.new_client_outlook(45)
    assert n == pytest.approx(1 + model.bgnbd_.expected_purchases(320.0), rel=1e-6)
    assert 0 < discounted < n
    assert value == pytest.approx(model.gamma_gamma_.population_mean_)


def _frames(cdnow, n_prospects=30):
    buyers = cdnow.iloc[:100]
    prospects = pd.DataFrame(
        0.0,
        index=pd.Index([f"p{i}" for i in range(n_prospects)], name="client_id"),
        columns=cdnow.columns,
    )
    btyd = pd.concat([buyers, prospects])
    is_buyer = np.r_[np.ones(len(buyers), bool), np.zeros(n_prospects, bool)]
    rng = np.random.default_rng(0)
    inputs = pd.DataFrame({"intent": rng.gamma(1.0, 1.0, len(btyd))}, index=btyd.index)
    return btyd, is_buyer, inputs


def test_btyd_scores_buyers_and_prospects_get_their_own_model(model, cdnow):
    btyd, is_buyer, inputs = _frames(cdnow)
    conversion = ConversionModel(max_iter=20, min_class_rows=5, min_samples_leaf=5).fit(
        inputs, inputs["intent"].to_numpy() > 1.0
    )
    out = score_clients(model, btyd, inputs, is_buyer, 90, conversion_model=conversion)
    assert list(out.columns) == list(SCORED_COLUMNS)
    buyers, prospects = out[is_buyer], out[~is_buyer]
    assert (buyers["cltv_model"] == "btyd").all() and (prospects["cltv_model"] == "prospect").all()
    base = model.predict(btyd[is_buyer])
    assert np.allclose(buyers["predicted_cltv"], base["predicted_cltv"])
    assert np.allclose(buyers["p_purchase"], model.p_purchase(btyd[is_buyer], 90))
    assert prospects["p_alive"].isna().all()  # nothing to be alive for before a first purchase
    p = conversion.predict_proba(inputs[~is_buyer])
    n, discounted, value = model.new_client_outlook(45)
    assert np.allclose(prospects["p_purchase"], p)
    assert np.allclose(prospects["predicted_cltv"], p * value * discounted)
    assert np.allclose(prospects["expected_purchases"], p * n)
    # a prospect is worth less than a just-acquired client, never the same for all
    assert prospects["predicted_cltv"].nunique() > 1


def test_the_conversion_level_sets_the_prospects_mean_not_their_ranking(model, cdnow):
    btyd, is_buyer, inputs = _frames(cdnow, n_prospects=200)
    conversion = ConversionModel(max_iter=20, min_class_rows=5, min_samples_leaf=5).fit(
        inputs, inputs["intent"].to_numpy() > 1.0
    )
    raw = score_clients(model, btyd, inputs, is_buyer, 90, conversion_model=conversion)
    assert level_prospects(raw, model, 90, conversion) is raw  # no level: unchanged
    conversion.level_ = 0.05
    out = level_prospects(raw, model, 90, conversion)
    pd.testing.assert_frame_equal(out[is_buyer], raw[is_buyer])  # buyers untouched
    before, after = raw[~is_buyer], out[~is_buyer]
    assert after["p_purchase"].mean() == pytest.approx(0.05, abs=1e-9)
    order = np.argsort(before["p_purchase"].to_numpy(), kind="stable")
    assert np.array_equal(order, np.argsort(after["p_purchase"].to_numpy(), kind="stable"))
    n, discounted, value = model.new_client_outlook(45)
    assert np.allclose(after["expected_purchases"], after["p_purchase"] * n)
    assert np.allclose(after["predicted_cltv"], after["p_purchase"] * value * discounted)


def test_without_a_conversion_model_prospects_are_unscored_not_valued(model, cdnow):
    btyd, is_buyer, inputs = _frames(cdnow)
    out = score_clients(model, btyd, inputs, is_buyer, 90)
    assert out.loc[~is_buyer, ["p_purchase", "predicted_cltv"]].isna().all().all()
    assert out.loc[is_buyer, "predicted_cltv"].notna().all()


def test_learned_scores_follow_the_bgnbd_curve_to_the_horizon(model, cdnow):
    btyd, is_buyer, _ = _frames(cdnow, n_prospects=0)
    inputs = btyd_signals(model, btyd, 90)
    y = pd.DataFrame({"purchases": inputs["bg_expected_purchases"] * 2, "spend": 0.0})
    y["spend"] = y["purchases"] * 30.0
    learned = PurchaseModel(max_iter=30, min_samples_leaf=5).fit(inputs, y)
    out = score_clients(model, btyd, inputs, is_buyer, 90, "learned", learned)
    assert (out["cltv_model"] == "learned").all()
    pred = learned.predict(inputs)
    ratio = model.predict(btyd)["expected_purchases"] / model.expected_purchases(btyd, 90)
    assert np.allclose(out["expected_purchases"], pred["purchases"] * ratio)
    assert np.allclose(out["p_purchase"], pred["p_purchase"])
    assert (out["predicted_cltv"] <= pred["spend"] * ratio + 1e-9).all()  # discounted


def test_the_learned_champion_needs_its_model(model, cdnow):
    btyd, is_buyer, inputs = _frames(cdnow)
    with pytest.raises(ValueError, match="needs its purchase model"):
        score_clients(model, btyd, inputs, is_buyer, 90, "learned")
