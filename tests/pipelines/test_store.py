"""Tests of the store on DuckDB and PostgreSQL: publish, history, transitions, re-runs,
rebuilds, segments, the run log, readers, validation, identifiers and credentials."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from configs import SegmentationError
from pipelines.store import (
    READABLE,
    SCHEMA_VERSION,
    OutOfOrderError,
    PublishInputError,
    PublishLockedError,
    StoreArgumentError,
    StoreConnectionError,
    StoreEmptyError,
    mask_url,
    open_store,
    parse_store_url,
)
from segmentation.dynamics import compute_transitions, entries_exits
from tests.pipelines.store_worker import make_request

N = 300
DAYS = [date(2024, 5, 1) + timedelta(days=i) for i in range(4)]


def rows(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    """Comparable rows: nulls as None, timestamps as dates, sorted."""
    out = []
    for record in frame[columns].itertuples(index=False):
        values = []
        for v in record:
            if v is None or (not isinstance(v, str) and pd.isna(v)):
                v = None
            elif isinstance(v, pd.Timestamp | datetime):
                v = v.date()
            elif hasattr(v, "item"):
                v = v.item()
            values.append(v)
        out.append(tuple(values))
    return sorted(out, key=repr)


def state_of(request) -> pd.DataFrame:
    return request.membership[["client_id", "segment_id", "lifecycle_stage"]]


def publish(store, days, n=N, **kwargs):
    requests = {}
    for day in days:
        requests[day] = make_request(day, n, **kwargs)
        store.publish(requests[day])
    return requests


def published_tables(store) -> dict[str, list[tuple]]:
    """Every published table except run bookkeeping columns, for equality checks."""
    with store.snapshot() as r:
        return {
            "membership": rows(
                r.membership(),
                ["client_id", "segment_id", "lifecycle_stage", "confidence", "valid_from", "as_of"],
            ),
            "history": rows(
                r.history(),
                ["client_id", "segment_id", "lifecycle_stage", "valid_from", "valid_to"],
            ),
            "transitions": rows(
                r.read_sql("segment_transitions"),
                ["as_of", "client_id", "from_segment_id", "to_segment_id", "to_lifecycle"],
            ),
            "scores": rows(r.scores(), ["client_id", "as_of", "p_alive", "predicted_cltv"]),
            "segments": rows(r.segments(), ["segment_id", "size", "kind", "definition"]),
        }


def test_first_publish_writes_every_table(store):
    request = make_request(DAYS[0], N)
    result = store.publish(request)
    assert (result.clients, result.entries, result.exits, result.moves) == (N, N, 0, 0)
    assert result.history_opened == N and result.history_closed == 0

    cols = ["client_id", "segment_id", "segment_name", "segment_source", "lifecycle_stage"]
    membership = store.membership()
    assert rows(membership, cols) == rows(request.membership, cols)
    assert (membership["run_id"] == request.run_id).all()
    assert (membership["valid_from"] == pd.Timestamp(DAYS[0])).all()
    assert store.latest_as_of() == DAYS[0]

    history = store.history()
    assert len(history) == N and history["valid_to"].isna().all()
    assert len(store.transitions()) == N

    run = store.runs().iloc[0]
    assert (run.run_id, run.status, run.clients, run.segments) == (request.run_id, "success", N, 6)
    assert run.events_read == 10 * N and run.mlflow_run_id == "m1"
    assert run.finished_at >= run.started_at

    segments = store.segments().set_index("segment_id")
    sizes = request.membership["segment_id"].value_counts()
    assert segments["size"].to_dict() == sizes.to_dict()
    merged = request.membership.merge(request.scores, on="client_id")
    means = merged.groupby("segment_id")["predicted_cltv"].mean()
    assert segments["mean_predicted_cltv"].to_dict() == pytest.approx(means.to_dict())
    assert (segments["first_run_id"] == request.run_id).all()
    assert segments.loc["s1", "definition"] == '{"k": 1}'

    scores = store.scores()
    assert len(scores) == N and (scores["as_of"] == pd.Timestamp(DAYS[0])).all()
    quarantine = store.quarantine()
    assert list(quarantine["reason"]) == ["negative_amount"]
    assert quarantine["amount"].iloc[0] == "-3" and quarantine["run_id"].iloc[0] == request.run_id


def test_next_publish_computes_transitions_and_history(store):
    requests = publish(store, DAYS[:2])
    first, second = requests[DAYS[0]], requests[DAYS[1]]
    expected = compute_transitions(state_of(first), state_of(second), DAYS[1])
    cols = ["client_id", "from_segment_id", "to_segment_id", "from_lifecycle", "to_lifecycle"]
    published = store.transitions()
    assert len(expected) > 0 and rows(published, cols) == rows(expected, cols)
    assert (published["run_id"] == second.run_id).all()
    assert rows(store.transitions(DAYS[0]), ["client_id"]) == rows(first.membership, ["client_id"])

    history = store.history()
    current = history[history["valid_to"].isna()]
    assert rows(current, ["client_id", "segment_id", "lifecycle_stage"]) == rows(
        second.membership, ["client_id", "segment_id", "lifecycle_stage"]
    )
    closed = history[history["valid_to"].notna()]
    assert (closed["valid_to"] == pd.Timestamp(DAYS[1])).all()
    assert len(closed) == (expected["from_segment_id"].notna()).sum()

    membership = store.membership().set_index("client_id")
    changed = set(expected["client_id"])
    kept = [c for c in membership.index if c not in changed]
    assert kept and (membership.loc[kept, "valid_from"] == pd.Timestamp(DAYS[0])).all()
    moved = [c for c in membership.index if c in changed]
    assert (membership.loc[moved, "valid_from"] == pd.Timestamp(DAYS[1])).all()

    view = store.read_sql("v_todays_entries_exits").set_index("segment_id")
    counts = entries_exits(expected).set_index("segment_id")
    assert view["entries"].to_dict() == counts["entries"].to_dict()
    assert view["exits"].to_dict() == counts["exits"].to_dict()
    assert (view["as_of"] == pd.Timestamp(DAYS[1])).all()


def test_history_reconstructs_every_published_day(store):
    requests = publish(store, DAYS)
    history = store.history()
    for day, request in requests.items():
        ts = pd.Timestamp(day)
        valid = history[(history["valid_from"] <= ts) & ~(history["valid_to"] <= ts)]
        assert rows(valid, ["client_id", "segment_id", "lifecycle_stage"]) == rows(
            request.membership, ["client_id", "segment_id", "lifecycle_stage"]
        ), day
    # one open stretch per current client, stretches of a client never overlap
    assert history["valid_to"].isna().sum() == N
    for _, stretches in history.groupby("client_id"):
        ends = stretches.sort_values("valid_from")
        assert (
            ends["valid_from"].iloc[1:].to_numpy() >= ends["valid_to"].iloc[:-1].to_numpy()
        ).all()


def test_rerun_of_same_as_of_replaces_and_never_duplicates(store):
    publish(store, DAYS[:2])
    before = published_tables(store)
    rerun = make_request(DAYS[1], N, run_id="rerun-same-day")
    result = store.publish(rerun)
    assert result.replaced_run_ids == (f"run-{DAYS[1].isoformat()}",)
    assert published_tables(store) == before
    runs = store.runs().set_index("run_id")
    assert runs.loc[f"run-{DAYS[1].isoformat()}", "status"] == "replaced"
    assert runs.loc["rerun-same-day", "status"] == "success"
    assert set(store.quarantine()["run_id"]) == {f"run-{DAYS[0].isoformat()}", "rerun-same-day"}
    assert (store.membership()["run_id"] == "rerun-same-day").all()

    # a re-run with different results replaces transitions computed from the day before
    changed = make_request(DAYS[1], N, seed=99, run_id="rerun-new-data")
    store.publish(changed)
    expected = compute_transitions(state_of(make_request(DAYS[0], N)), state_of(changed), DAYS[1])
    cols = ["client_id", "from_segment_id", "to_segment_id", "to_lifecycle"]
    assert rows(store.transitions(), cols) == rows(expected, cols)
    assert len(store.history()) == N + (expected["to_segment_id"].notna()).sum()


def test_same_run_id_may_be_republished_for_the_latest_day(store):
    publish(store, DAYS[:2])
    before = published_tables(store)
    store.publish(make_request(DAYS[1], N))  # same run_id as the published run
    assert published_tables(store) == before
    assert store.runs()["run_id"].is_unique


def test_out_of_order_fails_unless_rebuild_and_rebuild_equals_fresh_history(make_store):
    store = make_store()
    publish(store, DAYS)
    before = published_tables(store)
    with pytest.raises(
        OutOfOrderError, match=r"older than the latest published as_of 2024-05-04.*rebuild_from"
    ):
        store.publish(make_request(DAYS[1], N, run_id="late"))
    assert published_tables(store) == before

    result = store.publish(make_request(DAYS[1], N, run_id="rebuilt"), rebuild_from=DAYS[1])
    assert set(result.replaced_run_ids) == {f"run-{d.isoformat()}" for d in DAYS[1:]}
    assert store.latest_as_of() == DAYS[1]
    fresh = make_store()
    publish(fresh, DAYS[:2])
    assert published_tables(store) == published_tables(fresh)

    # then the backfill continues in order
    store.publish(make_request(DAYS[2], N))
    publish(fresh, DAYS[2:3])
    assert published_tables(store) == published_tables(fresh)


def test_rebuild_from_an_earlier_date_than_as_of(make_store):
    store = make_store()
    publish(store, DAYS)
    store.publish(make_request(DAYS[2], N, run_id="jump"), rebuild_from=DAYS[1])
    fresh = make_store()
    publish(fresh, [DAYS[0]])
    fresh.publish(make_request(DAYS[2], N, run_id="jump"))
    assert published_tables(store) == published_tables(fresh)
    with pytest.raises(PublishInputError, match="rebuild_from .* is after as_of"):
        store.publish(make_request(DAYS[1], N), rebuild_from=DAYS[2])


def test_segments_upsert_keeps_first_run_and_retires_missing(store):
    first = make_request(DAYS[0], N)
    store.publish(first)
    second = make_request(DAYS[1], N)
    second.membership.loc[second.membership["segment_id"] == "s5", "segment_id"] = "s4"
    second.segments = pd.concat(
        [
            second.segments[second.segments["segment_id"] != "s5"],
            pd.DataFrame(
                [
                    {
                        "segment_id": "s9",
                        "segment_name": "new",
                        "kind": "rule",
                        "definition": "recency_days > 90",
                        "model_version": "2",
                    }
                ]
            ),
        ]
    )
    store.publish(second)
    segments = store.segments().set_index("segment_id")
    assert segments.loc["s5", "size"] == 0 and pd.isna(segments.loc["s5", "mean_predicted_cltv"])
    assert segments.loc["s5", "last_run_id"] == first.run_id
    assert segments.loc["s4", "first_run_id"] == first.run_id
    assert segments.loc["s4", "last_run_id"] == second.run_id
    assert (segments.loc["s9", "size"], segments.loc["s9", "first_run_id"]) == (0, second.run_id)
    assert segments["size"].sum() == N

    # a segment first published by a replaced run, absent from the re-run, disappears
    rerun = make_request(DAYS[1], N, run_id="rerun")
    store.publish(rerun)
    segments = store.segments().set_index("segment_id")
    assert "s9" not in segments.index
    assert segments.loc["s5", "size"] > 0 and segments.loc["s5", "first_run_id"] == first.run_id


def test_record_failed_run_touches_only_the_run_log(store):
    publish(store, DAYS[:1])
    before = published_tables(store)
    started = datetime(2024, 5, 2, 2, 0, tzinfo=UTC)
    store.record_failed_run("failed-1", DAYS[1], started, run_info={"events_read": 5})
    assert published_tables(store) == before
    runs = store.runs().set_index("run_id")
    assert runs.loc["failed-1", "status"] == "failed" and runs.loc["failed-1", "events_read"] == 5
    assert store.latest_as_of() == DAYS[0]
    with pytest.raises(PublishInputError, match="already logged with status 'success'"):
        store.record_failed_run(f"run-{DAYS[0].isoformat()}", DAYS[0], started)
    # a retried run may reuse the failed run's id
    store.publish(make_request(DAYS[1], N, run_id="failed-1"))
    assert store.runs().set_index("run_id").loc["failed-1", "status"] == "success"


def bad(field: str, value):
    request = make_request(DAYS[0], 20)
    if field.startswith("membership."):
        request.membership[field.split(".")[1]] = value
    elif field == "drop":
        request.membership = request.membership.drop(columns=[value])
    else:
        setattr(request, field, value)
    return request


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (bad("drop", "lifecycle_stage"), "membership is missing column.*lifecycle_stage"),
        (bad("membership.client_id", "same"), "more than one row for client_id 'same'"),
        (bad("membership.segment_id", "nope"), "segment_id.*missing from segments.*nope"),
        (bad("membership.segment_source", "magic"), "segment_source has value 'magic'"),
        (bad("membership.confidence", 1.5), "confidence has value 1.5 outside"),
        (bad("as_of", "2024-05-01"), "as_of must be a datetime.date"),
        (bad("as_of", datetime(2024, 5, 1)), "as_of must be a datetime.date"),
        (bad("run_id", ""), "run_id must be a non-empty string"),
        (bad("run_info", {"events": 3}), "unknown key.*'events'"),
        (bad("run_info", {"events_read": -1}), "events_read.*non-negative"),
    ],
)
def test_bad_requests_fail_clearly_and_write_nothing(store, request_, message):
    with pytest.raises(PublishInputError, match=message):
        store.publish(request_)
    assert store.latest_as_of() is None


def test_run_id_of_an_older_success_cannot_be_reused(store):
    publish(store, DAYS[:1])
    with pytest.raises(PublishInputError, match="already published as of 2024-05-01"):
        store.publish(make_request(DAYS[1], N, run_id=f"run-{DAYS[0].isoformat()}"))


def test_readers(store):
    with pytest.raises(StoreEmptyError, match="no published tables|does not exist"):
        store.membership()
    assert store.latest_as_of() is None and store.schema_version() is None
    requests = publish(store, DAYS[:2])
    request = requests[DAYS[1]]
    client = request.membership.iloc[0]
    got = store.client(client.client_id)
    assert len(got) == 1 and got["segment_id"].iloc[0] == client.segment_id
    score = request.scores.set_index("client_id").loc[client.client_id, "predicted_cltv"]
    assert got["predicted_cltv"].iloc[0] == pytest.approx(score)
    assert store.client("nobody").empty
    members = store.membership(segment_id="s2")
    assert set(members["segment_id"]) == {"s2"}
    assert len(members) == (request.membership["segment_id"] == "s2").sum()
    assert len(store.read_sql("v_segment_members")) == N
    today = store.read_sql("v_todays_transitions")
    assert set(today["kind"]) <= {"entry", "exit", "move", "lifecycle"}
    assert len(today) == len(store.transitions())
    for name in READABLE:
        store.read_sql(name)
    with pytest.raises(StoreArgumentError, match="unknown table or view"):
        store.read_sql("segments; DROP TABLE runs")
    few = store.membership(segment_id="s2", columns=["client_id", "segment_id"])
    pd.testing.assert_frame_equal(few, members[["client_id", "segment_id"]])
    scored = store.scores(columns=["predicted_cltv"])
    assert list(scored.columns) == ["predicted_cltv"] and len(scored) == len(store.scores())
    moves = store.transitions(columns=["to_segment_id"])
    assert moves["to_segment_id"].tolist() == store.transitions()["to_segment_id"].tolist()
    with pytest.raises(StoreArgumentError, match=r"no column\(s\) 'x; DROP TABLE runs'.*client_id"):
        store.membership(columns=["client_id", "x; DROP TABLE runs"])
    with pytest.raises(StoreArgumentError, match="none asked"):
        store.scores(columns=[])
    assert store.schema_version() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION  # idempotent


def test_values_are_bound_parameters(store):
    request = make_request(DAYS[0], 20)
    nasty = "x'); DROP TABLE segment_membership; --"
    request.membership.loc[0, "client_id"] = nasty
    request.scores.loc[0, "client_id"] = nasty
    request.membership.loc[1, "reason"] = "100% 'quoted' \"text\", with ? and %s"
    store.publish(request)
    assert store.client(nasty)["client_id"].iloc[0] == nasty
    assert store.membership()["reason"].str.contains("100%").sum() == 1


def test_lock_blocks_other_publishers_and_is_reentrant(make_store):
    store = make_store(lock_timeout=0.5)
    publish(store, DAYS[:1])
    other = open_store(*_location_of(store), lock_timeout=0.5)
    try:
        with store.lock():
            with pytest.raises(PublishLockedError, match="another publish holds the lock"):
                other.publish(make_request(DAYS[1], N))
            store.publish(make_request(DAYS[1], N))  # re-entrant for the holder
        other.publish(make_request(DAYS[2], N))
    finally:
        other.close()
    assert store.latest_as_of() == DAYS[2]


def _location_of(store) -> tuple[str, str]:
    backend = store._backend
    if store.backend == "duckdb":
        return f"duckdb://{backend.path}", store.schema
    return backend._engine.url.render_as_string(hide_password=False), store.schema


@pytest.mark.postgres
def test_same_tables_and_columns_on_both_backends(tmp_path, pg_url):
    import uuid

    from tests.pipelines.conftest import drop_schema

    duck = open_store(f"duckdb://{tmp_path / 'x.duckdb'}", "segmentation")
    schema = f"t_{uuid.uuid4().hex[:8]}"
    pg = open_store(pg_url, schema)
    try:
        duck.migrate()
        pg.migrate()
        canonical = {
            "VARCHAR": "text",
            "text": "text",
            "DATE": "date",
            "date": "date",
            "TIMESTAMP": "timestamp",
            "timestamp without time zone": "timestamp",
            "DOUBLE": "double",
            "double precision": "double",
            "BIGINT": "bigint",
            "bigint": "bigint",
            "INTEGER": "integer",
            "integer": "integer",
            "BOOLEAN": "boolean",
            "boolean": "boolean",
        }
        sql = (
            "SELECT table_name, column_name, data_type, ordinal_position"
            " FROM information_schema.columns WHERE table_schema = ?"
        )
        with duck._backend.read() as con:
            duck_cols = con.fetchall(
                sql + " AND table_catalog = current_database()", ["segmentation"]
            )
        with pg._backend.read() as con:
            pg_cols = con.fetchall(sql, [schema])

        def shape(cols):
            return sorted((t, c, canonical.get(d, d), p) for t, c, d, p in cols)

        assert shape(duck_cols) == shape(pg_cols)
        assert {t for t, *_ in duck_cols} >= set(READABLE)
    finally:
        duck.close()
        pg.close()
        drop_schema(pg_url, schema)


def test_identifiers_are_validated(tmp_path):
    for schema in ["x; DROP TABLE runs", "Upper", "1abc", "", "a" * 64]:
        with pytest.raises(StoreArgumentError, match="not a valid identifier"):
            open_store(f"duckdb://{tmp_path / 'x.duckdb'}", schema)
    with pytest.raises(StoreArgumentError, match="lock_timeout must be > 0"):
        open_store(f"duckdb://{tmp_path / 'x.duckdb'}", lock_timeout=0)


def test_store_urls():
    assert str(parse_store_url("duckdb:///abs/x.duckdb").path) == "/abs/x.duckdb"
    assert str(parse_store_url("duckdb:////abs/x.duckdb").path) == "/abs/x.duckdb"
    assert parse_store_url("duckdb:rel/x.duckdb").path.is_absolute()
    pg = parse_store_url("postgresql://u:pw@h:5433/db")
    assert pg.sqlalchemy_url.drivername == "postgresql+psycopg"
    assert pg.masked == "postgresql://u:***@h:5433/db"
    for url in ["sqlite:///x.db", "duckdb:///:memory:", "", "postgresql://u@h/"]:
        with pytest.raises(StoreArgumentError):
            parse_store_url(url)
    with pytest.raises(StoreArgumentError, match=r"postgresql://u:\*\*\*@h"):
        parse_store_url("postgresql://u:s3cret@h/")
    # a user's mistake: an engine error (one line in the CLI), and still a ValueError
    assert issubclass(StoreArgumentError, SegmentationError)
    assert issubclass(StoreArgumentError, ValueError)
    assert mask_url("see postgresql://u:s3cret@h/db now") == "see postgresql://u:***@h/db now"


def test_credentials_never_appear_in_errors():
    secret = "s3cret-Pa55"
    store = open_store(f"postgresql://postgres:{secret}@127.0.0.1:1/test", "segmentation")
    assert secret not in repr(store) and secret not in store.url
    with pytest.raises(StoreConnectionError) as info:
        store.runs()
    assert secret not in str(info.value) and "***" in str(info.value)
    assert info.value.__suppress_context__  # the driver's exception is not chained
    store.close()


@pytest.mark.postgres
def test_credentials_never_appear_in_logs(pg_url, caplog):
    import uuid

    from tests.pipelines.conftest import drop_schema

    secret = "s3cret-Pa55"
    schema = f"t_{uuid.uuid4().hex[:8]}"
    url = pg_url.replace("postgres@", f"postgres:{secret}@")
    store = open_store(url, schema)
    try:
        with caplog.at_level(logging.DEBUG, logger="pipelines.store"):
            store.publish(make_request(DAYS[0], 20))
            with pytest.raises(OutOfOrderError) as info:
                store.publish(make_request(date(2024, 1, 1), 20))
    finally:
        store.close()
        drop_schema(pg_url, schema)
    assert "published run" in caplog.text
    assert secret not in caplog.text and secret not in str(info.value)


def test_failed_run_logs_its_error_as_one_masked_line(store):
    started = datetime(2024, 5, 2, 2, 0, tzinfo=UTC)
    error = RuntimeError("cannot reach\n  postgresql://u:s3cr3t-PW@h/db?password=other-PW\tnow")
    store.record_failed_run("failed-1", DAYS[1], started, error=error)
    store.record_failed_run("failed-2", DAYS[1], started, error="x" * 5000)
    store.record_failed_run("failed-3", DAYS[1], started)
    runs = store.runs().set_index("run_id")
    assert runs.loc["failed-1", "error"] == (
        "RuntimeError: cannot reach postgresql://u:***@h/db?password=*** now"
    )
    assert len(runs.loc["failed-2", "error"]) <= 1000
    assert pd.isna(runs.loc["failed-3", "error"])
    publish(store, DAYS[:1])
    assert pd.isna(store.runs().set_index("run_id").loc[f"run-{DAYS[0].isoformat()}", "error"])


def test_a_store_at_schema_version_1_gains_runs_error(store_location, monkeypatch):
    import pipelines.store._core as core

    url, schema = store_location()
    monkeypatch.setattr(core, "SCHEMA_VERSION", 1)
    with open_store(url, schema) as old:  # a store written by the previous engine
        old.migrate()
        assert old.schema_version() == 1
        assert "error" not in old.runs().columns
    monkeypatch.undo()
    store = open_store(url, schema, lock_timeout=10, reader_retry=10)
    publish(store, DAYS[:1])  # an old store upgrades on its next write
    assert store.schema_version() == SCHEMA_VERSION == 5
    started = datetime(2024, 5, 2, 2, 0, tzinfo=UTC)
    store.record_failed_run("failed-1", DAYS[1], started, error=ValueError("boom"))
    runs = store.runs().set_index("run_id")
    assert runs.loc["failed-1", "error"] == "ValueError: boom"
    assert runs.loc[f"run-{DAYS[0].isoformat()}", "status"] == "success"
    assert store.migrate() == 5  # idempotent
    assert {"raw_line", "line_number"} <= set(store.quarantine().columns)
    assert {"anonymous_id", "detail"} <= set(store.quarantine().columns)  # version 4
    assert store.identity_map().empty and store.identity_merges().empty
    assert {"p_purchase", "cltv_model"} <= set(store.scores().columns)  # version 3
    assert {"p_purchase", "cltv_model"} <= set(store.client("nobody").columns)  # the view too
    store.close()


def test_a_malformed_line_keeps_its_raw_text_and_number(store):
    request = make_request(DAYS[0], 3)
    request.quarantine = pd.DataFrame(
        {
            "reason": ["malformed_line", "negative_amount"],
            "source_file": ["events.csv", "events.csv"],
            "raw_line": ['c1,2024-05-01,purchase,10,"extra', None],
            "line_number": [7, None],
            "client_id": [None, "c9"],
            "amount": [None, "-3"],
        }
    )
    store.publish(request)
    got = store.quarantine().sort_values("reason").reset_index(drop=True)
    assert list(got["reason"]) == ["malformed_line", "negative_amount"]
    assert got.loc[0, "raw_line"] == 'c1,2024-05-01,purchase,10,"extra'
    assert got.loc[0, "line_number"] == 7 and pd.isna(got.loc[1, "line_number"])
    assert pd.isna(got.loc[1, "raw_line"]) and got.loc[1, "amount"] == "-3"


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://postgres@127.0.0.1:1/test?password=s3cr3t-PW", "s3cr3t-PW"),
        ("postgresql://postgres:s3cr@t-PW@127.0.0.1:1/test", "s3cr@t-PW"),
        ("postgresql://postgres:p@ss@w0rd@127.0.0.1:1/test", "ss@w0rd"),
    ],
)
def test_query_and_at_sign_passwords_are_masked(url, secret):
    parsed = parse_store_url(url)
    assert parsed.sqlalchemy_url.host == "127.0.0.1"  # an unencoded @ ends no password
    assert secret not in parsed.masked and "***" in parsed.masked
    assert secret not in mask_url(url) and secret not in mask_url(f"see '{url}' now")
    store = open_store(url, "segmentation")
    assert secret not in repr(store) and secret not in store.url
    with pytest.raises(StoreConnectionError) as info:
        store.runs()
    assert secret not in str(info.value)
    store.close()


def test_segment_means_are_the_same_bits_whatever_the_row_order():
    import numpy as np

    from pipelines.store._core import _segment_stats

    rng = np.random.default_rng(0)
    n = 100_000  # past Arrow's batch size: the mean is not of one batch
    members = pd.DataFrame(
        {"client_id": [f"c{i:07d}" for i in range(n)], "segment_id": rng.choice(list("abc"), n)}
    )
    scores = pd.DataFrame(
        {"client_id": members["client_id"], "predicted_cltv": rng.gamma(1, 300, n)}
    )
    expected = _segment_stats(members, scores)
    for seed in (1, 2):
        shuffled = _segment_stats(
            members.sample(frac=1, random_state=seed), scores.sample(frac=1, random_state=seed + 9)
        )
        assert shuffled == expected
