"""How a feature's value reads in words: the catalog's labels and units, vectorized over clients.

Every feature of the catalog (`features.catalog.Feature`) has a plain-language label and a
unit; the rule layer also reads the lifecycle stage and the CLTV scores, which are worded
here (`EXTRA_WORDS`). A value reads by its unit:

- count: "3 carts abandoned in the last 90 days", "1 cart abandoned ...", "no carts ..."; a
  zero of a windowed count, given the as-of date, reads "no cart abandoned since 2026-05-02";
- days: "12 days since last activity"; a days feature with a `date_label`, given the as-of
  date, reads as the day it counts from: "last purchase on 2026-07-19";
- share: "share of store activity: 82%"; amount: "average order value: 120.50";
  rate: "0.5 support tickets per purchase"; score: "average sentiment (-1 to 1): -0.40";
  flag: "has purchased: yes"; stage: "furthest journey stage: purchase"; text: "preferred
  channel: call center"; percentile: "in the top 3% by predicted lifetime value".

A null reads as the feature's `if_null` ("never purchased") or "<label>: unknown". No text
made here holds a column name: an unknown name is worded from its name with spaces.
Formatting is vectorized: values are rounded to what is shown, and each distinct shown value
is formatted once (1M clients in a fraction of a second).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import date, timedelta
from functools import lru_cache

import numpy as np
import pandas as pd

from features.catalog import FEATURES, STAGE_RANK, Feature

_STAGE_NAMES = {rank: stage for stage, rank in STAGE_RANK.items()}
_TEXT_UNITS = frozenset({"text", "id"})


def _extra(name: str, label: str, unit: str, dtype: str = "float64") -> Feature:
    return Feature(name, "scores", dtype, "", label=label, unit=unit)


# Names the rules read that are not features: the lifecycle stage and the CLTV scores.
EXTRA_WORDS: dict[str, Feature] = {
    f.name: f
    for f in (
        _extra("lifecycle_stage", "lifecycle stage", "text", "string"),
        _extra("p_alive", "chance of still being a client", "share"),
        _extra("p_purchase", "chance of buying in the next months", "share"),
        _extra("expected_purchases", "purchases expected over the CLTV horizon", "rate"),
        _extra("expected_avg_value", "expected spend per purchase", "amount"),
        _extra("predicted_cltv", "predicted lifetime value", "amount"),
        _extra("cltv_percentile", "predicted lifetime value", "percentile"),
    )
}


@lru_cache(maxsize=1)
def _default_words() -> dict[str, Feature]:
    return {**{f.name: f for f in FEATURES}, **EXTRA_WORDS}


def words_for(name: str, catalog: Sequence[Feature] | None = None) -> Feature:
    """The wording of `name`: its catalog entry, an extra (scores, lifecycle), else a generic
    one ("some_name" reads "some name", unit score)."""
    table = _default_words() if catalog is None else {f.name: f for f in catalog}
    found = table.get(name) or EXTRA_WORDS.get(name)
    if found is not None and found.label:
        return found
    return Feature(name, "", "float64", "", label=name.replace("_", " "), unit="score")


def topic(name: str) -> str:
    """What a feature speaks of, window aside: features of one topic say the same thing twice
    in one sentence ("share of app activity" plain and weighted, "actions in the last 30/90
    days")."""
    return re.sub(r" in the last \d+ days$", "", words_for(name).label)


def singular(label: str) -> str:
    """The label with its first plural noun made singular: "carts abandoned" -> "cart abandoned"."""
    words = label.split(" ")
    for i, word in enumerate(words):
        if word.endswith("s") and not word.endswith("ss"):
            if word.endswith("ies"):
                words[i] = word[:-3] + "y"
            elif word.endswith(("ches", "shes", "xes")):
                words[i] = word[:-2]
            else:
                words[i] = word[:-1]
            break
    return " ".join(words)


def number(words: Feature, value: float | str | None) -> str:
    """The value alone as shown for its unit ("82%", "12", "120.50", "purchase"), "n/a" if null."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if words.unit in _TEXT_UNITS:
        return str(value).replace("_", " ")
    v = float(value)
    unit = words.unit
    if unit == "share":
        return _percent(v)
    if unit == "percentile":
        return f"top {_top_percent(v)}%"
    if unit == "days":
        return f"{v:,.0f}"
    if unit == "count":
        return f"{v:,.0f}" if float(v).is_integer() or abs(v) >= 10 else f"{v:.1f}"
    if unit == "amount":
        return f"{v:,.0f}" if abs(v) >= 10 else f"{v:.2f}"
    if unit == "rate":
        return _rate(v)
    if unit == "flag":
        return "yes" if v else "no"
    if unit == "stage":
        return _STAGE_NAMES.get(round(v), f"{v:g}")
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}".replace("-0.00", "0.00")


def phrase(words: Feature, value: float | str | None, as_of: date | None = None) -> str:
    """One value in words with its label and unit (see the module docstring)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return words.if_null or f"{words.label}: unknown"
    unit, label = words.unit, words.label
    if not isinstance(value, str):  # rounded as shown, so that `say` formats each shown value once
        value = float(_shown_key(words, np.array([float(value)]), as_of)[0])
    if unit in ("count", "days", "rate") and not isinstance(value, str):
        v = value
        if unit == "days" and as_of is not None and words.date_label:
            return f"{words.date_label} on {_day_of(as_of, v).isoformat()}"
        if unit == "count" and round(v, 1) == 0:
            if as_of is not None and words.window:
                noun = singular(label.removesuffix(f" in the last {words.window} days"))
                return f"no {noun} since {(as_of - timedelta(days=words.window)).isoformat()}"
            return f"no {label}"
        text = number(words, v)
        return f"{text} {singular(label) if text == '1' else label}"
    if unit == "percentile":
        return f"in the top {_top_percent(float(value))}% by {label}"
    return f"{label}: {number(words, value)}"


def say(
    name: str,
    values: Sequence[object] | np.ndarray | pd.Series,
    as_of: date | None = None,
    catalog: Sequence[Feature] | None = None,
) -> np.ndarray:
    """`phrase` of every value of feature `name`, as an object array; each distinct shown
    value is formatted once, so a million clients take a fraction of a second."""
    words = words_for(name, catalog)
    raw = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    if words.unit in _TEXT_UNITS or (raw.dtype == object and _is_text(raw)):
        key = raw.astype(object).where(raw.notna(), None)
        codes, text_keys = pd.factorize(key, use_na_sentinel=True)
        texts = [phrase(words, None if u is None else str(u), as_of) for u in text_keys]
    else:
        x = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        codes, number_keys = pd.factorize(_shown_key(words, x, as_of), use_na_sentinel=True)
        texts = [phrase(words, float(u), as_of) for u in number_keys]
    table = np.array([*texts, phrase(words, None, as_of)], dtype=object)
    return table[np.where(codes < 0, len(texts), codes)]


def _shown_key(words: Feature, x: np.ndarray, as_of: date | None) -> np.ndarray:
    """The values rounded to what their text shows, so equal texts share one formatting."""
    unit = words.unit
    if unit == "days" and as_of is not None and words.date_label:
        return np.ceil(x)
    if unit == "share":
        return np.where((x > 0) & (x < 0.005), 0.004, np.round(x, 2))
    if unit == "days":
        return np.round(x)
    if unit == "count":
        return np.where(np.abs(x) >= 10, np.round(x), np.round(x, 1))
    if unit == "amount":
        return np.where(np.abs(x) >= 10, np.round(x), np.round(x, 2))
    if unit in ("flag", "stage"):
        return np.round(x)
    if unit == "percentile":
        return np.round(x, 4)
    return np.round(x, 2)


def _is_text(values: pd.Series) -> bool:
    sample = values.dropna()
    return len(sample) > 0 and isinstance(sample.iloc[0], str)


def _day_of(as_of: date, days: float) -> date:
    """The day an event `days` before the end of the as-of day happened on."""
    return as_of - timedelta(days=max(math.ceil(days) - 1, 0))


def _percent(v: float) -> str:
    if 0 < v < 0.005:
        return "under 1%"
    return f"{v * 100:.0f}%"


def _top_percent(percentile: float) -> int:
    return max(1, math.ceil(round((1 - percentile) * 100, 6)))


def _rate(v: float) -> str:
    if v == 0:
        return "0"
    return f"{v:.1f}" if abs(v) >= 1 else f"{v:.2f}"
