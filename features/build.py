"""Point-in-time feature build: one row of behavioral features per client, as of a date, in DuckDB.

Every event later than the end of the as-of day is ignored (`features.events.day_end`), so a
table built as of D never sees the future. The work is a few grouped passes over the events
(by client and journey stage, by client and channel, active-day bitmaps, and small passes over
purchase, cart, sentiment and category subsets), then per-client arithmetic on those small
rollups. No Python loop touches events.

Every per-client value depends on that client's events only, so the build can run shard by
shard (clients hash-partitioned with DuckDB's `hash(client_id) % shards`) and gives the same
table as the one-shot build. Sums that could depend on the order of parallel aggregation are
exact: money in integer micro-units, sentiment in nano-units, and floating sums over small
per-client lists in a fixed order.

Column names, order, families and types come from `features.catalog`.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.catalog import (
    CHANNEL_WINDOWS,
    CHANNELS,
    FIXED_WINDOW,
    STAGE_RANK,
    STAGES,
    feature_catalog,
    feature_schema,
    feature_windows,
)
from features.events import EVENT_SCHEMA, day_end
from segmentation.config import FeaturesConfig

US_PER_DAY = 86_400_000_000
MONEY_SCALE = 1_000_000  # money is summed in integer micro-units: exact in any order
SENTIMENT_SCALE = 1_000_000_000
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_TEMP_PREFIX = "_feat_"
JS_SCALE = 10**12  # Jensen-Shannon terms are summed in integer pico-units: exact in any order
_PIECES = ("stage", "chan", "types", "days", "cart", "sent", "cat")


class FeatureBuildError(ValueError):
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
    types follow `features.catalog.feature_catalog(config)`.
    """
    config = config or FeaturesConfig()
    if not isinstance(shards, int) or shards < 1:
        raise FeatureBuildError(f"shards must be a positive integer, got {shards!r}")
    if shards == 1:
        return build_features_shard(con, as_of, config, 0, 1, events_table)
    parts = [
        build_features_shard(con, as_of, config, k, shards, events_table) for k in range(shards)
    ]
    table = pa.concat_tables(parts)
    return table.sort_by("client_id")


def build_features_shard(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    config: FeaturesConfig | None,
    shard: int,
    shards: int,
    events_table: str = "events",
) -> pa.Table:
    """The feature rows of one hash partition: clients with `hash(client_id) % shards == shard`."""
    config = config or FeaturesConfig()
    as_of = _as_date(as_of)
    if not isinstance(shards, int) or shards < 1:
        raise FeatureBuildError(f"shards must be a positive integer, got {shards!r}")
    if not isinstance(shard, int) or not 0 <= shard < shards:
        raise FeatureBuildError(f"shard must be in 0..{shards - 1}, got {shard!r}")
    _check_events_table(con, events_table)
    plan = _Plan(as_of, config, events_table, shard, shards)
    try:
        for name, sql in plan.pieces():
            con.execute(f"CREATE OR REPLACE TEMP TABLE {_TEMP_PREFIX}{name} AS {sql}")
        # Sorted in Arrow: cheaper than sorting the wide rows in SQL.
        table = con.sql(plan.final_sql()).to_arrow_table().sort_by("client_id")
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
    con: duckdb.DuckDBPyConnection, as_of: date, events_table: str = "events"
) -> pd.DataFrame:
    """Purchases up to the end of `as_of`: client_id, event_time, amount (sorted), for backtests."""
    _check_events_table(con, events_table)
    end = day_end(_as_date(as_of))
    return con.sql(
        f"""
        SELECT client_id, event_time, amount FROM {events_table}
        WHERE event_type = 'purchase' AND event_time < TIMESTAMP '{end.isoformat(sep=" ")}'
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


def _as_date(value: date) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    raise FeatureBuildError(f"as_of must be a date, got {type(value).__name__}: {value!r}")


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
        # Buckets of event age (days before the end of the as-of day) used by the rollups.
        self.bounds = sorted(set(self.windows) | {self.m, 2 * self.m})
        where = f"event_time < TIMESTAMP '{self.end.isoformat(sep=' ')}'"
        if shards > 1:
            where += f" AND hash(client_id) % {shards} = {shard}"
        stage_case = " ".join(f"WHEN '{s}' THEN {STAGE_RANK[s]}" for s in STAGES)
        chan_case = " ".join(f"WHEN '{c}' THEN {k + 1}" for k, c in enumerate(CHANNELS))
        bucket_case = " ".join(f"WHEN age < {b} THEN {k}" for k, b in enumerate(self.bounds))
        self.chan_bounds = sorted(CHANNEL_WINDOWS)
        chan_bucket = " ".join(f"WHEN age < {b} THEN {k}" for k, b in enumerate(self.chan_bounds))
        self.ev = f"""(
            SELECT *, CASE {bucket_case} ELSE {len(self.bounds)} END AS b,
                   CASE {chan_bucket} ELSE {len(self.chan_bounds)} END AS cb FROM (
                SELECT client_id, event_type, channel, amount, category, sentiment,
                       epoch_us(event_time) AS ts,
                       DATE '{as_of.isoformat()}' - CAST(event_time AS DATE) AS age,
                       CASE stage {stage_case} ELSE 0 END AS sc,
                       CASE WHEN channel IS NULL THEN 0 ELSE
                           CASE channel {chan_case} ELSE {len(CHANNELS) + 1} END END AS cc
                FROM {events_table} WHERE {where}))"""

    def bucket_of(self, days: int) -> int:
        """The last bucket inside a window of `days` (a window is `b <= bucket_of(days)`)."""
        return self.bounds.index(days)

    def days(self, ts: str) -> str:
        return f"(({self.end_us} - {ts}) / {US_PER_DAY}.0)"

    def pieces(self) -> list[tuple[str, str]]:
        ev, w90 = self.ev, FIXED_WINDOW
        types = ("purchase", "return", "refund", "support_ticket", "review", "referral", "share")
        type_list = ", ".join(f"'{t}'" for t in types)
        max_w = self.windows[-1]
        return [
            (
                "stage",
                f"SELECT client_id, sc, b, count(*) AS n, min(ts) AS t0, max(ts) AS t1"
                f" FROM {ev} GROUP BY client_id, sc, b",
            ),
            (
                "chan",
                f"SELECT client_id, cc, cb, count(*) AS n FROM {ev} WHERE cc > 0"
                f" GROUP BY client_id, cc, cb",
            ),
            (
                "types",
                f"""SELECT client_id, event_type, age, count(*) AS n,
                       sum(CAST(round(amount * {MONEY_SCALE}) AS BIGINT)) AS amt_u,
                       max(ts) AS t1
                FROM {ev} WHERE event_type IN ({type_list})
                GROUP BY client_id, event_type, age""",
            ),
            (
                "days",
                f"SELECT client_id, bitstring_agg(age, 0, {max_w - 1}) AS bits"
                f" FROM {ev} WHERE age < {max_w} GROUP BY client_id",
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
                "sent",
                f"""SELECT client_id, count(*) AS n,
                       sum(CAST(round(sentiment * {SENTIMENT_SCALE}) AS BIGINT)) AS s_u,
                       CAST(round(max_by(sentiment, (ts, sentiment)) * {SENTIMENT_SCALE})
                            AS BIGINT) AS last_u
                FROM {ev} WHERE sentiment IS NOT NULL GROUP BY client_id""",
            ),
            (
                "cat",
                f"""SELECT *, sum(r) OVER (PARTITION BY client_id) AS r_tot,
                           sum(p) OVER (PARTITION BY client_id) AS p_tot
                FROM (SELECT client_id, category,
                             count(*) FILTER (WHERE age < {self.i}) AS r,
                             count(*) FILTER (WHERE age >= {self.i}) AS p
                      FROM {ev} WHERE category IS NOT NULL AND age < {2 * self.i}
                      GROUP BY client_id, category)""",
            ),
        ]

    def final_sql(self) -> str:
        t = _TEMP_PREFIX
        w90, m = FIXED_WINDOW, self.m
        kb = self.bucket_of
        stage_aggs = [
            "sum(n) AS n_events",
            "min(t0) AS first_ts",
            "max(t1) AS last_ts",
            f"sum(n) FILTER (WHERE b <= {kb(m)}) AS ev_recent",
            f"sum(n) FILTER (WHERE b > {kb(m)} AND b <= {kb(2 * m)}) AS ev_prev",
            f"max(t1) FILTER (WHERE b > {kb(m)}) AS last_before_m",
            f"min(t0) FILTER (WHERE b <= {kb(m)}) AS first_in_m",
            "max(sc) AS furthest_rank",
            "max_by(t0, (sc, -t0)) AS furthest_t0",
            "coalesce(max_by(sc, (t1, sc)) FILTER (WHERE sc > 0), 0) AS current_rank",
        ]
        for w in self.windows:
            stage_aggs.append(f"sum(n) FILTER (WHERE b <= {kb(w)}) AS events_{w}d")
            for s in STAGES:
                stage_aggs.append(
                    f"sum(n) FILTER (WHERE sc = {STAGE_RANK[s]} AND b <= {kb(w)})"
                    f" AS {s}_events_{w}d"
                )
        chan_aggs = ["sum(n) AS n_chan"]
        for k, c in enumerate((*CHANNELS, "other")):
            chan_aggs.append(f"sum(n) FILTER (WHERE cc = {k + 1}) AS n_{c}")
        for w in CHANNEL_WINDOWS:
            kc = self.chan_bounds.index(w)
            for k, c in enumerate(CHANNELS):
                chan_aggs.append(
                    f"sum(n) FILTER (WHERE cc = {k + 1} AND cb <= {kc}) AS {c}_events_{w}d"
                )
        purchase_aggs = [
            "sum(n) AS n_purchases",
            "count(*) AS purchase_days",
            "sum(amt_u) AS spend_u",
            "max(age) AS first_age",
            "min(age) AS last_age",
            "max(t1) AS last_p_ts",
            "arg_max(amt_u, age) AS first_day_u",
            f"sum(amt_u) FILTER (WHERE age < {m}) AS spend_recent",
            f"sum(amt_u) FILTER (WHERE age >= {m} AND age < {2 * m}) AS spend_prev",
            f"sum(n) FILTER (WHERE age < {m}) AS purch_recent",
            f"sum(n) FILTER (WHERE age >= {m} AND age < {2 * m}) AS purch_prev",
        ]
        for w in self.windows:
            purchase_aggs.append(f"sum(n) FILTER (WHERE age < {w}) AS purchases_{w}d")
            purchase_aggs.append(f"sum(amt_u) FILTER (WHERE age < {w}) AS spend_u_{w}d")
        other_aggs = []
        for etype, alias in (
            ("return", "returns"),
            ("refund", "refunds"),
            ("support_ticket", "tickets"),
            ("review", "reviews"),
            ("referral", "referrals"),
            ("share", "shares"),
        ):
            other_aggs.append(f"sum(n) FILTER (WHERE event_type = '{etype}') AS {alias}_all")
            other_aggs.append(
                f"sum(n) FILTER (WHERE event_type = '{etype}' AND age < {w90}) AS {alias}_90"
            )
            other_aggs.append(f"sum(amt_u) FILTER (WHERE event_type = '{etype}') AS {alias}_u")
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
        WITH s AS (SELECT client_id, {", ".join(stage_aggs)} FROM {t}stage GROUP BY client_id),
        c AS (SELECT client_id, {", ".join(chan_aggs)} FROM {t}chan GROUP BY client_id),
        pd AS (SELECT client_id, age, sum(n) AS n, sum(amt_u) AS amt_u, max(t1) AS t1
               FROM {t}types WHERE event_type = 'purchase' GROUP BY client_id, age),
        pu AS (SELECT client_id, {", ".join(purchase_aggs)} FROM pd GROUP BY client_id),
        ot AS (SELECT client_id, {", ".join(other_aggs)} FROM {t}types
               WHERE event_type <> 'purchase' GROUP BY client_id),
        ca AS (SELECT client_id, {", ".join(cart_aggs)} FROM {t}cart
               WHERE event_type <> 'purchase' GROUP BY client_id),
        ct AS (SELECT client_id, {", ".join(cat_aggs)} FROM {t}cat GROUP BY client_id)
        SELECT
          {select}
        FROM s
        LEFT JOIN c USING (client_id)
        LEFT JOIN pu USING (client_id)
        LEFT JOIN ot USING (client_id)
        LEFT JOIN ca USING (client_id)
        LEFT JOIN {t}days AS dy USING (client_id)
        LEFT JOIN {t}sent AS se USING (client_id)
        LEFT JOIN ct USING (client_id)
        """

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
            "n_events": count("n_events"),
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
            "n_sentiment": count("se.n"),
            "sentiment_mean": f"CAST(s_u AS DOUBLE) / {ss} / se.n",
            "sentiment_last": f"CAST(last_u AS DOUBLE) / {ss}",
            "sentiment_trend": f"CASE WHEN se.n = 1 THEN 0.0 ELSE (CAST(last_u AS DOUBLE)"
            f" - CAST(s_u - last_u AS DOUBLE) / (se.n - 1)) / {ss} END",
            "dominant_category_recent": "dom_recent",
            "dominant_category_before": "dom_before",
            "categories_recent": count("categories_recent"),
            "intent_shift": "CASE WHEN r_tot > 0 AND p_tot > 0 THEN"
            " sqrt(least(1.0, greatest(0.0, jsd))) END",
            "reviews": count("reviews_all"),
            "referrals": count("referrals_all"),
            "shares": count("shares_all"),
        }
        for c in CHANNELS:
            cols[f"share_{c}"] = f"CAST(coalesce(n_{c}, 0) AS DOUBLE) / nullif(n_chan, 0)"
        for w in self.windows:
            cols[f"events_{w}d"] = count(f"events_{w}d")
            mask = "1" * w + "0" * (max_w - w)
            cols[f"active_days_{w}d"] = count(f"bit_count(bits & CAST('{mask}' AS BIT))")
            cols[f"purchases_{w}d"] = count(f"purchases_{w}d")
            cols[f"spend_{w}d"] = money(f"spend_u_{w}d")
            for s in STAGES:
                cols[f"{s}_events_{w}d"] = count(f"{s}_events_{w}d")
        for w in CHANNEL_WINDOWS:
            for c in CHANNELS:
                cols[f"{c}_events_{w}d"] = count(f"{c}_events_{w}d")
        return cols
