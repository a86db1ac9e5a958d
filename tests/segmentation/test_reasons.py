"""Reasons per client, in words, with the client's own values: rules (kept members too) and clusters."""

from __future__ import annotations

import re
from datetime import date

import numpy as np
import pandas as pd
import pytest

from segmentation.profiles import cluster_profiles
from segmentation.reasons import (
    KEPT_PREFIX,
    NO_TRAIT,
    cluster_reasons,
    condition_reasons,
    lifecycle_reasons,
    names_in_order,
    rule_reasons,
)
from segmentation.rules import load_rules, parse, rules_from_mapping

AS_OF = date(2026, 7, 31)


def assert_words(texts: np.ndarray) -> None:
    """No z-score and no raw column name in any reason."""
    for text in texts:
        if text is None:
            continue
        assert "z=" not in text and not re.search(r"\w_\w", text), text


@pytest.fixture(scope="module")
def rules():
    return load_rules()  # the shipped configs/rules.yaml, checked against the catalog


def client_frame() -> pd.DataFrame:
    nan = np.nan
    return pd.DataFrame(
        {
            "carts_abandoned_90d": [3, 1, 0, 0, 0, 0],
            "purchases_90d": [0, 0, 2, 1, 0, 0],
            "recency_days": [5.2, 40.5, 130.0, 1.0, 60.3, 2.0],
            "support_tickets_90d": [0, 0, 0, 0, 0, 0],
            "sentiment_90d": [nan, 0.1, nan, 0.3, nan, nan],
            "cltv_percentile": [0.5, 0.2, 0.4, 0.975, 0.1, 0.3],
            "lifecycle_stage": ["active", "active", "lapsed", "active", "at_risk", "active"],
            "total_spend": [10.0, 20.0, 1250.4, 400.0, 30.0, 0.0],
            "tenure_days": [300.0, 400.0, 500.0, 200.0, 500.5, 20.0],
            "active_days_365d": [20, 5, 3, 10, 20, 2],
        }
    )


def test_rule_reasons_say_the_clients_own_values(rules) -> None:
    frame = client_frame()
    ids = np.array(
        [
            "rule_cart_abandoner",
            "rule_cart_abandoner",
            "rule_win_back",
            "rule_vip",
            "rule_gone_quiet",
            None,
        ],
        dtype=object,
    )
    stayed = np.array([False, True, False, False, False, False])
    reasons = rule_reasons(rules, frame, ids, stayed, AS_OF)
    assert list(reasons) == [
        # carts_abandoned_90d >= 2 and purchases_90d == 0 and recency_days <= 30
        "3 carts abandoned in the last 90 days, no purchase since 2026-05-02,"
        " last activity on 2026-07-26",
        # kept by stay_when: carts_abandoned_90d >= 1 and ... recency_days <= 45
        KEPT_PREFIX + "1 cart abandoned in the last 90 days, no purchase since 2026-05-02,"
        " last activity on 2026-06-21",
        # lifecycle_stage == 'lapsed' and total_spend >= 300
        "lifecycle stage: lapsed, total spend: 1,250",
        # cltv_percentile >= 0.97 and recency_days <= 45
        "in the top 3% by predicted lifetime value, last activity on 2026-07-31",
        # recency_days > 45 and recency_days > 2 * min(tenure_days, 365) / max(active_days_365d, 1)
        "last activity on 2026-06-01, first seen on 2025-03-18,"
        " 20 active days in the last 365 days",
        None,
    ]
    assert KEPT_PREFIX == "kept in the segment: "
    assert_words(reasons)


def test_rule_reasons_without_an_as_of_date_say_days() -> None:
    rules = rules_from_mapping(
        {
            "lifecycle": [{"name": "active", "priority": 0, "when": "true"}],
            "segments": [
                {"name": "quiet", "priority": 1, "when": "recency_days > 45 and purchases_90d == 0"}
            ],
        }
    )
    frame = pd.DataFrame({"recency_days": [60.3, 1.0], "purchases_90d": [0, 0]})
    reasons = rule_reasons(rules, frame, ["rule_quiet", "rule_quiet"])
    assert list(reasons) == [
        "60 days since last activity, no purchases in the last 90 days",
        "1 day since last activity, no purchases in the last 90 days",
    ]


def test_or_says_only_the_branches_that_hold(rules) -> None:
    frame = pd.DataFrame(
        {
            "recency_days": [400.0, 100.0],
            "p_alive": [0.5, 0.05],
            "tenure_days": [900.0, 900.0],
            "return_gap_days": [np.nan, np.nan],
            "has_purchased": [1, 1],
            "purchases_90d": [0, 0],
        }
    )
    stage, rule_names = rules.assign_lifecycle(frame)
    assert list(stage) == ["churned", "churned"]
    # recency_days > 365 or (p_alive < 0.1 and recency_days > 90)
    assert list(lifecycle_reasons(rules, frame, rule_names, AS_OF)) == [
        "last activity on 2025-06-27",
        "last activity on 2026-04-23, chance of still being a client: 5%",
    ]


def test_lifecycle_fallback_reads_as_its_description(rules) -> None:
    frame = pd.DataFrame(
        {
            "recency_days": [2.0],
            "tenure_days": [400.0],
            "return_gap_days": [np.nan],
            "has_purchased": [1],
            "purchases_90d": [1],
        }
    )
    stage, rule_names = rules.assign_lifecycle(frame)
    assert list(stage) == ["active"]
    assert list(lifecycle_reasons(rules, frame, rule_names)) == ["Everyone else (recently active)."]


def test_condition_reasons_on_nested_conditions_and_absent_columns() -> None:
    condition = parse(
        "(a_count > 1 or share_store >= 0.5) and not (recency_days > 9) or p_alive < 0.1"
    )
    assert names_in_order(condition) == ["a_count", "share_store", "recency_days", "p_alive"]
    frame = pd.DataFrame(
        {
            "a_count": [2.0, 0.0, 0.0],
            "share_store": [0.1, 0.8, 0.1],
            "recency_days": [3.0, 3.0, 30.0],
        }
    )  # p_alive absent: null
    assert list(condition_reasons(condition, frame)) == [
        "a count: 2.00, 3 days since last activity",
        "share of store activity: 80%, 3 days since last activity",
        # nothing holds: every branch is said
        "a count: 0.00, share of store activity: 10%, 30 days since last activity,"
        " chance of still being a client: unknown",
    ]


def test_rule_reasons_check_lengths(rules) -> None:
    with pytest.raises(ValueError, match="rule keys"):
        rule_reasons(rules, client_frame(), ["rule_vip"])


# ------------------------------------------------------------------------------------ clusters


def store_profile(**overrides) -> dict:
    profile = {
        "z": {"share_store_weighted": 3.0, "purchases_per_active_month": 1.5, "recency_days": -0.2},
        "population": {
            "median": {"share_store_weighted": 0.12, "purchases_per_active_month": 0.5,
                       "recency_days": 20.0},
            "scale": {"share_store_weighted": 0.1, "purchases_per_active_month": 0.4,
                      "recency_days": 10.0},
        },
    }  # fmt: skip
    profile.update(overrides)
    return profile


def test_cluster_reasons_pick_the_features_the_client_shares_with_its_segment() -> None:
    frame = pd.DataFrame(
        {
            "share_store_weighted": [0.82, 0.20, 0.10, 0.9, 0.9],
            "purchases_per_active_month": [1.4, 1.2, 0.3, 2.0, 2.0],
            "recency_days": [5.0, 5.0, 5.0, 5.0, 5.0],
            "unrelated": [1, 2, 3, 4, 5],
        }
    )
    segments = ["C001", "C001", "C001", "rule_vip", "noise"]
    reasons = cluster_reasons(frame, segments, {"C001": store_profile()})
    assert list(reasons) == [
        # store: (0.82 - 0.12) / 0.1 = 7 scale units toward a shift of 3 -> fully shared (3);
        # purchases: 2.25 toward 1.5 -> 1.5; recency: the segment's shift 0.2 is too small
        "share of store activity: 82% (typical 12%); 1.4 repeat purchases per active month (typical 0.50)",
        # store: 0.8 units, under half the segment's shift; purchases: 1.75 -> said
        "1.2 repeat purchases per active month (typical 0.50)",
        NO_TRAIT,
        None,
        None,
    ]
    top1 = cluster_reasons(frame, segments, {"C001": store_profile()}, top=1)
    assert top1[0] == "share of store activity: 82% (typical 12%)"
    assert_words(reasons)


def test_cluster_reasons_without_population_statistics_use_the_frame() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"share_store_weighted": rng.uniform(0, 0.2, 100)})
    frame.loc[:9, "share_store_weighted"] = 0.9
    profile = {"z": {"share_store_weighted": 4.0}}  # a model saved before the statistics
    reasons = cluster_reasons(frame, ["C001"] * 10 + ["noise"] * 90, {"C001": profile})
    typical = f"{np.median(frame['share_store_weighted']) * 100:.0f}%"
    assert reasons[0] == f"share of store activity: 90% (typical {typical})"
    assert reasons[10] is None


def test_cluster_reasons_from_fitted_profiles() -> None:
    rng = np.random.default_rng(0)
    n = 900
    frame = pd.DataFrame(
        {
            "recency_days": rng.gamma(2, 10, n),
            "share_store_weighted": np.where(rng.random(n) < 0.2, rng.beta(2, 3, n), 0.0),
            "tickets_per_purchase": np.where(rng.random(n) < 0.1, 0.5, 0.0),
            "avg_order_value": rng.lognormal(4, 0.4, n),
        }
    )
    labels = np.repeat([0, 1, 2], 300)
    frame.loc[:299, "share_store_weighted"] = rng.beta(8, 3, 300)
    frame.loc[300:599, "recency_days"] += 200
    frame.loc[300:449, "tickets_per_purchase"] = 1.5
    profiles = {f"C{c}": p for c, p in cluster_profiles(frame, labels, list(frame.columns)).items()}
    segments = np.array([f"C{c}" for c in labels], dtype=object)
    reasons = cluster_reasons(frame, segments, profiles)
    assert_words(reasons)
    store = pd.Series(reasons[:300])
    assert store.str.startswith("share of store activity: ").mean() > 0.9
    dormant = pd.Series(reasons[300:600])
    assert dormant.str.contains("days since last activity").mean() > 0.9
    assert dormant[:150].str.contains("1.5 support tickets per purchase").all()
    assert not dormant[150:].str.contains("support tickets").any()


def test_cluster_reasons_check_lengths() -> None:
    with pytest.raises(ValueError, match="segment ids"):
        cluster_reasons(pd.DataFrame({"a": [1.0]}), ["C1", "C2"], {})


def test_cluster_reasons_say_one_feature_per_topic() -> None:
    # the plain and the recency-weighted store share say the same thing: said once
    frame = pd.DataFrame({"share_store": [0.8], "share_store_weighted": [0.9], "reviews": [4]})
    profile = {
        "z": {"share_store": 2.0, "share_store_weighted": 3.0, "reviews": 1.0},
        "population": {
            "median": {"share_store": 0.1, "share_store_weighted": 0.1, "reviews": 0.0},
            "scale": {"share_store": 0.1, "share_store_weighted": 0.1, "reviews": 1.0},
        },
    }
    assert list(cluster_reasons(frame, ["C1"], {"C1": profile})) == [
        "share of store activity: 90% (typical 10%); 4 reviews written (typical 0)"
    ]
