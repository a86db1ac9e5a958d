"""Calibration/holdout backtest of the CLTV model: the quality metrics the pipeline logs."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
from sklearn.base import clone

from models.cltv import BTYD_COLUMNS, CltvModel

__all__ = ["backtest", "error_metrics", "split_btyd"]


def split_btyd(
    purchases: pd.DataFrame, as_of: date, holdout_days: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibration BTYD frame and holdout actuals from a purchase log.

    `purchases` has one row per purchase event: client_id, day (date or timestamp), amount.
    Events are aggregated to purchase days. Calibration ends with the day
    cal_end = as_of - holdout_days (inclusive); the holdout is (cal_end, as_of].
    Calibration (index client_id, clients with a purchase up to cal_end): frequency = purchase
    days - 1, recency = days first -> last purchase day, T = days from the first purchase day
    to the end of cal_end (so T >= recency + 1), monetary_value = mean spend of the repeat
    purchase days (0 if none). Holdout (same index): purchases (purchase days) and spend.
    """
    missing = [c for c in ("client_id", "day", "amount") if c not in purchases.columns]
    if missing:
        raise ValueError(f"purchases lacks columns {missing}")
    if holdout_days < 1:
        raise ValueError(f"holdout_days must be >= 1, got {holdout_days}")
    as_of = pd.Timestamp(as_of).normalize()
    cal_end = as_of - timedelta(days=int(holdout_days))
    p = pd.DataFrame(
        {
            "client_id": purchases["client_id"].to_numpy(),
            "day": pd.to_datetime(purchases["day"]).dt.normalize().to_numpy(),
            "amount": pd.to_numeric(purchases["amount"]).fillna(0.0).to_numpy(dtype=float),
        }
    )
    p = p[p["day"] <= as_of]
    daily = p.groupby(["client_id", "day"], as_index=False, sort=True)["amount"].sum()
    cal = daily[daily["day"] <= cal_end]
    hold = daily[daily["day"] > cal_end]
    g = cal.groupby("client_id", sort=True)
    first = g["day"].min()
    last = g["day"].max()
    n = g["day"].size()
    total = g["amount"].sum()
    first_amount = cal.drop_duplicates("client_id", keep="first").set_index("client_id")["amount"]
    freq = (n - 1).astype(float)
    day = pd.Timedelta(days=1)
    repeat_spend = total - first_amount.reindex(total.index)
    calib = pd.DataFrame(
        {
            "frequency": freq,
            "recency": (last - first) / day,
            "T": (cal_end + day - first) / day,
            "monetary_value": np.where(freq > 0, repeat_spend / freq.where(freq > 0, 1.0), 0.0),
        }
    )
    calib.index.name = "client_id"
    hg = hold[hold["client_id"].isin(calib.index)].groupby("client_id")
    holdout = pd.DataFrame(
        {"purchases": hg["day"].size().astype(float), "spend": hg["amount"].sum()}
    ).reindex(calib.index, fill_value=0.0)
    return calib, holdout


def backtest(
    calibration: pd.DataFrame, holdout: pd.DataFrame, model: CltvModel, holdout_days: float
) -> dict[str, float]:
    """Fit a clone of `model` (same parameters, `model` itself untouched) on calibration and
    score its holdout predictions per client.

    `holdout` has columns purchases and spend (actuals in the holdout window), index aligned
    with `calibration` (missing clients count as 0). `holdout_days` is the config's
    `cltv.holdout_days` (the window `split_btyd` made).
    Predicted spend = expected purchases x expected average value (undiscounted).
    Bias is relative: (sum predicted - sum actual) / sum actual (NaN when actual sum is 0);
    corr is Pearson per client (NaN when either side is constant).
    """
    missing = [c for c in BTYD_COLUMNS if c not in calibration.columns]
    missing += [c for c in ("purchases", "spend") if c not in holdout.columns]
    if missing:
        raise ValueError(f"backtest input lacks columns {missing}")
    if not holdout_days > 0:
        raise ValueError(f"holdout_days must be > 0, got {holdout_days}")
    if len(calibration) == 0:
        raise ValueError("calibration frame is empty")
    actual = holdout.reindex(calibration.index).fillna(0.0)
    fitted = clone(model).fit(calibration)
    pred_n = np.asarray(fitted.expected_purchases(calibration, holdout_days), dtype=float)
    pred_s = pred_n * np.asarray(fitted.expected_avg_value(calibration), dtype=float)
    out: dict[str, float] = {}
    out.update(error_metrics("purchases", pred_n, actual["purchases"].to_numpy(dtype=float)))
    out.update(error_metrics("spend", pred_s, actual["spend"].to_numpy(dtype=float)))
    out["n_clients"] = float(len(calibration))
    out["holdout_days"] = float(holdout_days)
    return out


def error_metrics(prefix: str, pred: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """`<prefix>_bias` (relative, NaN when the actual sum is 0), `_rmse`, `_mae`, `_corr`
    (Pearson, NaN when either side is constant) of per-client predictions."""
    err = pred - actual
    tot = actual.sum()
    bias = float((pred.sum() - tot) / tot) if tot != 0 else float("nan")
    if pred.size > 1 and np.std(pred) > 0 and np.std(actual) > 0:
        corr = float(np.corrcoef(pred, actual)[0, 1])
    else:
        corr = float("nan")
    return {
        f"{prefix}_bias": bias,
        f"{prefix}_rmse": float(np.sqrt(np.mean(err**2))),
        f"{prefix}_mae": float(np.mean(np.abs(err))),
        f"{prefix}_corr": corr,
    }
