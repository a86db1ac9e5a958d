"""Cluster profiles: the features that set each cluster apart, a short name and a description.

A cluster's shift on a feature is a robust z-score: (cluster median - population median) /
(1.4826 * population MAD). When the MAD is 0 (sparse counts, mostly zero) the scale falls back
to IQR / 1.349, then to the standard deviation; when the medians are equal on such a sparse
feature, the means are compared instead (so "3 referrals on average vs 0.1" still shows).
Names are built from a vocabulary of (feature, direction) -> words in three slots: descriptors
("high-value", "dormant"), a channel ("app", "store") and a noun ("loyalists", "advocates"),
e.g. "high-value app loyalists". Names are unique across clusters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

MIN_SHIFT = 0.5  # |z| below this does not name or describe a cluster
NOISE_SEGMENT = "noise"
NOISE_NAME = "unclustered (noise)"

# (feature, +1 high / -1 low) -> (slot, word). Slots: adj (descriptor), channel, noun.
VOCABULARY: dict[tuple[str, int], tuple[str, str]] = {
    ("total_spend", 1): ("adj", "high-value"),
    ("total_spend", -1): ("adj", "low-value"),
    ("avg_order_value", 1): ("adj", "big-basket"),
    ("avg_order_value", -1): ("adj", "small-basket"),
    ("monetary_value", 1): ("adj", "high-value"),
    ("spend_90d", 1): ("adj", "high-spending"),
    ("n_purchases", 1): ("noun", "loyalists"),
    ("n_purchases", -1): ("noun", "non-buyers"),
    ("purchase_days", 1): ("noun", "loyalists"),
    ("frequency", 1): ("noun", "repeat buyers"),
    ("purchases_90d", 1): ("noun", "loyalists"),
    ("recency_days", 1): ("adj", "dormant"),
    ("recency_days", -1): ("adj", "recently active"),
    ("days_since_last_purchase", 1): ("adj", "lapsed"),
    ("tenure_days", -1): ("adj", "new"),
    ("tenure_days", 1): ("adj", "long-standing"),
    ("events_90d", 1): ("adj", "highly engaged"),
    ("events_90d", -1): ("adj", "quiet"),
    ("events_30d", 1): ("adj", "highly engaged"),
    ("active_days_90d", 1): ("adj", "frequent"),
    ("active_days_90d", -1): ("adj", "infrequent"),
    ("activity_momentum", 1): ("adj", "accelerating"),
    ("activity_momentum", -1): ("adj", "fading"),
    ("spend_momentum", 1): ("adj", "growing"),
    ("spend_momentum", -1): ("adj", "slowing"),
    ("furthest_stage_rank", -1): ("noun", "prospects"),
    ("current_stage_rank", -1): ("noun", "prospects"),
    ("cart_abandon_rate_90d", 1): ("adj", "cart-abandoning"),
    ("carts_abandoned_90d", 1): ("adj", "cart-abandoning"),
    ("checkout_abandon_rate_90d", 1): ("adj", "checkout-abandoning"),
    ("support_tickets_90d", 1): ("adj", "support-strained"),
    ("returns_90d", 1): ("adj", "returning"),
    ("n_returns", 1): ("adj", "returning"),
    ("sentiment_mean", -1): ("adj", "unhappy"),
    ("sentiment_mean", 1): ("adj", "happy"),
    ("sentiment_last", -1): ("adj", "unhappy"),
    ("channel_entropy", 1): ("channel", "omnichannel"),
    ("channel_entropy", -1): ("channel", "single-channel"),
    ("share_web", 1): ("channel", "web"),
    ("share_app", 1): ("channel", "app"),
    ("share_email", 1): ("channel", "email"),
    ("share_messenger", 1): ("channel", "messenger"),
    ("share_social", 1): ("channel", "social"),
    ("share_store", 1): ("channel", "store"),
    ("share_call_center", 1): ("channel", "call-center"),
    ("reviews", 1): ("noun", "reviewers"),
    ("referrals", 1): ("noun", "advocates"),
    ("shares", 1): ("noun", "sharers"),
    ("intent_shift", 1): ("adj", "intent-shifting"),
}
# The recency-weighted channel mixes (share_<channel>_weighted) read like the plain shares.
VOCABULARY.update(
    {
        (f"{name}_weighted", sign): word
        for (name, sign), word in list(VOCABULARY.items())
        if name.startswith("share_")
    }
)
DEFAULT_NOUN = "clients"


def nan_columns(stat: Callable[..., np.ndarray], values: np.ndarray, *args: float) -> np.ndarray:
    """`stat(values, *args, axis=0)` of a 2-D array's columns, skipping NaN, where a column
    with no number (an all-null feature, or a cluster with none of it) is NaN without numpy's
    'All-NaN slice' / 'Mean of empty slice' warnings."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape[1], np.nan)
    some = ~np.isnan(values).all(axis=0) if len(values) else np.zeros(values.shape[1], bool)
    if some.any():
        out[some] = stat(values[:, some], *args, axis=0)
    return out


def robust_shifts(
    frame: pd.DataFrame, labels: np.ndarray, features: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Per-cluster robust z-scores, per-cluster medians and population medians.

    Noise (label -1) counts in the population but gets no row. Returns (z, medians, population).
    """
    values = frame[list(features)].to_numpy(dtype=np.float64)
    labels = np.asarray(labels)
    pop_median = nan_columns(np.nanmedian, values)
    pop_mean = nan_columns(np.nanmean, values)
    mad = nan_columns(np.nanmedian, np.abs(values - pop_median)) * 1.4826
    q75 = nan_columns(np.nanpercentile, values, 75)
    q25 = nan_columns(np.nanpercentile, values, 25)
    iqr = (q75 - q25) / 1.349
    std = nan_columns(np.nanstd, values)
    scale = np.where(mad > 0, mad, np.where(iqr > 0, iqr, std))
    sparse = mad == 0
    clusters = sorted(int(c) for c in np.unique(labels) if c >= 0)
    z_rows, med_rows = [], []
    for c in clusters:
        block = values[labels == c]
        med = nan_columns(np.nanmedian, block)
        mean = nan_columns(np.nanmean, block)
        diff = med - pop_median
        diff = np.where(sparse & (diff == 0), mean - pop_mean, diff)
        z = np.divide(diff, scale, out=np.zeros_like(diff), where=scale > 0)
        z_rows.append(np.nan_to_num(z))
        med_rows.append(med)
    cols = list(features)
    z = pd.DataFrame(z_rows, index=clusters, columns=cols, dtype=float)
    medians = pd.DataFrame(med_rows, index=clusters, columns=cols, dtype=float)
    return z, medians, pd.Series(pop_median, index=cols)


def cluster_profiles(
    frame: pd.DataFrame,
    labels: np.ndarray,
    features: Sequence[str],
    top_n: int = 5,
) -> dict[int, dict]:
    """For each cluster label: size, share, top features (z, median, population median)."""
    z, medians, population = robust_shifts(frame, labels, features)
    labels = np.asarray(labels)
    profiles: dict[int, dict] = {}
    for c in z.index:
        z_c = pd.Series(z.loc[c].to_numpy(dtype=float), index=z.columns)
        median_c = pd.Series(medians.loc[c].to_numpy(dtype=float), index=medians.columns)
        order = z_c.abs().sort_values(ascending=False, kind="stable")
        top = [
            {
                "feature": f,
                "z": round(float(z_c[f]), 3),
                "median": _num(median_c[f]),
                "population_median": _num(population[f]),
            }
            for f in order.index[:top_n]
            if abs(z_c[f]) >= MIN_SHIFT
        ]
        profiles[int(c)] = {
            "size": int((labels == c).sum()),
            "share": round(float((labels == c).mean()), 4),
            "top_features": top,
            "z": {f: round(float(v), 3) for f, v in z_c.items()},
            "median": {f: _num(v) for f, v in median_c.items()},
        }
    return profiles


def name_profiles(
    profiles: Mapping[int, dict], taken: Sequence[str] = (), max_words: int = 3
) -> dict[int, str]:
    """A unique short name per cluster from its distinguishing features (see VOCABULARY).

    Names in `taken` (kept by surviving segments) are not reused.
    """
    used = {t.lower() for t in taken}
    names: dict[int, str] = {}
    for c in sorted(profiles, key=lambda k: -profiles[k]["size"]):
        ranked = sorted(profiles[c]["z"].items(), key=lambda kv: -abs(kv[1]))
        words = _words(ranked)
        name = _compose(words, max_words)
        extra = max_words
        while name.lower() in used and extra < max_words + 3:
            extra += 1
            name = _compose(words, extra)
        if name.lower() in used:
            base, i = name, 2
            while f"{base} {i}".lower() in used:
                i += 1
            name = f"{base} {i}"
        used.add(name.lower())
        names[c] = name
    return names


def describe(profile: Mapping) -> str:
    """One sentence from a profile's top features, with values, for marketing readers."""
    top = profile.get("top_features", [])
    if not top:
        return "Clients close to the population on every feature."
    parts = [
        f"{'higher' if t['z'] > 0 else 'lower'} {t['feature']} "
        f"(median {_fmt(t['median'])} vs {_fmt(t['population_median'])} overall)"
        for t in top[:4]
    ]
    share = profile.get("share")
    prefix = f"{share:.0%} of clients" if share is not None else "Clients"
    return (
        f"{prefix} with "
        + ", ".join(parts[:-1])
        + (" and " if len(parts) > 1 else "")
        + (parts[-1] + ".")
    )


def noise_profile(frame: pd.DataFrame, labels: np.ndarray) -> dict:
    """The profile of the points left out of every cluster."""
    labels = np.asarray(labels)
    return {
        "size": int((labels < 0).sum()),
        "share": round(float((labels < 0).mean()), 4) if labels.size else 0.0,
        "top_features": [],
        "name": NOISE_NAME,
        "description": "Clients in no dense behavioral group; assigned with low confidence.",
    }


def _words(ranked: list[tuple[str, float]]) -> dict[str, list[str]]:
    slots: dict[str, list[str]] = {"adj": [], "channel": [], "noun": []}
    for feature, z in ranked:
        if abs(z) < MIN_SHIFT:
            break
        entry = VOCABULARY.get((feature, 1 if z > 0 else -1))
        if entry and entry[1] not in slots[entry[0]]:
            slots[entry[0]].append(entry[1])
    return slots


def _compose(words: dict[str, list[str]], max_words: int) -> str:
    """Descriptors (strongest first), then one channel, then the noun, within max_words."""
    noun = words["noun"][0] if words["noun"] else DEFAULT_NOUN
    budget = max(max_words - 1, 0)
    adjs = words["adj"][: min(1, budget)]
    channel = words["channel"][:1] if budget > len(adjs) else []
    adjs += words["adj"][len(adjs) : len(adjs) + budget - len(adjs) - len(channel)]
    return " ".join([*adjs, *channel, noun])


def _num(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.2f}"
