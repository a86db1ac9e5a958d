"""Values in words: labels and units from the catalog, dates from the as-of date, vectorized."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from features.catalog import FEATURES
from segmentation.wording import phrase, say, singular, words_for

AS_OF = date(2026, 7, 31)


def said(name: str, value: object, as_of: date | None = None) -> str:
    return phrase(words_for(name), value, as_of)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value", "as_of", "text"),
    [
        ("carts_abandoned_90d", 3, None, "3 carts abandoned in the last 90 days"),
        ("carts_abandoned_90d", 1, None, "1 cart abandoned in the last 90 days"),
        ("carts_abandoned_90d", 0, None, "no carts abandoned in the last 90 days"),
        # 2026-07-31 minus 90 days
        ("carts_abandoned_90d", 0, AS_OF, "no cart abandoned since 2026-05-02"),
        ("purchases_90d", 0, AS_OF, "no purchase since 2026-05-02"),
        ("purchases_90d", 4, AS_OF, "4 purchases in the last 90 days"),
        ("support_tickets_90d", 1, None, "1 support ticket in the last 90 days"),
        ("categories_recent", 1, None, "1 category in the last 30 days"),
        ("n_exposures", 1, None, "1 brand touch in total"),
        ("recency_days", 12.3, None, "12 days since last activity"),
        ("recency_days", 1.0, None, "1 day since last activity"),
        # 12.3 days before the end of 2026-07-31: on 2026-07-19
        ("recency_days", 12.3, AS_OF, "last activity on 2026-07-19"),
        ("recency_days", 0.2, AS_OF, "last activity on 2026-07-31"),
        ("recency_days", 1.0, AS_OF, "last activity on 2026-07-31"),
        ("days_since_last_purchase", 90.5, AS_OF, "last purchase on 2026-05-02"),
        ("days_since_last_purchase", np.nan, AS_OF, "never purchased"),
        ("mean_days_between_purchases", 20.0, AS_OF, "20 days between purchases on average"),
        ("share_store", 0.823, None, "share of store activity: 82%"),
        ("share_store_weighted", 0.001, None, "share of store activity: under 1%"),
        ("share_call_center", 0.0, None, "share of call center activity: 0%"),
        ("avg_order_value", 1234.4, None, "average order value: 1,234"),
        ("avg_order_value", 7.5, None, "average order value: 7.50"),
        ("avg_order_value", None, None, "no order yet"),
        ("tickets_per_purchase", 0.5, None, "0.50 support tickets per purchase"),
        ("purchases_per_active_month", 1.5, None, "1.5 repeat purchases per active month"),
        ("sentiment_mean", -0.4, None, "average sentiment (-1 to 1): -0.40"),
        ("sentiment_90d", np.nan, None, "no sentiment score in the last 90 days"),
        ("has_purchased", 1, None, "has purchased: yes"),
        ("has_purchased", 0, None, "has purchased: no"),
        ("furthest_stage_rank", 3, None, "furthest journey stage: purchase"),
        ("preferred_channel", "call_center", None, "preferred channel: call center"),
        ("lifecycle_stage", "at_risk", None, "lifecycle stage: at risk"),
        ("cltv_percentile", 0.97, None, "in the top 3% by predicted lifetime value"),
        ("cltv_percentile", 0.9991, None, "in the top 1% by predicted lifetime value"),
        ("p_alive", 0.08, None, "chance of still being a client: 8%"),
        ("some_new_score", 0.5, None, "some new score: 0.50"),
        ("some_new_score", None, None, "some new score: unknown"),
    ],
)
def test_a_value_in_words(name, value, as_of, text) -> None:
    assert said(name, value, as_of) == text


def test_singular_makes_the_first_plural_noun_singular() -> None:
    assert singular("carts abandoned in the last 90 days") == "cart abandoned in the last 90 days"
    assert singular("awareness actions in the last 7 days") == "awareness action in the last 7 days"
    assert singular("categories in the last 30 days") == "category in the last 30 days"
    assert singular("brand touches in total") == "brand touch in total"
    assert singular("purchases in total") == "purchase in total"


@pytest.mark.parametrize("as_of", [None, AS_OF])
@pytest.mark.parametrize(
    "name",
    [
        "recency_days",
        "days_since_last_purchase",
        "purchases_90d",
        "share_app_weighted",
        "avg_order_value",
        "tickets_per_purchase",
        "sentiment_mean",
        "cltv_percentile",
        "current_stage_rank",
    ],
)
def test_say_is_phrase_of_every_value(name, as_of) -> None:
    rng = np.random.default_rng(7)
    values = np.round(rng.gamma(1.0, 3.0, 400), rng.integers(0, 4))
    values[::7] = np.nan
    values[::11] = 0.0
    if name in ("share_app_weighted", "cltv_percentile"):
        values = values / np.nanmax(values)
    expected = [said(name, None if np.isnan(v) else float(v), as_of) for v in values]
    assert list(say(name, values, as_of)) == expected
    assert list(say(name, pd.Series(values), as_of)) == expected


def test_say_text_values_and_nulls() -> None:
    out = say("preferred_channel", pd.Series(["store", None, "call_center", "store"]))
    assert list(out) == [
        "preferred channel: store",
        "no channel",
        "preferred channel: call center",
        "preferred channel: store",
    ]


@pytest.mark.parametrize("as_of", [None, AS_OF])
def test_no_feature_reads_as_a_column_name(as_of) -> None:
    rng = np.random.default_rng(0)
    for feature in FEATURES:
        if feature.unit == "id":
            continue
        if feature.dtype == "string":
            values = pd.Series(["call_center", None, "home_garden"])
        else:
            values = pd.Series([0.0, 1.0, 2.5, np.nan, *rng.gamma(1.0, 5.0, 5)])
        for text in say(feature.name, values, as_of):
            assert "_" not in text and "z=" not in text, (feature.name, text)
