"""Identity stitching in the store (schema version 4), on DuckDB and PostgreSQL: the migration
from version 3, the identity map and merge log, and history that follows the person when ids
are merged (re-keying, silent closes, undo by re-runs and rebuilds, atomicity)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest

from configs import CONTRACT_COLUMNS
from pipelines.store import SCHEMA_VERSION, PublishInputError, PublishRequest, open_store
from pipelines.store._schema import (
    IDENTITY_UNDO_HISTORY,
    IDENTITY_UNDO_TRANSITIONS,
    QUARANTINE_RAW,
)
from tests.pipelines.test_store import published_tables, rows

D = [date(2024, 7, 1) + timedelta(days=i) for i in range(5)]
SEGMENTS = pd.DataFrame(
    {
        "segment_id": ["s1", "s2", "s3"],
        "segment_name": ["one", "two", "three"],
        "kind": "rule",
        "definition": ["a", "b", "c"],
        "model_version": "1",
    }
)
HISTORY = ["client_id", "segment_id", "lifecycle_stage", "valid_from", "valid_to"]
MOVES = ["client_id", "from_segment_id", "to_segment_id"]


def request(
    as_of: date,
    members: dict[str, str],
    *,
    run_id: str | None = None,
    identity_map: pd.DataFrame | pa.Table | None = None,
    merges: list[tuple[str, str]] | pd.DataFrame | None = None,
) -> PublishRequest:
    """A small hand-made run: client -> segment (lifecycle `active` for all)."""
    ids = list(members)
    membership = pd.DataFrame(
        {
            "client_id": pd.Series(ids, dtype=object),
            "segment_id": [members[c] for c in ids],
            "segment_name": "name",
            "segment_source": "rule",
            "cluster_id": None,
            "confidence": 1.0,
            "lifecycle_stage": "active",
            "journey_stage": "purchase",
            "reason": "test",
        }
    )
    if isinstance(merges, list):
        merges = pd.DataFrame(
            {
                "merged_id": [m for m, _ in merges],
                "into_id": [i for _, i in merges],
                "evidence": [json.dumps({"identifiers": 1, "via": "test"}) for _ in merges],
            }
        )
    return PublishRequest(
        run_id=run_id or f"run-{as_of.isoformat()}",
        as_of=as_of,
        started_at=datetime(as_of.year, as_of.month, as_of.day, 2, tzinfo=UTC),
        membership=membership,
        segments=SEGMENTS,
        identity_map=identity_map,
        identity_merges=merges,
    )


def id_map(*entries: tuple[str, str, str]) -> pd.DataFrame:
    """identity_map rows (id_type, id_value, person_id), seen on 2024-06-30 and 2024-07-01."""
    return pd.DataFrame(
        {
            "id_type": [t for t, _, _ in entries],
            "id_value": [v for _, v, _ in entries],
            "person_id": [p for _, _, p in entries],
            "first_seen": pd.Timestamp("2024-06-30 10:00"),
            "last_seen": pd.Timestamp("2024-07-01 18:30"),
        }
    )


def history_of(store, client_id: str | None = None) -> list[tuple]:
    return rows(store.history(client_id), HISTORY)


def everything(store) -> dict[str, list[tuple]]:
    """Every published table including identity ones and the store's undo bookkeeping."""
    tables = published_tables(store)
    with store.snapshot() as r:
        s = r._s
        tables["history_run_ids"] = rows(r.history(), ["client_id", "valid_from", "run_id"])
        tables["identity_map"] = rows(
            r.identity_map(), ["id_type", "id_value", "person_id", "as_of", "run_id"]
        )
        tables["identity_merges"] = rows(
            r.identity_merges(), ["as_of", "merged_id", "into_id", "evidence"]
        )
        for table in (IDENTITY_UNDO_HISTORY, IDENTITY_UNDO_TRANSITIONS):
            frame = r._df(f"SELECT * FROM {s}.{table.name}")
            tables[table.name] = rows(frame, [c for c in frame.columns if c != "run_id"])
    return tables


def comparable(store) -> dict[str, list[tuple]]:
    """What a re-run or rebuild must reproduce (run ids and undo bookkeeping aside)."""
    tables = everything(store)
    for key in ("history_run_ids", "identity_map", IDENTITY_UNDO_HISTORY.name):
        tables.pop(key)
    tables.pop(IDENTITY_UNDO_TRANSITIONS.name)
    return tables


def columns_of(store, table: str) -> list[str]:
    with store._backend.read() as con:
        return [
            name
            for (name,) in con.fetchall(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
                [store.schema, table],
            )
        ]


# -- migration ------------------------------------------------------------------------------

V3_QUARANTINE = [
    "run_id",
    "reason",
    "client_id",
    "event_time",
    "event_type",
    "channel",
    "amount",
    "category",
    "sentiment",
    "event_id",
    "source_file",
    "raw_line",
    "line_number",
]


def test_a_version_3_store_migrates_to_the_latest_and_keeps_its_data(store_location, monkeypatch):
    import pipelines.store._core as core

    url, schema = store_location()
    monkeypatch.setattr(core, "SCHEMA_VERSION", 3)
    old = open_store(url, schema, lock_timeout=10, reader_retry=10)
    assert old.migrate() == 3
    assert columns_of(old, "quarantine") == V3_QUARANTINE  # exactly version 3's table
    assert columns_of(old, "identity_map") == columns_of(old, "identity_merges") == []
    # what the version-3 engine published as of D0: one client in s1, its run and quarantine
    with old._backend.write() as w:
        s = w.prefix(schema)
        w.execute(
            f"INSERT INTO {s}.runs (run_id, as_of, started_at, finished_at, status, clients)"
            " VALUES ('v3-run', ?, ?, ?, 'success', 1)",
            [D[0], datetime(2024, 7, 1, 2), datetime(2024, 7, 1, 3)],
        )
        w.execute(
            f"INSERT INTO {s}.segment_membership (client_id, segment_id, segment_name,"
            " segment_source, confidence, lifecycle_stage, valid_from, as_of, run_id)"
            " VALUES ('c1', 's1', 'one', 'rule', 1.0, 'active', ?, ?, 'v3-run')",
            [D[0], D[0]],
        )
        w.execute(
            f"INSERT INTO {s}.segment_history VALUES ('c1', 's1', 'active', ?, NULL, 'v3-run')",
            [D[0]],
        )
        w.execute(
            f"INSERT INTO {s}.segment_transitions"
            " VALUES (?, 'c1', NULL, 's1', NULL, 'active', 'v3-run')",
            [D[0]],
        )
        w.execute(
            f"INSERT INTO {s}.quarantine (run_id, reason, client_id, amount, line_number)"
            " VALUES ('v3-run', 'negative_amount', 'c9', '-3', 12)"
        )
    old.close()
    monkeypatch.undo()

    store = open_store(url, schema, lock_timeout=10, reader_retry=10)
    assert store.schema_version() == 3
    assert store.migrate() == SCHEMA_VERSION == 5
    assert store.migrate() == 5  # idempotent
    assert columns_of(store, "quarantine") == [
        *V3_QUARANTINE,
        "anonymous_id",
        "device_id",
        "email_hash",
        "phone_hash",
        "detail",
    ]
    assert columns_of(store, "identity_map") == [
        "id_type",
        "id_value",
        "person_id",
        "first_seen",
        "last_seen",
        "as_of",
        "run_id",
    ]
    assert columns_of(store, "identity_merges") == [
        "as_of",
        "merged_id",
        "into_id",
        "evidence",
        "run_id",
    ]
    assert store.latest_as_of() == D[0]
    assert rows(store.membership(), ["client_id", "segment_id", "valid_from"]) == [
        ("c1", "s1", D[0])
    ]
    assert history_of(store) == [("c1", "s1", "active", D[0], None)]
    quarantine = store.quarantine()
    assert rows(quarantine, ["reason", "client_id", "amount", "line_number"]) == [
        ("negative_amount", "c9", "-3", 12)
    ]
    assert quarantine[["anonymous_id", "detail"]].isna().all().all()
    assert store.identity_map().empty and store.identity_merges().empty

    # the next night continues from the version-3 history: anon_x logs in as c1's person
    result = store.publish(
        request(
            D[1],
            {"c1": "s1", "c2": "s2"},
            identity_map=id_map(("client_id", "c1", "c1"), ("anonymous_id", "a1", "c1")),
        )
    )
    assert (result.entries, result.exits, result.moves) == (1, 0, 0)
    assert rows(store.membership(), ["client_id", "valid_from"]) == [("c1", D[0]), ("c2", D[1])]
    assert len(store.identity_map()) == 2
    store.close()


def test_every_event_contract_column_is_kept_in_quarantine():
    # A column added to the contract needs a store migration (ADDED_COLUMNS) to be kept.
    assert set(CONTRACT_COLUMNS) <= set(QUARANTINE_RAW)


def test_quarantine_keeps_identifiers_and_detail(store):
    run = request(D[0], {"c1": "s1"})
    run.quarantine = pd.DataFrame(
        {
            "reason": ["identifier_over_linked", "negative_amount"],
            "device_id": ["tablet-1", None],
            "anonymous_id": ["a7", None],
            "detail": ["linked to 2 client_id (limit 1)", None],
            "amount": [None, "-3"],
        }
    )
    store.publish(run)
    got = store.quarantine().sort_values("reason").reset_index(drop=True)
    assert list(got["reason"]) == ["identifier_over_linked", "negative_amount"]
    assert (got.loc[0, "device_id"], got.loc[0, "anonymous_id"]) == ("tablet-1", "a7")
    assert got.loc[0, "detail"] == "linked to 2 client_id (limit 1)"
    assert pd.isna(got.loc[1, "detail"]) and pd.isna(got.loc[0, "email_hash"])


# -- identity map and merge log -------------------------------------------------------------


def test_identity_map_is_replaced_by_each_run_and_emptied_without_stitching(store):
    first = id_map(
        ("client_id", "c1", "c1"), ("anonymous_id", "a1", "c1"), ("device_id", "d1", "anon_1")
    )
    store.publish(request(D[0], {"c1": "s1", "anon_1": "s2"}, identity_map=first))
    got = store.identity_map()
    assert rows(got, ["id_type", "id_value", "person_id", "as_of", "run_id"]) == [
        ("anonymous_id", "a1", "c1", D[0], "run-2024-07-01"),
        ("client_id", "c1", "c1", D[0], "run-2024-07-01"),
        ("device_id", "d1", "anon_1", D[0], "run-2024-07-01"),
    ]
    assert got["first_seen"].iloc[0] == pd.Timestamp("2024-06-30 10:00")
    assert list(store.identity_map("c1")["id_value"]) == ["a1", "c1"]  # ordered by type, value

    # an Arrow table (what features.identity returns), aware times stored as naive UTC
    second = pa.table(
        {
            "id_type": ["client_id", "email_hash"],
            "id_value": ["c1", "e1"],
            "person_id": ["c1", "c1"],
            "first_seen": pa.array(
                [datetime(2024, 7, 2, 12, tzinfo=UTC), None], pa.timestamp("us", tz="UTC")
            ),
            "last_seen": pa.array([datetime(2024, 7, 2, 13, tzinfo=UTC), None], "timestamp[us]"),
            "extra": [1, 2],
        }
    )
    store.publish(request(D[1], {"c1": "s1"}, identity_map=second))
    got = store.identity_map()
    assert rows(got, ["id_type", "id_value", "as_of"]) == [
        ("client_id", "c1", D[1]),
        ("email_hash", "e1", D[1]),
    ]
    assert got["first_seen"].iloc[0] == pd.Timestamp("2024-07-02 12:00")
    assert store.identity_map("anon_1").empty

    store.publish(request(D[2], {"c1": "s1"}))  # a run that did no stitching
    assert store.identity_map().empty


def test_merges_are_appended_rerun_replaces_them_and_rebuild_deletes_them(store):
    store.publish(request(D[0], {"c1": "s1", "c2": "s2"}, merges=[("anon_a", "c1")]))
    result = store.publish(
        request(D[1], {"c1": "s1", "c2": "s2"}, merges=[("anon_b", "c2"), ("anon_c", "c2")])
    )
    assert result.merges == 2
    merges = store.identity_merges()
    assert rows(merges, ["as_of", "merged_id", "into_id", "run_id"]) == [
        (D[0], "anon_a", "c1", "run-2024-07-01"),
        (D[1], "anon_b", "c2", "run-2024-07-02"),
        (D[1], "anon_c", "c2", "run-2024-07-02"),
    ]
    assert json.loads(merges["evidence"].iloc[0]) == {"identifiers": 1, "via": "test"}
    assert list(store.identity_merges(since=D[1])["merged_id"]) == ["anon_b", "anon_c"]

    # re-running D1 replaces its merges (no duplicates)
    rerun = request(D[1], {"c1": "s1", "c2": "s2"}, run_id="rerun", merges=[("anon_d", "c2")])
    assert store.publish(rerun).merges == 1
    assert rows(store.identity_merges(), ["as_of", "merged_id", "run_id"]) == [
        (D[0], "anon_a", "run-2024-07-01"),
        (D[1], "anon_d", "rerun"),
    ]
    store.publish(request(D[1], {"c1": "s1", "c2": "s2"}, run_id="rerun-2"))
    assert list(store.identity_merges()["merged_id"]) == ["anon_a"]

    # a rebuild deletes the merges of every undone run
    store.publish(request(D[2], {"c1": "s1"}, merges=[("anon_e", "c1")]))
    store.publish(request(D[0], {"c1": "s1"}, run_id="rebuilt"), rebuild_from=D[0])
    assert store.identity_merges().empty


# -- history follows the person -------------------------------------------------------------


def test_an_anonymous_visitor_who_logs_in_continues_as_the_client(store):
    """(b) The survivor has no open stretch: the merged id's history becomes its history."""
    store.publish(request(D[0], {"anon_x": "s1", "c2": "s2"}))
    result = store.publish(
        request(D[1], {"C": "s1", "c2": "s2"}, merges=[("anon_x", "C")]),
    )
    # no entry for C and no exit for anon_x: nothing happened to the person
    assert (result.entries, result.exits, result.moves, result.lifecycle_changes) == (0, 0, 0, 0)
    assert store.transitions().empty
    assert (result.history_opened, result.history_closed) == (0, 0)
    assert history_of(store, "C") == [("C", "s1", "active", D[0], None)]
    assert history_of(store, "anon_x") == []
    assert rows(store.transitions(D[0]), MOVES) == [("C", None, "s1"), ("c2", None, "s2")]
    assert rows(store.membership(), ["client_id", "valid_from"]) == [("C", D[0]), ("c2", D[0])]
    assert list(store.identity_merges()["merged_id"]) == ["anon_x"]


def test_a_continued_visitor_in_another_segment_moves_rather_than_enters(store):
    store.publish(request(D[0], {"anon_x": "s2"}))
    store.publish(request(D[1], {"anon_x": "s1"}))  # an earlier, closed stretch
    result = store.publish(request(D[2], {"C": "s3"}, merges=[("anon_x", "C")]))
    assert (result.entries, result.exits, result.moves) == (0, 0, 1)
    assert rows(store.transitions(), MOVES) == [("C", "s1", "s3")]
    assert history_of(store, "C") == [
        ("C", "s1", "active", D[1], D[2]),
        ("C", "s2", "active", D[0], D[1]),
        ("C", "s3", "active", D[2], None),
    ]
    assert history_of(store, "anon_x") == []
    assert rows(store.read_sql("segment_transitions"), ["as_of", *MOVES]) == [
        (D[0], "C", None, "s2"),
        (D[1], "C", "s2", "s1"),
        (D[2], "C", "s1", "s3"),
    ]


def test_the_earliest_merged_stretch_is_continued_and_the_others_closed_silently(store):
    store.publish(request(D[0], {"anon_b": "s2"}))
    store.publish(request(D[1], {"anon_b": "s2", "anon_a": "s1", "anon_c": "s3"}))
    result = store.publish(
        request(D[2], {"C": "s2"}, merges=[("anon_a", "C"), ("anon_b", "C"), ("anon_c", "C")])
    )
    # anon_b started earliest (D0): C continues it; anon_a and anon_c close without exits
    assert store.transitions().empty
    assert (result.exits, result.history_closed) == (0, 2)
    assert history_of(store, "C") == [("C", "s2", "active", D[0], None)]
    assert history_of(store, "anon_a") == [("anon_a", "s1", "active", D[1], D[2])]
    assert history_of(store, "anon_c") == [("anon_c", "s3", "active", D[1], D[2])]
    assert history_of(store, "anon_b") == []


def test_equal_starts_continue_the_smallest_id(store):
    store.publish(request(D[0], {"anon_b": "s2", "anon_a": "s1"}))
    store.publish(request(D[1], {"C": "s1"}, merges=[("anon_b", "C"), ("anon_a", "C")]))
    assert store.transitions().empty
    assert history_of(store, "C") == [("C", "s1", "active", D[0], None)]
    assert history_of(store, "anon_b") == [("anon_b", "s2", "active", D[0], D[1])]


def test_a_client_with_history_absorbs_the_visitor_without_an_exit(store):
    """(a) The survivor has an open stretch: the merged id's stretch is closed, no exit."""
    store.publish(request(D[0], {"C": "s1", "anon_x": "s2"}))
    result = store.publish(request(D[1], {"C": "s1"}, merges=[("anon_x", "C")]))
    assert (result.entries, result.exits, result.moves) == (0, 0, 0)
    assert store.transitions().empty  # no exit for anon_x: no campaign fires
    assert (result.history_opened, result.history_closed) == (0, 1)
    assert history_of(store, "anon_x") == [("anon_x", "s2", "active", D[0], D[1])]
    assert history_of(store, "C") == [("C", "s1", "active", D[0], None)]
    assert rows(store.transitions(D[0]), MOVES) == [("C", None, "s1"), ("anon_x", None, "s2")]
    # the survivor's own change is still a transition
    store.publish(request(D[2], {"C": "s2", "anon_y": "s3"}))
    store.publish(request(D[3], {"C": "s3"}, merges=[("anon_y", "C")]))
    assert rows(store.transitions(), MOVES) == [("C", "s2", "s3")]


def test_merges_without_open_history_change_no_history(store):
    store.publish(request(D[0], {"anon_x": "s1", "C": "s2"}))
    store.publish(request(D[1], {"C": "s2"}))  # anon_x leaves (exit)
    result = store.publish(request(D[2], {"C": "s2"}, merges=[("anon_x", "C")]))
    assert store.transitions().empty and result.history_closed == 0
    assert history_of(store, "anon_x") == [("anon_x", "s1", "active", D[0], D[1])]
    assert result.merges == 1


# -- undo: re-runs, rebuilds, failures ------------------------------------------------------


def test_rerun_and_rebuild_undo_the_re_keying(make_store):
    store = make_store()
    store.publish(request(D[0], {"anon_x": "s1", "c2": "s2"}))
    store.publish(request(D[1], {"C": "s1", "c2": "s2"}, merges=[("anon_x", "C")]))
    continued = everything(store)

    # the same night again: the same result, nothing re-keyed twice
    store.publish(request(D[1], {"C": "s1", "c2": "s2"}, run_id="same", merges=[("anon_x", "C")]))
    assert comparable(store) == {
        k: v
        for k, v in continued.items()
        if k not in ("history_run_ids", "identity_map")
        and k not in (IDENTITY_UNDO_HISTORY.name, IDENTITY_UNDO_TRANSITIONS.name)
    }

    # the night re-run without the merge: anon_x gets its own history back
    store.publish(request(D[1], {"anon_x": "s1", "C": "s3"}, run_id="unmerged"))
    fresh = make_store()
    fresh.publish(request(D[0], {"anon_x": "s1", "c2": "s2"}))
    fresh.publish(request(D[1], {"anon_x": "s1", "C": "s3"}, run_id="unmerged"))
    assert comparable(store) == comparable(fresh)
    assert history_of(store, "anon_x") == [("anon_x", "s1", "active", D[0], None)]


def test_a_rebuild_undoes_chained_merges_of_several_nights(make_store):
    store = make_store()
    store.publish(request(D[0], {"anon_x": "s1", "c9": "s2"}))
    store.publish(request(D[1], {"anon_x": "s2", "c9": "s2"}))
    store.publish(request(D[2], {"C": "s2", "c9": "s2"}, merges=[("anon_x", "C")]))
    store.publish(request(D[3], {"C": "s3", "c9": "s1"}))
    store.publish(request(D[4], {"P": "s3", "c9": "s1"}, merges=[("C", "P")]))
    assert history_of(store, "P") == [
        ("P", "s1", "active", D[0], D[1]),
        ("P", "s2", "active", D[1], D[3]),
        ("P", "s3", "active", D[3], None),
    ]
    assert history_of(store, "C") == history_of(store, "anon_x") == []

    # undo the last night only: C's history (with anon_x's) comes back as C's
    partial = make_store()
    for run in (
        request(D[0], {"anon_x": "s1", "c9": "s2"}),
        request(D[1], {"anon_x": "s2", "c9": "s2"}),
        request(D[2], {"C": "s2", "c9": "s2"}, merges=[("anon_x", "C")]),
        request(D[3], {"C": "s3", "c9": "s1"}),
        request(D[4], {"C": "s3", "c9": "s1"}, run_id="again"),
    ):
        partial.publish(run)
    store.publish(request(D[4], {"C": "s3", "c9": "s1"}, run_id="again"))
    assert comparable(store) == comparable(partial)

    # a rebuild from before both merges: a store that never saw them
    store.publish(request(D[2], {"anon_x": "s2", "c9": "s3"}, run_id="rebuilt"), rebuild_from=D[1])
    fresh = make_store()
    fresh.publish(request(D[0], {"anon_x": "s1", "c9": "s2"}))
    fresh.publish(request(D[2], {"anon_x": "s2", "c9": "s3"}, run_id="rebuilt"))
    assert comparable(store) == comparable(fresh)
    assert everything(store)[IDENTITY_UNDO_HISTORY.name] == []
    assert everything(store)[IDENTITY_UNDO_TRANSITIONS.name] == []


@pytest.mark.parametrize("stage", ["history", "identity", "runs"])
def test_a_failed_publish_leaves_identity_and_history_as_before(store, stage):
    store.publish(
        request(
            D[0],
            {"anon_x": "s1", "C2": "s2", "anon_y": "s3"},
            identity_map=id_map(("anonymous_id", "x", "anon_x"), ("client_id", "C2", "C2")),
            merges=[("anon_old", "C2")],
        )
    )
    before = everything(store)

    def fail(at: str) -> None:
        if at == stage:
            raise RuntimeError(f"boom after {at}")

    tonight = request(
        D[1],
        {"C": "s1", "C2": "s2"},
        identity_map=id_map(("anonymous_id", "x", "C"), ("client_id", "C", "C")),
        merges=[("anon_x", "C"), ("anon_y", "C2")],
    )
    with pytest.raises(RuntimeError, match="boom"):
        store.publish(tonight, _after_stage=fail)
    assert everything(store) == before

    store.publish(tonight)  # and the next attempt succeeds
    assert history_of(store, "C") == [("C", "s1", "active", D[0], None)]
    assert history_of(store, "anon_y") == [("anon_y", "s3", "active", D[0], D[1])]
    assert list(store.identity_map()["person_id"]) == ["C", "C"]


# -- validation -----------------------------------------------------------------------------


def merges_frame(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


BAD_MAP = id_map(("client_id", "c1", "c1"), ("cookie", "k", "c1"))
DUP_MAP = id_map(("email_hash", "e1", "c1"), ("email_hash", "e1", "c2"))
NULL_MAP = id_map(("client_id", "c1", "c1"), ("device_id", "d1", None))
LATE_MAP = id_map(("client_id", "c1", "c1")).assign(last_seen=pd.Timestamp("2024-01-01"))
GONE_MAP = id_map(("client_id", "c1", "c1"), ("anonymous_id", "a", "anon_x"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"merges": [("c1", "C")]}, r"merged_id 'c1' is in membership.client_id"),
        ({"merges": [("a", "C"), ("a", "D")]}, r"more than one row for merged_id 'a'"),
        ({"merges": [("a", "a")]}, r"merges 'a' into itself"),
        ({"merges": [("a", "b"), ("b", "C")]}, r"into_id 'b' is also a merged_id"),
        (
            {"merges": merges_frame(merged_id=["a"], into_id=["C"])},
            r"identity_merges is missing column\(s\): evidence",
        ),
        (
            {"merges": merges_frame(merged_id=["a"], into_id=[None], evidence=["{}"])},
            r"identity_merges.into_id has null values",
        ),
        (
            {"merges": merges_frame(merged_id=["a"], into_id=["C"], evidence=["not json"])},
            r"evidence 'not json' is not JSON",
        ),
        (
            {"merges": [("anon_x", "C")], "identity_map": GONE_MAP},
            r"merged_id 'anon_x' is in identity_map.person_id",
        ),
        ({"identity_map": BAD_MAP}, r"identity_map.id_type has value 'cookie'"),
        ({"identity_map": DUP_MAP}, r"more than one row for id_type 'email_hash' id_value 'e1'"),
        ({"identity_map": NULL_MAP}, r"identity_map.person_id has null values"),
        ({"identity_map": LATE_MAP}, r"first_seen is after last_seen"),
        (
            {"identity_map": id_map(("client_id", "c1", "c1")).drop(columns=["last_seen"])},
            r"identity_map is missing column\(s\): last_seen",
        ),
        (
            {"identity_map": pa.table({"id_type": ["client_id"], "id_value": [1.5]})},
            r"identity_map is missing column\(s\): person_id, first_seen, last_seen",
        ),
    ],
)
def test_bad_identity_input_fails_clearly_and_writes_nothing(store, kwargs, message):
    store.publish(request(D[0], {"c1": "s1", "anon_x": "s2"}))
    before = everything(store)
    with pytest.raises(PublishInputError, match=message):
        store.publish(request(D[1], {"c1": "s1", "C": "s2"}, **kwargs))
    assert everything(store) == before


def test_float_identifiers_are_refused(store):
    table = pa.table(
        {
            "id_type": ["client_id"],
            "id_value": [1.5],
            "person_id": ["c1"],
            "first_seen": pa.array([None], pa.timestamp("us")),
            "last_seen": pa.array([None], pa.timestamp("us")),
        }
    )
    with pytest.raises(PublishInputError, match="identity_map.id_value is float"):
        store.publish(request(D[0], {"c1": "s1"}, identity_map=table))


def test_a_value_may_repeat_under_another_id_type(store):
    both = id_map(("client_id", "7", "7"), ("anonymous_id", "7", "7"), ("device_id", "d", "7"))
    store.publish(request(D[0], {"7": "s1"}, identity_map=both))
    assert rows(store.identity_map("7"), ["id_type", "id_value"]) == [
        ("anonymous_id", "7"),
        ("client_id", "7"),
        ("device_id", "d"),
    ]
