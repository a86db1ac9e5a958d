"""Schema version 5 in the store, on DuckDB and PostgreSQL: the journey map and holdout
outcomes published with a run (round trip, atomicity, re-runs, rebuilds, validation), the
membership's holdout flag, the segment names of today's transitions, and the migration of a
version-4 store."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
import pytest

from configs import STAGES
from pipelines.store import (
    HOLDOUT_OUTCOMES_INPUT,
    JOURNEY_DROPOFFS_INPUT,
    JOURNEY_STAGES_INPUT,
    JOURNEY_TOUCHPOINTS_INPUT,
    READABLE,
    SCHEMA_VERSION,
    PublishInputError,
    PublishRequest,
    open_store,
)
from tests.pipelines.test_store import rows
from tests.pipelines.test_store_identity import columns_of, request

D = [date(2024, 8, 1) + timedelta(days=i) for i in range(4)]
ANALYSES = ("journey_stages", "journey_touchpoints", "journey_dropoffs", "holdout_outcomes")


def journey_stages(scale: int = 1) -> pd.DataFrame:
    """Stage rows and flows for all clients ('*') and segment s1, with '*' and 'other'."""
    records = []
    for seg, name in (("*", "All clients"), ("s1", "one")):
        records.append((seg, name, "*", None, 40 * scale, None, None, None, None, 9, 0.225))
        for i, stage in enumerate(STAGES[:3]):
            records.append(
                (seg, name, stage, None, (30 - 5 * i) * scale, None, None, None, None, i, 0.1)
            )
            for to in STAGES[i + 1 : 3]:
                records.append(
                    (seg, name, stage, to, (30 - 5 * i) * scale, 10, 0.5, 3.0, 12.5, None, None)
                )
        records.append((seg, name, "other", None, 4, None, None, None, None, None, None))
    frame = pd.DataFrame(
        records,
        columns=[
            "segment_id",
            "segment_name",
            "stage",
            "to_stage",
            "clients",
            "moved",
            "conversion_rate",
            "median_days",
            "p90_days",
            "stalled",
            "stall_share",
        ],
    )
    frame["in_progress"] = 2
    frame["events"] = 100 * scale
    frame["sentiment_mean"] = -0.25
    frame["sentiment_events"] = 7
    frame["note"] = None
    frame.loc[frame["stage"] == "other", "note"] = "counted apart"
    return frame[JOURNEY_STAGES_INPUT]


def journey_touchpoints() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "segment_id": ["*", "*", "s1"],
            "segment_name": ["All clients", "All clients", "one"],
            "stage": ["purchase", "purchase", "awareness"],
            "event_type": ["purchase", "support_ticket", "ad_impression"],
            "channel": ["web", None, "social"],
            "initiated_by": ["client", "client", "brand"],
            "rank": [1, 2, 1],
            "events": [50, 4, 80],
            "clients": [30, 3, 25],
            "reach": [0.75, 0.075, 1.0],
            "sentiment_mean": [0.2, -0.6, None],
            "sentiment_events": [10, 4, 0],
            "negative_events": [1, 3, 0],
            "is_pain": [False, True, None],
            "note": [None, None, "too few clients"],
        }
    )[JOURNEY_TOUCHPOINTS_INPUT]


def journey_dropoffs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "segment_id": ["*", "*", "s1"],
            "segment_name": ["All clients", "All clients", "one"],
            "kind": ["dropoff", "cause", "moment"],
            "rank": [1, 1, 1],
            "stage": ["consideration", "consideration", "awareness"],
            "to_stage": [None, None, "consideration"],
            "event_type": ["add_to_cart", "add_to_cart", "email_open"],
            "channel": ["web", "web", "email"],
            "factor_kind": [None, "sentiment", "touchpoint"],
            "factor": [None, "negative", "email_open"],
            "clients": [12, 12, None],
            "group_clients": [None, 12, 40],
            "group_with": [None, 6, 20],
            "other_clients": [None, 30, 60],
            "other_with": [None, 5, 18],
            "effect": [None, 3.0, 0.2],
            "effect_low": [None, 1.4, 0.05],
            "effect_high": [None, 6.5, 0.35],
            "note": [None, None, None],
        }
    )[JOURNEY_DROPOFFS_INPUT]


def holdout_outcomes(diff: float = 0.3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "segment_id": ["s1", "s2"],
            "segment_name": ["one", "two"],
            "treated_clients": [95, 190],
            "holdout_clients": [5, 10],
            "days_after_entry_mean": [20.5, 31.0],
            "treated_purchases_mean": [1.3, 0.9],
            "holdout_purchases_mean": [1.0, 0.8],
            "purchases_diff": [diff, 0.1],
            "purchases_diff_low": [diff - 0.2, -0.3],
            "purchases_diff_high": [diff + 0.2, 0.5],
            "treated_spend_mean": [60.0, 40.0],
            "holdout_spend_mean": [50.0, 41.0],
            "spend_diff": [10.0, -1.0],
            "spend_diff_low": [2.0, -9.0],
            "spend_diff_high": [18.0, 7.0],
            "note": [None, "too few clients"],
        }
    )[HOLDOUT_OUTCOMES_INPUT]


def with_analyses(run: PublishRequest, scale: int = 1, diff: float = 0.3) -> PublishRequest:
    run.journey_stages = journey_stages(scale)
    run.journey_touchpoints = journey_touchpoints()
    run.journey_dropoffs = journey_dropoffs()
    run.holdout_outcomes = holdout_outcomes(diff)
    return run


MEMBERS = {"c1": "s1", "c2": "s2", "c3": "s1"}


def analyses_of(store, as_of: date | None = None) -> dict[str, list[tuple]]:
    """Every analysis table's rows of one as_of (default: the latest), without run ids."""
    with store.snapshot() as r:
        return {
            "journey_stages": rows(r.journey_stages(as_of), ["as_of", *JOURNEY_STAGES_INPUT]),
            "journey_touchpoints": rows(
                r.journey_touchpoints(as_of), ["as_of", *JOURNEY_TOUCHPOINTS_INPUT]
            ),
            "journey_dropoffs": rows(r.journey_dropoffs(as_of), ["as_of", *JOURNEY_DROPOFFS_INPUT]),
            "holdout_outcomes": rows(r.holdout_outcomes(as_of), ["as_of", *HOLDOUT_OUTCOMES_INPUT]),
        }


def expected(run: PublishRequest) -> dict[str, list[tuple]]:
    """The analysis rows a request publishes, as `analyses_of` reads them."""
    out = {}
    for name in ANALYSES:
        frame = getattr(run, name)
        out[name] = [] if frame is None else rows(frame.assign(as_of=run.as_of), ["as_of", *frame])
    return out


def everything(store) -> dict[str, list[tuple]]:
    """Membership and every analysis table of every date."""
    with store.snapshot() as r:
        frames = {name: r.read_sql(name) for name in (*ANALYSES, "segment_membership")}
        tables = {name: rows(frame, list(frame.columns)) for name, frame in frames.items()}
        tables["runs"] = rows(r.runs(), ["run_id", "as_of", "status"])
    return tables


# -- the journey map and holdout outcomes ---------------------------------------------------


def test_analyses_round_trip_with_as_of_and_run_id(store):
    run = with_analyses(request(D[0], MEMBERS))
    store.publish(run)
    assert analyses_of(store) == expected(run)
    for name in ANALYSES:
        frame = store.read_sql(name)
        assert len(frame) == len(getattr(run, name))
        assert (frame["run_id"] == run.run_id).all()
        assert (frame["as_of"] == pd.Timestamp(D[0])).all()

    stages = store.journey_stages()
    star = stages[stages["segment_id"] == "*"]
    assert list(star["stage"].iloc[:2]) == ["*", "awareness"]  # journey order, '*' first
    assert star["stage"].iloc[-1] == "other"
    flows = star[star["stage"] == "awareness"]
    assert flows["to_stage"].isna().iloc[0]  # the stage's own row before its flows
    assert list(flows["to_stage"].iloc[1:]) == ["consideration", "purchase"]
    assert set(store.journey_stages(segment_id="s1")["segment_id"]) == {"s1"}
    touchpoints = store.journey_touchpoints(segment_id="*")
    assert list(touchpoints["event_type"]) == ["purchase", "support_ticket"]
    pains = store.journey_touchpoints().set_index("event_type")["is_pain"]
    assert pains["support_ticket"] == True and pains["purchase"] == False  # noqa: E712
    assert pd.isna(pains["ad_impression"])
    assert list(store.journey_dropoffs(D[0], "*")["kind"]) == ["dropoff", "cause"]
    outcomes = store.holdout_outcomes().set_index("segment_id")
    assert outcomes.loc["s1", "purchases_diff"] == pytest.approx(0.3)
    assert outcomes.loc["s2", "note"] == "too few clients"
    assert store.journey_stages(D[1]).empty  # nothing published for that day


def test_a_run_without_analyses_publishes_none_and_keeps_older_dates(store):
    first = with_analyses(request(D[0], MEMBERS))
    store.publish(first)
    store.publish(request(D[1], MEMBERS))
    assert all(not found for found in analyses_of(store).values())  # the latest: D1
    assert analyses_of(store, D[0]) == expected(first)  # history


def test_a_rerun_replaces_its_as_of_rows_only(store):
    first = with_analyses(request(D[0], MEMBERS))
    store.publish(first)
    store.publish(with_analyses(request(D[1], MEMBERS)))
    again = with_analyses(request(D[1], MEMBERS, run_id="again"), scale=2, diff=0.1)
    again.journey_touchpoints = journey_touchpoints().iloc[:1]
    store.publish(again)
    assert analyses_of(store) == expected(again)
    assert (store.journey_stages()["run_id"] == "again").all()
    assert analyses_of(store, D[0]) == expected(first)
    for name in ANALYSES:  # never duplicated
        assert len(store.read_sql(name)) == len(getattr(first, name)) + len(getattr(again, name))

    store.publish(request(D[1], MEMBERS, run_id="bare"))  # a re-run without a journey map
    assert all(not found for found in analyses_of(store).values())
    assert analyses_of(store, D[0]) == expected(first)


def test_a_rebuild_removes_the_rows_of_the_dates_it_undoes(make_store):
    store, fresh = make_store(), make_store()
    runs = {day: with_analyses(request(day, MEMBERS), scale=i + 1) for i, day in enumerate(D[:3])}
    for run in runs.values():
        store.publish(run)
    rebuilt = request(D[1], MEMBERS, run_id="rebuilt")
    store.publish(rebuilt, rebuild_from=D[1])
    assert analyses_of(store, D[0]) == expected(runs[D[0]])
    for day in D[1:3]:
        assert all(not found for found in analyses_of(store, day).values())
    fresh.publish(with_analyses(request(D[0], MEMBERS)))
    fresh.publish(request(D[1], MEMBERS, run_id="rebuilt"))
    for name in ANALYSES:
        assert rows(store.read_sql(name), ["as_of", "segment_id"]) == rows(
            fresh.read_sql(name), ["as_of", "segment_id"]
        )


def bad_stage_key() -> pd.DataFrame:
    frame = journey_stages()
    return pd.concat([frame, frame[frame["stage"] == "awareness"].iloc[:1]], ignore_index=True)


def changed(name: str, column: str, value: object, row: int = 0) -> dict[str, pd.DataFrame]:
    frame = {
        "journey_stages": journey_stages,
        "journey_touchpoints": journey_touchpoints,
        "journey_dropoffs": journey_dropoffs,
        "holdout_outcomes": holdout_outcomes,
    }[name]()
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    return {name: frame}


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (
            {"journey_stages": bad_stage_key()},
            r"journey_stages has more than one row for \(segment_id, stage, to_stage\)"
            r" = \('\*', 'awareness', None\)",
        ),
        (
            {"journey_stages": journey_stages().drop(columns=["p90_days"])},
            "journey_stages is missing column.*p90_days",
        ),
        (changed("journey_stages", "conversion_rate", 1.5, 2), "conversion_rate has value 1.5"),
        (changed("journey_stages", "clients", -1), r"journey_stages.clients has value -1"),
        (changed("journey_stages", "clients", None), "journey_stages.clients has null values"),
        (changed("journey_stages", "stage", "checkout"), "journey_stages.stage has value"),
        (changed("journey_stages", "sentiment_mean", 2.0), "sentiment_mean has value 2 outside"),
        (changed("journey_stages", "to_stage", "awareness", 2), "to_stage 'awareness' is not"),
        (changed("journey_stages", "median_days", 20.0, 2), "median_days 20 is greater than"),
        (changed("journey_stages", "clients", "many"), "journey_stages.clients: values cannot"),
        (changed("journey_touchpoints", "initiated_by", "robot"), "initiated_by has value"),
        (changed("journey_touchpoints", "event_type", None), "event_type has null values"),
        (changed("journey_touchpoints", "reach", -0.1), "journey_touchpoints.reach has value"),
        (changed("journey_touchpoints", "is_pain", "yes"), "is_pain has value 'yes'"),
        (changed("journey_touchpoints", "rank", 0), "journey_touchpoints.rank has value 0"),
        (changed("journey_dropoffs", "kind", "oops"), "journey_dropoffs.kind has value 'oops'"),
        (changed("journey_dropoffs", "group_with", 13, 1), "group_with 13 is greater than"),
        (changed("journey_dropoffs", "effect_low", 9.0, 1), "effect_low 9 is greater than"),
        (changed("holdout_outcomes", "segment_id", "s2"), "holdout_outcomes has more than one"),
        (changed("holdout_outcomes", "holdout_clients", -2), "holdout_clients has value -2"),
        ({"holdout_outcomes": "not a frame"}, "holdout_outcomes must be a pandas DataFrame"),
    ],
)
def test_bad_analyses_fail_clearly_and_write_nothing(store, frames, message):
    store.publish(with_analyses(request(D[0], MEMBERS)))
    before = everything(store)
    run = with_analyses(request(D[1], {"c1": "s2"}))
    for name, frame in frames.items():
        setattr(run, name, frame)
    with pytest.raises(PublishInputError, match=message):
        store.publish(run)
    assert everything(store) == before


@pytest.mark.parametrize("stage", ["membership", "analyses", "runs"])
def test_a_failed_publish_leaves_analyses_and_membership_as_before(store, stage):
    store.publish(with_analyses(request(D[0], MEMBERS)))
    store.publish(with_analyses(request(D[1], MEMBERS)))
    before = everything(store)

    def fail(at: str) -> None:
        if at == stage:
            raise RuntimeError(f"boom after {at}")

    rerun = with_analyses(request(D[1], {"c1": "s2"}, run_id="rerun"), scale=3)
    with pytest.raises(RuntimeError, match="boom"):
        store.publish(rerun, _after_stage=fail)
    assert everything(store) == before
    with pytest.raises(RuntimeError, match="boom"):
        store.publish(with_analyses(request(D[2], {"c9": "s3"})), _after_stage=fail)
    assert everything(store) == before


# -- holdout flag and transition names ------------------------------------------------------


def test_holdout_defaults_to_false_and_reaches_the_views(store):
    first = request(D[0], MEMBERS)
    first.membership = first.membership.drop(columns=["holdout"], errors="ignore")
    store.publish(first)
    assert store.membership()["holdout"].tolist() == [False, False, False]
    for view in ("v_segment_members", "v_client_current"):
        assert store.read_sql(view)["holdout"].tolist() == [False, False, False]

    second = request(D[1], MEMBERS)
    second.membership["holdout"] = pd.array([True, None, False], dtype="boolean")
    store.publish(second)
    flags = store.membership().set_index("client_id")["holdout"]
    assert flags.to_dict() == {"c1": True, "c2": False, "c3": False}  # null: not held out
    members = store.read_sql("v_segment_members").set_index("client_id")
    assert members.loc["c1", "holdout"] == True  # noqa: E712
    assert store.client("c1")["holdout"].iloc[0] == True  # noqa: E712
    assert store.transitions().empty  # a holdout flag is no transition

    third = request(D[2], MEMBERS)
    third.membership["holdout"] = [1, 0, "maybe"]
    with pytest.raises(PublishInputError, match="membership.holdout has value 'maybe'"):
        store.publish(third)


def test_todays_transitions_name_their_segments(store):
    store.publish(request(D[0], {"c1": "s1", "c2": "s2"}))
    store.publish(request(D[1], {"c1": "s2", "c3": "s3"}))
    today = store.read_sql("v_todays_transitions")
    got = rows(
        today,
        ["client_id", "kind", "from_segment_id", "from_segment_name", "to_segment_name"],
    )
    assert got == [
        ("c1", "move", "s1", "one", "two"),
        ("c2", "exit", "s2", "two", None),
        ("c3", "entry", None, None, "three"),
    ]


# -- migration ------------------------------------------------------------------------------

V4_MEMBERSHIP = [
    "client_id",
    "segment_id",
    "segment_name",
    "segment_source",
    "cluster_id",
    "confidence",
    "lifecycle_stage",
    "journey_stage",
    "reason",
    "valid_from",
    "as_of",
    "run_id",
]


def test_a_version_4_store_migrates_to_5_and_keeps_its_data(store_location, monkeypatch):
    import pipelines.store._core as core

    url, schema = store_location()
    monkeypatch.setattr(core, "SCHEMA_VERSION", 4)
    old = open_store(url, schema, lock_timeout=10, reader_retry=10)
    assert old.migrate() == 4
    assert columns_of(old, "segment_membership") == V4_MEMBERSHIP  # exactly version 4's
    for name in (*ANALYSES, "destination_deliveries"):
        assert columns_of(old, name) == []
    assert "from_segment_name" not in old.read_sql("v_todays_transitions").columns
    # what the version-4 engine published as of D0: c1 in s1 and c2 in s2, with a stitched id
    with old._backend.write() as w:
        s = w.prefix(schema)
        w.execute(
            f"INSERT INTO {s}.runs (run_id, as_of, started_at, finished_at, status, clients)"
            " VALUES ('v4-run', ?, ?, ?, 'success', 2)",
            [D[0], datetime(2024, 8, 1, 2), datetime(2024, 8, 1, 3)],
        )
        for client, segment, name in (("c1", "s1", "one"), ("c2", "s2", "two")):
            w.execute(
                f"INSERT INTO {s}.segment_membership (client_id, segment_id, segment_name,"
                " segment_source, confidence, lifecycle_stage, valid_from, as_of, run_id)"
                " VALUES (?, ?, ?, 'rule', 1.0, 'active', ?, ?, 'v4-run')",
                [client, segment, name, D[0], D[0]],
            )
            w.execute(
                f"INSERT INTO {s}.segment_history VALUES (?, ?, 'active', ?, NULL, 'v4-run')",
                [client, segment, D[0]],
            )
            w.execute(
                f"INSERT INTO {s}.segment_transitions"
                " VALUES (?, ?, NULL, ?, NULL, 'active', 'v4-run')",
                [D[0], client, segment],
            )
            w.execute(
                f"INSERT INTO {s}.segments VALUES (?, ?, 'rule', 'x', 1, NULL, '1', 'v4-run',"
                " 'v4-run')",
                [segment, name],
            )
        w.execute(
            f"INSERT INTO {s}.identity_map VALUES ('client_id', 'c1', 'c1', ?, ?, ?, 'v4-run')",
            [datetime(2024, 7, 30), datetime(2024, 8, 1), D[0]],
        )
    old.close()
    monkeypatch.undo()

    store = open_store(url, schema, lock_timeout=10, reader_retry=10)
    assert store.schema_version() == 4
    assert store.migrate() == SCHEMA_VERSION == 5
    assert store.migrate() == 5  # idempotent
    assert columns_of(store, "segment_membership") == [*V4_MEMBERSHIP, "holdout"]
    assert columns_of(store, "journey_stages") == ["as_of", *JOURNEY_STAGES_INPUT, "run_id"]
    assert columns_of(store, "holdout_outcomes") == ["as_of", *HOLDOUT_OUTCOMES_INPUT, "run_id"]
    assert "batch_id" in columns_of(store, "destination_deliveries")
    membership = store.membership()
    assert rows(membership, ["client_id", "segment_id", "valid_from", "holdout"]) == [
        ("c1", "s1", D[0], False),
        ("c2", "s2", D[0], False),
    ]
    assert store.read_sql("v_segment_members")["holdout"].tolist() == [False, False]
    assert store.client("c1")["holdout"].tolist() == [False]
    today = store.read_sql("v_todays_transitions")
    assert rows(today, ["client_id", "kind", "to_segment_name"]) == [
        ("c1", "entry", "one"),
        ("c2", "entry", "two"),
    ]
    assert len(store.identity_map()) == 1 and len(store.history()) == 2
    for name in ANALYSES:
        assert store.read_sql(name).empty
    assert store.deliveries().empty
    for name in READABLE:
        store.read_sql(name)

    # the next night continues from the version-4 history, with a journey map
    run = with_analyses(request(D[1], {"c1": "s1", "c2": "s1"}))
    result = store.publish(run)
    assert (result.entries, result.exits, result.moves) == (0, 0, 1)
    assert rows(store.membership(), ["client_id", "valid_from"]) == [("c1", D[0]), ("c2", D[1])]
    assert analyses_of(store) == expected(run)
    store.close()


def test_a_fresh_store_has_the_same_columns_as_a_migrated_one(make_store, monkeypatch):
    import pipelines.store._core as core

    fresh = make_store()
    fresh.migrate()
    monkeypatch.setattr(core, "SCHEMA_VERSION", 4)
    migrated = make_store()
    migrated.migrate()
    monkeypatch.undo()
    migrated.migrate()
    for name in READABLE:
        assert columns_of(fresh, name) == columns_of(migrated, name), name
