"""Tests of segment dynamics: transitions and carried-over valid_from between two states."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segmentation.dynamics import (
    TRANSITION_COLUMNS,
    advance,
    carry_valid_from,
    compute_transitions,
    entries_exits,
    transition_kind,
)

D1, D2 = date(2024, 3, 1), date(2024, 3, 2)


def state(rows: list[tuple], valid_from: bool = False) -> pd.DataFrame:
    columns = ["client_id", "segment_id", "lifecycle_stage"] + (
        ["valid_from"] if valid_from else []
    )
    return pd.DataFrame(rows, columns=columns)


def test_entries_exits_moves_and_lifecycle_changes():
    previous = state(
        [("a", "s1", "active"), ("b", "s1", "active"), ("c", "s2", "new"), ("d", "s2", None)]
    )
    current = state(
        [("b", "s2", "active"), ("c", "s2", "active"), ("d", "s2", None), ("e", "s1", "new")]
    )
    out = compute_transitions(previous, current, D2)
    assert list(out.columns) == TRANSITION_COLUMNS
    rows = {
        r.client_id: tuple(
            None if pd.isna(v) else v
            for v in (r.from_segment_id, r.to_segment_id, r.from_lifecycle, r.to_lifecycle)
        )
        for r in out.itertuples()
    }
    assert set(rows) == {"a", "b", "c", "e"}  # d unchanged (null lifecycle equals null)
    assert rows["a"] == ("s1", None, "active", None)  # exit to null
    assert rows["b"] == ("s1", "s2", "active", "active")  # move
    assert rows["c"] == ("s2", "s2", "new", "active")  # lifecycle change
    assert rows["e"] == (None, "s1", None, "new")  # entry from null
    assert (out["as_of"] == D2).all()
    assert list(out["client_id"]) == sorted(out["client_id"])
    assert list(transition_kind(out)) == ["exit", "move", "lifecycle", "entry"]


def test_first_state_is_all_entries_and_no_change_is_empty():
    current = state([("a", "s1", "new"), ("b", "s2", "new")])
    first = compute_transitions(state([]), current, D1)
    assert list(first["client_id"]) == ["a", "b"]
    assert first["from_segment_id"].isna().all()
    assert compute_transitions(current, current, D2).empty


def test_valid_from_carried_only_for_unchanged_clients():
    previous = state(
        [("a", "s1", "active", pd.Timestamp(D1)), ("b", "s1", "active", pd.Timestamp(D1))],
        valid_from=True,
    )
    current = state([("a", "s1", "active"), ("b", "s1", "lapsed"), ("c", "s3", "new")])
    got = carry_valid_from(previous, current, D2)
    assert list(got) == [pd.Timestamp(D1), pd.Timestamp(D2), pd.Timestamp(D2)]
    assert got.index.equals(current.index)


def test_entries_exits_per_segment_ignores_lifecycle_only_changes():
    previous = state([("a", "s1", "x"), ("b", "s1", "x"), ("c", "s2", "x")])
    current = state([("a", "s2", "x"), ("b", "s1", "y"), ("d", "s2", "x")])
    counts = entries_exits(compute_transitions(previous, current, D2)).set_index("segment_id")
    assert counts.loc["s2", "entries"] == 2  # a moved in, d entered
    assert counts.loc["s2", "exits"] == 1  # c left
    assert counts.loc["s1", "exits"] == 1 and counts.loc["s1", "entries"] == 0


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"client_id": ["a"], "segment_id": ["s"]}), "missing column"),
        (state([("a", "s1", None), ("a", "s2", None)]), "more than one row for client_id 'a'"),
        (state([(None, "s1", None)]), "null client_id"),
    ],
)
def test_bad_states_are_rejected_with_a_clear_message(frame, message):
    with pytest.raises(ValueError, match=message):
        compute_transitions(state([]), frame, D1)


def test_as_of_must_be_a_date():
    with pytest.raises(TypeError, match="as_of must be a date"):
        compute_transitions(state([]), state([("a", "s", None)]), "2024-03-01")


clients = st.sampled_from([f"c{i}" for i in range(8)])
members = st.dictionaries(
    clients, st.tuples(st.sampled_from(["s1", "s2", "s3"]), st.sampled_from(["x", "y", None]))
)


def _frame(mapping: dict) -> pd.DataFrame:
    return state([(c, s, life) for c, (s, life) in sorted(mapping.items())])


@settings(max_examples=60, deadline=None)
@given(members, members)
def test_applying_transitions_to_previous_gives_current(before, after):
    out = advance(_frame(before), _frame(after), D2).transitions
    rebuilt = dict(before)
    for row in out.itertuples():
        if pd.isna(row.to_segment_id):
            del rebuilt[row.client_id]
        else:
            life = None if pd.isna(row.to_lifecycle) else row.to_lifecycle
            rebuilt[row.client_id] = (row.to_segment_id, life)
    assert rebuilt == after
    assert out["client_id"].is_unique
