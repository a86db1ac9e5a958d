"""Rule sets from YAML: load-time errors naming file, key and rule; priorities; lifecycle for everyone."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pytest

from configs import ConfigError
from features.catalog import FEATURES
from segmentation.rules import (
    DEFAULT_RULES_PATH,
    SCORE_COLUMNS,
    RuleEvaluationError,
    RuleSetError,
    RuleSyntaxError,
    RuleTypeError,
    UnknownFeatureError,
    load_rules,
    rules_from_mapping,
)

# The rules are checked against the feature catalog (names and types), as in production.
HELPERS_FEATURES = [f.name for f in FEATURES if f.name != "client_id"]
HELPERS_DTYPES = {f.name: f.dtype for f in FEATURES if f.name != "client_id"}


def write(tmp_path, text, name="rules.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """
lifecycle:
  - {name: active, priority: 0, when: "true"}
"""


# ------------------------------------------------------------------------------ the shipped rules


@pytest.fixture(scope="module")
def default_rules():
    return load_rules(DEFAULT_RULES_PATH, known_features=HELPERS_DTYPES)


def test_default_rules_load_against_the_feature_catalog(default_rules):
    assert default_rules.stages == ("new", "reactivated", "churned", "lapsed", "at_risk", "active")
    assert [rule.segment_id for rule in default_rules.segment_rules] == [
        "rule_support_risk",
        "rule_vip",
        "rule_win_back",
        "rule_cart_abandoner",
        "rule_gone_quiet",
    ]
    assert default_rules.features <= set(HELPERS_FEATURES) | set(SCORE_COLUMNS) | {
        "lifecycle_stage"
    }
    assert "p_alive" in default_rules.features
    # also as a plain set of names (no dtypes known)
    assert load_rules(DEFAULT_RULES_PATH, known_features=HELPERS_FEATURES).stages[-1] == "active"


def test_default_rules_load_with_the_default_known_names():
    names = {feature.name for feature in FEATURES}
    rules = load_rules()  # the shipped file against the catalog, the default known names
    assert rules.features - set(SCORE_COLUMNS) - {"lifecycle_stage"} <= names


def client(**values):
    base = {
        "client_id": "c",
        "recency_days": 10.0,
        "tenure_days": 400.0,
        "return_gap_days": np.nan,
        "has_purchased": 1.0,
        "purchases_90d": 1.0,
        "total_spend": 100.0,
        "support_tickets_90d": 0.0,
        "sentiment_mean": np.nan,
        "sentiment_90d": np.nan,
        "carts_abandoned_90d": 0.0,
        "active_days_365d": 120.0,  # active every third day or so
    }
    return {**base, **values}


def test_default_lifecycle_stages_on_hand_made_clients(default_rules):
    cases = {
        "new": client(tenure_days=12, recency_days=1),
        "reactivated": client(return_gap_days=120, recency_days=5),
        "churned": client(recency_days=400),
        "churned_by_model": client(recency_days=100, p_alive=0.05),
        "lapsed": client(recency_days=200),
        "lapsed_model_unsure": client(recency_days=130, p_alive=0.3),
        "at_risk": client(recency_days=60),
        "at_risk_by_model": client(recency_days=20, p_alive=0.4, purchases_90d=0),
        "active": client(recency_days=20, p_alive=0.4, purchases_90d=2),
        "active_no_scores": client(recency_days=20, purchases_90d=0),
        "all_null": {"client_id": "z", "p_alive": np.nan},
    }
    frame = pd.DataFrame(list(cases.values()))
    stage, rule = default_rules.assign_lifecycle(frame)
    expected = [
        "new",
        "reactivated",
        "churned",
        "churned",
        "lapsed",
        "lapsed",
        "at_risk",
        "at_risk",
        "active",
        "active",
        "active",
    ]
    assert list(stage) == expected
    assert list(rule) == expected  # one rule per stage in the defaults


def test_default_rules_work_before_scores_exist(default_rules):
    frame = pd.DataFrame([client(recency_days=100), client(recency_days=100, p_alive=0.05)])
    no_scores = frame.drop(columns=["p_alive"])
    assert list(default_rules.assign_lifecycle(no_scores)[0]) == ["at_risk", "at_risk"]
    assert list(default_rules.assign_lifecycle(frame)[0]) == ["at_risk", "churned"]


def test_default_segments_on_hand_made_clients(default_rules):
    frame = pd.DataFrame(
        [
            client(support_tickets_90d=3, sentiment_90d=-0.6, cltv_percentile=0.99),
            client(cltv_percentile=0.98, recency_days=5),
            client(cltv_percentile=0.97, recency_days=40),
            client(cltv_percentile=0.96, recency_days=5),  # below the top 3%
            client(cltv_percentile=0.99, recency_days=50),  # top value, but gone quiet
            client(total_spend=50_000.0),  # lifetime spend alone is not vip
            client(recency_days=200, total_spend=800, purchases_90d=0),
            client(carts_abandoned_90d=2, purchases_90d=0, recency_days=3),
            client(carts_abandoned_90d=2, purchases_90d=1, recency_days=3),
            client(support_tickets_90d=3),  # no sentiment: unknown, no match
            # Silent for 50 days after acting every third day: quiet. Silent as long after
            # acting once a month: that is their rhythm, not quiet (2 x 400/13 = 62 days).
            client(recency_days=50),
            client(recency_days=50, active_days_365d=13),
        ]
    )
    ids, names, priorities, _ = default_rules.match_segments(frame)
    assert list(ids) == [
        "rule_support_risk",
        "rule_vip",
        "rule_vip",
        None,
        "rule_gone_quiet",  # a VIP who has gone quiet is a reactivation case
        None,
        "rule_win_back",
        "rule_cart_abandoner",
        None,
        None,
        "rule_gone_quiet",
        None,
    ]
    assert list(names[[0, 1, 2, 6, 7]]) == [
        "support_risk",
        "vip",
        "vip",
        "win_back",
        "cart_abandoner",
    ]
    nan = np.nan
    np.testing.assert_array_equal(
        priorities, [100, 90, 90, nan, 60, nan, 80, 70, nan, nan, 60, nan]
    )


def test_lifecycle_covers_every_client_whatever_the_values(default_rules):
    rng = np.random.default_rng(0)
    n = 500
    frame = pd.DataFrame(
        {
            name: np.where(rng.random(n) < 0.3, np.nan, rng.uniform(0, 600, n))
            for name in ("recency_days", "tenure_days", "return_gap_days", "purchases_90d")
        }
    ).assign(
        has_purchased=rng.integers(0, 2, n).astype(float),
        p_alive=np.where(rng.random(n) < 0.5, np.nan, rng.random(n)),
    )
    stage, rule = default_rules.assign_lifecycle(frame)
    assert set(stage) <= set(default_rules.stages)
    assert not pd.isna(stage).any()
    assert not pd.isna(rule).any()


# ------------------------------------------------------------------------------ priorities


def test_priority_order_not_file_order_and_first_match_wins(tmp_path):
    path = write(
        tmp_path,
        """
        lifecycle:
          - {name: low, priority: 1, when: "x > 0"}
          - {name: rest, priority: 0, when: true}
          - {name: high, priority: 50, when: "x > 5"}
        segments:
          - {name: broad, priority: 10, when: "x > 0"}
          - {name: narrow, id: narrow_one, priority: 20, when: "x > 5"}
        """,
    )
    rules = load_rules(path, known_features=["x"])
    assert [rule.name for rule in rules.lifecycle_rules] == ["high", "low", "rest"]
    assert [rule.name for rule in rules.segment_rules] == ["narrow", "broad"]
    frame = pd.DataFrame({"x": [10.0, 3.0, -1.0, np.nan]})
    assert list(rules.assign_lifecycle(frame)[0]) == ["high", "low", "rest", "rest"]
    ids, names, _, _ = rules.match_segments(frame)
    assert list(ids) == ["narrow_one", "rule_broad", None, None]
    assert list(names) == ["narrow", "broad", None, None]


def test_several_rules_may_give_one_stage(tmp_path):
    path = write(
        tmp_path,
        """
        lifecycle:
          - {name: churned_silent, stage: churned, priority: 9, when: "x > 100"}
          - {name: churned_model, stage: churned, priority: 8, when: "p_alive < 0.1"}
          - {name: active, priority: 0, when: "true"}
        """,
    )
    rules = load_rules(path, known_features=["x"])
    assert rules.stages == ("churned", "active")
    frame = pd.DataFrame({"x": [200.0, 1.0, 1.0], "p_alive": [0.5, 0.05, 0.5]})
    stage, rule = rules.assign_lifecycle(frame)
    assert list(stage) == ["churned", "churned", "active"]
    assert list(rule) == ["churned_silent", "churned_model", "active"]


def test_segment_rules_can_read_the_lifecycle_stage(tmp_path):
    path = write(
        tmp_path,
        """
        lifecycle:
          - {name: lapsed, priority: 5, when: "x > 100"}
          - {name: active, priority: 0, when: "true"}
        segments:
          - {name: win_back, priority: 1, when: "lifecycle_stage in ('lapsed') and y > 1"}
        """,
    )
    rules = load_rules(path, known_features=["x", "y"])
    frame = pd.DataFrame({"x": [200.0, 200.0, 1.0], "y": [2.0, 0.0, 2.0]})
    assert list(rules.match_segments(frame)[0]) == ["rule_win_back", None, None]


def test_missing_feature_column_at_evaluation_names_the_rule(tmp_path):
    body = MINIMAL + '  - {name: big, priority: 1, when: "x > 1"}\n'
    rules = load_rules(write(tmp_path, body), ["x"])
    with pytest.raises(RuleEvaluationError, match="rule 'big': feature 'x' is not a column"):
        rules.assign_lifecycle(pd.DataFrame({"y": [1.0]}))


# ------------------------------------------------------------------------------ load errors


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (
            """
            lifecycle:
              - {name: active, priority: 0, when: "true"}
            segments:
              - {name: vip, priority: high, when: "x > 1"}
            """,
            ["key 'segments.0.priority' (rule 'vip')", "valid integer"],
        ),
        (
            """
            lifecycle:
              - {name: active, priority: 0, wen: "true"}
            """,
            ["key 'lifecycle.0.wen' (rule 'active'): unknown key", "key 'lifecycle.0.when'"],
        ),
        ("segments: []\n", ["key 'lifecycle'", "Field required"]),
        ("lifecycle: []\n", ["key 'lifecycle'", "at least 1 item"]),
        (MINIMAL + "extra: 1\n", ["key 'extra': unknown key"]),
        (
            """
            lifecycle:
              - {name: Active Stage, priority: 0, when: "true"}
            """,
            ["key 'lifecycle.0.name' (rule 'Active Stage')", "pattern"],
        ),
        (
            """
            lifecycle:
              - {name: active, priority: 0, when: 5}
            """,
            ["key 'lifecycle.0.when' (rule 'active')", "valid string"],
        ),
    ],
)
def test_schema_errors_name_file_key_and_rule(tmp_path, body, fragments):
    path = write(tmp_path, body)
    with pytest.raises(RuleSetError) as info:
        load_rules(path, known_features=["x"])
    message = str(info.value)
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            """
            lifecycle:
              - {name: a, priority: 1, when: "x > 1"}
            """,
            "the lowest-priority rule ('a') must be the fallback 'when: true'",
        ),
        (
            """
            lifecycle:
              - {name: a, priority: 1, when: "x > 1"}
              - {name: b, priority: 1, when: "x > 2"}
              - {name: c, priority: 0, when: "true"}
            """,
            "lifecycle: rules 'a' and 'b' share priority 1",
        ),
        (
            """
            lifecycle:
              - {name: a, priority: 2, when: "true"}
              - {name: b, priority: 1, when: "true"}
            """,
            "rule 'b' can never match: rule 'a' (priority 2) matches everyone",
        ),
        (
            """
            lifecycle:
              - {name: active, priority: 0, when: "true"}
            segments:
              - {name: vip, priority: 2, when: "x > 1"}
              - {name: vip, priority: 1, when: "x > 2"}
            """,
            "segments: rule name 'vip' appears more than once",
        ),
        (
            """
            lifecycle:
              - {name: active, priority: 0, when: "true"}
            segments:
              - {name: a, id: same, priority: 2, when: "x > 1"}
              - {name: b, id: same, priority: 1, when: "x > 2"}
            """,
            "segments: segment id 'same' appears more than once",
        ),
        (
            """
            lifecycle:
              - {name: active, priority: 0, when: "true"}
            segments:
              - {name: a, id: noise, priority: 2, when: "x > 1"}
            """,
            "rule 'a': segment id 'noise' is reserved",
        ),
        ("- just a list\n", "the top level must be a mapping, got list"),
        ("", "the top level must be a mapping, got empty"),
        ("lifecycle: [unclosed\n", "not valid YAML"),
    ],
)
def test_rule_set_errors_name_the_file(tmp_path, body, fragment):
    path = write(tmp_path, body)
    with pytest.raises(RuleSetError) as info:
        load_rules(path, known_features=["x"])
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)


def test_expression_errors_name_file_section_rule_and_position(tmp_path):
    path = write(
        tmp_path,
        """
        lifecycle:
          - {name: active, priority: 0, when: "true"}
        segments:
          - {name: vip, priority: 5, when: "total_spend >= 2000 and purchases_90 >= 2"}
        """,
    )
    with pytest.raises(UnknownFeatureError) as info:
        load_rules(path, known_features=HELPERS_DTYPES)
    assert str(info.value) == (
        f"{path}: segments: rule 'vip': unknown feature 'purchases_90' at position 25; "
        "did you mean 'purchases_90d'?"
    )
    path = write(
        tmp_path,
        """
        lifecycle:
          - {name: new, priority: 5, when: "(tenure_days <= 30"}
          - {name: active, priority: 0, when: "true"}
        """,
    )
    with pytest.raises(RuleSyntaxError) as info:
        load_rules(path, known_features=HELPERS_DTYPES)
    assert str(info.value).startswith(
        f"{path}: lifecycle: rule 'new': unexpected end of expression at position 19"
    )


def test_type_errors_and_unknown_stages_fail_at_load(tmp_path):
    path = write(
        tmp_path,
        """
        lifecycle:
          - {name: active, priority: 0, when: "true"}
        segments:
          - {name: app_fans, priority: 5, when: "preferred_channel > 2"}
        """,
    )
    with pytest.raises(RuleTypeError, match="rule 'app_fans': cannot compare text with number"):
        load_rules(path, known_features=HELPERS_DTYPES)
    path = write(
        tmp_path,
        """
        lifecycle:
          - {name: active, priority: 0, when: "true"}
        segments:
          - {name: win_back, priority: 5, when: "lifecycle_stage == 'lapsd'"}
        """,
    )
    with pytest.raises(RuleTypeError) as info:
        load_rules(path, known_features=HELPERS_DTYPES)
    assert "'lapsd' is not a lifecycle stage (stages: active) at position 20" in str(info.value)


def test_lifecycle_rules_cannot_read_the_lifecycle_stage(tmp_path):
    path = write(
        tmp_path,
        """
        lifecycle:
          - {name: a, priority: 1, when: "lifecycle_stage == 'a'"}
          - {name: active, priority: 0, when: "true"}
        """,
    )
    with pytest.raises(UnknownFeatureError, match="unknown feature 'lifecycle_stage'"):
        load_rules(path, known_features=["x"])


def test_score_columns_are_known_and_configurable(tmp_path):
    body = MINIMAL + '\nsegments:\n  - {name: v, priority: 1, when: "predicted_cltv > 5"}\n'
    path = write(tmp_path, body)
    assert load_rules(path, known_features=["x"]).optional_names == set(SCORE_COLUMNS)
    with pytest.raises(UnknownFeatureError):
        load_rules(path, known_features=["x"], extra_names=())


def test_missing_file_and_mapping_source():
    with pytest.raises(RuleSetError, match=r"nowhere\.yaml: rules file not found"):
        load_rules("/nowhere.yaml", known_features=["x"])
    rules = rules_from_mapping(
        {"lifecycle": [{"name": "active", "priority": 0, "when": True}]}, known_features=[]
    )
    assert rules.stages == ("active",)
    with pytest.raises(RuleSetError, match="^<mapping>: key 'lifecycle'"):
        rules_from_mapping({"lifecycle": "x"}, known_features=[])


STICKY = """
lifecycle:
  - {name: active, priority: 0, when: "true"}
segments:
  - {name: carts, priority: 20, when: "x >= 2", stay_when: "x >= 1"}
  - {name: other, priority: 10, when: "y > 0"}
"""


def test_stay_when_keeps_members_until_the_looser_condition_fails(tmp_path):
    rules = load_rules(write(tmp_path, STICKY), known_features=["x", "y"])
    frame = pd.DataFrame({"x": [2.0, 1.0, 1.0, 0.0, 1.0], "y": [0.0, 0.0, 0.0, 0.0, 1.0]})
    previous = ["rule_carts", "rule_carts", None, "rule_carts", "rule_other"]
    match = rules.match_segments(frame, previous)
    # enters by when; kept by stay_when; x=1 alone does not enter; x=0 leaves; not a member
    assert list(match.segment_id) == ["rule_carts", "rule_carts", None, None, "rule_other"]
    assert list(match.stayed) == [False, True, False, False, False]
    # Without a previous state nobody is kept.
    assert list(rules.match_segments(frame).segment_id) == [
        "rule_carts",
        None,
        None,
        None,
        "rule_other",
    ]


def test_a_kept_member_still_yields_to_a_higher_priority_rule(tmp_path):
    text = STICKY.replace("priority: 10", "priority: 30")
    rules = load_rules(write(tmp_path, text), known_features=["x", "y"])
    frame = pd.DataFrame({"x": [1.0], "y": [1.0]})
    match = rules.match_segments(frame, ["rule_carts"])
    assert list(match.segment_id) == ["rule_other"] and not match.stayed.any()


def test_stay_when_is_checked_at_load_like_when(tmp_path):
    text = STICKY.replace('stay_when: "x >= 1"', 'stay_when: "x >= 1 and bogus > 2"')
    with pytest.raises(UnknownFeatureError) as err:
        load_rules(write(tmp_path, text), known_features=["x", "y"])
    assert "carts" in str(err.value) and "bogus" in str(err.value)


def test_default_override_rules_have_hysteresis(default_rules):
    sticky = {rule.name for rule in default_rules.segment_rules if rule.stay_when}
    assert {"vip", "support_risk", "cart_abandoner"} <= sticky


def test_gone_quiet_ends_on_a_real_return_not_on_one_stray_visit(default_rules):
    frame = pd.DataFrame(
        [
            client(recency_days=2, active_days_30d=1),  # one visit after a long silence
            client(recency_days=2, active_days_30d=3),  # back on three days this month
        ]
    )
    was_quiet = np.array(["rule_gone_quiet", "rule_gone_quiet"], dtype=object)
    ids, _, _, stayed = default_rules.match_segments(frame, was_quiet)
    assert list(ids) == ["rule_gone_quiet", None]
    assert list(stayed) == [True, False]
    # without the previous state, neither is quiet tonight
    assert list(default_rules.match_segments(frame)[0]) == [None, None]
