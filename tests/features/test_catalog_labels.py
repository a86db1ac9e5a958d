"""The catalog's words: every feature has a plain label and a unit, and they read with a value."""

from __future__ import annotations

import pytest

from configs import FeaturesConfig
from features.catalog import FEATURES, UNITS, feature_catalog
from segmentation.wording import singular

NAMED = [f for f in FEATURES if f.unit != "id"]


def test_every_feature_has_a_label_and_a_known_unit() -> None:
    for feature in FEATURES:
        assert feature.label, feature.name
        assert feature.unit in UNITS, feature.name


@pytest.mark.parametrize("feature", NAMED, ids=[f.name for f in NAMED])
def test_labels_are_words_not_column_names(feature) -> None:
    assert "_" not in feature.label
    assert feature.label == feature.label.strip() and "  " not in feature.label
    assert "_" not in feature.if_null and "_" not in feature.date_label


@pytest.mark.parametrize(
    "feature", [f for f in FEATURES if f.unit in ("count", "days")], ids=lambda f: f.name
)
def test_counts_and_days_start_with_a_plural_noun(feature) -> None:
    # "3 " + label reads, and "1 " + singular(label) too
    assert singular(feature.label) != feature.label


def test_windowed_counts_name_their_window() -> None:
    windowed = [f for f in FEATURES if f.window is not None]
    assert {"purchases_90d", "carts_abandoned_90d", "events_30d"} <= {f.name for f in windowed}
    for feature in windowed:
        assert feature.unit in ("count", "amount"), feature.name
        assert feature.label.endswith(f"in the last {feature.window} days"), feature.name


def test_the_examples_of_the_brief() -> None:
    by_name = {f.name: f for f in FEATURES}
    assert (by_name["recency_days"].label, by_name["recency_days"].unit) == (
        "days since last activity",
        "days",
    )
    assert (by_name["share_store"].label, by_name["share_store"].unit) == (
        "share of store activity",
        "share",
    )
    assert by_name["avg_order_value"].unit == "amount"
    assert by_name["carts_abandoned_90d"].label == "carts abandoned in the last 90 days"
    assert by_name["days_since_last_purchase"].date_label == "last purchase"
    assert by_name["days_since_last_purchase"].if_null == "never purchased"


def test_labels_follow_the_configured_windows() -> None:
    by_name = {f.name: f for f in feature_catalog(FeaturesConfig(windows_days=(3, 60)))}
    assert by_name["events_60d"].label == "actions in the last 60 days"
    assert by_name["events_60d"].window == 60
    assert by_name["active_days_3d"].label == "active days in the last 3 days"
