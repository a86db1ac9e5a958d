"""What clients did after entering their segment: purchases and spend since a date, in DuckDB.

The holdout comparison (`segmentation.holdout.compare_holdout`) needs, per current member,
what they bought after they entered their segment. `outcomes_since` reads it from the `events`
table that `features.events.load_events` makes (event_time naive UTC) in one pass over the
purchase, return and refund events, joined on client_id to the members' entry dates.

Definitions (chosen for a lift figure marketing and finance can both sign):

- Window. A client entering on day S (membership `valid_from` = S: the run as of S placed
  them, on the events up to the end of S) is observed from the start of S + 1 (UTC) to the
  end of the as-of day D: ``day_end(S) <= event_time < day_end(D)``. The entry day itself is
  left out: its events are what put the client in the segment, and no campaign can reach a
  member before the membership is published the next morning; nothing after D counts.
  ``days_since_entry`` = D - S, the whole days observed (0 for a client who entered on D).
- purchases: the number of `purchase` events in the window.
- spend: net revenue in the window: the amounts of the purchases minus the money paid back by
  `return` and `refund` events (their amount is money back), whatever purchase it refers to,
  so it can be negative. A null amount counts as 0 (the purchase still counts). Summed in
  integer micro-units, exact in any order of aggregation.

Every client of `since` gets a row: a client with no such event has 0 purchases and 0 spend.
"""

from __future__ import annotations

import re
import uuid
from datetime import date

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from configs import as_date
from features.events import day_end

PURCHASE_TYPE = "purchase"
REFUND_TYPES = ("return", "refund")
OUTCOME_COLUMNS = ("client_id", "days_since_entry", "purchases", "spend")
MONEY_SCALE = 1_000_000  # integer micro-units: sums exact in any order
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def outcomes_since(
    con: duckdb.DuckDBPyConnection,
    since: pd.DataFrame,
    as_of: date,
    events_table: str = "events",
) -> pd.DataFrame:
    """Purchases and net spend of each client after the day of `since`, up to the end of `as_of`.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        A connection holding `events_table` (client_id, event_time, event_type, amount).
    since : pandas.DataFrame
        client_id (unique, no nulls) and `since`: the day the client entered its segment (a
        date, datetime or timestamp: its UTC day counts; e.g. the membership's valid_from).
    as_of : datetime.date
        The last day observed (events up to its end, UTC).
    events_table : str, default "events"
        The events table's name (optionally schema-qualified).

    Returns
    -------
    pandas.DataFrame
        OUTCOME_COLUMNS, one row per row of `since` in its order (index reset):
        days_since_entry (int64, as_of - since), purchases (int64), spend (float64, purchases
        net of returns and refunds). See the module docstring for the exact window.

    Raises
    ------
    ValueError
        A column is missing, a client id or date is null, client ids repeat, a since date is
        later than `as_of`, or the table name is not an identifier.
    """
    day = as_date(as_of)
    start = _entry_days(since, day)
    if not _TABLE_NAME.match(events_table):
        raise ValueError(f"events_table {events_table!r} is not a table name")
    n = len(start)
    days = (pd.Timestamp(day) - start).dt.days.to_numpy(dtype=np.int64)
    purchases = np.zeros(n, dtype=np.int64)
    micro = np.zeros(n, dtype=np.float64)
    if n:
        pos, bought, money = _aggregate(con, since["client_id"], start, day, events_table)
        purchases[pos] = bought
        micro[pos] = money
    return pd.DataFrame(
        {
            "client_id": since["client_id"].to_numpy(dtype=object),
            "days_since_entry": days,
            "purchases": purchases,
            "spend": micro / MONEY_SCALE,
        }
    )


def _entry_days(since: pd.DataFrame, as_of: date) -> pd.Series:
    """Each client's entry day as a naive UTC midnight timestamp, checked."""
    if not isinstance(since, pd.DataFrame):
        raise TypeError(f"since must be a pandas DataFrame, got {type(since).__name__}")
    missing = [c for c in ("client_id", "since") if c not in since.columns]
    if missing:
        raise ValueError(f"since has no column(s) {missing}")
    ids = since["client_id"]
    if ids.isna().any():
        raise ValueError(f"since: {int(ids.isna().sum())} rows have no client_id")
    repeated = ids[ids.duplicated()]
    if len(repeated):
        examples = ", ".join(map(str, repeated.unique()[:3]))
        raise ValueError(f"since: {len(repeated)} duplicate client_id rows (e.g. {examples})")
    stamps = pd.to_datetime(since["since"].reset_index(drop=True), errors="coerce")
    if isinstance(stamps.dtype, pd.DatetimeTZDtype):
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    bad = stamps.isna()
    if bad.any():
        examples = ", ".join(map(str, ids[bad.to_numpy()].iloc[:3]))
        raise ValueError(f"since: {int(bad.sum())} rows have no valid date (e.g. {examples})")
    days = stamps.dt.normalize().astype("datetime64[us]")
    late = (days > pd.Timestamp(as_of)).to_numpy()
    if late.any():
        examples = ", ".join(map(str, ids[late].iloc[:3]))
        raise ValueError(
            f"since: {int(late.sum())} clients entered after as_of {as_of} (e.g. {examples})"
        )
    return days


def _aggregate(
    con: duckdb.DuckDBPyConnection,
    client_ids: pd.Series,
    start: pd.Series,
    as_of: date,
    events_table: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row positions, purchases, net spend in micro-units) of the clients with an event in
    their window: one pass over the money events, hash-joined on client_id."""
    # Observation starts the day after entry: the start of S+1.
    opens = (start + pd.Timedelta(days=1)).to_numpy(dtype="datetime64[us]")
    members = pa.table(
        {
            "pos": pa.array(np.arange(len(start), dtype=np.int64)),
            "client_id": pa.array(client_ids.astype(str).to_numpy(dtype=object), pa.string()),
            "opens": pa.array(opens, pa.timestamp("us")),
        }
    )
    view = f"_outcomes_since_{uuid.uuid4().hex}"
    money = f"CAST(round(coalesce(e.amount, 0) * {MONEY_SCALE}) AS HUGEINT)"
    refunds = ", ".join(f"'{t}'" for t in REFUND_TYPES)
    sql = f"""
        SELECT m.pos,
               count(*) FILTER (WHERE e.event_type = '{PURCHASE_TYPE}') AS purchases,
               CAST(sum(CASE WHEN e.event_type = '{PURCHASE_TYPE}' THEN {money}
                             ELSE -{money} END) AS DOUBLE) AS micro
        FROM {events_table} AS e
        JOIN {view} AS m ON e.client_id = m.client_id AND e.event_time >= m.opens
        WHERE e.event_type IN ('{PURCHASE_TYPE}', {refunds})
          AND e.event_time >= $lo AND e.event_time < $end
        GROUP BY m.pos
    """
    con.register(view, members)
    try:
        params = {"lo": pd.Timestamp(opens.min()).to_pydatetime(), "end": day_end(as_of)}
        found = con.execute(sql, params).fetchnumpy()
    finally:
        con.unregister(view)
    return (
        np.asarray(found["pos"], dtype=np.int64),
        np.asarray(found["purchases"], dtype=np.int64),
        np.asarray(found["micro"], dtype=np.float64),
    )
