"""The preview's comparison of a computed membership with the published one (hand-checked),
and its terminal text. The whole command runs end to end in test_activation_run.py."""

from __future__ import annotations

from datetime import date

import pandas as pd

from pipelines.preview import Preview, arrivals, membership_diff, preview_text


def _members(rows: list[tuple[str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["client_id", "segment_id"])
    frame["segment_name"] = "name " + frame["segment_id"]
    frame["reason"] = "because " + frame["client_id"]
    return frame


def test_entries_exits_and_sizes_by_hand():
    published = _members([("a", "X"), ("b", "X"), ("c", "Y"), ("d", "Y")])
    preview = _members([("a", "X"), ("b", "Y"), ("c", "Y"), ("e", "Z")])  # d gone, e new
    table, moved, examples = membership_diff(published, preview, examples=5)
    rows = table.set_index("segment_id")
    assert rows.loc["X"].tolist()[1:] == [2, 1, 0, 1]  # published, preview, entries, exits
    assert rows.loc["Y"].tolist()[1:] == [2, 2, 1, 1]  # b enters, d leaves
    assert rows.loc["Z"].tolist()[1:] == [0, 1, 1, 0]
    assert moved == 3  # b moved, d left, e arrived
    assert set(examples["client_id"]) == {"b", "e"}  # clients who enter a segment
    assert examples.set_index("client_id").loc["b", "reason"] == "because b"


def test_nothing_published_every_client_enters():
    table, moved, _ = membership_diff(None, _members([("a", "X"), ("b", "X")]))
    assert moved == 2 and table.set_index("segment_id").loc["X", "entries"] == 2


def test_text_names_the_rules_and_the_moves():
    table, moved, examples = membership_diff(
        _members([("a", "X")]), _members([("a", "Y")]), examples=1
    )
    text = preview_text(
        Preview(date(2025, 6, 30), date(2025, 6, 30), "new.yaml", 1, moved, table, examples)
    )
    assert "1 of 1 published clients would change segment (nothing was published)" in text
    assert "a: X -> Y: because a" in text


def test_the_headline_counts_new_and_leaving_clients_apart_from_moves():
    published = _members([("a", "X"), ("b", "X"), ("c", "Y"), ("d", "Y")])
    preview = _members([("a", "X"), ("b", "Y"), ("c", "Y"), ("e", "Z"), ("f", "Z")])
    table, moved, examples = membership_diff(published, preview)
    arrived, left = arrivals(published, preview)
    assert (moved, arrived, left) == (4, 2, 1)  # b moves; e, f arrive; d leaves
    result = Preview(date(2025, 6, 30), None, "r.yaml", 5, moved, table, examples, [], 2, 1)
    assert result.to_dict()["arrived"] == 2
    assert (
        "1 of 3 published clients would change segment, 2 new clients would enter one,"
        " 1 published client would leave theirs (nothing was published)."
    ) in preview_text(result)
    first = _members([("a", "X"), ("b", "Y")])
    table, moved, examples = membership_diff(None, first)
    arrived, left = arrivals(None, first)
    text = preview_text(
        Preview(date(2025, 6, 30), None, "r.yaml", 2, moved, table, examples, [], arrived, left)
    )
    assert "nothing is published yet; all 2 clients would enter a segment" in text
