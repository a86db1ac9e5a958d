"""Tests of the engine's CLTV model (days in, discounted monthly CLTV out)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from models.cltv import PREDICTION_COLUMNS, CltvModel, ConvergenceError

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def frame():
    d = pd.read_csv(DATA / "cdnow_customers_summary_with_transactions.csv")
    df = pd.DataFrame(
        {
            "frequency": d["x"],
            "recency": d["t_x"] * 7,
            "T": d["T"] * 7,
            "monetary_value": d["zbar"],
        }
    )
    df.index = "c" + d["ID"].astype(str)
    return df


@pytest.fixture(scope="module")
def model(frame):
    return CltvModel(horizon_days=365, annual_discount_rate=0.10).fit(frame)


def test_fit_reports_cdnow_parameters_in_days(model):
    p = model.params_
    assert p["alpha"] == pytest.approx(4.414 * 7, rel=3e-4)
    assert p["r"] == pytest.approx(0.243, abs=6e-4)
    assert p["q"] == pytest.approx(3.74, abs=5e-3)
    s = model.summary()
    assert {"r", "alpha", "a", "b", "p", "q", "v", "log_likelihood"} <= set(s["parameter"])


def test_predict_columns_index_and_values(model, frame):
    sub = frame.iloc[::-7]
    out = model.predict(sub)
    assert list(out.columns) == list(PREDICTION_COLUMNS)
    assert out.index.equals(sub.index)
    assert np.isfinite(out.to_numpy()).all()
    assert ((out["p_alive"] >= 0) & (out["p_alive"] <= 1)).all()
    # the published example, in days, over 39 weeks
    e = model.expected_purchases(
        pd.DataFrame([[2, 30.43 * 7, 38.86 * 7, 10.0]], columns=sub.columns), 273
    )
    assert e[0] == pytest.approx(1.226, abs=5e-4)


def test_cltv_is_discounted_sum_of_monthly_increments(model, frame):
    row = frame.iloc[[0]]
    out = model.predict(row)
    steps = 365 * np.arange(1, 13) / 12
    cum = np.array([model.expected_purchases(row, s)[0] for s in steps])
    incr = np.diff(cum, prepend=0.0)
    disc = 1.1 ** (-steps / 365.25)
    value = model.expected_avg_value(row)[0]
    assert out["predicted_cltv"].iloc[0] == pytest.approx(value * incr @ disc, rel=1e-10)
    assert out["expected_purchases"].iloc[0] == pytest.approx(cum[-1], rel=1e-10)
    undiscounted = CltvModel(365, 0.0).fit(frame).predict(row)["predicted_cltv"].iloc[0]
    assert undiscounted == pytest.approx(value * cum[-1], rel=1e-6)
    assert undiscounted > out["predicted_cltv"].iloc[0]


def test_never_one_and_zero_spend_clients(model):
    df = pd.DataFrame(
        {
            "frequency": [0, 0, 3, 3],
            "recency": [np.nan, 0.0, 100.0, 100.0],
            "T": [np.nan, 50.0, 200.0, 200.0],
            "monetary_value": [np.nan, 0.0, 0.0, 40.0],
        }
    )
    out = model.predict(df)
    assert np.isfinite(out.to_numpy()).all()
    pop = model.gamma_gamma_.population_mean_
    assert out["expected_avg_value"].iloc[0] == pytest.approx(pop)
    assert out["p_alive"].iloc[0] == 1.0 and out["p_alive"].iloc[1] == 1.0
    assert out["expected_avg_value"].iloc[2] < out["expected_avg_value"].iloc[3]
    assert out["expected_purchases"].iloc[0] > out["expected_purchases"].iloc[1] > 0


def test_bad_input_and_unfitted():
    with pytest.raises(ValueError, match="monetary_value"):
        CltvModel().fit(pd.DataFrame({"frequency": [1], "recency": [1], "T": [2]}))
    with pytest.raises(NotFittedError, match="not fitted"):
        CltvModel().predict(pd.DataFrame())
    with pytest.raises(ValueError, match="horizon_days"):
        CltvModel(horizon_days=0).fit(pd.DataFrame())


def test_degenerate_data_raises_convergence_error():
    df = pd.DataFrame(
        {"frequency": [0, 0, 0], "recency": [0, 0, 0], "T": [5, 6, 7], "monetary_value": [0, 0, 0]}
    )
    with pytest.raises(ConvergenceError):
        CltvModel().fit(df)
