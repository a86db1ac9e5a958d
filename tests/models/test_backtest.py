"""Tests of the calibration/holdout split and the backtest metrics."""

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.backtest import backtest, split_btyd
from models.cltv import CltvModel

DATA = Path(__file__).resolve().parents[1] / "data"
KEYS = {
    "purchases_bias",
    "purchases_rmse",
    "purchases_mae",
    "purchases_corr",
    "spend_bias",
    "spend_rmse",
    "spend_mae",
    "spend_corr",
    "n_clients",
    "holdout_days",
}


def test_split_btyd_small_log():
    p = pd.DataFrame(
        {
            "client_id": ["a", "a", "a", "a", "b", "c"],
            "day": pd.to_datetime(
                [
                    "2024-01-01 10:00",
                    "2024-01-01 18:00",
                    "2024-01-11 00:00",
                    "2024-02-05 00:00",
                    "2024-01-20 09:00",
                    "2024-02-03 23:59",
                ]
            ),
            "amount": [10.0, 5.0, 30.0, 7.0, 20.0, 9.0],
        }
    )
    cal, hold = split_btyd(p, date(2024, 2, 9), holdout_days=10)  # calibration ends Jan 30
    assert list(cal.index) == ["a", "b"]  # c bought only in the holdout
    a = cal.loc["a"]
    assert (a["frequency"], a["recency"], a["T"], a["monetary_value"]) == (1, 10, 30, 30.0)
    b = cal.loc["b"]
    assert (b["frequency"], b["recency"], b["T"], b["monetary_value"]) == (0, 0, 11, 0.0)
    assert hold.loc["a"].tolist() == [1.0, 7.0] and hold.loc["b"].tolist() == [0.0, 0.0]


def test_backtest_on_cdnow_transactions():
    raw = pd.read_csv(
        DATA / "CDNOW_sample.txt",
        sep=r"\s+",
        header=None,
        names=["client_id", "master_id", "date", "qty", "amount"],
        dtype={"date": str},
    )
    p = pd.DataFrame(
        {
            "client_id": raw["client_id"],
            "day": pd.to_datetime(raw["date"], format="%Y%m%d"),
            "amount": raw["amount"],
        }
    )
    cal, hold = split_btyd(p, date(1998, 6, 30), holdout_days=273)  # 39 + 39 weeks
    assert len(cal) == 2357
    model = CltvModel()
    m = backtest(cal, hold, model, holdout_days=273)
    assert not hasattr(model, "bgnbd_")  # a clone was fit, the model itself is left unfitted
    assert set(m) == KEYS and all(isinstance(v, float) for v in m.values())
    assert abs(m["purchases_bias"]) < 0.25 and abs(m["spend_bias"]) < 0.3
    assert m["purchases_corr"] > 0.5 and m["spend_corr"] > 0.4
    assert m["purchases_mae"] < m["purchases_rmse"]
    # a useless model (predicts the mean for everyone) has no correlation to report
    mean = hold["purchases"].mean()
    assert m["purchases_rmse"] < np.sqrt(((hold["purchases"] - mean) ** 2).mean()) * 1.05


def test_backtest_rejects_bad_input():
    with pytest.raises(ValueError, match="spend"):
        backtest(
            pd.DataFrame(columns=["frequency", "recency", "T", "monetary_value"]),
            pd.DataFrame(columns=["purchases"]),
            CltvModel(),
            30,
        )
