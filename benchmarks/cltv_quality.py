"""CLTV quality against a future the models never saw: the learned model, BG/NBD x Gamma-Gamma
and the prospects' conversion model, on generator data and on the CDNOW sample.

    python benchmarks/cltv_quality.py [--clients 20000] [--days 540] [--seed 7] [--skip-cdnow]

Generator: events over `--days` days are generated; the engine sees those up to
as_of = end - holdout_days (the rest is deleted from its connection before anything runs) and
fits as the nightly run does (`pipelines.steps.fit_cltv`: BG/NBD on the history, the learned
models on features as of as_of - holdout_days and the purchases after). Its forecasts for the
next holdout_days are then compared with the generated future: per buyer, purchases and spend
(RMSE, aggregate bias) of BG/NBD and of the learned model; per prospect, p_purchase (AUC, the
predicted number of converting prospects against the actual). CDNOW (2,357 clients, purchases
only): as_of 1998-03-31, the next 90 days as the future; the champion against BG/NBD.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import load_config
from features.events import day_end, load_events
from features.generator import generate
from models.backtest import error_metrics
from models.learned import btyd_signals, model_inputs, window_labels
from pipelines import steps

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=540)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--skip-cdnow", action="store_true")
    args = ap.parse_args()
    config = load_config()
    out: dict[str, object] = {"command": " ".join(["python", *sys.argv])}
    end = date(2025, 12, 31)
    events, _ = generate(args.clients, args.days, end, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(events, Path(tmp) / "events.parquet")
        out["generator"] = evaluate(Path(tmp) / "events.parquet", end, config)
    if not args.skip_cdnow:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "cdnow.parquet"
            cdnow_events().to_parquet(path)
            cdnow = config.model_copy(
                update={"cltv": config.cltv.model_copy(update={"min_training_purchasers": 20})}
            )
            out["cdnow"] = evaluate(path, date(1998, 6, 29), cdnow)
    print(json.dumps(out, indent=2, default=float))


def evaluate(events_path: Path, end: date, config) -> dict[str, object]:
    """Fit as of end - holdout_days on what the engine may see; score against the rest."""
    h = config.cltv.holdout_days
    as_of = end - timedelta(days=h)
    con = duckdb.connect()
    load_events(
        con, str(events_path), future_tolerance_hours=1e6, earliest_event_time=date(1990, 1, 1)
    )
    cut = day_end(as_of).isoformat(sep=" ")
    future = con.sql(
        f"SELECT client_id, event_time AS day, amount FROM events"
        f" WHERE event_type = 'purchase' AND event_time >= TIMESTAMP '{cut}'"
    ).df()
    con.execute(f"DELETE FROM events WHERE event_time >= TIMESTAMP '{cut}'")
    t0 = time.perf_counter()
    features = steps.compute_features(con, as_of, config)
    btyd = steps.btyd_inputs(features)
    t1 = time.perf_counter()
    bundle = steps.fit_cltv(con, as_of, btyd, config)
    t2 = time.perf_counter()
    scores = steps.score_clients(bundle, features, config, "q").set_index("client_id")
    t3 = time.perf_counter()
    actual = window_labels(future, as_of, end).reindex(scores.index, fill_value=0.0)
    is_buyer = (features.set_index("client_id")["has_purchased"].fillna(0) > 0).reindex(
        scores.index
    )
    report: dict[str, object] = {
        "as_of": as_of.isoformat(),
        "future_days": h,
        "clients": len(scores),
        "buyers": int(is_buyer.sum()),
        "prospects": int((~is_buyer).sum()),
        "seconds": {"features": t1 - t0, "fit_cltv": t2 - t1, "score": t3 - t2},
        "champion": bundle.choice.champion if bundle.choice else "btyd (no learned models)",
        "reason": bundle.choice.reason if bundle.choice else None,
        "selection": {k: v for k, v in bundle.backtest.items() if k.startswith("selection.")},
    }
    buyers = scores.index[is_buyer.to_numpy()]
    b = btyd.loc[buyers]
    bg_n = bundle.model.expected_purchases(b, h)
    bg_s = bg_n * bundle.model.expected_avg_value(b)
    truth = actual.loc[buyers]
    models = {"btyd": (bg_n, bg_s)}
    if bundle.choice is not None and bundle.choice.purchase_model is not None:
        inputs = model_inputs(features, btyd_signals(bundle.model, btyd, h)).loc[buyers]
        learned = bundle.choice.purchase_model.predict(inputs)
        models["learned"] = (learned["purchases"].to_numpy(), learned["spend"].to_numpy())
    for name, (n, s) in models.items():
        m = error_metrics("purchases", np.asarray(n), truth["purchases"].to_numpy())
        m.update(error_metrics("spend", np.asarray(s), truth["spend"].to_numpy()))
        report[f"buyers_{name}"] = {k: round(v, 4) for k, v in m.items()}
    if "learned" in models:
        for t in ("purchases", "spend"):
            base = report["buyers_btyd"][f"{t}_rmse"]  # type: ignore[index]
            new = report["buyers_learned"][f"{t}_rmse"]  # type: ignore[index]
            report[f"{t}_rmse_reduction_vs_btyd"] = round(1 - new / base, 4)
    prospects = scores.index[~is_buyer.to_numpy()]
    p = scores.loc[prospects, "p_purchase"].to_numpy(float)
    converted = actual.loc[prospects, "purchases"].to_numpy() > 0
    if len(prospects) and np.isfinite(p).all():
        report["prospects_p_purchase"] = {
            "auc": float(roc_auc_score(converted, p)) if 0 < converted.sum() < len(p) else None,
            "predicted_converters": float(p.sum()),
            "actual_converters": int(converted.sum()),
            "converters_bias": float(p.sum() / max(converted.sum(), 1) - 1),
        }
    champion_n = scores.loc[buyers, "expected_purchases"]  # over the horizon, for the record
    report["mean_predicted_cltv"] = {
        "buyers": float(scores.loc[buyers, "predicted_cltv"].mean()),
        "prospects": float(scores.loc[prospects, "predicted_cltv"].mean())
        if len(prospects)
        else None,
        "buyers_expected_purchases_horizon": float(champion_n.mean()),
    }
    return report


def cdnow_events() -> pd.DataFrame:
    """The CDNOW sample's purchases as engine events."""
    raw = pd.read_csv(
        ROOT / "tests" / "data" / "CDNOW_sample.txt",
        sep=r"\s+",
        header=None,
        names=["id", "master", "date", "qty", "amount"],
        dtype={"id": str, "date": str},
    )
    return pd.DataFrame(
        {
            "client_id": "cd" + raw["id"],
            "event_time": pd.to_datetime(raw["date"], format="%Y%m%d") + pd.Timedelta(hours=12),
            "event_type": "purchase",
            "channel": "web",
            "amount": raw["amount"].astype(float),
        }
    )


if __name__ == "__main__":
    main()
