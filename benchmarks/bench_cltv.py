"""Benchmark: CltvModel fit + predict on simulated BG/NBD / Gamma-Gamma clients (days), then
the learned models at the same scale.

    python benchmarks/bench_cltv.py [--clients 1000000] [--features 130]

Part 1: BG/NBD x Gamma-Gamma fit and predict. Part 2: the learned path of a refit night on the
same clients (`models.selection.select_cltv_model` on two windows: the learned buyer model
judged, both serving models refit, then `models.scoring.score_clients` for every client), with
`--features` numeric behavioral features (10% missing) beside the BG/NBD signals; 20% of the
clients are prospects. Quality is measured elsewhere (benchmarks/cltv_quality.py): this times.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from configs import CltvConfig
from models.cltv import CltvModel
from models.learned import btyd_signals
from models.scoring import score_clients
from models.selection import Window, select_cltv_model


def simulate(n: int, seed: int = 0, r=0.25, alpha=30.0, a=0.8, b=2.5, p=6.0, q=3.8, v=15.0):
    """BTYD frame of n clients drawn from the models' own generative process, whole days."""
    rng = np.random.default_rng(seed)
    T = rng.integers(1, 731, n).astype(float)  # first purchase up to 2 years ago
    lam = rng.gamma(r, 1.0 / alpha, n)
    drop = rng.beta(a, b, n)
    n_poisson = rng.poisson(lam * T)
    k = rng.geometric(drop)  # purchases until (and including) the one after which they drop
    x = np.minimum(n_poisson, k).astype(float)
    # time of the x-th of n_poisson uniform purchase times on [0, T]
    tx = np.where(x > 0, T * rng.beta(np.maximum(x, 1), np.maximum(n_poisson - x + 1, 1)), 0.0)
    tx = np.minimum(np.floor(tx), T - 1)
    nu = rng.gamma(q, 1.0 / v, n)
    mv = np.where(x > 0, rng.gamma(p * np.maximum(x, 1), 1.0 / nu) / np.maximum(x, 1), 0.0)
    return pd.DataFrame({"frequency": x, "recency": tx, "T": T, "monetary_value": mv})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", type=int, default=130)
    args = ap.parse_args()
    df = simulate(args.clients, args.seed)
    c0 = time.process_time()
    t0 = time.perf_counter()
    model = CltvModel(horizon_days=365, annual_discount_rate=0.10).fit(df)
    t1 = time.perf_counter()
    out = model.predict(df)
    t2 = time.perf_counter()
    cpu = time.process_time() - c0
    assert np.isfinite(out.to_numpy()).all()
    print(f"clients={len(df):,} unique BG/NBD rows={model.bgnbd_.n_unique_rows_:,}")
    print("params:", {k: round(v, 4) for k, v in model.params_.items()})
    print(f"fit {t1 - t0:.2f} s, predict {t2 - t1:.2f} s, total {t2 - t0:.2f} s wall")
    print(f"CPU time of this process {cpu:.2f} s (wall is higher when the cores are shared)")
    print(f"mean predicted_cltv {out['predicted_cltv'].mean():.2f}")
    learned(df, model, args.features, args.seed)


def learned(df: pd.DataFrame, model: CltvModel, n_features: int, seed: int) -> None:
    """Time the learned models' selection and the scoring of every client."""
    rng = np.random.default_rng(seed + 1)
    n = len(df)
    df = df.set_axis(pd.Index([f"c{i}" for i in range(n)], name="client_id"))
    is_buyer = rng.random(n) > 0.2
    windows = []
    for _ in range(2):
        signals = btyd_signals(model, df, 90)
        behavior = rng.gamma(2.0, 1.0, (n, n_features))
        behavior[rng.random((n, n_features)) < 0.1] = np.nan
        inputs = pd.DataFrame(
            behavior, index=df.index, columns=[f"f{i}" for i in range(n_features)]
        )
        inputs = inputs.join(signals)
        purchases = rng.poisson(signals["bg_expected_purchases"].to_numpy()).astype(float)
        labels = pd.DataFrame({"purchases": purchases, "spend": purchases * 40.0}, index=df.index)
        windows.append(Window(inputs, is_buyer, labels))
    t0 = time.perf_counter()
    choice = select_cltv_model(windows[0], windows[1], CltvConfig(), seed)
    t1 = time.perf_counter()
    serving = choice.purchase_model
    if serving is None:  # BG/NBD won: time the learned champion's serving refit anyway
        serving = _fit_anyway(windows[1], seed)
    t2 = time.perf_counter()
    scores = score_clients(
        model, df, windows[1].inputs, is_buyer, 90, "learned", serving, choice.conversion_model
    )
    t3 = time.perf_counter()
    assert scores["predicted_cltv"].notna().all()
    extra = t2 - t1 if choice.purchase_model is None else 0.0
    print(
        f"learned models, {n:,} clients x {n_features} features + BG/NBD signals:"
        f" selection (fit, judge, refit) {t1 - t0 + extra:.1f} s, scoring {t3 - t2:.1f} s,"
        f" total {t1 - t0 + extra + t3 - t2:.1f} s wall, as on a night the learned model wins"
    )


def _fit_anyway(window: Window, seed: int):
    """The buyer model when BG/NBD won (its scoring path is timed either way)."""
    from models.learned import PurchaseModel

    b = window.is_buyer
    return PurchaseModel(random_state=seed).fit(window.inputs[b], window.labels[b])


if __name__ == "__main__":
    main()
