"""Cluster profiles: the features that set each cluster apart, a true short name and a description.

A cluster's shift on a feature is a robust z-score: (cluster median - population median) /
(1.4826 * population MAD). When the MAD is 0 (sparse counts, mostly zero) the scale falls back
to IQR / 1.349, then to the standard deviation; when the medians are equal on such a sparse
feature, the means are compared instead (so "3 referrals on average vs 0.1" still shows).
A profile keeps, per feature, the cluster's median, mean and share of members with a non-zero
value, and the same for the whole population with the scale (`population`): the names, the
descriptions and the per-client reasons (segmentation.reasons) are checked against them.

Names are built from a vocabulary of (feature, direction) -> (slot, word): descriptors in
slots of meaning ("value": "high-value"; "recency": "dormant"; "emotion": "unhappy"; at most
one word per slot), a channel ("app", "store") and a noun ("loyalists", "advocates"), e.g.
"high-value app loyalists". A word is a claim about the segment (`name_claims`): "store" says
the members' share of store activity is above the population's, "big-basket" that their
average order value is. A word is only used when the segment's own statistics support it
(`supports`: the medians differ in that direction, or, when they tie, the means do; a channel
also needs a quarter of the typical member's activity, so a segment that acts 47% in the app
and 4% in store is never called "store"), and every name is checked (`check_name`) before it
is given. Names are unique across clusters.

The description (`describe`) is for marketing readers: labels and units from the feature
catalog, never raw column names or z-scores; a tie of medians reads as means or as shares of
members with any of it ("38% with any support tickets per purchase vs 9% overall"). The
profile itself (the segments table's definition) stays technical, for analysts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from features.catalog import CHANNELS, STAGE_RANK, STAGES, Feature
from segmentation.wording import number, topic, words_for

MIN_SHIFT = 0.5  # |z| below this does not name or describe a cluster
NOISE_SEGMENT = "noise"
NOISE_NAME = "unclustered (noise)"
# A channel word needs at least this share of the typical member's activity on the channel.
CHANNEL_FLOOR = 0.25

# (feature, +1 high / -1 low) -> (slot, word). Slots "channel" and "noun" have their place in
# a name; every other slot is a descriptor, at most one word each.
VOCABULARY: dict[tuple[str, int], tuple[str, str]] = {
    ("total_spend", 1): ("value", "high-value"),
    ("total_spend", -1): ("value", "low-value"),
    ("avg_order_value", 1): ("value", "big-basket"),
    ("avg_order_value", -1): ("value", "small-basket"),
    ("monetary_value", 1): ("value", "high-value"),
    ("spend_90d", 1): ("value", "high-spending"),
    ("n_purchases", 1): ("noun", "loyalists"),
    ("n_purchases", -1): ("noun", "non-buyers"),
    ("purchase_days", 1): ("noun", "loyalists"),
    ("frequency", 1): ("noun", "repeat buyers"),
    ("purchases_90d", 1): ("noun", "loyalists"),
    ("purchases_per_active_month", 1): ("noun", "frequent buyers"),
    ("purchases_per_active_month", -1): ("frequency", "occasional"),
    ("recency_days", 1): ("recency", "dormant"),
    ("recency_days", -1): ("recency", "recently active"),
    ("days_since_last_purchase", 1): ("recency", "lapsed"),
    ("tenure_days", -1): ("tenure", "new"),
    ("tenure_days", 1): ("tenure", "long-standing"),
    ("events_90d", 1): ("engagement", "highly engaged"),
    ("events_90d", -1): ("engagement", "quiet"),
    ("events_30d", 1): ("engagement", "highly engaged"),
    ("active_days_90d", 1): ("frequency", "frequent"),
    ("active_days_90d", -1): ("frequency", "infrequent"),
    ("activity_momentum", 1): ("momentum", "accelerating"),
    ("activity_momentum", -1): ("momentum", "fading"),
    ("spend_momentum", 1): ("momentum", "growing"),
    ("spend_momentum", -1): ("momentum", "slowing"),
    ("furthest_stage_rank", -1): ("noun", "prospects"),
    ("cart_abandon_rate_90d", 1): ("funnel", "cart-abandoning"),
    ("carts_abandoned_90d", 1): ("funnel", "cart-abandoning"),
    ("checkout_abandon_rate_90d", 1): ("funnel", "checkout-abandoning"),
    ("support_tickets_90d", 1): ("support", "support-strained"),
    ("n_support_tickets", 1): ("support", "support-heavy"),
    ("tickets_per_purchase", 1): ("support", "support-heavy"),
    ("returns_90d", 1): ("returns", "return-prone"),
    ("n_returns", 1): ("returns", "return-prone"),
    ("returns_per_purchase", 1): ("returns", "return-prone"),
    ("sentiment_mean", -1): ("emotion", "unhappy"),
    ("sentiment_mean", 1): ("emotion", "happy"),
    ("sentiment_90d", -1): ("emotion", "unhappy"),
    ("sentiment_90d", 1): ("emotion", "happy"),
    ("sentiment_last", -1): ("emotion", "unhappy"),
    ("channel_entropy", 1): ("channel", "omnichannel"),
    ("channel_entropy", -1): ("channel", "single-channel"),
    ("reviews", 1): ("noun", "reviewers"),
    ("referrals", 1): ("noun", "advocates"),
    ("shares", 1): ("noun", "sharers"),
    ("advocacy_per_purchase", 1): ("noun", "advocates"),
    ("intent_shift", 1): ("intent", "intent-shifting"),
}
# Channel mixes (plain and recency-weighted) and journey-stage mixes.
_CHANNEL_WORDS = {channel: channel.replace("_", "-") for channel in CHANNELS}
_STAGE_WORDS = {
    "awareness": ("noun", "casual visitors"),
    "consideration": ("noun", "window shoppers"),
    "purchase": ("journey", "purchase-focused"),
    "retention": ("journey", "after-sales"),
    "advocacy": ("noun", "advocates"),
}
for _channel, _word in _CHANNEL_WORDS.items():
    for _name in (f"share_{_channel}", f"share_{_channel}_weighted"):
        VOCABULARY[(_name, 1)] = ("channel", _word)
for _stage in STAGES:
    for _name in (f"{_stage}_share_weighted", f"{_stage}_share_365d"):
        VOCABULARY[(_name, 1)] = _STAGE_WORDS[_stage]
DEFAULT_NOUN = "clients"
# Claims that also need a level of the segment's median: at least it for +1, at most for -1.
LEVELS: dict[tuple[str, int], float] = {
    **{
        (name, 1): CHANNEL_FLOOR
        for (name, sign), (slot, _) in VOCABULARY.items()
        if slot == "channel" and name.startswith("share_") and sign == 1
    },
    ("n_purchases", -1): 0.0,  # "non-buyers": the typical member never bought
    ("furthest_stage_rank", -1): float(STAGE_RANK["consideration"]),  # "prospects"
}
# word -> the (feature, direction) pairs it can stand for
WORD_CLAIMS: dict[str, tuple[tuple[str, int], ...]] = {}
for _key, (_slot, _word) in VOCABULARY.items():
    WORD_CLAIMS[_word] = (*WORD_CLAIMS.get(_word, ()), _key)
_LONGEST_WORD = max(len(word.split()) for word in WORD_CLAIMS)


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


@dataclass(frozen=True)
class ShiftStats:
    """Per-cluster statistics (rows: cluster labels, columns: features) and the population's.

    `population` has the rows median, mean, nonzero (share of rows with a non-zero value; null
    counts as none) and scale (the robust scale of the z-scores).
    """

    z: pd.DataFrame
    median: pd.DataFrame
    mean: pd.DataFrame
    nonzero: pd.DataFrame
    population: pd.DataFrame


def shift_stats(frame: pd.DataFrame, labels: np.ndarray, features: Sequence[str]) -> ShiftStats:
    """Robust z-scores, medians, means and non-zero shares per cluster, and the population's.

    Noise (label -1) counts in the population but gets no row.
    """
    values = frame[list(features)].to_numpy(dtype=np.float64)
    labels = np.asarray(labels)
    pop_median = nan_columns(np.nanmedian, values)
    pop_mean = nan_columns(np.nanmean, values)
    mad = nan_columns(np.nanmedian, np.abs(values - pop_median)) * 1.4826
    iqr = nan_columns(np.nanpercentile, values, 75) - nan_columns(np.nanpercentile, values, 25)
    std = nan_columns(np.nanstd, values)
    scale = np.where(mad > 0, mad, np.where(iqr > 0, iqr / 1.349, std))
    sparse = mad == 0
    clusters = sorted(int(c) for c in np.unique(labels) if c >= 0)
    rows: dict[str, list[np.ndarray]] = {"z": [], "median": [], "mean": [], "nonzero": []}
    for c in clusters:
        block = values[labels == c]
        med = nan_columns(np.nanmedian, block)
        mean = nan_columns(np.nanmean, block)
        diff = med - pop_median
        diff = np.where(sparse & (diff == 0), mean - pop_mean, diff)
        z = np.divide(diff, scale, out=np.zeros_like(diff), where=scale > 0)
        rows["z"].append(np.nan_to_num(z))
        rows["median"].append(med)
        rows["mean"].append(mean)
        rows["nonzero"].append(_nonzero(block))
    cols = list(features)

    def table(key: str) -> pd.DataFrame:
        return pd.DataFrame(rows[key], index=clusters, columns=cols, dtype=float)

    population = pd.DataFrame(
        [pop_median, pop_mean, _nonzero(values), scale],
        index=["median", "mean", "nonzero", "scale"],
        columns=cols,
    )
    return ShiftStats(table("z"), table("median"), table("mean"), table("nonzero"), population)


def robust_shifts(
    frame: pd.DataFrame, labels: np.ndarray, features: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Per-cluster robust z-scores, per-cluster medians and population medians.

    Noise (label -1) counts in the population but gets no row. Returns (z, medians, population).
    """
    stats = shift_stats(frame, labels, features)
    population = pd.Series(stats.population.loc["median"].to_numpy(float), index=stats.z.columns)
    return stats.z, stats.median, population


def cluster_profiles(
    frame: pd.DataFrame,
    labels: np.ndarray,
    features: Sequence[str],
    top_n: int = 5,
) -> dict[int, dict]:
    """For each cluster label: size, share, top features (z, median, population median), and
    per feature z, median, mean, nonzero and the population's statistics (`population`)."""
    stats = shift_stats(frame, labels, features)
    labels = np.asarray(labels)
    population = {
        key: {f: _num(v) for f, v in stats.population.loc[key].items()}
        for key in stats.population.index
    }
    profiles: dict[int, dict] = {}
    for c in stats.z.index:
        z_c = pd.Series(stats.z.loc[c].to_numpy(dtype=float), index=stats.z.columns)
        median_c = stats.median.loc[c]
        order = z_c.abs().sort_values(ascending=False, kind="stable")
        top = [
            {
                "feature": f,
                "z": round(float(z_c[f]), 3),
                "median": _num(median_c[f]),
                "population_median": population["median"][f],
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
            "mean": {f: _num(v) for f, v in stats.mean.loc[c].items()},
            "nonzero": {f: _num(v) for f, v in stats.nonzero.loc[c].items()},
            "population": population,
        }
    return profiles


# --------------------------------------------------------------------------------------------
# Names that are true


class Claim(NamedTuple):
    """What one word of a name says: `word` holds when one of `alternatives` (feature,
    direction) is supported by the segment's statistics."""

    word: str
    alternatives: tuple[tuple[str, int], ...]


Stats = Mapping[str, Any]  # {"median": {feature: value}, "mean": {...}}: a profile qualifies


def name_claims(name: str) -> list[Claim]:
    """The claims of a name's words, in order (words outside the vocabulary claim nothing).

    >>> [c.word for c in name_claims("big-basket store clients 2")]
    ['big-basket', 'store']
    """
    tokens = re.sub(r" \d+$", "", name.strip().lower()).split()
    claims: list[Claim] = []
    i = 0
    while i < len(tokens):
        for size in range(min(_LONGEST_WORD, len(tokens) - i), 0, -1):
            word = " ".join(tokens[i : i + size])
            if word in WORD_CLAIMS:
                claims.append(Claim(word, WORD_CLAIMS[word]))
                i += size
                break
        else:
            i += 1
    return claims


def supports(feature: str, direction: int, segment: Stats, population: Stats) -> bool:
    """Whether the segment's statistics bear out "`feature` is higher (+1) / lower (-1)".

    The medians decide; when they tie (e.g. both 0 on a sparse feature), the means do. Some
    claims also need a level of the segment's median (`LEVELS`): a channel word needs a
    quarter of the typical member's activity, "non-buyers" a median of no purchase.
    """
    seg_median = _stat(segment, "median", feature)
    pop_median = _stat(population, "median", feature)
    if seg_median is None or pop_median is None:
        return False
    diff = seg_median - pop_median
    if np.isclose(diff, 0.0, rtol=0.0, atol=1e-12):
        seg_mean = _stat(segment, "mean", feature)
        pop_mean = _stat(population, "mean", feature)
        if seg_mean is None or pop_mean is None:
            return False
        diff = seg_mean - pop_mean
    if not direction * diff > 1e-12:
        return False
    level = LEVELS.get((feature, direction))
    if level is None:
        return True
    return seg_median >= level if direction > 0 else seg_median <= level


def check_name(name: str, segment: Stats, population: Stats) -> list[Claim]:
    """The claims of `name` the segment's statistics do not support (empty: the name is true).

    `segment` holds the segment's per-feature "median" and "mean" (a profile from
    `cluster_profiles` qualifies), `population` the population's (the profile's "population").
    A claim none of whose features the statistics hold is not supported.
    """
    return [
        claim
        for claim in name_claims(name)
        if not any(supports(f, d, segment, population) for f, d in claim.alternatives)
    ]


def name_profiles(
    profiles: Mapping[int, dict], taken: Sequence[str] = (), max_words: int = 3
) -> dict[int, str]:
    """A unique short name per cluster from its distinguishing features (see VOCABULARY).

    A word is used only where the profile's statistics support it (`supports`), and every name
    passes `check_name`; a profile without statistics gets no descriptive word. Names in
    `taken` (kept by surviving segments) are not reused.
    """
    used = {t.lower() for t in taken}
    names: dict[int, str] = {}
    for c in sorted(profiles, key=lambda k: -profiles[k]["size"]):
        profile = profiles[c]
        population = profile.get("population") or {}
        ranked = sorted(profile["z"].items(), key=lambda kv: -abs(kv[1]))
        words = _words(ranked, profile, population)
        name = _true_name(words, max_words, profile, population)
        extra = max_words
        while name.lower() in used and extra < max_words + 3:
            extra += 1
            name = _true_name(words, extra, profile, population)
        if name.lower() in used:
            base, i = name, 2
            while f"{base} {i}".lower() in used:
                i += 1
            name = f"{base} {i}"
        used.add(name.lower())
        names[c] = name
    return names


# --------------------------------------------------------------------------------------------
# Descriptions


def describe(profile: Mapping) -> str:
    """One sentence from a profile's top features, in words with values, for marketing readers.

    Each feature reads "<label>: <segment> vs <population> overall" with the medians; when
    they read the same, the means ("... on average"), or, for counts, rates and money that
    most clients have none of, the shares of members with any ("38% with any ... vs 9%
    overall"); a feature that reads the same every way is left out, and so is a second
    feature of the same topic (`wording.topic`: a plain and a recency-weighted mix).
    """
    parts: list[str] = []
    topics: set[str] = set()  # a plain and a recency-weighted mix say the same: say one
    for top in profile.get("top_features", []):
        about = topic(top["feature"])
        part = None if about in topics else _compare(top["feature"], top, profile)
        if part is not None and len(parts) < 4:
            parts.append(part)
            topics.add(about)
    if not parts:
        return "Clients close to the population on every feature."
    share = profile.get("share")
    text = "; ".join(parts)
    text = text[0].upper() + text[1:] + "."
    return f"{share:.0%} of clients. {text}" if share is not None else text


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


def _compare(feature: str, top: Mapping, profile: Mapping) -> str | None:
    """The segment against the population on one feature, in words; None if they read alike."""
    words = words_for(feature)
    population = profile.get("population") or {}
    pop_median = top.get("population_median", _stat(population, "median", feature))
    median = number(words, top.get("median"))
    overall = number(words, pop_median)
    if median != overall and "n/a" not in (median, overall):
        return f"{words.label}: {median} vs {overall} overall"
    by_mean = _pair(words, profile, population, "mean")
    by_any = _pair(words, profile, population, "nonzero")
    sparse = words.unit in ("count", "rate", "amount", "days") and pop_median == 0
    for kind in ("nonzero", "mean") if sparse else ("mean", "nonzero"):
        pair = by_any if kind == "nonzero" else by_mean
        if pair is None:
            continue
        if kind == "mean":
            return f"{words.label}: {pair[0]} on average vs {pair[1]} overall"
        return f"{pair[0]} with any {words.label} vs {pair[1]} overall"
    return None


def _pair(
    words: Feature, segment: Mapping, population: Mapping, key: str
) -> tuple[str, str] | None:
    """(segment, population) statistic `key` of a feature as shown, None if missing or alike."""
    seg, pop = _stat(segment, key, words.name), _stat(population, key, words.name)
    if seg is None or pop is None:
        return None
    show = _percent_share if key == "nonzero" else (lambda v: number(words, v))
    pair = (show(seg), show(pop))
    return None if pair[0] == pair[1] else pair


def _percent_share(value: float) -> str:
    return "under 1%" if 0 < value < 0.005 else f"{value * 100:.0f}%"


def _stat(stats: Mapping | None, key: str, feature: str) -> float | None:
    """stats[key][feature] as a finite float, else None."""
    table = (stats or {}).get(key) or {}
    value = table.get(feature) if isinstance(table, Mapping) else None
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _nonzero(values: np.ndarray) -> np.ndarray:
    """Per column, the share of rows with a non-zero value (null counts as zero)."""
    if not len(values):
        return np.full(values.shape[1], np.nan)
    return np.mean(np.nan_to_num(values, nan=0.0) != 0, axis=0)


def _words(
    ranked: list[tuple[str, float]], segment: Stats, population: Stats
) -> dict[str, list[str]]:
    """Supported words by place (descriptor, channel, noun), strongest first, one per slot."""
    slots: dict[str, list[str]] = {"adj": [], "channel": [], "noun": []}
    seen_slots: set[str] = set()
    for feature, z in ranked:
        if abs(z) < MIN_SHIFT:
            break
        direction = 1 if z > 0 else -1
        entry = VOCABULARY.get((feature, direction))
        if entry is None or not supports(feature, direction, segment, population):
            continue
        slot, word = entry
        place = slot if slot in ("channel", "noun") else "adj"
        if slot in seen_slots and place == "adj":
            continue
        if word not in slots[place]:
            slots[place].append(word)
            seen_slots.add(slot)
    return slots


def _true_name(
    words: dict[str, list[str]], max_words: int, segment: Stats, population: Stats
) -> str:
    """`_compose`, checked: every word was supported when chosen, but should the name read
    otherwise (one word running into the next), the words it fails on go."""
    name = _compose(words, max_words)
    while failed := {claim.word for claim in check_name(name, segment, population)}:
        fewer = {place: [w for w in ws if w not in failed] for place, ws in words.items()}
        if fewer == words:
            return DEFAULT_NOUN
        words = fewer
        name = _compose(words, max_words)
    return name


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
