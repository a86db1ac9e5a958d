"""Synthetic per-client behavioral feature frames with known personas, for clustering tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

CHANNELS = ("web", "app", "email", "store", "call_center")

# persona -> parameters: (purchases mean, order value median, events_90d mean, recency mean days,
# tenure mean days, cart abandon rate (beta a, b), tickets mean, sentiment mean,
# channel weights (web, app, email, store, call_center), referrals mean, reviews mean)
PERSONAS: dict[str, dict] = {
    "app_loyalist": dict(
        purchases=14,
        aov=90,
        events=70,
        recency=4,
        tenure=700,
        abandon=(2, 18),
        tickets=0.2,
        sentiment=0.5,
        channels=(1, 12, 1, 0.5, 0.2),
        referrals=0.3,
        reviews=0.5,
    ),
    "dormant": dict(
        purchases=1.5,
        aov=35,
        events=1.0,
        recency=240,
        tenure=500,
        abandon=(2, 8),
        tickets=0.05,
        sentiment=0.0,
        channels=(6, 1, 6, 1, 0.5),
        referrals=0.02,
        reviews=0.05,
    ),
    "cart_abandoner": dict(
        purchases=2,
        aov=45,
        events=40,
        recency=10,
        tenure=300,
        abandon=(16, 4),
        tickets=0.3,
        sentiment=-0.05,
        channels=(12, 2, 2, 0.3, 0.3),
        referrals=0.05,
        reviews=0.1,
    ),
    "support_strained": dict(
        purchases=5,
        aov=60,
        events=25,
        recency=15,
        tenure=600,
        abandon=(3, 10),
        tickets=6,
        sentiment=-0.6,
        channels=(3, 2, 2, 1, 10),
        referrals=0.02,
        reviews=0.8,
    ),
    "new_browser": dict(
        purchases=0.1,
        aov=30,
        events=8,
        recency=6,
        tenure=20,
        abandon=(4, 8),
        tickets=0.05,
        sentiment=0.1,
        channels=(8, 4, 1, 0.2, 0.1),
        referrals=0.0,
        reviews=0.0,
    ),
    "store_advocate": dict(
        purchases=9,
        aov=140,
        events=20,
        recency=12,
        tenure=1100,
        abandon=(1, 15),
        tickets=0.3,
        sentiment=0.7,
        channels=(1, 1, 2, 14, 0.5),
        referrals=3,
        reviews=3,
    ),
}


def make_behavioral_frame(
    n: int,
    seed: int = 0,
    personas: tuple[str, ...] | None = None,
    weights: tuple[float, ...] | None = None,
    id_offset: int = 0,
) -> pd.DataFrame:
    """A feature frame (client_id + catalog-named features) and a `persona` column (truth)."""
    rng = np.random.default_rng(seed)
    names = list(personas or PERSONAS)
    p = np.asarray(weights if weights is not None else np.ones(len(names)), dtype=float)
    which = rng.choice(len(names), size=n, p=p / p.sum())
    rows = [
        _persona_rows(PERSONAS[names[k]], int((which == k).sum()), rng) for k in range(len(names))
    ]
    frame = pd.concat([r.assign(persona=names[k]) for k, r in enumerate(rows)], ignore_index=True)
    order = np.argsort(np.concatenate([np.flatnonzero(which == k) for k in range(len(names))]))
    frame = frame.iloc[order].reset_index(drop=True)
    frame.insert(0, "client_id", [f"c{i + id_offset:07d}" for i in range(n)])
    return frame


def _persona_rows(par: dict, m: int, rng: np.random.Generator) -> pd.DataFrame:
    gamma = lambda mean, shape=4.0: rng.gamma(shape, mean / shape, m)  # noqa: E731
    n_purchases = rng.poisson(gamma(par["purchases"]))
    aov = np.where(n_purchases > 0, rng.lognormal(np.log(par["aov"]), 0.35, m), 0.0)
    total_spend = n_purchases * aov
    events_90d = rng.poisson(gamma(par["events"]))
    active_days = np.minimum(events_90d, rng.binomial(np.maximum(events_90d, 0), 0.4))
    recency = gamma(par["recency"], 3.0)
    tenure = recency + gamma(par["tenure"], 5.0)
    carts = rng.poisson(events_90d * 0.08)
    abandon = np.where(carts > 0, rng.beta(*par["abandon"], m), 0.0)
    tickets = rng.poisson(gamma(par["tickets"] + 1e-3))
    sentiment = np.clip(rng.normal(par["sentiment"], 0.2, m), -1, 1)
    sentiment = np.where(rng.random(m) < 0.15, np.nan, sentiment)
    shares = rng.dirichlet(np.asarray(par["channels"]) * 3, m)
    probs = shares + 1e-9
    entropy = -(probs * np.log(probs)).sum(axis=1) / np.log(len(CHANNELS))
    frame = pd.DataFrame(
        {
            "recency_days": recency,
            "tenure_days": tenure,
            "n_purchases": n_purchases,
            "total_spend": total_spend,
            "avg_order_value": aov,
            "events_90d": events_90d,
            "active_days_90d": active_days,
            "activity_momentum": rng.normal(0, 0.3, m),
            "spend_momentum": rng.normal(0, 0.3, m),
            "furthest_stage_rank": np.where(n_purchases > 0, 3 + (tickets > 0), 2),
            "current_stage_rank": np.where(n_purchases > 0, 3, 2),
            "cart_abandon_rate_90d": abandon,
            "carts_abandoned_90d": np.round(carts * abandon).astype(int),
            "support_tickets_90d": tickets,
            "returns_90d": rng.poisson(0.05 * n_purchases),
            "sentiment_mean": sentiment,
            "sentiment_90d": np.clip(sentiment + rng.normal(0, 0.1, m), -1, 1),
            "channel_entropy": entropy,
            "reviews": rng.poisson(par["reviews"], m),
            "referrals": rng.poisson(par["referrals"], m),
            "shares": rng.poisson(par["referrals"] * 0.5, m),
            "intent_shift": rng.beta(2, 8, m),
        }
    )
    for j, channel in enumerate(CHANNELS):
        frame[f"share_{channel}"] = shares[:, j]
    # rate features (features.catalog family "rates")
    per = np.maximum(n_purchases, 1)
    frame["purchases_per_active_month"] = 30.0 * n_purchases / np.maximum(tenure - recency, 30)
    frame["tickets_per_purchase"] = tickets / per
    frame["returns_per_purchase"] = frame["returns_90d"] / per
    frame["advocacy_per_purchase"] = (frame["reviews"] + frame["referrals"] + frame["shares"]) / per
    total = events_90d + n_purchases + tickets + frame["reviews"] + 1.0
    frame["purchase_share_365d"] = n_purchases / total
    frame["retention_share_365d"] = tickets / total
    frame["advocacy_share_365d"] = frame["reviews"] / total
    frame["consideration_share_365d"] = carts / total
    stages = ("purchase", "retention", "advocacy", "consideration")
    frame["awareness_share_365d"] = np.clip(
        1 - frame[[f"{s}_share_365d" for s in stages]].sum(axis=1), 0, 1
    )
    # steady behavior: the recency-weighted mixes equal the plain ones
    for stage in (*stages, "awareness"):
        frame[f"{stage}_share_weighted"] = frame[f"{stage}_share_365d"]
    for channel in CHANNELS:
        frame[f"share_{channel}_weighted"] = frame[f"share_{channel}"]
    return frame
