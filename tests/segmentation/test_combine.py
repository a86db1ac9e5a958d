"""Combining rules, clusters and noise into one membership row per client, with reasons."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from configs.schema import HoldoutConfig
from segmentation.combine import MEMBERSHIP_COLUMNS, assign_segments, segment_definitions
from segmentation.holdout import holdout_flags
from segmentation.rules import rules_from_mapping

RULES = {
    "lifecycle": [
        {"name": "lapsed", "priority": 10, "when": "recency_days > 120"},
        {"name": "active", "priority": 0, "when": True},
    ],
    "segments": [
        {
            "name": "support_risk",
            "id": "rule_support_risk",
            "priority": 100,
            "when": "support_tickets_90d >= 2 and sentiment_mean < -0.2",
            "description": "unhappy",
        },
        {"name": "vip", "priority": 90, "when": "total_spend >= 2000 or predicted_cltv >= 1000"},
    ],
}
NAMES = ["recency_days", "support_tickets_90d", "sentiment_mean", "total_spend", "current_stage"]


@pytest.fixture
def rules():
    return rules_from_mapping(RULES, known_features=NAMES)


@pytest.fixture
def features():
    return pd.DataFrame(
        {
            "client_id": ["a", "b", "c", "d", "e"],
            "recency_days": [5.0, 200.0, 10.0, 3.0, 400.0],
            "support_tickets_90d": [3.0, 0.0, 0.0, 5.0, 0.0],
            "sentiment_mean": [-0.5, np.nan, 0.1, -0.9, np.nan],
            "total_spend": [5000.0, 2500.0, 100.0, 50.0, 10.0],
            "current_stage": ["retention", "purchase", "consideration", "retention", None],
        }
    )


@pytest.fixture
def clusters():
    # listed in another order than the features, to check the alignment by client_id
    return pd.DataFrame(
        {
            "client_id": ["e", "d", "c", "b", "a"],
            "cluster_id": [-1, 2, 1, 1, 2],
            "segment_id": [None, "C2", "C1", "C1", "C2"],
            "segment_name": [None, "browsers", "loyal", "loyal", "browsers"],
            "confidence": [0.05, 0.7, 0.9, 0.8, 0.6],
            "is_noise": [True, False, False, False, False],
        }
    )


def test_rule_then_cluster_then_noise(features, clusters, rules):
    out = assign_segments(features, clusters, rules, cluster_reasons={"C1": "high frequency"})
    assert tuple(out.columns) == MEMBERSHIP_COLUMNS
    assert list(out["client_id"]) == ["a", "b", "c", "d", "e"]
    # a: both rules match, the higher priority (support_risk) wins over vip and the cluster
    assert list(out["segment_id"]) == [
        "rule_support_risk",
        "rule_vip",
        "C1",
        "rule_support_risk",
        "noise",
    ]
    assert list(out["segment_name"]) == [
        "support_risk",
        "vip",
        "loyal",
        "support_risk",
        "unclustered",
    ]
    assert list(out["segment_source"]) == ["rule", "rule", "cluster", "rule", "noise"]
    assert list(out["cluster_id"]) == [2, 1, 1, 2, pd.NA]
    assert out["cluster_id"].dtype == "Int64"
    np.testing.assert_allclose(out["confidence"], [1.0, 1.0, 0.9, 1.0, 0.05])
    assert list(out["lifecycle_stage"]) == ["active", "lapsed", "active", "active", "lapsed"]
    assert out["journey_stage"].tolist()[:4] == [
        "retention",
        "purchase",
        "consideration",
        "retention",
    ]
    assert pd.isna(out.loc[4, "journey_stage"])
    assert out["segment_id"].dtype == "str"
    assert out["holdout"].dtype == bool and not out["holdout"].any()  # no holdout config
    # rule reasons: the client's own values of what the rule reads, never the rule text
    assert list(out["reason"]) == [
        "3 support tickets in the last 90 days, average sentiment (-1 to 1): -0.50",
        "total spend: 2,500",
        "cluster loyal: high frequency",
        "5 support tickets in the last 90 days, average sentiment (-1 to 1): -0.90",
        "no rule matched; outside every cluster",
    ]


def test_scores_are_joined_before_the_rules(features, clusters, rules):
    scores = pd.DataFrame({"client_id": ["c", "e"], "predicted_cltv": [1500.0, 5000.0]})
    out = assign_segments(features, clusters, rules, scores=scores)
    assert list(out["segment_id"]) == [
        "rule_support_risk",
        "rule_vip",
        "rule_vip",
        "rule_support_risk",
        "rule_vip",
    ]
    # without scores c stays in its cluster and e is noise
    out = assign_segments(features, clusters, rules)
    assert list(out["segment_source"][2:]) == ["cluster", "rule", "noise"]


def test_scores_win_over_same_named_feature_columns(features, clusters, rules):
    stale = features.assign(predicted_cltv=[0.0, 0.0, 9999.0, 0.0, 0.0])
    scores = pd.DataFrame({"client_id": ["a", "b", "c", "d", "e"], "predicted_cltv": [0.0] * 5})
    out = assign_segments(stale, clusters, rules, scores=scores)
    assert out.loc[2, "segment_id"] == "C1"


def test_cluster_reasons_from_argument_then_column_then_name(features, clusters, rules):
    quiet = features.assign(support_tickets_90d=0.0, total_spend=0.0)
    with_column = clusters.assign(reason=[None, "many app sessions", "", "", "many app sessions"])
    out = assign_segments(quiet, with_column, rules, cluster_reasons={"C1": "high frequency"})
    assert list(out["reason"]) == [
        "cluster browsers: many app sessions",  # C2: from the clusters' own reason column
        "cluster loyal: high frequency",
        "cluster loyal: high frequency",
        "cluster browsers: many app sessions",
        "no rule matched; outside every cluster",
    ]
    out = assign_segments(quiet, clusters, rules)
    assert out.loc[0, "reason"] == "cluster browsers"


def test_without_a_cluster_model_everyone_else_is_noise(features, rules):
    out = assign_segments(features, None, rules)
    assert list(out["segment_source"]) == ["rule", "rule", "noise", "rule", "noise"]
    assert out["cluster_id"].isna().all()
    np.testing.assert_allclose(out["confidence"], [1.0, 1.0, 0.0, 1.0, 0.0])


def test_a_cluster_row_without_segment_is_noise(features, clusters, rules):
    quiet = features.assign(support_tickets_90d=0.0, total_spend=0.0)
    broken = clusters.assign(
        segment_id=[None, "C2", None, "C1", "C2"], is_noise=[None] + [False] * 4
    )
    out = assign_segments(quiet, broken, rules)
    assert list(out["segment_source"]) == ["cluster", "cluster", "noise", "cluster", "noise"]
    assert out["cluster_id"].isna().tolist() == [False, False, True, False, True]


def test_string_cluster_ids_are_kept(features, clusters, rules):
    out = assign_segments(
        features, clusters.assign(cluster_id=["x", "k2", "k1", "k1", "k2"]), rules
    )
    assert list(out["cluster_id"]) == ["k2", "k1", "k1", "k2", None]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda f, c: (f.drop(columns=["current_stage"]), c),
            r"features has no column\(s\) \['current_stage'\]",
        ),
        (
            lambda f, c: (pd.concat([f, f.iloc[:1]]), c),
            "features: 1 duplicate client_id rows \\(e.g. a\\)",
        ),
        (lambda f, c: (f, c.iloc[1:]), "clusters: 1 clients have no cluster row \\(e.g. e\\)"),
        (lambda f, c: (f, c.drop(columns=["is_noise"])), "clusters has no column"),
        (
            lambda f, c: (f, c.assign(segment_id=[None, "rule_vip", "C1", "C1", "C2"])),
            "collide with rule segment ids: \\['rule_vip'\\]",
        ),
    ],
)
def test_bad_inputs_fail_clearly(features, clusters, rules, change, message):
    features, clusters = change(features, clusters)
    with pytest.raises(ValueError, match=message):
        assign_segments(features, clusters, rules)


def test_duplicate_scores_fail(features, clusters, rules):
    scores = pd.DataFrame({"client_id": ["a", "a"], "predicted_cltv": [1.0, 2.0]})
    with pytest.raises(ValueError, match="scores: 1 duplicate client_id"):
        assign_segments(features, clusters, rules, scores=scores)


def test_deterministic_and_empty(features, clusters, rules):
    first = assign_segments(features, clusters, rules)
    pd.testing.assert_frame_equal(first, assign_segments(features, clusters, rules))
    empty = assign_segments(features.iloc[:0], clusters.iloc[:0], rules)
    assert tuple(empty.columns) == MEMBERSHIP_COLUMNS
    assert len(empty) == 0


def test_index_of_the_inputs_does_not_matter(features, clusters, rules):
    expected = assign_segments(features, clusters, rules)
    shuffled = features.set_axis([40, 10, 30, 20, 0])
    scores = pd.DataFrame({"client_id": ["c"], "predicted_cltv": [0.0]}, index=[7])
    got = assign_segments(shuffled, clusters.set_axis([9, 8, 7, 6, 5]), rules, scores=scores)
    pd.testing.assert_frame_equal(got, expected)


def test_extra_cluster_rows_are_ignored(features, clusters, rules):
    extra = pd.concat([clusters, clusters.iloc[:1].assign(client_id="zz")], ignore_index=True)
    pd.testing.assert_frame_equal(
        assign_segments(features, extra, rules), assign_segments(features, clusters, rules)
    )


def test_segment_definitions(rules):
    table = segment_definitions(rules)
    assert list(table.columns) == ["segment_id", "segment_name", "kind", "definition"]
    assert list(table["segment_id"]) == ["rule_support_risk", "rule_vip"]
    assert set(table["kind"]) == {"rule"}
    definition = json.loads(table.loc[0, "definition"])
    assert definition == {
        "when": "support_tickets_90d >= 2 and sentiment_mean < -0.2",
        "priority": 100,
        "description": "unhappy",
        "features": ["sentiment_mean", "support_tickets_90d"],
    }


def test_previous_membership_keeps_members_with_a_stay_reason(features, clusters):
    sticky = {
        **RULES,
        "segments": [
            {**RULES["segments"][0], "stay_when": "support_tickets_90d >= 1 and sentiment_mean < 0"}
        ],
    }
    rules = rules_from_mapping(sticky, known_features=NAMES)
    calmer = features.assign(support_tickets_90d=[3.0, 0.0, 0.0, 1.0, 0.0])
    # previous rows in another order, with a client that is gone tonight
    previous = pd.DataFrame(
        {"client_id": ["z", "d", "a"], "segment_id": ["C1", "rule_support_risk", "C2"]}
    )
    out = assign_segments(calmer, clusters, rules, previous=previous).set_index("client_id")
    assert out.loc["d", "segment_id"] == "rule_support_risk"  # one ticket left: kept
    assert out.loc["d", "reason"] == (
        "kept in the segment: 1 support ticket in the last 90 days,"
        " average sentiment (-1 to 1): -0.90"
    )
    assert out.loc["a", "reason"].startswith("3 support tickets")  # entered by `when`
    without = assign_segments(calmer, clusters, rules).set_index("client_id")
    assert without.loc["d", "segment_id"] == "C2"


def test_previous_membership_with_duplicate_clients_is_refused(features, clusters, rules):
    previous = pd.DataFrame({"client_id": ["a", "a"], "segment_id": ["C1", "C2"]})
    with pytest.raises(ValueError, match="previous: 1 duplicate client_id"):
        assign_segments(features, clusters, rules, previous=previous)


def test_holdout_column_follows_the_config(features, clusters, rules):
    config = HoldoutConfig(share=0.5, salt="s1", segments={"C1": 0.0})
    out = assign_segments(features, clusters, rules, holdout=config)
    assert tuple(out.columns) == MEMBERSHIP_COLUMNS
    assert out["holdout"].dtype == bool
    expected = holdout_flags(
        out["client_id"], out["segment_id"], share=0.5, salt="s1", segment_shares={"C1": 0.0}
    )
    np.testing.assert_array_equal(out["holdout"].to_numpy(), expected)
    assert not out.loc[out["segment_id"].isin(["C1", "noise"]), "holdout"].any()
    # every client of a segment with share 0.5 drawn: rule members can be held out too
    big = pd.concat([features.assign(client_id=features["client_id"] + str(i)) for i in range(40)])
    big_clusters = pd.concat(
        [clusters.assign(client_id=clusters["client_id"] + str(i)) for i in range(40)]
    )
    many = assign_segments(big, big_clusters, rules, holdout=config)
    share = many.groupby("segment_id")["holdout"].mean()
    assert 0.2 < share["rule_support_risk"] < 0.8 and 0.2 < share["rule_vip"] < 0.8
    assert share["C1"] == 0.0 and share["noise"] == 0.0
    # the same config draws the same group on every run
    again = assign_segments(features, clusters, rules, holdout=config)
    pd.testing.assert_frame_equal(out, again)
