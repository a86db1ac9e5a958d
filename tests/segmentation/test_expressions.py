"""The rule expression language: parsing, precedence, errors with positions, checks, vectorized evaluation."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segmentation.expressions import (
    Between,
    Call,
    Compare,
    InList,
    IsNull,
    Literal,
    Name,
    RuleEvaluationError,
    RuleSyntaxError,
    RuleTypeError,
    UnknownFeatureError,
    check,
    compile_expression,
    evaluate,
    parse,
    render,
)

# ------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "grouped"),
    [
        ("a + b * c", "(a + (b * c))"),
        ("a * b + c", "((a * b) + c)"),
        ("a - b - c", "((a - b) - c)"),
        ("a / b / c", "((a / b) / c)"),
        ("-a * b", "((-a) * b)"),
        ("- -a", "(-(-a))"),
        ("(a + b) * c", "((a + b) * c)"),
        ("a + b > c * 2", "((a + b) > (c * 2))"),
        ("a > 1 or b > 2 and c > 3", "((a > 1) or ((b > 2) and (c > 3)))"),
        ("(a > 1 or b > 2) and c > 3", "(((a > 1) or (b > 2)) and (c > 3))"),
        ("not a > 1 and b > 2", "((not (a > 1)) and (b > 2))"),
        ("not not a > 1", "(not (not (a > 1)))"),
        ("a > 1 and b > 2 and c > 3", "(((a > 1) and (b > 2)) and (c > 3))"),
        ("x between 1 and 2 and y > 0", "((x between 1 and 2) and (y > 0))"),
        ("x between a + 1 and b * 2", "(x between (a + 1) and (b * 2))"),
        ("x not between 0 and 1", "(x not between 0 and 1)"),
        ("x in (1, -2, 3.5)", "(x in (1, -2, 3.5))"),
        ("x not in ('a', 'b')", "(x not in ('a', 'b'))"),
        ("x is null or y is not null", "((x is null) or (y is not null))"),
        ("a = 1 and b <> 2 and c != 3", "(((a == 1) and (b != 2)) and (c != 3))"),
        ("coalesce(x, 0) >= max(a, b, 1)", "(coalesce(x, 0) >= max(a, b, 1))"),
        ("abs(-x) < 2", "(abs((-x)) < 2)"),
        ("a >= -1.5e2", "(a >= -150)"),
        ("a <= .5", "(a <= 0.5)"),
    ],
)
def test_precedence_and_grouping(text, grouped):
    assert render(parse(text)) == grouped


def test_every_literal_kind_and_case_insensitive_keywords():
    node = parse('s == \'it\'\'s\' AND t = "say ""hi""" Or b == TRUE or c == false')
    assert render(node) == (
        "((((s == 'it''s') and (t == 'say \"hi\"')) or (b == true)) or (c == false))"
    )
    assert parse("x IS NOT NULL") == IsNull(operand=Name(name="x", pos=1), negated=True, pos=3)
    assert parse("MAX(a, b) > 1").left == Call(
        func="max", args=(Name(name="a", pos=5), Name(name="b", pos=8)), pos=1
    )


def test_tree_nodes_and_positions():
    node = parse("recency_days > 30 and x in (1, 2)")
    assert isinstance(node.left, Compare)
    assert node.left.op == ">"
    assert node.left.left == Name(name="recency_days", pos=1)
    assert node.left.pos == 14
    assert node.pos == 19
    assert isinstance(node.right, InList)
    assert node.right.items == (Literal(value=1.0, pos=29), Literal(value=2.0, pos=32))
    assert isinstance(parse("x between 1 and 2"), Between)


def test_features_lists_every_name_once():
    node = parse("a > 1 and (b + a) / c < 2 or coalesce(d, e) is null or f in (1) or 'g' == h")
    assert node.features == {"a", "b", "c", "d", "e", "f", "h"}
    assert parse("1 < 2").features == frozenset()


def test_tree_is_immutable_and_structural():
    node = parse("a > 1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.op = "<"  # type: ignore[misc]
    assert parse("a>1") == parse("  a   >   1")  # positions do not matter for equality


@pytest.mark.parametrize(
    "text",
    [
        "a + b * c - d / e",
        "not (a > 1 or b <= 2) and c != 'x''y'",
        "x not in (1, -2) or y between -1 and a * 2",
        "coalesce(a, b, 0) > min(c, 1) and d is not null",
        "-(a + -b) = abs(c)",
    ],
)
def test_render_round_trips(text):
    node = parse(text)
    assert parse(render(node)) == node


# ------------------------------------------------------------------------------ syntax errors


def test_error_message_names_rule_token_and_position():
    with pytest.raises(RuleSyntaxError) as info:
        parse("(total_spend >= )", rule="vip")
    assert str(info.value) == "rule 'vip': unexpected token ')' at position 17"
    assert info.value.rule == "vip"
    assert info.value.position == 17


@pytest.mark.parametrize(
    ("text", "fragment", "position"),
    [
        ("a >", "unexpected end of expression", 4),
        ("a > 1)", "unexpected token ')'", 6),
        ("(a > 1", "expected ')' to close the '(' at position 1", 7),
        ("a > > 1", "unexpected token '>'", 5),
        ("a < b < c", "comparisons do not chain", 7),
        ("a == 1 in (1)", "comparisons do not chain", 8),
        ("a.b > 1", "unexpected character '.'", 2),
        ("a > 1; b", "unexpected character ';'", 6),
        ("a > 'open", "unterminated text literal", 5),
        ("x in 1", "expected '(' to open the list", 6),
        ("x in ()", "list items must be numbers, text or true/false", 7),
        ("x in (a)", "list items must be numbers, text or true/false", 7),
        ("x in (1 2)", "expected ',' or ')' in the list", 9),
        ("x between 1 or 2", "expected 'and' between the bounds", 13),
        ("x not like 'a'", "expected 'in' or 'between' after 'not'", 7),
        ("x is 1", "expected 'null' after 'is'", 6),
        ("x == null", "null can only be tested with 'is null'", 6),
        ("", "empty expression", 1),
        ("   ", "empty expression", 1),
        ("a > 1 b", "unexpected token 'b'", 7),
        ("foo(a) > 1", "unknown function 'foo'", 1),
        ("abs(a, b) > 1", "abs() takes 1 argument, got 2", 1),
        ("max(a) > 1", "max() takes at least 2 arguments, got 1", 1),
        ("a $ b", "unexpected character '$'", 3),
    ],
)
def test_syntax_errors_name_the_position(text, fragment, position):
    with pytest.raises(RuleSyntaxError) as info:
        parse(text, rule="r")
    assert fragment in str(info.value)
    assert info.value.position == position
    assert str(info.value).startswith("rule 'r': ")


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('true') == 0",
        "eval('1') > 0",
        "open('/etc/passwd') is null",
        "().__class__",
        "a.__class__",
        "lambda: 1",
        "[x for x in y]",
        "x if y else z",
        "f'{x}'",
        "x ** 2 > 1",
    ],
)
def test_python_is_never_evaluated(text):
    with pytest.raises(RuleSyntaxError):
        parse(text)


@pytest.mark.parametrize("text", ["(" * 500 + "x" + ")" * 500, "not " * 500 + "x", "-" * 500 + "x"])
def test_deep_nesting_is_a_clear_error_not_a_crash(text):
    with pytest.raises(RuleSyntaxError, match="nested more than"):
        parse(text)


def test_overlong_and_non_text_input():
    with pytest.raises(RuleSyntaxError, match="longer than"):
        parse("a + " * 5000 + "1")
    with pytest.raises(RuleSyntaxError, match="expected the expression as text"):
        parse(5)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ checks

KNOWN = {
    "total_spend": "float64",
    "purchases_90d": "int64",
    "recency_days": "double",
    "preferred_channel": "string",
    "current_stage": "object",
    "has_purchased": "number",
    "flag": "bool",
}


def test_unknown_feature_names_rule_position_and_suggestion():
    with pytest.raises(UnknownFeatureError) as info:
        compile_expression("purchases_90d >= 2 and totl_spend > 5", KNOWN, rule="vip")
    assert str(info.value) == (
        "rule 'vip': unknown feature 'totl_spend' at position 24; did you mean 'total_spend'?"
    )
    with pytest.raises(UnknownFeatureError) as info:
        compile_expression("zzz > 1", KNOWN)
    assert "did you mean" not in str(info.value)


def test_known_names_may_be_a_plain_collection():
    node = compile_expression("a > 1 and b == 'x'", ["a", "b"])
    assert node.features == {"a", "b"}
    with pytest.raises(UnknownFeatureError):
        compile_expression("c > 1", {"a", "b"})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("preferred_channel > 3", "cannot compare text with number"),
        ("total_spend == 'high'", "cannot compare number with text"),
        ("preferred_channel < 'web'", "text can only be compared with == or !="),
        ("preferred_channel + 1 > 2", "'+' needs numbers, got text"),
        ("-current_stage == 1", "'-' needs numbers, got text"),
        ("total_spend", "is a number, not a condition"),
        ("total_spend + 1", "is a number, not a condition"),
        ("'web'", "is a text, not a condition"),
        (
            "has_purchased and total_spend > 1",
            "'and' needs a condition (true or false), got number",
        ),
        ("not total_spend", "'not' needs a condition"),
        ("total_spend in ('a', 'b')", "cannot compare number with text"),
        ("preferred_channel in ('web', 1)", "cannot compare text with number"),
        ("preferred_channel between 1 and 2", "'between' needs numbers, got text"),
        ("abs(preferred_channel) > 1", "abs() needs numbers"),
        (
            "coalesce(preferred_channel, 0) == 'x'",
            "coalesce() arguments must all be numbers or all text",
        ),
    ],
)
def test_type_errors_at_load_when_dtypes_are_known(text, fragment):
    with pytest.raises(RuleTypeError) as info:
        check(parse(text), KNOWN, rule="r")
    assert fragment in str(info.value)
    assert info.value.position is not None


def test_allowed_mixes_pass_the_checks():
    for text in (
        "flag == true",
        "flag and total_spend > 1",
        "has_purchased == 1",
        "flag == 1",
        "coalesce(preferred_channel, 'none') == 'web'",
        "preferred_channel in ('web', 'app') or current_stage != 'purchase'",
    ):
        compile_expression(text, KNOWN)
    assert check(parse("total_spend * 2"), KNOWN, condition=False) == "number"


# ------------------------------------------------------------------------------ evaluation

NAN = np.nan


@pytest.fixture
def frame():
    return pd.DataFrame(
        {
            "x": [1.0, 5.0, NAN, 0.0, 10.0],
            "y": [2.0, 0.0, 3.0, NAN, -1.0],
            "s": pd.array(["web", "app", None, "web", "store"], dtype="string"),
            "k": pd.array([1, None, 3, 4, 5], dtype="Int64"),
            "b": pd.array([True, False, None, True, False], dtype="boolean"),
            "o": pd.Series(["a", None, "b", "a", "c"], dtype=object),
            "c": pd.Categorical(["p", "q", "p", None, "q"]),
        }
    )


def ev(text, frame, **kwargs):
    return evaluate(parse(text), frame, **kwargs)


def test_comparisons_with_nulls_are_false(frame):
    np.testing.assert_array_equal(ev("x > 1", frame), [False, True, False, False, True])
    np.testing.assert_array_equal(ev("x <= 1", frame), [True, False, False, True, False])
    np.testing.assert_array_equal(ev("x != 5", frame), [True, False, False, True, True])
    np.testing.assert_array_equal(ev("x = y", frame), [False, False, False, False, False])
    np.testing.assert_array_equal(ev("k >= 3", frame), [False, False, True, True, True])


def test_three_valued_logic(frame):
    # x > 1 is [F, T, unknown, F, T]; y > 0 is [T, F, T, unknown, F]
    np.testing.assert_array_equal(ev("not (x > 1)", frame), [True, False, False, True, False])
    np.testing.assert_array_equal(ev("x > 1 or y > 0", frame), [True, True, True, False, True])
    np.testing.assert_array_equal(ev("x > 1 and y > 0", frame), [False, False, False, False, False])
    # unknown or true is true; unknown and false is false, so its negation is true
    np.testing.assert_array_equal(ev("x > 1 or true", frame), [True] * 5)
    np.testing.assert_array_equal(ev("not (x > 1 and false)", frame), [True] * 5)
    # unknown and true stays unknown: neither it nor its negation matches
    np.testing.assert_array_equal(ev("x > 1 and true", frame), [False, True, False, False, True])
    np.testing.assert_array_equal(
        ev("not (x > 1 and true)", frame), [True, False, False, True, False]
    )


def test_null_checks(frame):
    np.testing.assert_array_equal(ev("x is null", frame), [False, False, True, False, False])
    np.testing.assert_array_equal(ev("s is not null", frame), [True, True, False, True, True])
    np.testing.assert_array_equal(
        ev("k is null or b is null", frame), [False, True, True, False, False]
    )
    np.testing.assert_array_equal(ev("x / 0 is null", frame), [True] * 5)


def test_in_lists_and_between(frame):
    np.testing.assert_array_equal(ev("x in (1, 10)", frame), [True, False, False, False, True])
    np.testing.assert_array_equal(ev("x not in (1, 10)", frame), [False, True, False, True, False])
    np.testing.assert_array_equal(
        ev("s in ('web', 'store')", frame), [True, False, False, True, True]
    )
    np.testing.assert_array_equal(ev("s not in ('web')", frame), [False, True, False, False, True])
    np.testing.assert_array_equal(ev("x between 1 and 5", frame), [True, True, False, False, False])
    np.testing.assert_array_equal(
        ev("x not between 1 and 5", frame), [False, False, False, True, True]
    )
    np.testing.assert_array_equal(
        ev("x between y and 5", frame), [False, True, False, False, False]
    )
    np.testing.assert_array_equal(ev("b in (true)", frame), [True, False, False, True, False])


def test_text_categorical_and_boolean_columns(frame):
    np.testing.assert_array_equal(ev("s == 'web'", frame), [True, False, False, True, False])
    np.testing.assert_array_equal(ev("s != 'web'", frame), [False, True, False, False, True])
    np.testing.assert_array_equal(ev("o = 'a'", frame), [True, False, False, True, False])
    np.testing.assert_array_equal(ev("c == 'q'", frame), [False, True, False, False, True])
    np.testing.assert_array_equal(ev("'web' == s", frame), [True, False, False, True, False])
    np.testing.assert_array_equal(ev("b", frame), [True, False, False, True, False])
    np.testing.assert_array_equal(ev("b == true", frame), [True, False, False, True, False])
    np.testing.assert_array_equal(ev("not b", frame), [False, True, False, False, True])
    np.testing.assert_array_equal(ev("b == 1", frame), [True, False, False, True, False])


def test_arithmetic_and_division_by_zero_without_warnings(frame):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(ev("x + y * 2", frame), [5.0, 5.0, NAN, NAN, 8.0])
        np.testing.assert_allclose(ev("-x - 1", frame), [-2.0, -6.0, NAN, -1.0, -11.0])
        np.testing.assert_allclose(ev("x / y", frame), [0.5, NAN, NAN, NAN, -10.0])
        np.testing.assert_allclose(ev("0 / x", frame), [0.0, 0.0, NAN, NAN, 0.0])
        np.testing.assert_array_equal(ev("x / y > 0", frame), [True, False, False, False, False])
        np.testing.assert_array_equal(
            ev("(k + 1) / 2 >= 2", frame), [False, False, True, True, True]
        )


def test_functions(frame):
    np.testing.assert_allclose(ev("abs(y)", frame), [2.0, 0.0, 3.0, NAN, 1.0])
    np.testing.assert_allclose(ev("min(x, y)", frame), [1.0, 0.0, 3.0, 0.0, -1.0])
    np.testing.assert_allclose(ev("max(x, y, 4)", frame), [4.0, 5.0, 4.0, 4.0, 10.0])
    np.testing.assert_allclose(ev("coalesce(x, y, -1)", frame), [1.0, 5.0, 3.0, 0.0, 10.0])
    np.testing.assert_allclose(ev("coalesce(x / 0, y)", frame), [2.0, 0.0, 3.0, NAN, -1.0])
    assert list(ev("coalesce(s, o, 'none')", frame)) == ["web", "app", "b", "web", "store"]
    np.testing.assert_array_equal(
        ev("coalesce(x, 0) > 0.5", frame), [True, True, False, False, True]
    )


def test_missing_columns_fail_unless_declared_optional(frame):
    with pytest.raises(RuleEvaluationError) as info:
        ev("p_alive < 0.1 or x > 1", frame, rule="churned")
    assert str(info.value) == (
        "rule 'churned': feature 'p_alive' is not a column of the frame at position 1"
    )
    got = ev("p_alive < 0.1 or x > 1", frame, missing_as_null=["p_alive"])
    np.testing.assert_array_equal(got, [False, True, False, False, True])
    np.testing.assert_array_equal(
        ev("p_alive is null", frame, missing_as_null=["p_alive"]), [True] * 5
    )
    got = ev("coalesce(p_alive, 1) > 0.5", frame, missing_as_null=["p_alive"])
    np.testing.assert_array_equal(got, [True] * 5)


def test_type_errors_at_evaluation_when_kinds_were_unknown(frame):
    with pytest.raises(RuleEvaluationError, match="cannot compare text with number"):
        ev("s > 1", frame)
    with pytest.raises(RuleEvaluationError, match="needs numbers, got text"):
        ev("s + 1 > 1", frame)
    with pytest.raises(RuleEvaluationError, match="needs a condition"):
        ev("x and y", frame)
    frame = frame.assign(when=pd.to_datetime(["2024-01-01"] * 5))
    with pytest.raises(RuleEvaluationError, match="unsupported type"):
        ev("when > 1", frame)


def test_empty_frame_and_literal_only_conditions():
    empty = pd.DataFrame({"x": pd.Series([], dtype=float)})
    assert ev("x > 1", empty).shape == (0,)
    one = pd.DataFrame({"x": [1.0, 2.0]})
    np.testing.assert_array_equal(ev("true", one), [True, True])
    np.testing.assert_array_equal(ev("1 < 2 and not false", one), [True, True])
    assert ev("x > 1", one).dtype == bool


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.floats(-100, 100)),
            st.one_of(st.none(), st.floats(-100, 100)),
        ),
        min_size=1,
        max_size=30,
    ),
    st.floats(-50, 50),
    st.floats(-50, 50),
)
def test_matches_a_plain_python_reference(rows, a, b):
    frame = pd.DataFrame(rows, columns=["x", "y"], dtype=float)
    got = evaluate(parse(f"x > {a!r} and not (y <= {b!r}) or x is null"), frame)
    want = []
    for x, y in rows:
        x_gt = None if x is None else x > a
        not_y_le = None if y is None else not (y <= b)
        both = False if False in (x_gt, not_y_le) else (None if None in (x_gt, not_y_le) else True)
        want.append(both is True or x is None)
    np.testing.assert_array_equal(got, want)
