"""The customer journey map, built from the events: stage flow, touchpoints, drop-offs, moments.

What a CX analyst draws by hand from interviews, measured every night per segment and overall
(`segment_id` "*"), over the last `window_days` of events up to the as-of date (nothing later):

- **Stage flow** (`stages`): per stage, the clients who reached it (their first
  client-initiated event of that stage in the window), how many stalled there (it is their
  furthest stage and their last client-initiated event is more than `stall_days` old) or are
  still in progress, its events and mean sentiment (the emotion curve); per pair of stages,
  how many moved on (reached the later stage at or after the earlier one), the conversion rate
  and the median and 90th-percentile days between them. A row with stage "*" covers all
  stages; stage "other" (event types the taxonomy does not know) is counted apart and has no
  flow.
- **Touchpoints** (`touchpoints`): per stage, the event type x channel pairs that reach the
  most clients, with events, reach, sentiment and negative events; pain types (support
  tickets, returns, refunds) are always listed.
- **Drop-offs and moments of truth** (`dropoffs`): where stalled journeys end (the last
  client-initiated touchpoint), ranked by lost clients; for each point, the factors
  (touchpoints, channels, categories, negative sentiment, seen at or before the point)
  over-represented among those who dropped off compared with those who went on (lift with a
  Katz interval); and per stage, the touchpoints whose presence before the next stage most
  raises or lowers the chance of reaching it (difference of rates with a Newcombe interval).

A statistic needs `min_clients` on each side; below that the counts are published with the
note "too few clients" and no number. See docs/journey.md for the definitions and their limits
(these are associations in observational data, not experiments).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import norm

from configs import STAGES
from configs.schema import JourneyConfig
from features.events import day_end

__all__ = [
    "ALL_SEGMENTS",
    "ANY_STAGE",
    "CLIENT_TABLES",
    "DROPOFF_COLUMNS",
    "STAGE_COLUMNS",
    "TOO_FEW",
    "TOUCHPOINT_COLUMNS",
    "JourneyMap",
    "journey_client_tables",
    "journey_map",
    "katz_interval",
    "mantel_haenszel_interval",
    "newcombe_interval",
    "wilson_interval",
]

ALL_SEGMENTS = "*"  # segment_id of the rows about every client
ALL_SEGMENTS_NAME = "All clients"
ANY_STAGE = "*"  # stage of the row about every stage
OTHER_STAGE = "other"
TOO_FEW = "too few clients"
NEGATIVE = "negative"  # the factor of the sentiment kind

STAGE_COLUMNS = [
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
    "in_progress",
    "events",
    "sentiment_mean",
    "sentiment_events",
    "note",
]
TOUCHPOINT_COLUMNS = [
    "segment_id",
    "segment_name",
    "stage",
    "event_type",
    "channel",
    "initiated_by",
    "rank",
    "events",
    "clients",
    "reach",
    "sentiment_mean",
    "sentiment_events",
    "negative_events",
    "is_pain",
    "note",
]
DROPOFF_COLUMNS = [
    "segment_id",
    "segment_name",
    "kind",
    "rank",
    "stage",
    "to_stage",
    "event_type",
    "channel",
    "factor_kind",
    "factor",
    "clients",
    "group_clients",
    "group_with",
    "other_clients",
    "other_with",
    "effect",
    "effect_low",
    "effect_high",
    "note",
]
_PREFIX = "_journey_"
# Sentiment (in [-1, 1] by the contract) is summed as integers of this scale: a float sum in
# parallel depends on the order of its terms, and the map must be the same tables run after
# run, in one process or summed over shards.
_SENTIMENT_SCALE = 1_000_000_000
_COMPARE_CAP = 20_000  # clients per side of a drop-off comparison (a hash sample above it)
_SAMPLE_BASE = 1_000_000
_MIN_CAUSE_CLIENTS = 5  # dropped clients with a factor, at least, for it to be a cause
_DAY_US = 86_400e6
# The per-client tables the map's statistics are computed from (`_client_tables`): a shard
# of clients computes its own rows of them (`journey_client_tables`) and the map is the same.
CLIENT_TABLES = ("tp", "cat", "client")


@dataclass(frozen=True)
class JourneyMap:
    """The three journey tables of one as-of date (the store adds as_of and run_id)."""

    stages: pd.DataFrame
    touchpoints: pd.DataFrame
    dropoffs: pd.DataFrame
    summary: dict[str, float] = field(default_factory=dict)


def journey_map(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    membership: pd.DataFrame,
    config: JourneyConfig | None = None,
    *,
    events_table: str = "events",
    parts: Mapping[str, Sequence[str]] | None = None,
) -> JourneyMap:
    """The journey map as of `as_of`, overall and per segment of `membership`.

    With `parts`, the per-client tables are not computed from the events but read from the
    files the shards of clients wrote (`journey_client_tables`; table name -> files): every
    client's rows are computed where all of its events are, so the map is the same.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        Holds the events table (as `features.events.load_events` makes it, on person ids once
        stitched). Temporary tables are made and dropped on it.
    as_of : date
        Events up to the end of this day count, and nothing later.
    membership : pd.DataFrame
        client_id, segment_id, segment_name: each client's segment tonight. Clients without
        a row count only in the overall map.
    config : JourneyConfig
        Window, stall rule, sizes and interval level (the config's `journey:` section).
    """
    config = config or JourneyConfig()
    started = time.perf_counter()
    window = _window(as_of, config)
    members = _members(membership)
    names = _segment_names(members)
    with _temporary(con, "members", members) as member_table:
        try:
            if parts is None:
                _client_tables(con, events_table, member_table, window)
            else:
                for name in CLIENT_TABLES:
                    files = ", ".join(_sql_text(f) for f in parts[name])
                    con.execute(
                        f"CREATE OR REPLACE TEMP TABLE {_PREFIX}{name} AS"
                        f" SELECT * FROM read_parquet([{files}])"
                    )
            clients = _clients_frame(con)
            stages = _stage_rows(con, window, names)
            touchpoints, per_stage = _touchpoint_rows(con, names, clients["active"], config)
            stages = _with_stage_totals(stages, per_stage, clients, config)
            dropoffs = pd.concat(
                [
                    _dropoff_rows(con, window, names, config),
                    _moment_rows(con, names, config),
                ],
                ignore_index=True,
            )
        finally:
            for name in ("firsts", "tp", "cat", "client", "points", "pop", "client_pop", "chan"):
                con.execute(f"DROP TABLE IF EXISTS {_PREFIX}{name}")
    overall = clients.reindex([ALL_SEGMENTS]).fillna(0).iloc[0]
    summary = {
        "clients": float(overall["active"]),
        "stalled": float(overall["stalled"]),
        "dropoff_points": float((dropoffs["kind"] == "dropoff").sum()) if len(dropoffs) else 0.0,
        "seconds": time.perf_counter() - started,
    }
    return JourneyMap(
        stages=_ordered(stages, STAGE_COLUMNS),
        touchpoints=_ordered(touchpoints, TOUCHPOINT_COLUMNS),
        dropoffs=_ordered(dropoffs, DROPOFF_COLUMNS),
        summary=summary,
    )


def journey_client_tables(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    membership: pd.DataFrame,
    out: str | os.PathLike[str],
    part: int,
    config: JourneyConfig | None = None,
    *,
    events_table: str = "events",
) -> dict[str, str]:
    """The per-client tables of the map (`CLIENT_TABLES`) for the clients whose events are in
    `events_table`, written as Parquet files ``journey-<table>-<part>.parquet`` in `out`
    (through a temporary name: a retried part replaces its files whole). A shard's share of
    the map: `journey_map(..., parts=...)` computes the statistics from every part's files.
    Returns table name -> file."""
    config = config or JourneyConfig()
    files: dict[str, str] = {}
    with _temporary(con, "members", _members(membership)) as member_table:
        _client_tables(con, events_table, member_table, _window(as_of, config))
        try:
            for name in CLIENT_TABLES:
                final = Path(out) / f"journey-{name}-{part:05d}.parquet"
                partial = final.with_name(f".{final.name}.partial")
                con.execute(f"COPY {_PREFIX}{name} TO {_sql_text(str(partial))} (FORMAT parquet)")
                os.replace(partial, final)
                files[name] = str(final)
        finally:
            for name in CLIENT_TABLES:
                con.execute(f"DROP TABLE IF EXISTS {_PREFIX}{name}")
    return files


def wilson_interval(
    successes: npt.ArrayLike, trials: npt.ArrayLike, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (NaN where there are no trials)."""
    x = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    z = float(norm.ppf(0.5 + confidence / 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = x / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def newcombe_interval(
    x1: npt.ArrayLike,
    n1: npt.ArrayLike,
    x0: npt.ArrayLike,
    n0: npt.ArrayLike,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Difference of two proportions x1/n1 - x0/n0 and its Newcombe hybrid score interval
    (method 10 of Newcombe 1998: good coverage at small counts and rates near 0 or 1)."""
    x1, n1, x0, n0 = (np.asarray(v, dtype=float) for v in (x1, n1, x0, n0))
    with np.errstate(divide="ignore", invalid="ignore"):
        p1, p0 = x1 / n1, x0 / n0
    l1, u1 = wilson_interval(x1, n1, confidence)
    l0, u0 = wilson_interval(x0, n0, confidence)
    diff = p1 - p0
    low = diff - np.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = diff + np.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return diff, low, high


def katz_interval(
    x1: npt.ArrayLike,
    n1: npt.ArrayLike,
    x0: npt.ArrayLike,
    n0: npt.ArrayLike,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Risk ratio (x1/n1) / (x0/n0) and its Katz log interval; a zero count gets the usual
    0.5 correction (Haldane) so that the ratio and its bounds stay finite."""
    x1, n1, x0, n0 = (np.asarray(v, dtype=float) for v in (x1, n1, x0, n0))
    zero = (x1 == 0) | (x0 == 0)
    x1c, x0c = np.where(zero, x1 + 0.5, x1), np.where(zero, x0 + 0.5, x0)
    n1c, n0c = np.where(zero, n1 + 1, n1), np.where(zero, n0 + 1, n0)
    z = float(norm.ppf(0.5 + confidence / 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (x1c / n1c) / (x0c / n0c)
        se = np.sqrt(1 / x1c - 1 / n1c + 1 / x0c - 1 / n0c)
    return ratio, ratio * np.exp(-z * se), ratio * np.exp(z * se)


def mantel_haenszel_interval(
    groups: np.ndarray,
    x1: npt.ArrayLike,
    n1: npt.ArrayLike,
    x0: npt.ArrayLike,
    n0: npt.ArrayLike,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Risk ratio (x1/n1) / (x0/n0) pooled over strata by Mantel-Haenszel, with the
    Greenland-Robins interval, per group of rows (`groups`: one label per stratum row; the
    result is in the sorted order of the distinct labels). With one stratum it is the crude
    ratio and the Katz interval. Strata with one side empty carry no information and drop
    out; a group whose pooled counts hold a zero falls back to the Katz interval of its summed
    counts with the 0.5 correction."""
    x1, n1, x0, n0 = (np.asarray(v, dtype=float) for v in (x1, n1, x0, n0))
    labels, index = np.unique(np.asarray(groups), return_inverse=True)
    # the strata in one order whatever order they came in (a query's rows have none): the
    # float sums below then give the same bits run after run
    order = np.lexsort((n0, x0, n1, x1, index))
    x1, n1, x0, n0, index = x1[order], n1[order], x0[order], n0[order], index[order]
    total = n1 + n0
    both = (n1 > 0) & (n0 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(both, x1 * n0 / total, 0.0)
        s = np.where(both, x0 * n1 / total, 0.0)
        p = np.where(both, (n1 * n0 * (x1 + x0) - x1 * x0 * total) / total**2, 0.0)

    def summed(values: np.ndarray) -> np.ndarray:
        return np.bincount(index, weights=values, minlength=len(labels))

    big_r, big_s, big_p = summed(r), summed(s), summed(p)
    z = float(norm.ppf(0.5 + confidence / 2))
    crude, crude_low, crude_high = katz_interval(
        summed(x1), summed(n1), summed(x0), summed(n0), confidence
    )
    usable = (big_r > 0) & (big_s > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(usable, big_r / big_s, crude)
        se = np.sqrt(big_p / (big_r * big_s))
        low = np.where(usable, ratio * np.exp(-z * se), crude_low)
        high = np.where(usable, ratio * np.exp(z * se), crude_high)
    return ratio, low, high


# ------------------------------------------------------------------------ per-client tables


@dataclass(frozen=True)
class _Window:
    start: object  # naive UTC datetimes: [start, end)
    end: object
    config: JourneyConfig

    @property
    def stall_before(self) -> str:
        """SQL timestamp literal: a last event before it means the client has stalled."""
        cutoff = self.end - timedelta(days=self.config.stall_days)  # type: ignore[operator]
        return f"TIMESTAMP '{cutoff}'"

    @property
    def end_sql(self) -> str:
        return f"TIMESTAMP '{self.end}'"


def _window(as_of: date, config: JourneyConfig) -> _Window:
    end = day_end(as_of)
    return _Window(end - timedelta(days=config.window_days), end, config)


def _members(membership: pd.DataFrame) -> pd.DataFrame:
    """client_id, segment_id, segment_name and the stratum of the pooled comparisons (the
    behavioral cluster, when given)."""
    return membership[["client_id", "segment_id", "segment_name"]].assign(
        stratum=membership["cluster_id"].astype("string")
        if "cluster_id" in membership.columns
        else pd.Series(pd.NA, index=membership.index, dtype="string")
    )


@contextmanager
def _temporary(con: duckdb.DuckDBPyConnection, name: str, frame: pd.DataFrame) -> Iterator[str]:
    """`frame` as a temporary table on `con`, dropped afterwards."""
    table = f"{_PREFIX}{name}"
    view = f"{table}_frame"
    con.register(view, frame)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM {view}")
    finally:
        con.unregister(view)
    try:
        yield table
    finally:
        con.execute(f"DROP TABLE IF EXISTS {table}")


def _client_tables(
    con: duckdb.DuckDBPyConnection, events: str, members: str, window: _Window
) -> None:
    """Three passes over the window's events, then one row per client.

    `firsts`: per client, its first client-initiated event of each stage. `tp`: one row per
    client and touchpoint (stage, event type, channel, who started it) with counts, first and
    last time, sentiment, and for each stage whether the client met the touchpoint within
    `stall_days` after reaching the stage and before reaching the next (`in0`..: the moments
    of truth). `cat`: each client's first time per category. `client`: per client its
    segment, first time per stage, last client-initiated touchpoint, first negative event,
    furthest stage and whether it stalled."""
    negative = window.config.negative_sentiment
    within = f"event_time >= TIMESTAMP '{window.start}' AND event_time < {window.end_sql}"
    firsts = ", ".join(
        f"min(event_time) FILTER (WHERE stage = '{s}') AS f{i}" for i, s in enumerate(STAGES)
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {_PREFIX}firsts AS
        SELECT client_id, {firsts} FROM {events}
        WHERE {within} AND coalesce(by_client, true) GROUP BY client_id
    """)
    horizon = f"INTERVAL {int(window.config.stall_days)} DAY"
    flags = ", ".join(
        f"bool_or(coalesce(e.by_client, true) AND e.event_time >= f.f{i} AND e.event_time <"
        f" least(f.f{i} + {horizon}, coalesce(f.f{i + 1}, {window.end_sql}))) AS in{i}"
        for i in range(len(STAGES) - 1)
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {_PREFIX}tp AS
        SELECT e.client_id, coalesce(e.stage, '{OTHER_STAGE}') AS stage, e.event_type,
               e.channel, coalesce(e.by_client, true) AS by_client, count(*) AS n,
               min(e.event_time) AS t_min, max(e.event_time) AS t_max,
               sum(round(e.sentiment * {_SENTIMENT_SCALE})::BIGINT)::BIGINT AS s_sum,
               count(e.sentiment) AS s_n,
               count(*) FILTER (WHERE e.sentiment < {negative}) AS s_neg,
               min(e.event_time) FILTER (WHERE e.sentiment < {negative}) AS t_neg, {flags}
        FROM {events} e LEFT JOIN {_PREFIX}firsts f ON f.client_id = e.client_id
        WHERE {within.replace("event_time", "e.event_time")}
        GROUP BY ALL
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {_PREFIX}cat AS
        SELECT client_id, category, min(event_time) AS t_min
        FROM {events} WHERE {within} AND category IS NOT NULL AND category <> ''
        GROUP BY ALL
    """)
    furthest = " ".join(f"WHEN f{i} IS NOT NULL THEN {i}" for i in reversed(range(len(STAGES))))
    stage_firsts = ", ".join(f"f.f{i}" for i in range(len(STAGES)))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {_PREFIX}client AS
        SELECT a.*, {stage_firsts}, CASE {furthest} ELSE NULL END AS furthest,
               a.last_at IS NOT NULL AND a.last_at < {window.stall_before} AS stalled
        FROM (
            SELECT tp.client_id, any_value(m.segment_id)::VARCHAR AS segment_id,
                   any_value(m.stratum)::VARCHAR AS stratum,
                   max(t_max) FILTER (WHERE by_client) AS last_at,
                   arg_max({{'stage': stage, 'event_type': event_type, 'channel': channel}},
                           (t_max, event_type, coalesce(channel, '')))
                       FILTER (WHERE by_client) AS last_tp,
                   min(t_neg) AS t_neg, sum(n)::BIGINT AS events
            FROM {_PREFIX}tp tp LEFT JOIN {members} m ON m.client_id = tp.client_id
            GROUP BY tp.client_id
        ) a LEFT JOIN {_PREFIX}firsts f ON f.client_id = a.client_id
    """)
    con.execute(f"DROP TABLE {_PREFIX}firsts")


def _segment_names(members: pd.DataFrame) -> dict[str, str]:
    """segment_id -> its name (the first name in id order), and "*" -> "All clients"."""
    named = members.dropna(subset=["segment_id"]).sort_values(["segment_id", "segment_name"])
    first = named.drop_duplicates("segment_id")
    names = dict(zip(first["segment_id"].astype(str), first["segment_name"], strict=True))
    names[ALL_SEGMENTS] = ALL_SEGMENTS_NAME
    return names


# Every aggregate is taken per segment and over all clients at once; the row of all clients
# has segment_id "*" and clients of no segment (none in a nightly run) count only there.
_SEG = f"CASE WHEN grouping(segment_id) = 1 THEN '{ALL_SEGMENTS}' ELSE segment_id END"
_PER_SEGMENT = "GROUP BY GROUPING SETS ((segment_id), ())"


def _per_segment(con: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame:
    """Run `sql` (whose `seg` column is `_SEG`); rows of clients without a segment dropped."""
    frame = con.execute(sql).df()
    return frame[frame["seg"].notna()].reset_index(drop=True)


def _clients_frame(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per segment (and "*"): clients with an event in the window, how many stalled."""
    frame = _per_segment(
        con,
        f"""
        SELECT {_SEG} AS seg, count(*) AS active,
               count(*) FILTER (WHERE stalled) AS stalled,
               count(*) FILTER (WHERE last_at IS NOT NULL AND NOT stalled) AS in_progress
        FROM {_PREFIX}client {_PER_SEGMENT}
        """,
    )
    return frame.set_index("seg")


# ------------------------------------------------------------------------ stage flow


def _stage_rows(
    con: duckdb.DuckDBPyConnection, window: _Window, names: dict[str, str]
) -> pd.DataFrame:
    """Per segment: reach, stall and progress per stage; moves, rate and days per pair."""
    parts = []
    for i in range(len(STAGES)):
        parts.append(
            f"count(f{i}) AS reached_{i},"
            f" count(*) FILTER (WHERE furthest = {i} AND stalled) AS stalled_{i},"
            f" count(*) FILTER (WHERE furthest = {i} AND NOT stalled) AS progress_{i}"
        )
        for j in range(i + 1, len(STAGES)):
            moved = f"f{i} IS NOT NULL AND f{j} >= f{i}"
            days = f"date_diff('microsecond', f{i}, f{j}) / {_DAY_US}"
            parts.append(
                f"count(*) FILTER (WHERE {moved}) AS moved_{i}_{j},"
                f" quantile_cont({days}, 0.5) FILTER (WHERE {moved}) AS median_{i}_{j},"
                f" quantile_cont({days}, 0.9) FILTER (WHERE {moved}) AS p90_{i}_{j}"
            )
    wide = _per_segment(
        con, f"SELECT {_SEG} AS seg, {', '.join(parts)} FROM {_PREFIX}client {_PER_SEGMENT}"
    )
    rows = []
    for record in wide.to_dict("records"):
        seg = str(record["seg"])
        for i, stage in enumerate(STAGES):
            reached = int(record[f"reached_{i}"])
            rows.append(
                {
                    "segment_id": seg,
                    "stage": stage,
                    "to_stage": None,
                    "clients": reached,
                    "stalled": int(record[f"stalled_{i}"]),
                    "in_progress": int(record[f"progress_{i}"]),
                }
            )
            for j in range(i + 1, len(STAGES)):
                rows.append(
                    {
                        "segment_id": seg,
                        "stage": stage,
                        "to_stage": STAGES[j],
                        "clients": reached,
                        "moved": int(record[f"moved_{i}_{j}"]),
                        "median_days": record[f"median_{i}_{j}"],
                        "p90_days": record[f"p90_{i}_{j}"],
                    }
                )
    frame = pd.DataFrame(rows)
    frame["segment_name"] = frame["segment_id"].map(names)
    return frame


def _with_stage_totals(
    stages: pd.DataFrame,
    per_stage: pd.DataFrame,
    clients: pd.DataFrame,
    config: JourneyConfig,
) -> pd.DataFrame:
    """Rates (or "too few clients"), each stage's events and sentiment, the row of every
    stage ("*") and the row of stage "other" (counted apart, no flow)."""
    frame = stages.copy()
    enough = frame["clients"] >= config.min_clients
    pair = frame["to_stage"].notna()
    frame["conversion_rate"] = (frame["moved"] / frame["clients"]).where(pair & enough)
    frame["stall_share"] = (frame["stalled"] / frame["clients"]).where(~pair & enough)
    for column in ("median_days", "p90_days"):
        frame[column] = frame[column].where(pair & enough)
    frame["note"] = _notes(enough)
    totals = per_stage.rename(columns={"seg": "segment_id"})
    frame = frame.merge(
        totals[["segment_id", "stage", "events", "sentiment_mean", "sentiment_events"]],
        on=["segment_id", "stage"],
        how="left",
    )
    frame.loc[pair, ["events", "sentiment_mean", "sentiment_events"]] = np.nan
    extra = []
    for seg, row in clients.iterrows():
        mine = totals[totals["segment_id"] == seg]
        active = int(row["active"])
        rated = float(mine["sentiment_events"].sum())
        extra.append(
            {
                "segment_id": seg,
                "stage": ANY_STAGE,
                "clients": active,
                "stalled": int(row["stalled"]),
                "in_progress": int(row["in_progress"]),
                "stall_share": row["stalled"] / active if active >= config.min_clients else None,
                "events": int(mine["events"].sum()),
                "sentiment_mean": int(mine["s_sum"].sum()) / _SENTIMENT_SCALE / rated
                if rated
                else None,
                "sentiment_events": int(rated),
                "note": None if active >= config.min_clients else TOO_FEW,
            }
        )
        other = mine[mine["stage"] == OTHER_STAGE]
        if len(other):
            extra.append(
                {
                    "segment_id": seg,
                    "stage": OTHER_STAGE,
                    "clients": int(other["clients"].iloc[0]),
                    "events": int(other["events"].iloc[0]),
                    "sentiment_mean": other["sentiment_mean"].iloc[0],
                    "sentiment_events": int(other["sentiment_events"].iloc[0]),
                    "note": "event types the taxonomy does not know: counted apart",
                }
            )
    frame = pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)
    names = dict(zip(stages["segment_id"], stages["segment_name"], strict=False))
    frame["segment_name"] = frame["segment_id"].map(names)
    order = {s: i for i, s in enumerate((ANY_STAGE, *STAGES, OTHER_STAGE))}
    frame = frame.assign(
        _seg=frame["segment_id"] != ALL_SEGMENTS,
        _stage=frame["stage"].map(order),
        _to=frame["to_stage"].map(order).fillna(-1),
    ).sort_values(["_seg", "segment_id", "_stage", "_to"], kind="stable")
    return frame.drop(columns=["_seg", "_stage", "_to"]).reset_index(drop=True)


# ------------------------------------------------------------------------ touchpoints


def _touchpoint_rows(
    con: duckdb.DuckDBPyConnection,
    names: dict[str, str],
    active: pd.Series,
    config: JourneyConfig,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The top touchpoints per stage and segment (and every pain), and per stage its events,
    clients and sentiment (the emotion curve)."""
    frame = _per_segment(
        con,
        f"""
        SELECT {_SEG} AS seg, stage, event_type, channel, by_client,
               sum(n) AS events, count(*) AS clients, sum(s_sum)::BIGINT AS s_sum,
               sum(s_n) AS sentiment_events, sum(s_neg) AS negative_events
        FROM (SELECT tp.*, c.segment_id FROM {_PREFIX}tp tp
              JOIN {_PREFIX}client c USING (client_id))
        GROUP BY GROUPING SETS ((segment_id, stage, event_type, channel, by_client),
                                (stage, event_type, channel, by_client))
        """,
    )
    stage_clients = _per_segment(  # only stage "other" needs it: the others have `f0`..
        con,
        f"""
        SELECT {_SEG} AS seg, '{OTHER_STAGE}' AS stage, count(DISTINCT client_id) AS clients
        FROM (SELECT tp.client_id, c.segment_id FROM {_PREFIX}tp tp
              JOIN {_PREFIX}client c USING (client_id) WHERE tp.stage = '{OTHER_STAGE}')
        {_PER_SEGMENT}
        """,
    )
    per_stage = (
        frame.groupby(["seg", "stage"], sort=True)[["events", "s_sum", "sentiment_events"]]
        .sum()
        .reset_index()
        .merge(stage_clients, on=["seg", "stage"], how="left")
    )
    per_stage["sentiment_mean"] = _mean(per_stage["s_sum"], per_stage["sentiment_events"])
    frame["segment_id"] = frame["seg"]
    frame["segment_name"] = frame["seg"].map(names)
    frame["initiated_by"] = np.where(frame["by_client"], "client", "brand")
    frame["is_pain"] = frame["event_type"].isin(config.pain_event_types)
    frame["sentiment_mean"] = _mean(frame["s_sum"], frame["sentiment_events"])
    seg_active = frame["seg"].map(active).astype(float)
    enough = seg_active >= config.min_clients
    frame["reach"] = (frame["clients"] / seg_active).where(enough)
    frame["note"] = _notes(enough)
    frame = frame.sort_values(
        ["seg", "stage", "clients", "events", "event_type", "channel"],
        ascending=[True, True, False, False, True, True],
        na_position="first",
        kind="stable",
    )
    frame["rank"] = frame.groupby(["seg", "stage"]).cumcount() + 1
    frame = frame[(frame["rank"] <= config.top_touchpoints) | frame["is_pain"]]
    return frame.reset_index(drop=True), per_stage


def _notes(enough: pd.Series) -> pd.Series:
    """The note of each row: nothing, or "too few clients" where a number would mislead."""
    return pd.Series([None if ok else TOO_FEW for ok in enough], index=enough.index, dtype=object)


def _mean(total: pd.Series, count: pd.Series) -> pd.Series:
    """The mean sentiment from its scaled integer total (`_SENTIMENT_SCALE`), null where
    count is 0."""
    return (total / _SENTIMENT_SCALE / count.where(count > 0)).astype(float)


# ------------------------------------------------------------------------ drop-offs


def _dropoff_rows(
    con: duckdb.DuckDBPyConnection,
    window: _Window,
    names: dict[str, str],
    config: JourneyConfig,
) -> pd.DataFrame:
    """The drop-off points per segment, ranked by lost clients, and each one's causes."""
    points = _per_segment(
        con,
        f"""
        SELECT {_SEG} AS seg, stage, event_type, channel,
               count(*) FILTER (WHERE dropped) AS lost, count(*) FILTER (WHERE went_on) AS went_on
        FROM (
            SELECT c.segment_id, tp.stage, tp.event_type, tp.channel,
                   c.stalled AND c.last_at = tp.t_max AND c.last_tp.stage = tp.stage
                       AND c.last_tp.event_type = tp.event_type
                       AND c.last_tp.channel IS NOT DISTINCT FROM tp.channel AS dropped,
                   c.last_at > tp.t_max AS went_on
            FROM {_PREFIX}tp tp JOIN {_PREFIX}client c USING (client_id)
            WHERE tp.by_client
        )
        GROUP BY GROUPING SETS ((segment_id, stage, event_type, channel),
                                (stage, event_type, channel))
        HAVING count(*) FILTER (WHERE dropped) > 0
    """,
    )
    if points.empty:
        return pd.DataFrame(columns=DROPOFF_COLUMNS)
    points = points.sort_values(
        ["seg", "lost", "stage", "event_type", "channel"],
        ascending=[True, False, True, True, True],
        na_position="first",
        kind="stable",
    )
    points["rank"] = points.groupby("seg").cumcount() + 1
    points = points[points["rank"] <= config.max_dropoff_points].reset_index(drop=True)
    seen = points["lost"] + points["went_on"]
    enough = seen >= config.min_clients  # the drop share's denominator
    share = (points["lost"] / seen).where(enough)
    low, high = wilson_interval(points["lost"].to_numpy(), seen.to_numpy(), config.confidence)
    low, high = np.where(enough, low, np.nan), np.where(enough, high, np.nan)
    rows = pd.DataFrame(
        {
            "segment_id": points["seg"],
            "kind": "dropoff",
            "rank": points["rank"],
            "stage": points["stage"],
            "event_type": points["event_type"],
            "channel": points["channel"],
            "clients": points["lost"],
            "group_clients": points["lost"],
            "other_clients": points["went_on"],
            "effect": share,
            "effect_low": low,
            "effect_high": high,
            "note": _notes(enough),
        }
    )
    causes = _cause_rows(con, points, window, config)
    frame = pd.concat([rows, causes], ignore_index=True)
    frame["segment_name"] = frame["segment_id"].map(names)
    return frame


def _cause_rows(
    con: duckdb.DuckDBPyConnection,
    points: pd.DataFrame,
    window: _Window,
    config: JourneyConfig,
) -> pd.DataFrame:
    """For each drop-off point: factors seen at or before it, dropped vs went on."""
    # Each side is compared on at most _COMPARE_CAP clients (a fixed hash sample when larger):
    # shares from 20,000 clients are within about a point of the full count, and the
    # intervals use the sampled counts, so they stay honest.
    selected = points[["seg", "stage", "event_type", "channel", "rank"]].assign(
        keep_lost=(_COMPARE_CAP / points["lost"]).clip(upper=1.0),
        keep_on=(_COMPARE_CAP / points["went_on"].clip(lower=1)).clip(upper=1.0),
    )
    with _temporary(con, "points", selected) as point_table:
        # Every client who dropped at, or went on from, a selected point of its segment or
        # of "*", with the time of its last visit to the point (the cutoff for factors).
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {_PREFIX}pop AS
            SELECT p.seg, p.stage AS p_stage, p.event_type AS p_type, p.channel AS p_channel,
                   tp.client_id, tp.t_max AS cutoff, c.t_neg, c.stratum,
                   c.stalled AND c.last_at = tp.t_max AS dropped
            FROM {_PREFIX}tp tp
            JOIN {_PREFIX}client c USING (client_id)
            JOIN {point_table} p
              ON (p.seg = c.segment_id OR p.seg = '{ALL_SEGMENTS}')
             AND p.stage = tp.stage AND p.event_type = tp.event_type
             AND p.channel IS NOT DISTINCT FROM tp.channel
            WHERE tp.by_client
              AND ((c.stalled AND c.last_at = tp.t_max AND c.last_tp.event_type = tp.event_type
                    AND c.last_tp.stage = tp.stage
                    AND c.last_tp.channel IS NOT DISTINCT FROM tp.channel)
                   OR c.last_at > tp.t_max)
              AND hash(tp.client_id) % {_SAMPLE_BASE} < {_SAMPLE_BASE}
                  * CASE WHEN c.last_at > tp.t_max THEN p.keep_on ELSE p.keep_lost END
        """)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {_PREFIX}chan AS
            SELECT client_id, channel, min(t_min) AS t_min FROM {_PREFIX}tp
            WHERE channel IS NOT NULL AND client_id IN (SELECT client_id FROM {_PREFIX}pop)
            GROUP BY ALL
        """)
        counts = con.execute(f"""
            WITH factors AS (
                SELECT pop.seg, p_stage, p_type, p_channel, stratum, dropped,
                       CASE WHEN f.by_client THEN 'touchpoint' ELSE 'exposure' END AS factor_kind,
                       f.event_type || coalesce('/' || f.channel, '') AS factor, pop.client_id
                FROM {_PREFIX}pop pop JOIN {_PREFIX}tp f
                  ON f.client_id = pop.client_id AND f.t_min <= pop.cutoff
                UNION ALL
                SELECT pop.seg, p_stage, p_type, p_channel, stratum, dropped, 'channel', f.channel,
                       pop.client_id
                FROM {_PREFIX}pop pop JOIN {_PREFIX}chan f
                  ON f.client_id = pop.client_id AND f.t_min <= pop.cutoff
                UNION ALL
                SELECT pop.seg, p_stage, p_type, p_channel, stratum, dropped, 'category',
                       f.category,
                       pop.client_id
                FROM {_PREFIX}pop pop JOIN {_PREFIX}cat f
                  ON f.client_id = pop.client_id AND f.t_min <= pop.cutoff
                UNION ALL
                SELECT seg, p_stage, p_type, p_channel, stratum, dropped, 'sentiment',
                       '{NEGATIVE}', client_id
                FROM {_PREFIX}pop WHERE t_neg <= cutoff
            )
            SELECT seg, p_stage, p_type, p_channel, stratum, factor_kind, factor,
                   count(*) FILTER (WHERE dropped) AS group_with,
                   count(*) FILTER (WHERE NOT dropped) AS other_with
            FROM factors GROUP BY ALL
        """).df()
        sizes = con.execute(f"""
            SELECT seg, p_stage, p_type, p_channel, stratum,
                   count(*) FILTER (WHERE dropped) AS group_clients,
                   count(*) FILTER (WHERE NOT dropped) AS other_clients
            FROM {_PREFIX}pop GROUP BY ALL
        """).df()
    keys = ["seg", "p_stage", "p_type", "p_channel", "stratum"]
    strata = counts.merge(sizes, on=keys, how="left")
    return _rank_causes(_pooled_over_strata(strata, config.confidence), config)


def _pooled_over_strata(strata: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """One row per point and factor: the counts summed over the behavioral clusters, and the
    lift pooled across them (Mantel-Haenszel), so that what tells a segment's clusters apart
    is not taken for a cause when its dropped and continuing clients come from different
    clusters."""
    keys = ["seg", "p_stage", "p_type", "p_channel", "factor_kind", "factor"]
    if strata.empty:
        return strata.assign(effect=[], effect_low=[], effect_high=[])
    # Every stratum of a point, also where a factor is absent (zero counts) or on one side only.
    sizes = strata[[*keys[:4], "stratum", "group_clients", "other_clients"]].drop_duplicates(
        [*keys[:4], "stratum"]
    )
    factors = strata[keys].drop_duplicates()
    full = factors.merge(sizes, on=keys[:4]).merge(
        strata[[*keys, "stratum", "group_with", "other_with"]],
        on=[*keys, "stratum"],
        how="left",
    )
    full[["group_with", "other_with"]] = full[["group_with", "other_with"]].fillna(0)
    ratio, low, high = mantel_haenszel_interval(
        full.groupby(keys, dropna=False, sort=True).ngroup().to_numpy(),
        full["group_with"],
        full["group_clients"],
        full["other_with"],
        full["other_clients"],
        confidence,
    )
    pooled = full.groupby(keys, dropna=False, sort=True)[
        ["group_with", "group_clients", "other_with", "other_clients"]
    ].sum()
    pooled = pooled.reset_index()
    pooled[["effect", "effect_low", "effect_high"]] = np.column_stack([ratio, low, high])
    return pooled


def _rank_causes(frame: pd.DataFrame, config: JourneyConfig) -> pd.DataFrame:
    """Lift of each factor with its interval; the over-represented ones, most reliable first."""
    if frame.empty:
        return pd.DataFrame(columns=DROPOFF_COLUMNS)
    enough = (frame["group_clients"] >= config.min_clients) & (
        frame["other_clients"] >= config.min_clients
    )
    frame = frame.assign(enough=enough)
    # A cause must be over-represented and behind a share of the drop-offs worth acting on:
    # a factor seen in 3 of 35 dropped clients can show a large lift by chance alone, and
    # dozens of factors are compared at each point.
    common = frame["group_with"] >= np.maximum(_MIN_CAUSE_CLIENTS, 0.05 * frame["group_clients"])
    frame = frame[common & (frame["effect"] > 1)].copy()
    frame["score"] = np.where(frame["enough"], np.log(frame["effect_low"]), -np.inf)
    frame = frame.sort_values(
        [
            "seg",
            "p_stage",
            "p_type",
            "p_channel",
            "enough",
            "score",
            "group_with",
            "factor_kind",
            "factor",
        ],
        ascending=[True, True, True, True, False, False, False, True, True],
        na_position="first",
        kind="stable",
    )
    frame["rank"] = (
        frame.groupby(["seg", "p_stage", "p_type", "p_channel"], dropna=False).cumcount() + 1
    )
    frame = frame[frame["rank"] <= config.max_causes]
    return _comparison_rows(
        frame,
        "cause",
        {
            "stage": frame["p_stage"],
            "event_type": frame["p_type"],
            "channel": frame["p_channel"],
            "factor_kind": frame["factor_kind"],
            "factor": frame["factor"],
            "clients": frame["group_clients"],
            "group_clients": frame["group_clients"],
            "group_with": frame["group_with"],
            "other_clients": frame["other_clients"],
            "other_with": frame["other_with"],
        },
    )


def _comparison_rows(
    frame: pd.DataFrame, kind: str, columns: dict[str, pd.Series | np.ndarray]
) -> pd.DataFrame:
    """`journey_dropoffs` rows of a ranked comparison (causes, moments): `columns` says what
    is compared; the effect and its interval are left out where the sample is too small."""
    enough = frame["enough"]
    effects = {c: frame[c].where(enough) for c in ("effect", "effect_low", "effect_high")}
    head = {"segment_id": frame["seg"], "kind": kind, "rank": frame["rank"]}
    return pd.DataFrame({**head, **columns, **effects, "note": _notes(enough)}).reset_index(
        drop=True
    )


# ------------------------------------------------------------------------ moments of truth


def _moment_rows(
    con: duckdb.DuckDBPyConnection,
    names: dict[str, str],
    config: JourneyConfig,
) -> pd.DataFrame:
    """Per stage: the client-initiated touchpoints whose presence most raises or lowers the
    share of clients who reach the next stage.

    Presence counts within `stall_days` after first reaching the stage and before reaching
    the next one: the same horizon for every client, so those who never convert do not
    collect touchpoints for longer than those who do (which would make every common
    touchpoint look harmful)."""
    last = len(STAGES) - 1
    groups = ", ".join(
        f"c.f{i} IS NOT NULL AND (c.f{i + 1} IS NULL OR c.f{i + 1} >= c.f{i}) AS pop{i},"
        f" c.f{i + 1} IS NOT NULL AS conv{i}"
        for i in range(last)
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {_PREFIX}client_pop AS
        SELECT c.client_id, c.segment_id, {groups} FROM {_PREFIX}client c
    """)
    steps = ", ".join(_sql_text(t) for t in ("", *config.funnel_steps))
    present_parts = " UNION ALL ".join(
        f"SELECT {i} AS s, c.segment_id, tp.stage, tp.event_type, tp.channel,"
        f" c.conv{i} AS converted"
        f" FROM {_PREFIX}tp tp JOIN {_PREFIX}client_pop c USING (client_id)"
        f" WHERE c.pop{i} AND tp.in{i} AND tp.event_type NOT IN ({steps})"
        for i in range(last)
    )
    total_parts = " UNION ALL ".join(
        f"SELECT {i} AS s, segment_id, conv{i} AS converted FROM {_PREFIX}client_pop WHERE pop{i}"
        for i in range(last)
    )
    present = _per_segment(
        con,
        f"""
        SELECT s, {_SEG} AS seg, stage, event_type, channel,
               count(*) AS n_with, count(*) FILTER (WHERE converted) AS conv_with
        FROM ({present_parts})
        GROUP BY GROUPING SETS ((s, segment_id, stage, event_type, channel),
                                (s, stage, event_type, channel))
        """,
    )
    total = _per_segment(
        con,
        f"""
        SELECT s, {_SEG} AS seg, count(*) AS n_total,
               count(*) FILTER (WHERE converted) AS conv_total
        FROM ({total_parts})
        GROUP BY GROUPING SETS ((s, segment_id), (s))
        """,
    )
    if present.empty:
        return pd.DataFrame(columns=DROPOFF_COLUMNS)
    frame = present.merge(total, on=["s", "seg"], how="left")
    frame["n_without"] = frame["n_total"] - frame["n_with"]
    frame["conv_without"] = frame["conv_total"] - frame["conv_with"]
    diff, low, high = newcombe_interval(
        frame["conv_with"],
        frame["n_with"],
        frame["conv_without"],
        frame["n_without"],
        config.confidence,
    )
    enough = (frame["n_with"] >= config.min_clients) & (frame["n_without"] >= config.min_clients)
    frame = frame.assign(effect=diff, effect_low=low, effect_high=high, enough=enough)
    # Raising and lowering touchpoints are ranked apart, each by how far its interval stays
    # from zero (a reliable large effect first); too-small samples follow, by clients.
    frame = frame[frame["effect"] != 0].copy()  # no difference at all: neither raises nor lowers
    frame["raises"] = frame["effect"] > 0
    frame["score"] = np.where(
        frame["enough"],
        np.where(frame["raises"], frame["effect_low"], -frame["effect_high"]),
        -np.inf,
    )
    frame = frame.sort_values(
        ["seg", "s", "raises", "enough", "score", "n_with", "event_type", "channel"],
        ascending=[True, True, False, False, False, False, True, True],
        na_position="first",
        kind="stable",
    )
    frame["rank"] = frame.groupby(["seg", "s", "raises"]).cumcount() + 1
    frame = frame[frame["rank"] <= config.max_moments]
    rows = _comparison_rows(
        frame,
        "moment",
        {
            "stage": frame["s"].map(lambda i: STAGES[int(i)]),
            "to_stage": frame["s"].map(lambda i: STAGES[int(i) + 1]),
            "event_type": frame["event_type"],
            "channel": frame["channel"],
            "factor_kind": np.where(frame["raises"], "raises", "lowers"),
            "factor": frame["event_type"]
            + frame["channel"].map(lambda c: "" if c is None or c != c else f"/{c}"),
            "clients": frame["n_total"],
            "group_clients": frame["n_with"],
            "group_with": frame["conv_with"],
            "other_clients": frame["n_without"],
            "other_with": frame["conv_without"],
        },
    )
    rows["segment_name"] = rows["segment_id"].map(names)
    return rows


def _sql_text(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _ordered(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """`frame` with exactly `columns` in that order (missing ones null)."""
    out = frame.reindex(columns=columns)
    return out.reset_index(drop=True)
