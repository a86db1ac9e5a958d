"""Point-in-time feature build: one row of behavioral features per client, as of a date, in DuckDB.

Every event later than the end of the as-of day is ignored (`features.events.day_end`), so a
table built as of D never sees the future. The work is one pass by client over all events that
yields every count by journey stage, channel and window at once (packed counters: several counts
summed in one integer, see `_packed`) and the active-day bitmap, plus small passes over subsets
(rare event types with sentiment, purchase days, carts, categories), then per-client arithmetic
on those rollups, sorted by client. No Python loop touches events. DuckDB pays per aggregate per
event, so the main pass keeps few aggregates and whatever concerns few events has its own pass.

Every per-client value depends on that client's events only, so the build can run shard by
shard (clients hash-partitioned with DuckDB's `hash(client_id) % shards`) and gives the same
table as the one-shot build. Sums that could depend on the order of parallel aggregation are
exact: money in integer micro-units, sentiment in nano-units, and floating sums over small
per-client lists in a fixed order.

Column names, order, families and types come from `features.catalog`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from configs import FeaturesConfig, SegmentationError, as_date
from features.catalog import (
    CHANNEL_WINDOWS,
    CHANNELS,
    FIXED_WINDOW,
    RECENT_WEIGHT,
    STAGE_RANK,
    STAGES,
    feature_catalog,
    feature_schema,
    feature_windows,
)
from features.events import EVENT_SCHEMA, day_end

US_PER_DAY = 86_400_000_000
MONEY_SCALE = 1_000_000  # money is summed in integer micro-units: exact in any order
SENTIMENT_SCALE = 1_000_000_000
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_TEMP_PREFIX = "_feat_"
JS_SCALE = 10**12  # Jensen-Shannon terms are summed in integer pico-units: exact in any order
_PIECES = ("main", "rare", "pday", "cart", "cat", "wide")
# Packed counters: several per-client counts summed in one integer word, `bits` bits each (see
# `_packed`). A field never exceeds the client's event count, so while that count is below
# 2**bits no field carries into the next. One sum instead of one FILTER per count: DuckDB pays
# per aggregate per row, and on events in time order mostly per byte of aggregate state, so few
# and small states are what make a single pass over the events cheap. Narrow fields (five in a
# BIGINT, summed without overflow checks since the fields cannot carry) are the fast path; the
# main-pass rows of the few clients with 2**NARROW_BITS events or more are counted again with
# wide fields (three in a HUGEINT) and replaced.
NARROW_BITS = 12
FIELD_BITS = 32
# Active days: one bit per day of age in HUGEINT words OR-ed per client (a few bit_or are much
# cheaper per event than one bitstring_agg). 127 bits a word: the sign bit stays clear, so
# bit_count (a TINYINT) cannot overflow.
DAY_WORD_BITS = 127
_RANK_SHIFT = 60  # furthest-stage key: rank * 2**60 + age in microseconds (< 36,000 years)
# Stage code of a brand-initiated event (client-initiated ones carry their stage rank, 0 to
# len(STAGES)): such events count as exposure only, never as the client's activity, stage,
# channel or intent.
BRAND_CODE = len(STAGES) + 1
_OTHER_TYPES = (
    ("return", "returns"),
    ("refund", "refunds"),
    ("support_ticket", "tickets"),
    ("review", "reviews"),
    ("referral", "referrals"),
    ("share", "shares"),
)


class FeatureBuildError(SegmentationError, ValueError):
    """The feature build cannot run on this input (missing table or column, bad arguments)."""


def build_features(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    config: FeaturesConfig | None = None,
    events_table: str = "events",
    shards: int = 1,
) -> pa.Table:
    """The feature table as of the end of `as_of`: one row per client with an event by then.

    With `shards > 1` the clients are hash-partitioned and built one shard at a time (less
    memory per step); the result is the same table. Rows are sorted by client_id; columns and
    types follow `features.catalog.feature_catalog(config)`. No event after the end of the
    as-of day (UTC) is read.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The connection holding the events table.
    as_of : datetime.date
        The as-of day: every event before the end of that day counts.
    config : FeaturesConfig, optional
        Windows, momentum, intent and abandonment periods; default `FeaturesConfig()`.
    events_table : str, default "events"
        The events table, as `features.events.load_events` makes it (a plain name).
    shards : int, default 1
        The number of hash partitions of the clients built one after the other.

    Returns
    -------
    pyarrow.Table
        One row per client, sorted by client_id, with the schema
        `features.catalog.feature_schema(config)`.

    Raises
    ------
    FeatureBuildError
        A bad argument, or the events table is missing or lacks a contract column (the message
        names the table and the columns).
    """
    config = config or FeaturesConfig()
    if not isinstance(shards, int) or shards < 1:
        raise FeatureBuildError(f"shards must be a positive integer, got {shards!r}")
    if shards == 1:
        return build_features_shard(con, as_of, config, 0, 1, events_table)
    parts = [
        build_features_shard(con, as_of, config, k, shards, events_table) for k in range(shards)
    ]
    return _sorted_by_client(parts)


def build_features_shard(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    config: FeaturesConfig | None,
    shard: int,
    shards: int,
    events_table: str = "events",
) -> pa.Table:
    """The feature rows of one hash partition: clients with `hash(client_id) % shards == shard`.

    Every per-client value depends on that client's events only, so the shards of a build,
    concatenated and sorted by client_id, are the table `build_features` gives.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The connection holding the events table (temporary tables are made and dropped on it).
    as_of : datetime.date
        The as-of day: every event before the end of that day counts.
    config : FeaturesConfig or None
        Windows, momentum, intent and abandonment periods; None means `FeaturesConfig()`.
    shard : int
        This partition, in ``0 .. shards - 1``.
    shards : int
        The number of partitions (>= 1).
    events_table : str, default "events"
        The events table, as `features.events.load_events` makes it (a plain name).

    Returns
    -------
    pyarrow.Table
        The rows of the partition's clients, sorted by client_id, with the schema
        `features.catalog.feature_schema(config)`.

    Raises
    ------
    FeatureBuildError
        A bad argument, the events table is missing or lacks a contract column, or a count
        would pass the exact range of the packed counters.
    """
    config = config or FeaturesConfig()
    try:
        as_of = as_date(as_of)
    except TypeError as exc:
        raise FeatureBuildError(str(exc)) from None
    if not isinstance(shards, int) or shards < 1:
        raise FeatureBuildError(f"shards must be a positive integer, got {shards!r}")
    if not isinstance(shard, int) or not 0 <= shard < shards:
        raise FeatureBuildError(f"shard must be in 0..{shards - 1}, got {shard!r}")
    _check_events_table(con, events_table)
    plan = _Plan(as_of, config, events_table, shard, shards)
    try:
        for name, sql in plan.pieces():
            con.execute(f"CREATE OR REPLACE TEMP TABLE {_TEMP_PREFIX}{name} AS {sql}")
        _recount_heavy_clients(con, plan)
        # Sorted in SQL: sorting in Arrow is as fast only once its memory pool is warm, and a
        # build is usually the only one in its process.
        table = con.sql(plan.final_sql()).to_arrow_table()
        _check_key_ranges(table)
    finally:
        for name in _PIECES:
            con.execute(f"DROP TABLE IF EXISTS {_TEMP_PREFIX}{name}")
    return table.cast(feature_schema(config))


def btyd_frame(table: pa.Table | pd.DataFrame, purchasers_only: bool = True) -> pd.DataFrame:
    """BTYD inputs for the CLTV model: client_id, frequency, recency, T, monetary_value (days).

    By default only clients who purchased (T > 0) are kept: BG/NBD needs a first purchase.
    """
    cols = ["client_id", "frequency", "recency", "T", "monetary_value", "has_purchased"]
    if isinstance(table, pa.Table):
        frame = table.select(cols).to_pandas()
    else:
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise FeatureBuildError(f"feature frame lacks column(s) {', '.join(missing)}")
        frame = table[cols].copy()
    if purchasers_only:
        frame = frame[frame["has_purchased"] == 1]
    frame = frame.drop(columns="has_purchased").reset_index(drop=True)
    for col in ("frequency", "recency", "T", "monetary_value"):
        frame[col] = frame[col].astype("float64")
    return frame


def purchase_log(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    events_table: str = "events",
    *,
    shard: int = 0,
    shards: int = 1,
) -> pd.DataFrame:
    """Purchases up to the end of `as_of`: client_id, event_time, amount (sorted), for backtests.

    With `shards` > 1, of the clients of one hash partition only (`hash(client_id) % shards
    == shard`, the partition of `build_features_shard`): a backtest on a sample of clients
    reads a share of the purchases, not all of them."""
    _check_events_table(con, events_table)
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in 0 .. {shards - 1}, got {shard}")
    end = day_end(as_date(as_of))
    partition = f" AND hash(client_id) % {shards} = {shard}" if shards > 1 else ""
    return con.sql(
        f"""
        SELECT client_id, event_time, amount FROM {events_table}
        WHERE event_type = 'purchase' AND event_time < TIMESTAMP '{end.isoformat(sep=" ")}'
        {partition}
        ORDER BY client_id, event_time, amount
        """
    ).df()


def write_features(table: pa.Table, out_path: str | Path) -> Path:
    """Write the feature table as one Parquet file (parent folders created) and return its path."""
    path = Path(out_path)
    if path.suffix.lower() != ".parquet" and (path.is_dir() or not path.suffix):
        path = path / "features.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------------------------------------


def _sorted_by_client(tables: list[pa.Table]) -> pa.Table:
    """The tables, concatenated and sorted by client_id one column at a time (less memory).

    The list is emptied: holding no other reference, each source column is freed once taken.
    """
    table = pa.concat_tables(tables)
    tables.clear()
    names, columns = table.column_names, table.columns
    del table
    order = pc.sort_indices(columns[0])
    out = []
    for k in range(len(columns)):
        out.append(columns[k].take(order))
        columns[k] = None
    return pa.table(out, names=names)


def _recount_heavy_clients(con: duckdb.DuckDBPyConnection, plan: _Plan) -> None:
    """Replace the main-pass rows of clients whose narrow packed fields may have carried."""
    main, limit = f"{_TEMP_PREFIX}main", 2**NARROW_BITS
    heavy = f"SELECT client_id FROM {main} WHERE n_events >= {limit}"
    if not con.sql(f"SELECT count(*) FROM ({heavy})").fetchall()[0][0]:
        return
    wide = plan.main_sql(FIELD_BITS, only=heavy)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_TEMP_PREFIX}wide AS {wide}")
    con.execute(f"DELETE FROM {main} WHERE n_events >= {limit}")
    con.execute(f"INSERT INTO {main} BY NAME SELECT * FROM {_TEMP_PREFIX}wide")


def _check_key_ranges(table: pa.Table) -> None:
    """Fail loudly where the packed counters or the stage keys could no longer be exact."""
    if not table.num_rows:
        return
    if pc.max(table["n_events"]).as_py() >= 2**FIELD_BITS:
        raise FeatureBuildError(f"a client has 2**{FIELD_BITS} events or more: too many")
    if pc.max(table["tenure_days"]).as_py() * US_PER_DAY >= 2**_RANK_SHIFT:
        raise FeatureBuildError("an event is more than 36,000 years before the as-of date")


def _check_events_table(con: duckdb.DuckDBPyConnection, events_table: str) -> None:
    if not _IDENTIFIER.match(events_table):
        raise FeatureBuildError(f"events_table {events_table!r} is not a plain table name")
    try:
        described = con.sql(f"DESCRIBE {events_table}").fetchall()
    except duckdb.Error as exc:
        raise FeatureBuildError(f"events table {events_table!r} not found: {exc}") from exc
    present = {row[0] for row in described}
    needed = [c for c in EVENT_SCHEMA if c != "event_id"]
    missing = [c for c in needed if c not in present]
    if missing:
        raise FeatureBuildError(
            f"events table {events_table!r} lacks column(s) {', '.join(missing)}"
            " (load it with features.events.load_events)"
        )


_MIX = (*CHANNELS, "other")


def _preferred_channel() -> str:
    """The channel with the most events; ties go to the alphabetically first name."""
    counts = ", ".join(f"coalesce(n_{c}, 0)" for c in _MIX)
    cases = " ".join(
        f"WHEN coalesce(n_{c}, 0) = greatest({counts}) THEN '{c}'" for c in sorted(_MIX)
    )
    return f"CASE WHEN coalesce(n_chan, 0) = 0 THEN NULL {cases} END"


def _channel_entropy() -> str:
    """Shannon entropy (bits) of the channel counts, as a fixed-order row expression."""
    terms = " + ".join(
        f"CASE WHEN n_{c} > 0 THEN -(n_{c} / n_chan) * log2(n_{c} / n_chan) ELSE 0.0 END"
        for c in _MIX
    )
    return f"CASE WHEN coalesce(n_chan, 0) = 0 THEN NULL ELSE greatest(0.0, {terms}) END"


def _ratio(recent: str, previous: str) -> str:
    """(r - p) / (r + p), 0 when both are 0: a bounded, symmetric momentum."""
    r, p = f"CAST(coalesce({recent}, 0) AS DOUBLE)", f"CAST(coalesce({previous}, 0) AS DOUBLE)"
    return f"CASE WHEN {r} + {p} = 0 THEN 0.0 ELSE ({r} - {p}) / ({r} + {p}) END"


_Cell = Callable[[int, int], bool]


def _cell(code: int | range | None = None, above: int = -1, upto: int | None = None) -> _Cell:
    """A packed field's predicate on a cell (code, age bucket): the code is `code` (one of them
    for a range, any code when None) and the bucket is in (above, upto] (no upper bound when
    `upto` is None)."""
    codes = code if isinstance(code, range) else None if code is None else range(code, code + 1)

    def hit(cell_code: int, bucket: int) -> bool:
        in_code = codes is None or cell_code in codes
        return in_code and above < bucket and (upto is None or bucket <= upto)

    return hit


def _packed(
    prefix: str,
    fields: list[tuple[str, _Cell]],
    cells: list[tuple[int, int]],
    index: str,
    bits: int,
) -> tuple[list[str], list[str]]:
    """Packed counters: the sums that count `fields` per group, and the columns unpacking them.

    Each field is a predicate on a cell (a code, an age bucket); `index` is the SQL of the 1-based
    position of a row's cell in `cells`. A row adds, to word g, 1 << (bits * j) for every field j
    of that word its cell satisfies; summing the words counts all fields at once. Narrow fields
    go 63 // bits to a BIGINT word, summed by `sum_no_overflow`: with every field below 2**bits
    for the group, the sum stays below 2**63 (this is what the caller must guarantee). Wider
    fields go three to a HUGEINT, summed by the checked `sum`.
    """
    aggs, cols = [], []
    mask = 2**bits - 1
    if bits < FIELD_BITS:
        per_word, word_type, agg = 63 // bits, "BIGINT", "sum_no_overflow"
    else:
        per_word, word_type, agg = 127 // bits, "HUGEINT", "sum"
    for g in range(0, len(fields), per_word):
        word = fields[g : g + per_word]
        name = f"{prefix}{g // per_word}"
        values = [
            sum(1 << (bits * j) for j, (_, hit) in enumerate(word) if hit(*cell)) for cell in cells
        ]
        listed = ", ".join(f"CAST('{v}' AS {word_type})" for v in values)
        aggs.append(f"{agg}([{listed}][{index}]) AS {name}")
        for j, (alias, _) in enumerate(word):
            cols.append(f"CAST(({name} >> {bits * j}) & {mask} AS BIGINT) AS {alias}")
    return aggs, cols


class _Plan:
    """The SQL of one build: rollup pieces (temp tables) and the final per-client select."""

    def __init__(
        self, as_of: date, config: FeaturesConfig, events_table: str, shard: int, shards: int
    ) -> None:
        self.as_of = as_of
        self.config = config
        self.end = day_end(as_of)
        self.end_us = int((self.end - datetime(1970, 1, 1)).total_seconds()) * 1_000_000
        self.windows = feature_windows(config)
        self.m = config.momentum_days
        self.i = config.intent_days
        self.a = config.abandonment_days
        self.day_words = -(-self.windows[-1] // DAY_WORD_BITS)
        # Buckets of event age (days before the end of the as-of day): every window used by a
        # packed counter is `b <= bucket_of(days)`.
        self.bounds = sorted(
            set(self.windows) | {self.m, 2 * self.m, FIXED_WINDOW} | set(CHANNEL_WINDOWS)
        )
        where = f"event_time < TIMESTAMP '{self.end.isoformat(sep=' ')}'"
        if shards > 1:
            where += f" AND hash(client_id) % {shards} = {shard}"
        stage_case = " ".join(f"WHEN '{s}' THEN {STAGE_RANK[s]}" for s in STAGES)
        chan_case = " ".join(f"WHEN '{c}' THEN {k + 1}" for k, c in enumerate(CHANNELS))
        type_case = " ".join(f"WHEN '{t}' THEN {k + 1}" for k, (t, _) in enumerate(_OTHER_TYPES))
        bucket_case = " ".join(f"WHEN age < {b} THEN {k}" for k, b in enumerate(self.bounds))
        self.ev = f"""(
            SELECT *, CASE {bucket_case} ELSE {len(self.bounds)} END AS b FROM (
                SELECT client_id, event_type, channel, amount, category, sentiment,
                       epoch_us(event_time) AS ts,
                       CAST(round(amount * {MONEY_SCALE}) AS BIGINT) AS amt_u,
                       DATE '{as_of.isoformat()}' - CAST(event_time AS DATE) AS age,
                       CASE WHEN NOT by_client THEN {BRAND_CODE} ELSE
                           CASE stage {stage_case} ELSE 0 END END AS sc,
                       CASE WHEN channel IS NULL OR NOT by_client THEN 0 ELSE
                           CASE channel {chan_case} ELSE {len(CHANNELS) + 1} END END AS cc,
                       CASE event_type {type_case} ELSE 0 END AS tc
                FROM {events_table} WHERE {where}))"""

    def bucket_of(self, days: int) -> int:
        """The last bucket inside a window of `days` (a window is `b <= bucket_of(days)`)."""
        return self.bounds.index(days)

    def days(self, ts: str) -> str:
        return f"(({self.end_us} - {ts}) / {US_PER_DAY}.0)"

    def pieces(self) -> list[tuple[str, str]]:
        ev, w90 = self.ev, FIXED_WINDOW
        return [
            ("main", self.main_sql(NARROW_BITS)),
            ("rare", self.rare_sql()),
            (
                "pday",
                f"""SELECT client_id, age, count(*) AS n, sum(amt_u) AS amt_u, max(ts) AS t1
                FROM {ev} WHERE event_type = 'purchase' GROUP BY client_id, age""",
            ),
            (
                "cart",
                # Each cart/checkout with the first purchase at or after it (same client).
                f"""SELECT client_id, event_type, ts, min(CASE WHEN event_type = 'purchase'
                           THEN ts END) OVER (PARTITION BY client_id ORDER BY ts
                           RANGE BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS next_p
                    FROM {ev}
                    WHERE event_type IN ('add_to_cart', 'checkout_start', 'purchase')
                      AND age < {w90}""",
            ),
            (
                "cat",
                f"""SELECT *, sum(r) OVER (PARTITION BY client_id) AS r_tot,
                           sum(p) OVER (PARTITION BY client_id) AS p_tot
                FROM (SELECT client_id, category,
                             count(*) FILTER (WHERE age < {self.i}) AS r,
                             count(*) FILTER (WHERE age >= {self.i}) AS p
                      FROM {ev} WHERE category IS NOT NULL AND age < {2 * self.i}
                            AND sc <> {BRAND_CODE}
                      GROUP BY client_id, category)""",
            ),
        ]

    def main_sql(self, bits: int, only: str | None = None) -> str:
        """One pass by client over all events: every count by stage, channel and window, and the
        active-day bitmap (words `days0`, `days1`, ...: bit a of word k is age 127k + a).

        Counts are packed in fields of `bits` bits; `only` (a query of client_id) restricts the
        pass to those clients."""
        kb, m = self.bucket_of, self.m
        own = range(BRAND_CODE)  # the codes of client-initiated events
        stage: list[tuple[str, _Cell]] = [
            ("ev_recent", _cell(own, upto=kb(m))),
            ("ev_prev", _cell(own, above=kb(m), upto=kb(2 * m))),
            ("n_exposures", _cell(BRAND_CODE)),
        ]
        for w in self.windows:
            stage.append((f"events_{w}d", _cell(own, upto=kb(w))))
            stage.append((f"exposures_{w}d", _cell(BRAND_CODE, upto=kb(w))))
            for s in STAGES:
                stage.append((f"{s}_events_{w}d", _cell(STAGE_RANK[s], upto=kb(w))))
        chan: list[tuple[str, _Cell]] = []  # n_chan, events with a channel, is their sum
        for k, c in enumerate(_MIX):
            chan.append((f"n_{c}", _cell(k + 1)))
        for w in CHANNEL_WINDOWS:
            for k, c in enumerate(CHANNELS):
                chan.append((f"{c}_events_{w}d", _cell(k + 1, upto=kb(w))))
        aggs: list[str] = []
        cols: list[str] = []
        for prefix, fields, keys, key in (
            ("ps", stage, range(BRAND_CODE + 1), "sc"),
            ("pc", chan, range(len(_MIX) + 1), "cc"),
        ):
            piece_aggs, piece_cols = self._packed(prefix, fields, keys, key, bits)
            aggs += piece_aggs
            cols += piece_cols
        max_w, d = self.windows[-1], DAY_WORD_BITS
        own_event = f"sc <> {BRAND_CODE}"
        day_words = [
            f"bit_or(CASE WHEN {own_event} AND age >= {d * k}"
            f" AND age < {min(d * (k + 1), max_w)}"
            f" THEN CAST(1 AS HUGEINT) << CAST(age - {d * k} AS HUGEINT) END) AS days{k}"
            for k in range(self.day_words)
        ]
        return f"""
            SELECT client_id, n_events, first_ts,
                   coalesce(last_ts, first_ts) AS last_ts, last_before_m, first_in_m,
                   fkey >> {_RANK_SHIFT} AS furthest_rank,
                   {self.end_us} - (fkey & {2**_RANK_SHIFT - 1}) AS furthest_t0,
                   coalesce(((ckey % 8) + 8) % 8, 0) AS current_rank,
                   {", ".join(f"days{k}" for k in range(self.day_words))}, {", ".join(cols)},
                   {" + ".join(f"n_{c}" for c in _MIX)} AS n_chan
            FROM (
                SELECT client_id, count(*) AS n_events, min(ts) AS first_ts,
                       max(CASE WHEN {own_event} THEN ts END) AS last_ts,
                       max(CASE WHEN age >= {m} AND {own_event} THEN ts END) AS last_before_m,
                       min(CASE WHEN age < {m} AND {own_event} THEN ts END) AS first_in_m,
                       max(CASE WHEN {own_event} THEN sc ELSE 0 END * {2**_RANK_SHIFT}
                           + ({self.end_us} - ts)) AS fkey,
                       max(CASE WHEN sc > 0 AND {own_event} THEN ts * 8 + sc END) AS ckey,
                       {", ".join(day_words)},
                       {", ".join(aggs)}
                FROM {self.ev} {f"WHERE client_id IN ({only})" if only else ""}
                GROUP BY client_id)"""

    def rare_sql(self) -> str:
        """One pass by client over the few events of the rare types or with a sentiment: their
        counts (all time and in the fixed window), return and refund amounts, sentiment sums.

        Kept out of the main pass, where every aggregate costs a state update on every event."""
        kb = self.bucket_of
        types: list[tuple[str, _Cell]] = []
        for k, (_, alias) in enumerate(_OTHER_TYPES):
            types.append((f"{alias}_all", _cell(k + 1)))
            types.append((f"{alias}_90", _cell(k + 1, upto=kb(FIXED_WINDOW))))
        # Wide fields: these rows are few, and their counts are then exact for every client.
        aggs, cols = self._packed("pt", types, range(len(_OTHER_TYPES) + 1), "tc", FIELD_BITS)
        amounts = [
            f"sum(CASE WHEN tc = {k + 1} THEN amt_u END) AS {alias}_u"
            for k, (t, alias) in enumerate(_OTHER_TYPES)
            if t in ("return", "refund")
        ]
        ss = SENTIMENT_SCALE
        return f"""
            SELECT client_id, returns_u, refunds_u, n_sent, s_u, last_u, n_sent_w, s_u_w,
                   {", ".join(cols)}
            FROM (
                SELECT client_id, {", ".join(amounts + aggs)}, count(sentiment) AS n_sent,
                       sum(CAST(round(sentiment * {ss}) AS BIGINT)) AS s_u,
                       count(sentiment) FILTER (WHERE age < {FIXED_WINDOW}) AS n_sent_w,
                       sum(CAST(round(sentiment * {ss}) AS BIGINT))
                           FILTER (WHERE age < {FIXED_WINDOW}) AS s_u_w,
                       CAST(round(max_by(sentiment, (ts, sentiment))
                                  FILTER (WHERE sentiment IS NOT NULL) * {ss}) AS BIGINT) AS last_u
                FROM {self.ev} WHERE tc > 0 OR sentiment IS NOT NULL GROUP BY client_id)"""

    def _packed(
        self, prefix: str, fields: list[tuple[str, _Cell]], keys: range, key: str, bits: int
    ) -> tuple[list[str], list[str]]:
        """`_packed` over the cells (code, age bucket) of the code column `key`."""
        nb = len(self.bounds) + 1
        cells = [(k, b) for k in keys for b in range(nb)]
        return _packed(prefix, fields, cells, f"{key} * {nb} + b + 1", bits)

    def final_sql(self) -> str:
        t = _TEMP_PREFIX
        m = self.m
        purchase_aggs = [
            "sum(n) AS n_purchases",
            "count(*) AS purchase_days",
            "sum(amt_u) AS spend_u",
            "max(age) AS first_age",
            "min(age) AS last_age",
            "max(t1) AS last_p_ts",
            # coalesce: arg_max skips a null argument, so a first day with no known amount
            # would yield the second day's spend
            "arg_max(coalesce(amt_u, 0), age) AS first_day_u",
            f"sum(amt_u) FILTER (WHERE age < {m}) AS spend_recent",
            f"sum(amt_u) FILTER (WHERE age >= {m} AND age < {2 * m}) AS spend_prev",
            f"sum(n) FILTER (WHERE age < {m}) AS purch_recent",
            f"sum(n) FILTER (WHERE age >= {m} AND age < {2 * m}) AS purch_prev",
        ]
        for w in self.windows:
            purchase_aggs.append(f"sum(n) FILTER (WHERE age < {w}) AS purchases_{w}d")
            purchase_aggs.append(f"sum(amt_u) FILTER (WHERE age < {w}) AS spend_u_{w}d")
        a_us = self.a * US_PER_DAY
        done = f"(next_p IS NOT NULL AND next_p <= ts + {a_us})"
        due = f"(ts + {a_us} <= {self.end_us})"
        cart_aggs = []
        for etype, alias in (("add_to_cart", "cart"), ("checkout_start", "checkout")):
            is_t = f"event_type = '{etype}'"
            cart_aggs += [
                f"count(*) FILTER (WHERE {is_t}) AS {alias}_n",
                f"count(*) FILTER (WHERE {is_t} AND NOT {done} AND {due}) AS {alias}_abandoned",
                f"count(*) FILTER (WHERE {is_t} AND {done}) AS {alias}_converted",
                f"count(*) FILTER (WHERE {is_t} AND NOT {done} AND NOT {due}) AS {alias}_open",
            ]
        js_term = (
            "CASE WHEN r > 0 THEN 0.5 * (r / r_tot) * log2(2.0 * (r / r_tot)"
            " / (r / r_tot + p / p_tot)) ELSE 0.0 END"
            " + CASE WHEN p > 0 THEN 0.5 * (p / p_tot) * log2(2.0 * (p / p_tot)"
            " / (r / r_tot + p / p_tot)) ELSE 0.0 END"
        )
        cat_aggs = [
            "max(r_tot) AS r_tot",
            "max(p_tot) AS p_tot",
            "min_by(category, (-r, category)) FILTER (WHERE r > 0) AS dom_recent",
            "min_by(category, (-p, category)) FILTER (WHERE p > 0) AS dom_before",
            "count(*) FILTER (WHERE r > 0) AS categories_recent",
            f"sum(CASE WHEN r_tot > 0 AND p_tot > 0 THEN CAST(round(({js_term}) * {JS_SCALE})"
            f" AS BIGINT) ELSE 0 END) / {JS_SCALE} AS jsd",
        ]
        exprs = self._columns()
        missing = [f.name for f in feature_catalog(self.config) if f.name not in exprs]
        if missing:  # the catalog and the build must describe the same columns
            raise AssertionError(f"no expression for catalog features: {missing}")
        select = ",\n  ".join(
            f'{exprs[f.name]} AS "{f.name}"' for f in feature_catalog(self.config)
        )
        return f"""
        WITH pu AS (SELECT client_id, {", ".join(purchase_aggs)} FROM {t}pday GROUP BY client_id),
        ca AS (SELECT client_id, {", ".join(cart_aggs)} FROM {t}cart
               WHERE event_type <> 'purchase' GROUP BY client_id),
        ct AS (SELECT client_id, {", ".join(cat_aggs)} FROM {t}cat GROUP BY client_id)
        SELECT
          {select}
        FROM {t}main AS mn
        LEFT JOIN pu USING (client_id)
        LEFT JOIN ca USING (client_id)
        LEFT JOIN {t}rare USING (client_id)
        LEFT JOIN ct USING (client_id)
        ORDER BY client_id
        """

    def _active_days(self, w: int) -> str:
        """Days with an event among the last `w`: the set bits of ages below w, word by word."""
        d, terms = DAY_WORD_BITS, []
        for k in range(self.day_words):
            n = min(max(w - d * k, 0), d)  # ages of word k inside the window
            if n:
                mask = f"CAST('{2**n - 1}' AS HUGEINT)"
                terms.append(f"coalesce(CAST(bit_count(days{k} & {mask}) AS BIGINT), 0)")
        return " + ".join(terms)

    def _columns(self) -> dict[str, str]:
        """SQL expression of every feature over the joined per-client rollups."""
        ms, ss = MONEY_SCALE, SENTIMENT_SCALE
        w90 = FIXED_WINDOW
        max_w = self.windows[-1]

        def count(x: str) -> str:
            return f"CAST(coalesce({x}, 0) AS BIGINT)"

        def money(x: str) -> str:
            return f"CAST(coalesce({x}, 0) AS DOUBLE) / {ms}"

        rank_name = "CASE {x} " + " ".join(f"WHEN {r} THEN '{s}'" for s, r in STAGE_RANK.items())
        freq = "greatest(coalesce(purchase_days, 0) - 1, 0)"
        cols: dict[str, str] = {
            "client_id": "client_id",
            "recency_days": self.days("last_ts"),
            "days_since_last_purchase": self.days("last_p_ts"),
            "tenure_days": self.days("first_ts"),
            "n_events": count("n_events - n_exposures"),  # the client's own events
            "n_purchases": count("n_purchases"),
            "purchase_days": count("purchase_days"),
            "has_purchased": "CAST(coalesce(purchase_days, 0) > 0 AS BIGINT)",
            "total_spend": money("spend_u"),
            "avg_order_value": f"CAST(spend_u AS DOUBLE) / {ms} / nullif(n_purchases, 0)",
            "mean_days_between_purchases": "CAST(first_age - last_age AS DOUBLE)"
            f" / nullif({freq}, 0)",
            "n_returns": count("returns_all"),
            "n_refunds": count("refunds_all"),
            "return_amount": money("returns_u"),
            "refund_amount": money("refunds_u"),
            "net_spend": f"CAST(coalesce(spend_u, 0) - coalesce(returns_u, 0)"
            f" - coalesce(refunds_u, 0) AS DOUBLE) / {ms}",
            "frequency": f"CAST({freq} AS BIGINT)",
            "recency": "CAST(coalesce(first_age - last_age, 0) AS DOUBLE)",
            "T": "CAST(coalesce(first_age + 1, 0) AS DOUBLE)",
            "monetary_value": f"CASE WHEN {freq} > 0 THEN CAST(spend_u - first_day_u AS DOUBLE)"
            f" / {ms} / {freq} ELSE 0.0 END",
            "activity_momentum": _ratio("ev_recent", "ev_prev"),
            "spend_momentum": _ratio("spend_recent", "spend_prev"),
            "purchase_momentum": _ratio("purch_recent", "purch_prev"),
            "return_gap_days": f"(first_in_m - last_before_m) / {US_PER_DAY}.0",
            "furthest_stage": rank_name.format(x="furthest_rank") + " END",
            "furthest_stage_rank": "CAST(furthest_rank AS BIGINT)",
            "current_stage": rank_name.format(x="current_rank") + " END",
            "current_stage_rank": "CAST(current_rank AS BIGINT)",
            "days_since_stage_advance": self.days("furthest_t0"),
            f"carts_{w90}d": count("cart_n"),
            f"checkouts_{w90}d": count("checkout_n"),
            f"carts_abandoned_{w90}d": count("cart_abandoned"),
            f"checkouts_abandoned_{w90}d": count("checkout_abandoned"),
            f"cart_abandon_rate_{w90}d": "CAST(cart_abandoned AS DOUBLE)"
            " / nullif(cart_abandoned + cart_converted, 0)",
            f"checkout_abandon_rate_{w90}d": "CAST(checkout_abandoned AS DOUBLE)"
            " / nullif(checkout_abandoned + checkout_converted, 0)",
            "open_carts": count("cart_open"),
            "preferred_channel": _preferred_channel(),
            "channel_entropy": _channel_entropy(),
            "channels_used": " + ".join(f"CAST(coalesce(n_{c}, 0) > 0 AS BIGINT)" for c in _MIX),
            f"support_tickets_{w90}d": count("tickets_90"),
            f"returns_{w90}d": count("returns_90"),
            f"refunds_{w90}d": count("refunds_90"),
            "n_support_tickets": count("tickets_all"),
            "n_sentiment": count("n_sent"),
            "sentiment_mean": f"CAST(s_u AS DOUBLE) / {ss} / nullif(n_sent, 0)",
            "sentiment_last": f"CAST(last_u AS DOUBLE) / {ss}",
            f"sentiment_{w90}d": f"CAST(s_u_w AS DOUBLE) / {ss} / nullif(n_sent_w, 0)",
            "sentiment_trend": f"CASE WHEN n_sent = 1 THEN 0.0 ELSE (CAST(last_u AS DOUBLE)"
            f" - CAST(s_u - last_u AS DOUBLE) / (n_sent - 1)) / {ss} END",
            "dominant_category_recent": "dom_recent",
            "dominant_category_before": "dom_before",
            "categories_recent": count("categories_recent"),
            "intent_shift": "CASE WHEN r_tot > 0 AND p_tot > 0 THEN"
            " sqrt(least(1.0, greatest(0.0, jsd))) END",
            "reviews": count("reviews_all"),
            "referrals": count("referrals_all"),
            "shares": count("shares_all"),
        }
        per_purchase = "greatest(coalesce(n_purchases, 0), 1)"
        cols["purchases_per_active_month"] = (
            "30.0 * greatest(coalesce(n_purchases, 0) - 1, 0)"
            f" / greatest((last_ts - first_ts) / {US_PER_DAY}.0, 30)"
        )
        for name, x in (
            ("tickets_per_purchase", "coalesce(tickets_all, 0)"),
            ("returns_per_purchase", "coalesce(returns_all, 0)"),
            (
                "advocacy_per_purchase",
                "coalesce(reviews_all, 0) + coalesce(referrals_all, 0) + coalesce(shares_all, 0)",
            ),
        ):
            cols[name] = f"CAST({x} AS DOUBLE) / {per_purchase}"
        for s in STAGES:
            cols[f"{s}_share_{max_w}d"] = (
                f"CAST(coalesce({s}_events_{max_w}d, 0) AS DOUBLE) / nullif(events_{max_w}d, 0)"
            )
        for c in CHANNELS:
            cols[f"share_{c}"] = f"CAST(coalesce(n_{c}, 0) AS DOUBLE) / nullif(n_chan, 0)"
        cols["n_exposures"] = count("n_exposures")
        for w in self.windows:
            cols[f"events_{w}d"] = count(f"events_{w}d")
            cols[f"exposures_{w}d"] = count(f"exposures_{w}d")
            cols[f"active_days_{w}d"] = self._active_days(w)
            cols[f"purchases_{w}d"] = count(f"purchases_{w}d")
            cols[f"spend_{w}d"] = money(f"spend_u_{w}d")
            for s in STAGES:
                cols[f"{s}_events_{w}d"] = count(f"{s}_events_{w}d")
        for w in CHANNEL_WINDOWS:
            for c in CHANNELS:
                cols[f"{c}_events_{w}d"] = count(f"{c}_events_{w}d")
        # Recency-weighted mixes: the last w90 days' events count RECENT_WEIGHT times.
        extra = RECENT_WEIGHT - 1
        stage_total = f"{extra} * coalesce(events_{w90}d, 0) + coalesce(events_{max_w}d, 0)"
        for s in STAGES:
            cols[f"{s}_share_weighted"] = (
                f"CAST({extra} * coalesce({s}_events_{w90}d, 0) + coalesce({s}_events_{max_w}d, 0)"
                f" AS DOUBLE) / nullif({stage_total}, 0)"
            )
        channel_total = " + ".join(
            f"coalesce(n_{c}, 0) + {extra} * coalesce({c}_events_{w90}d, 0)" for c in CHANNELS
        )
        for c in CHANNELS:
            cols[f"share_{c}_weighted"] = (
                f"CAST(coalesce(n_{c}, 0) + {extra} * coalesce({c}_events_{w90}d, 0) AS DOUBLE)"
                f" / nullif({channel_total}, 0)"
            )
        return cols
