"""Hardening of the rule language: literals, characters and long or deep expressions.

Numbers are ASCII digits and finite; control characters (NUL...) never reach the store; a
chain of thousands of `and`/`or` terms parses, checks, evaluates, compares and pickles
without recursion and in well under a second; nesting past `MAX_DEPTH` is a clear error that
names the rule, the file and the position.
"""

from __future__ import annotations

import copy
import pickle
import time

import numpy as np
import pandas as pd
import pytest

from segmentation.expressions import (
    MAX_DEPTH,
    MAX_LENGTH,
    RuleSyntaxError,
    check,
    compile_expression,
    evaluate,
    parse,
    render,
)
from segmentation.rules import RuleSetError, load_rules

KNOWN = {"recency_days": "float64", "channel": "string", "flag": "bool", "f": "bool"}


def _rules_file(tmp_path, when: str, description: str = "") -> str:
    import yaml

    doc = {
        "lifecycle": [
            {"name": "odd", "priority": 2, "when": when, "description": description},
            {"name": "active", "priority": 1, "when": True},
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return str(path)


# ------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    "text, position",
    [
        ("recency_days > ١٢", 16),  # Arabic-Indic digits
        ("recency_days > １２", 16),  # full-width digits
        ("recency_days > 1٢", 17),  # an ASCII digit followed by another script's
        ("recency_days in (1, ٣)", 21),
    ],
)
def test_only_ascii_digits_make_numbers(text, position):
    with pytest.raises(RuleSyntaxError, match="0-9") as info:
        parse(text, rule="odd")
    assert info.value.position == position
    assert info.value.rule == "odd"


@pytest.mark.parametrize(
    "text, position",
    [
        ("recency_days > 1e999999", 16),
        ("recency_days > -1e400", 17),
        ("recency_days in (1, 2e308)", 21),
        ("recency_days * 1" + "0" * 400 + " > 1", 16),
    ],
)
def test_non_finite_literals_fail_at_parse(text, position):
    with pytest.raises(RuleSyntaxError, match="not a finite number") as info:
        parse(text, rule="odd")
    assert info.value.position == position


def test_large_finite_literals_still_parse():
    node = parse("recency_days < 1.7e308 and recency_days > -1e-400")
    assert evaluate(node, pd.DataFrame({"recency_days": [1.0, -1.0]})).tolist() == [True, False]


def test_bad_literals_in_a_rules_file_name_file_rule_and_position(tmp_path):
    path = _rules_file(tmp_path, "recency_days > ١٢")
    with pytest.raises(RuleSyntaxError) as info:
        load_rules(path, KNOWN)
    message = str(info.value)
    assert path in message and "'odd'" in message and "position 16" in message
    path = _rules_file(tmp_path, "recency_days > 1e999999")
    with pytest.raises(RuleSyntaxError, match="position 16") as info:
        load_rules(path, KNOWN)
    assert path in str(info.value) and "'odd'" in str(info.value)


# ------------------------------------------------------------------------------ characters


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x1f", "\x7f", "\x85", "\ud800"])
def test_control_characters_are_rejected_with_their_position(char):
    text = f"channel == 'a{char}b'"
    with pytest.raises(RuleSyntaxError, match=f"U\\+{ord(char):04X}") as info:
        parse(text, rule="odd")
    assert info.value.position == 14
    assert info.value.rule == "odd"


def test_control_characters_outside_literals_are_rejected_too():
    with pytest.raises(RuleSyntaxError, match="control character") as info:
        parse("flag\x1cand flag")
    assert info.value.position == 5


def test_tabs_and_line_breaks_stay_whitespace():
    node = parse("flag\tand\n(recency_days > 1\r\n or channel == 'x')")
    assert render(node) == "(flag and ((recency_days > 1) or (channel == 'x')))"
    assert parse("channel == 'клиент 客户 🎉'") is not None  # other text is fine


def test_nul_in_a_rules_file_names_file_rule_and_position(tmp_path):
    path = _rules_file(tmp_path, "channel == 'web\x00'")
    with pytest.raises(RuleSyntaxError) as info:
        load_rules(path, KNOWN)
    message = str(info.value)
    assert path in message and "'odd'" in message and "position 16" in message
    assert "U+0000" in message


def test_nul_in_a_description_is_rejected(tmp_path):
    path = _rules_file(tmp_path, "flag", description="big\x00spender")
    with pytest.raises(RuleSetError) as info:
        load_rules(path, KNOWN)
    message = str(info.value)
    assert path in message and "'odd'" in message and "description" in message
    assert "position 4" in message


# ------------------------------------------------------------------------------ long chains


def _chain(n: int, joiner: str) -> str:
    return f" {joiner} ".join(f"recency_days > {i % 50}" for i in range(n))


@pytest.mark.parametrize(
    "text",
    [
        _chain(400, "and"),
        _chain(400, "or"),
        " or ".join(["f"] * 2000),
        " and ".join(f"(flag or recency_days > {i})" for i in range(300)),
        "(" * MAX_DEPTH + _chain(300, "or") + ")" * MAX_DEPTH,
        " + ".join(["recency_days"] * 600) + " > 1",
    ],
    ids=["and-400", "or-400", "or-2000", "and-of-ors", "nested-chain", "sum-600"],
)
def test_long_chains_parse_and_check_fast_without_recursion(text):
    assert len(text) <= MAX_LENGTH
    started = time.perf_counter()
    node = compile_expression(text, KNOWN, rule="long")
    assert time.perf_counter() - started < 1.0
    assert check(node, KNOWN) == "bool"
    assert parse(" " + text) == node  # equality walks the tree without recursion
    assert render(node).count("(") >= text.count(" or ") + text.count(" and ")
    assert hash(node) == hash(parse(text))
    assert pickle.loads(pickle.dumps(node)) == node
    assert copy.deepcopy(node) == node
    assert repr(node).startswith(type(node).__name__ + "(pos=")


def test_long_chains_evaluate_on_many_rows():
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "recency_days": rng.integers(0, 60, 50_000).astype(float),
            "flag": rng.random(50_000) < 0.01,
            "f": rng.random(50_000) < 0.01,
        }
    )
    frame.loc[::97, "recency_days"] = np.nan
    x = frame["recency_days"].to_numpy()
    above = [np.nan_to_num(x, nan=-1) > i % 50 for i in range(400)]
    expected_and = np.logical_and.reduce(above) & ~np.isnan(x)
    expected_or = np.logical_or.reduce(above)
    assert (evaluate(parse(_chain(400, "and")), frame) == expected_and).all()
    assert (evaluate(parse(_chain(400, "or")), frame) == expected_or).all()
    flags = evaluate(parse(" or ".join(["f"] * 2000)), frame)
    assert (flags == frame["f"].to_numpy()).all()


def test_a_long_chain_in_a_rules_file_loads_and_pickles(tmp_path):
    path = _rules_file(tmp_path, _chain(400, "or"))
    started = time.perf_counter()
    rules = load_rules(path, KNOWN)
    assert time.perf_counter() - started < 1.0
    assert pickle.loads(pickle.dumps(rules)) == rules


def test_nesting_past_the_bound_names_rule_file_and_position(tmp_path):
    depth = MAX_DEPTH + 1
    path = _rules_file(tmp_path, "(" * depth + "flag" + ")" * depth)
    with pytest.raises(RuleSyntaxError, match=f"nested more than {MAX_DEPTH} levels") as info:
        load_rules(path, KNOWN)
    message = str(info.value)
    assert path in message and "'odd'" in message and f"position {depth}" in message


def test_nesting_at_the_bound_parses_with_stack_to_spare():
    import sys

    text = "abs(" * (MAX_DEPTH - 1) + "recency_days" + ")" * (MAX_DEPTH - 1) + " > 1"
    limit = sys.getrecursionlimit()

    def deep(n: int) -> object:  # the parser must work below a caller's deep stack
        return deep(n - 1) if n else compile_expression(text, KNOWN)

    assert deep(limit // 4) is not None
