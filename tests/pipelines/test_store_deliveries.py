"""`destination_deliveries` (schema version 5) on DuckDB and PostgreSQL: the upsert by batch_id,
the reader's filters, validation, the publish lock, and rows that outlive re-runs and rebuilds."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pandas as pd
import pytest

from pipelines.store import (
    DESTINATION_DELIVERIES_INPUT,
    PublishInputError,
    PublishLockedError,
    open_store,
)
from tests.pipelines.test_store import _location_of, rows
from tests.pipelines.test_store_identity import request

D = [date(2024, 9, 1) + timedelta(days=i) for i in range(3)]
T0 = datetime(2024, 9, 2, 3, 0)


def batch(batch_id: str, status: str = "pending", attempts: int = 0, **values) -> dict:
    """One delivery row of the D[1] run (entries of s1 to the `crm` webhook by default)."""
    return {
        "batch_id": batch_id,
        "run_id": f"run-{D[1].isoformat()}",
        "as_of": D[1],
        "destination": "crm",
        "segment_id": "s1",
        "kind": "entries",
        "batch_number": 1,
        "clients": 500,
        "status": status,
        "attempts": attempts,
        "first_attempt_at": None,
        "last_attempt_at": None,
        "delivered_at": None,
        "error": None,
        "location": "https://crm.example.com/hooks/segments",
        **values,
    }


def frame(*batches: dict) -> pd.DataFrame:
    return pd.DataFrame(list(batches))[DESTINATION_DELIVERIES_INPUT]


STATE = ["batch_id", "status", "attempts", "first_attempt_at", "last_attempt_at", "delivered_at"]


def state(store) -> list[tuple]:
    frame = store.deliveries()
    return [
        tuple(None if pd.isna(v) else v for v in record)
        for record in frame[STATE].itertuples(index=False)
    ]


def test_record_deliveries_upserts_by_batch_id(store):
    store.record_deliveries(frame(batch("b1"), batch("b2", batch_number=2)))  # a fresh store
    assert [s[:3] for s in state(store)] == [("b1", "pending", 0), ("b2", "pending", 0)]

    t1, t2, t3 = T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=5)
    store.record_deliveries(
        frame(
            batch("b1", "delivered", 1, first_attempt_at=t1, last_attempt_at=t1, delivered_at=t1),
            batch(
                "b2",
                "failed",
                1,
                batch_number=2,
                first_attempt_at=t1,
                last_attempt_at=t1,
                error="HTTP 503 from https://user:s3cret@crm.example.com/hooks",
            ),
        )
    )
    # a retry: the caller's first_attempt_at is later than the stored one, which is kept
    store.record_deliveries(
        frame(
            batch(
                "b2",
                "delivered",
                2,
                batch_number=2,
                first_attempt_at=t2,
                last_attempt_at=t3,
                delivered_at=t3,
            )
        )
    )
    assert state(store) == [
        ("b1", "delivered", 1, pd.Timestamp(t1), pd.Timestamp(t1), pd.Timestamp(t1)),
        ("b2", "delivered", 2, pd.Timestamp(t1), pd.Timestamp(t3), pd.Timestamp(t3)),
    ]
    assert store.deliveries()["error"].isna().all()  # the new row replaced the error

    store.record_deliveries(frame(batch("b1", "delivered", 1, first_attempt_at=t1)))
    assert len(store.deliveries()) == 2  # never duplicated
    assert store.read_sql("destination_deliveries")["batch_id"].is_unique


def test_errors_and_locations_are_masked_and_times_stored_as_naive_utc(store):
    paris = timezone(timedelta(hours=2))
    store.record_deliveries(
        frame(
            batch(
                "b1",
                "failed",
                3,
                first_attempt_at=datetime(2024, 9, 2, 5, 0, tzinfo=paris),
                last_attempt_at=datetime(2024, 9, 2, 3, 30, tzinfo=UTC),
                error="ConnectionError:\n cannot reach https://bot:hunter2@crm.example.com/x",
                location="https://bot:hunter2@crm.example.com/x?password=hunter2",
            )
        )
    )
    row = store.deliveries().iloc[0]
    assert row.first_attempt_at == pd.Timestamp("2024-09-02 03:00")
    assert row.last_attempt_at == pd.Timestamp("2024-09-02 03:30")
    assert "hunter2" not in row.error and "hunter2" not in row.location
    assert row.error == "ConnectionError: cannot reach https://bot:***@crm.example.com/x"
    assert row.location == "https://bot:***@crm.example.com/x?password=***"


def test_the_reader_filters_by_status_destination_and_as_of(store):
    store.record_deliveries(
        frame(
            batch("b1", "delivered", 1),
            batch("b2", "failed", 5, destination="files", kind="exits"),
            batch("b3", as_of=D[0], run_id="run-old"),
        )
    )
    assert rows(store.deliveries(), ["batch_id"]) == [("b1",), ("b2",), ("b3",)]
    assert rows(store.deliveries(status="failed"), ["batch_id"]) == [("b2",)]
    assert rows(store.deliveries(destination="crm"), ["batch_id"]) == [("b1",), ("b3",)]
    assert rows(store.deliveries(as_of=D[1]), ["batch_id"]) == [("b1",), ("b2",)]
    assert store.deliveries(status="pending", destination="crm", as_of=D[1]).empty
    assert store.deliveries()["batch_id"].tolist() == ["b3", "b1", "b2"]  # by as_of, destination


def test_deliveries_survive_reruns_and_rebuilds(store):
    for day in D[:2]:
        store.publish(request(day, {"c1": "s1", "c2": "s2"}))
    store.record_deliveries(frame(batch("b1", "delivered", 1), batch("b2", batch_number=2)))
    before = rows(store.deliveries(), DESTINATION_DELIVERIES_INPUT)

    store.publish(request(D[1], {"c1": "s2"}, run_id="rerun"))
    assert rows(store.deliveries(), DESTINATION_DELIVERIES_INPUT) == before
    store.publish(request(D[0], {"c1": "s1"}, run_id="rebuilt"), rebuild_from=D[0])
    assert store.latest_as_of() == D[0]
    assert rows(store.deliveries(), DESTINATION_DELIVERIES_INPUT) == before


@pytest.mark.parametrize(
    ("batches", "message"),
    [
        ((batch("b1"), batch("b1")), "destination_deliveries has more than one row for"),
        ((batch("b1", status="sent"),), "destination_deliveries.status has value 'sent'"),
        ((batch("b1", kind="both"),), "destination_deliveries.kind has value 'both'"),
        ((batch("b1", attempts=-1),), "destination_deliveries.attempts has value -1"),
        (({**batch("b1"), "batch_id": None},), "destination_deliveries.batch_id has null values"),
        ((batch("b1", destination=None),), "destination_deliveries.destination has null"),
        (
            (batch("b1", first_attempt_at=T0, last_attempt_at=T0 - timedelta(seconds=1)),),
            "first_attempt_at 2024-09-02 03:00:00 is greater than last_attempt_at",
        ),
        ((batch("b1", last_attempt_at="not a time"),), "last_attempt_at: values are not times"),
    ],
)
def test_bad_delivery_rows_fail_clearly_and_write_nothing(store, batches, message):
    store.record_deliveries(frame(batch("b0", "delivered", 1)))
    with pytest.raises(PublishInputError, match=message):
        store.record_deliveries(frame(batch("b9"), *batches))
    assert store.deliveries()["batch_id"].tolist() == ["b0"]


def test_missing_columns_fail_and_optional_ones_may_be_left_out(store):
    with pytest.raises(PublishInputError, match="missing column.*attempts"):
        store.record_deliveries(frame(batch("b1")).drop(columns=["attempts"]))
    with pytest.raises(PublishInputError, match="must be a pandas DataFrame"):
        store.record_deliveries([batch("b1")])
    optional = ["first_attempt_at", "last_attempt_at", "delivered_at", "error", "location"]
    store.record_deliveries(frame(batch("b1")).drop(columns=optional))
    assert store.deliveries()[optional].isna().all().all()
    store.record_deliveries(frame(batch("b1")).iloc[:0])  # nothing to record
    assert len(store.deliveries()) == 1


def test_record_deliveries_waits_for_the_publish_lock(make_store):
    store = make_store(lock_timeout=0.5)
    store.publish(request(D[0], {"c1": "s1"}))
    other = open_store(*_location_of(store), lock_timeout=0.5)
    try:
        with store.lock():
            with pytest.raises(PublishLockedError, match="another publish holds the lock"):
                other.record_deliveries(frame(batch("b1")))
            store.record_deliveries(frame(batch("b2")))  # re-entrant for the holder
        other.record_deliveries(frame(batch("b1")))
    finally:
        other.close()
    assert store.deliveries()["batch_id"].tolist() == ["b1", "b2"]
