"""What the destinations were sent (schema version 5): the rows of `destination_deliveries`,
one per batch, their checks, and their upsert by batch_id (the idempotency key).

The delivery code records a batch after the publish, before and after each attempt; the
store keeps the rows through re-runs and rebuilds, since a batch that was sent stays sent.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from pipelines.store._analyses import Contract, check_contract
from pipelines.store._common import Connection, PublishInputError, error_line, mask_url
from pipelines.store._frames import select_columns, to_arrow
from pipelines.store._schema import DESTINATION_DELIVERIES

__all__ = [
    "DELIVERY_KINDS",
    "DELIVERY_STATUSES",
    "DESTINATION_DELIVERIES_INPUT",
    "upsert_deliveries",
    "validate_deliveries",
]

DESTINATION_DELIVERIES_INPUT = DESTINATION_DELIVERIES.column_names
# May be left out (null then): a pending batch has no attempt, error or location yet.
DELIVERIES_OPTIONAL = ("first_attempt_at", "last_attempt_at", "delivered_at", "error", "location")
DELIVERY_KINDS = ("entries", "exits")
DELIVERY_STATUSES = ("pending", "delivered", "failed")
_TIMES = ("first_attempt_at", "last_attempt_at", "delivered_at")
_REQUIRED = [c for c in DESTINATION_DELIVERIES_INPUT if c not in DELIVERIES_OPTIONAL]

_CONTRACT = Contract(
    DESTINATION_DELIVERIES,
    not_null=tuple(_REQUIRED),
    allowed={"kind": DELIVERY_KINDS, "status": DELIVERY_STATUSES},
    ranges=dict.fromkeys(("batch_number", "clients", "attempts"), (0.0, None)),
    unique=("batch_id",),
    ordered=(("first_attempt_at", "last_attempt_at"),),
    row_key="batch_id",
)


def validate_deliveries(rows: object, secret: str | None = None) -> pa.Table:
    """Delivery rows as `destination_deliveries` rows: required columns set, known kinds and
    statuses, counts >= 0, one row per batch_id, times as naive UTC (naive ones are taken as
    UTC). `error` is kept as one masked line and `location` with URL passwords masked, so no
    secret reaches the table. Raises PublishInputError naming the column."""
    name = DESTINATION_DELIVERIES.name
    frame = select_columns(rows, name, _REQUIRED, keep=DESTINATION_DELIVERIES_INPUT)
    for col in DELIVERIES_OPTIONAL:
        if col not in frame.columns:
            frame[col] = None
    for col in _TIMES:
        try:
            times = pd.to_datetime(frame[col], utc=True)
        except (ValueError, TypeError) as exc:
            raise PublishInputError(f"{name}.{col}: values are not times: {exc}") from None
        frame[col] = times.dt.tz_localize(None)
    frame["error"] = [
        None if pd.isna(v) else error_line(v, secret) for v in frame["error"].astype(object)
    ]
    frame["location"] = [
        None if pd.isna(v) else mask_url(str(v)) for v in frame["location"].astype(object)
    ]
    table = to_arrow(frame, DESTINATION_DELIVERIES)
    check_contract(_CONTRACT, table)
    return table


def upsert_deliveries(w: Connection, s: str, rows: pa.Table) -> None:
    """Insert `rows`, or update the stored row of the same batch_id: the new values replace
    the stored ones, except first_attempt_at, which keeps the earlier of the two."""
    stage = "_deliveries"
    w.create_temp(stage, DESTINATION_DELIVERIES.columns)
    w.load(stage, rows)
    cols = DESTINATION_DELIVERIES.column_names
    first = "first_attempt_at"
    updates = [f"{c} = excluded.{c}" for c in cols if c not in ("batch_id", first)]
    updates.append(
        f"{first} = coalesce(least(t.{first}, excluded.{first}), t.{first}, excluded.{first})"
    )
    col_list = ", ".join(cols)
    w.execute(
        f"INSERT INTO {s}.{DESTINATION_DELIVERIES.name} AS t ({col_list})"
        f" SELECT {col_list} FROM {stage}"
        f" ON CONFLICT (batch_id) DO UPDATE SET {', '.join(updates)}"
    )
