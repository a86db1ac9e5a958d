"""Benchmark: CltvModel fit + predict on simulated BG/NBD / Gamma-Gamma clients (days)."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from models.cltv import CltvModel


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


if __name__ == "__main__":
    main()
