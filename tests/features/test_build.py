"""Tests of the point-in-time feature build: leakage, an independent pandas recomputation,
shard equality, schema stability and edge cases."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.spatial.distance import jensenshannon

from configs import FeaturesConfig
from features.build import (
    FeatureBuildError,
    btyd_frame,
    build_features,
    build_features_shard,
    purchase_log,
    write_features,
)
from features.catalog import CHANNELS, RECENT_WEIGHT, feature_names, feature_schema
from features.events import EVENT_SCHEMA, connect_for_events, day_end, load_taxonomy

AS_OF = date(2025, 3, 31)
END = day_end(AS_OF)
TYPES = [
    "page_view", "ad_click", "product_view", "search", "add_to_cart", "checkout_start",
    "purchase", "purchase", "login", "support_ticket", "return", "refund", "review",
    "referral", "share", "email_open", "mystery_event", "ad_impression", "email_sent",
]  # fmt: skip
BRAND = set(load_taxonomy().brand_types)  # email_open, ad_impression, email_sent among TYPES
CATEGORIES = ["shoes", "bags", "hats", "coats"]
# Names other modules rely on (HELPERS.md); they must exist whatever the config.
CONTRACT_NAMES = [
    "recency_days",
    "days_since_last_purchase",
    "tenure_days",
    "n_events",
    "n_purchases",
    "purchase_days",
    "frequency",
    "recency",
    "T",
    "monetary_value",
    "has_purchased",
    "total_spend",
    "avg_order_value",
    "n_returns",
    "n_refunds",
    "events_30d",
    "events_90d",
    "active_days_30d",
    "active_days_90d",
    "purchases_90d",
    "spend_90d",
    "activity_momentum",
    "spend_momentum",
    "furthest_stage",
    "current_stage",
    "furthest_stage_rank",
    "current_stage_rank",
    "days_since_stage_advance",
    "carts_abandoned_90d",
    "checkouts_abandoned_90d",
    "cart_abandon_rate_90d",
    "checkout_abandon_rate_90d",
    "support_tickets_90d",
    "returns_90d",
    "sentiment_mean",
    "sentiment_last",
    "sentiment_trend",
    "preferred_channel",
    "channel_entropy",
    "share_web",
    "share_app",
    "share_email",
    "share_messenger",
    "share_social",
    "share_store",
    "share_call_center",
    "dominant_category_recent",
    "dominant_category_before",
    "intent_shift",
    "reviews",
    "referrals",
    "shares",
    "return_gap_days",
]


def random_events(n_clients: int = 40, n_events: int = 2500, seed: int = 7) -> pd.DataFrame:
    """Events of the contract shape over 200 days, some after the as-of date."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 9, 20)
    seconds = rng.integers(0, 200 * 86400, n_events)
    types = rng.choice(TYPES, n_events)
    amount = np.where(
        np.isin(types, ["purchase", "return", "refund"]), rng.gamma(2, 20, n_events), np.nan
    )
    amount[rng.random(n_events) < 0.05] = np.nan  # some purchases without an amount
    sentiment = np.where(rng.random(n_events) < 0.15, rng.uniform(-1, 1, n_events), np.nan)
    channels = np.array([*CHANNELS, "kiosk", None], dtype=object)
    frame = pd.DataFrame(
        {
            "client_id": [f"c{i:03d}" for i in rng.integers(0, n_clients, n_events)],
            "event_time": [start + timedelta(seconds=int(s)) for s in seconds],
            "event_type": types,
            "channel": rng.choice(
                channels, n_events, p=[0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.03, 0.02]
            ),
            "amount": amount,
            "category": rng.choice(np.array([*CATEGORIES, None], dtype=object), n_events),
            "sentiment": sentiment,
        }
    )
    # A few exact-time ties, and a cart followed by a purchase at the same instant.
    frame.loc[1, "event_time"] = frame.loc[0, "event_time"]
    frame.loc[1, "client_id"] = frame.loc[0, "client_id"]
    frame["event_id"] = [f"e{i}" for i in range(len(frame))]
    return frame


def make_events(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, table: str = "events") -> None:
    """Create an events table of the normalized contract from a frame (stage from the taxonomy)."""
    taxonomy = load_taxonomy()
    frame = frame.assign(
        stage=frame["event_type"].map(taxonomy.stage),
        by_client=frame["event_type"].map(lambda t: taxonomy.initiator(t) == "client"),
    )
    frame = frame[list(EVENT_SCHEMA)]
    casts = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in EVENT_SCHEMA.items())
    con.register("_frame", frame)
    con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT {casts} FROM _frame")
    con.unregister("_frame")


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return random_events()


@pytest.fixture(scope="module")
def built(events: pd.DataFrame) -> tuple[pa.Table, pd.DataFrame]:
    con = duckdb.connect()
    make_events(con, events)
    table = build_features(con, AS_OF)
    return table, table.to_pandas().set_index("client_id")


def test_future_events_change_nothing(events: pd.DataFrame, built) -> None:
    table, _ = built
    rng = np.random.default_rng(1)
    future = random_events(n_clients=50, n_events=600, seed=3)  # existing and new clients
    future["event_time"] = [
        END + timedelta(seconds=int(s)) for s in rng.integers(0, 60 * 86400, 600)
    ]
    future["event_id"] = [f"f{i}" for i in range(len(future))]
    con = duckdb.connect()
    make_events(con, pd.concat([events, future], ignore_index=True))
    again = build_features(con, AS_OF)
    assert again.equals(table)


def test_clients_with_only_future_events_are_absent(events: pd.DataFrame, built) -> None:
    _, frame = built
    past = events[events["event_time"] < END]
    future_only = set(events["client_id"]) - set(past["client_id"])
    con = duckdb.connect()
    extra = events.iloc[:3].assign(
        client_id="zz_future", event_time=END, event_id=["x1", "x2", "x3"]
    )
    make_events(con, pd.concat([events, extra], ignore_index=True))
    ids = set(build_features(con, AS_OF).column("client_id").to_pylist())
    assert "zz_future" not in ids
    assert ids == set(past["client_id"]) and not future_only & ids
    assert list(frame.index) == sorted(frame.index)


def test_independent_pandas_recomputation(events: pd.DataFrame, built) -> None:
    _, got = built
    cfg = FeaturesConfig()
    want = pandas_features(events, AS_OF, cfg)
    assert sorted(want.index) == list(got.index)
    for col in want.columns:
        expected, actual = want[col], got.loc[want.index, col]
        if not pd.api.types.is_numeric_dtype(expected):
            assert (expected.fillna("<null>") == actual.fillna("<null>")).all(), col
        else:
            np.testing.assert_allclose(
                actual.astype(float),
                expected.astype(float),
                rtol=1e-9,
                atol=1e-4,
                err_msg=col,  # money in micro-units
            )


def test_shards_give_the_same_table(events: pd.DataFrame, built) -> None:
    table, _ = built
    con = duckdb.connect()
    make_events(con, events)
    for shards in (2, 3, 5):
        assert build_features(con, AS_OF, shards=shards).equals(table)
    parts = [build_features_shard(con, AS_OF, None, k, 3, "events") for k in range(3)]
    assert sum(p.num_rows for p in parts) == table.num_rows
    assert all(p.num_rows > 0 for p in parts)


def test_wide_counters_give_the_same_table(events: pd.DataFrame, built, monkeypatch) -> None:
    # Narrow packed fields too small for these clients: the build must notice and count wide.
    import features.build

    table, frame = built
    assert frame["n_events"].max() >= 2**3
    monkeypatch.setattr(features.build, "NARROW_BITS", 3)
    con = duckdb.connect()
    make_events(con, events)
    assert build_features(con, AS_OF).equals(table)


def test_events_on_disk_give_the_same_table(events: pd.DataFrame, built, tmp_path) -> None:
    # The nightly default: events in a compressed DuckDB file, under a small memory limit.
    table, _ = built
    cfg = FeaturesConfig(memory_limit="200MB", event_storage="disk")
    con = connect_for_events(cfg, tmp_path)
    make_events(con, events)
    paths = [row[0] for row in con.sql("SELECT path FROM duckdb_databases()").fetchall()]
    assert str(tmp_path / "events.duckdb") in paths
    assert build_features(con, AS_OF, cfg).equals(table)
    con.close()
    memory = connect_for_events(cfg.model_copy(update={"event_storage": "memory"}), tmp_path)
    assert memory.sql("SELECT count(path) FROM duckdb_databases()").fetchall()[0][0] == 0


def test_thread_count_does_not_change_the_table(events: pd.DataFrame, built) -> None:
    table, _ = built
    for threads in (1, 4):
        con = duckdb.connect(config={"threads": threads})
        make_events(con, pd.concat([events] * 3, ignore_index=True))  # duplicates: more ties
        again = build_features(con, AS_OF)
        con.execute("SET threads = 2")
        assert build_features(con, AS_OF).equals(again)
        assert again.num_rows == table.num_rows


def test_schema_and_column_order_are_stable(built) -> None:
    table, _ = built
    assert table.schema.equals(feature_schema())
    assert table.column_names == feature_names()
    assert table.column_names[0] == "client_id"
    assert len(set(table.column_names)) == table.num_columns <= 150
    assert set(CONTRACT_NAMES) <= set(table.column_names)
    for name in CONTRACT_NAMES:
        if name not in {
            "furthest_stage",
            "current_stage",
            "preferred_channel",
        } and not name.startswith("dominant_category"):
            assert pa.types.is_integer(table.schema.field(name).type) or pa.types.is_floating(
                table.schema.field(name).type
            ), name


def test_required_windows_exist_whatever_the_config(events: pd.DataFrame) -> None:
    cfg = FeaturesConfig(windows_days=(14,), momentum_days=10, intent_days=20, abandonment_days=1)
    con = duckdb.connect()
    make_events(con, events)
    table = build_features(con, AS_OF, cfg)
    assert table.schema.equals(feature_schema(cfg))
    assert {"events_14d", "events_30d", "events_90d", "spend_90d"} <= set(table.column_names)
    want = pandas_features(events, AS_OF, cfg)
    got = table.to_pandas().set_index("client_id")
    for col in ("activity_momentum", "intent_shift", "carts_abandoned_90d", "events_14d"):
        np.testing.assert_allclose(got[col].astype(float), want[col].astype(float), err_msg=col)


def test_empty_input_gives_an_empty_table_with_the_schema(events: pd.DataFrame) -> None:
    con = duckdb.connect()
    make_events(con, events.iloc[:0])
    table = build_features(con, AS_OF)
    assert table.num_rows == 0 and table.schema.equals(feature_schema())
    make_events(con, events)
    early = build_features(con, date(2020, 1, 1))  # before every event
    assert early.num_rows == 0 and early.schema.equals(feature_schema())


def test_a_change_of_behavior_moves_the_features() -> None:
    rows = []
    for d in range(120):  # steady shoes buyer, then switches to hats in the last 30 days
        when = datetime(2025, 1, 1) + timedelta(days=d, hours=12)
        category = "hats" if d >= 90 else "shoes"
        rows.append(("a", when, "product_view", "web", None, category, None))
        if d % 10 == 0:
            rows.append(("a", when, "purchase", "web", 10.0, category, None))
    frame = pd.DataFrame(
        rows, columns=[*list(EVENT_SCHEMA)[:3], "channel", "amount", "category", "sentiment"]
    )
    frame["event_id"] = [f"e{i}" for i in range(len(frame))]
    con = duckdb.connect()
    make_events(con, frame)
    before = build_features(con, date(2025, 3, 31)).to_pylist()[0]
    after = build_features(con, date(2025, 4, 30)).to_pylist()[0]
    assert before["intent_shift"] == pytest.approx(0.0)
    assert after["intent_shift"] == pytest.approx(1.0)
    assert before["dominant_category_recent"] == "shoes"
    assert (
        after["dominant_category_recent"] == "hats" and after["dominant_category_before"] == "shoes"
    )
    quiet = build_features(con, date(2025, 6, 15)).to_pylist()[0]  # 46 days without events
    assert quiet["activity_momentum"] == pytest.approx(-1.0)
    assert quiet["return_gap_days"] is None


def test_btyd_frame_and_purchase_log(events: pd.DataFrame, built) -> None:
    table, frame = built
    btyd = btyd_frame(table)
    assert list(btyd.columns) == ["client_id", "frequency", "recency", "T", "monetary_value"]
    assert len(btyd) == int(frame["has_purchased"].sum())
    assert (btyd["recency"] < btyd["T"]).all() and (btyd["frequency"] >= 0).all()
    assert len(btyd_frame(table, purchasers_only=False)) == table.num_rows
    con = duckdb.connect()
    make_events(con, events)
    log = purchase_log(con, AS_OF)
    assert list(log.columns) == ["client_id", "event_time", "amount"]
    assert (log["event_time"] < END).all()
    assert (
        log.groupby("client_id").size().to_dict()
        == frame.loc[frame["n_purchases"] > 0, "n_purchases"].to_dict()
    )
    # A hash partition holds whole clients; the partitions together are the whole log.
    parts = [purchase_log(con, AS_OF, shard=k, shards=3) for k in range(3)]
    assert sum(len(p) for p in parts) == len(log)
    ids = [set(p["client_id"]) for p in parts]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    together = pd.concat(parts).sort_values(["client_id", "event_time", "amount"])
    pd.testing.assert_frame_equal(together.reset_index(drop=True), log)
    with pytest.raises(ValueError, match="shard must be"):
        purchase_log(con, AS_OF, shard=3, shards=3)


def test_write_features_round_trips(built, tmp_path) -> None:
    import pyarrow.parquet as pq

    table, _ = built
    path = write_features(table, tmp_path / "out" / "features.parquet")
    assert pq.read_table(path).equals(table)


def test_bad_input_is_named(events: pd.DataFrame) -> None:
    con = duckdb.connect()
    with pytest.raises(FeatureBuildError, match="not found"):
        build_features(con, AS_OF)
    con.execute("CREATE TABLE thin AS SELECT 'a' AS client_id")
    with pytest.raises(FeatureBuildError, match="event_time"):
        build_features(con, AS_OF, events_table="thin")
    with pytest.raises(FeatureBuildError, match="plain table name"):
        build_features(con, AS_OF, events_table="x; DROP TABLE y")
    make_events(con, events)
    with pytest.raises(FeatureBuildError, match="shards"):
        build_features(con, AS_OF, shards=0)
    with pytest.raises(FeatureBuildError, match="shard must be"):
        build_features_shard(con, AS_OF, None, 3, 3)
    with pytest.raises(FeatureBuildError, match="as_of"):
        build_features(con, "2025-03-31")  # type: ignore[arg-type]


# --- the independent recomputation, in plain pandas, one client at a time -------------------


def pandas_features(events: pd.DataFrame, as_of: date, cfg: FeaturesConfig) -> pd.DataFrame:
    end = pd.Timestamp(day_end(as_of))
    day = pd.Timedelta(days=1)
    ev = events[events["event_time"] < end].copy()
    ev["event_time"] = pd.to_datetime(ev["event_time"])
    out = {}
    for client, everything in ev.groupby("client_id"):
        row: dict[str, object] = {}
        # Activity is the client's own events; brand-initiated ones are exposure.
        brand = everything["event_type"].isin(BRAND)
        g = everything[~brand]
        last = g["event_time"].max() if len(g) else everything["event_time"].min()
        row["recency_days"] = (end - last) / day
        row["tenure_days"] = (end - everything["event_time"].min()) / day
        row["n_events"] = len(g)
        row["n_exposures"] = int(brand.sum())
        row["exposures_30d"] = int((brand & (everything["event_time"] >= end - 30 * day)).sum())
        recent = g[g["event_time"] >= end - 30 * day]
        row["events_30d"] = len(recent)
        row["active_days_30d"] = recent["event_time"].dt.normalize().nunique()
        w = cfg.windows_days[0]
        row[f"events_{w}d"] = int((g["event_time"] >= end - w * day).sum())
        p = g[g["event_type"] == "purchase"]
        pdays = p.assign(d=p["event_time"].dt.normalize()).groupby("d")["amount"].sum(min_count=0)
        pdays = pdays.fillna(0.0).sort_index()
        row["frequency"] = max(len(pdays) - 1, 0)
        row["recency"] = (pdays.index[-1] - pdays.index[0]) / day if len(pdays) else 0.0
        row["T"] = (end - pdays.index[0]) / day if len(pdays) else 0.0
        row["monetary_value"] = pdays.iloc[1:].mean() if len(pdays) > 1 else 0.0
        row["total_spend"] = p["amount"].sum()
        row["days_since_last_purchase"] = (end - p["event_time"].max()) / day if len(p) else np.nan
        row["spend_90d"] = p.loc[p["event_time"] >= end - 90 * day, "amount"].sum()

        def momentum(frame: pd.DataFrame, value: str | None) -> float:
            m = cfg.momentum_days * day
            r_rows = frame[frame["event_time"] >= end - m]
            p_rows = frame[(frame["event_time"] >= end - 2 * m) & (frame["event_time"] < end - m)]
            r = len(r_rows) if value is None else r_rows[value].sum()
            q = len(p_rows) if value is None else p_rows[value].sum()
            return 0.0 if r + q == 0 else (r - q) / (r + q)

        row["activity_momentum"] = momentum(g, None)
        row["spend_momentum"] = momentum(p, "amount")
        # Cart abandonment: the first purchase at or after the cart, within the deadline.
        a = cfg.abandonment_days * day
        carts = g[(g["event_type"] == "add_to_cart") & (g["event_time"] >= end - 90 * day)]
        abandoned = converted = 0
        for t in carts["event_time"]:
            later = p.loc[p["event_time"] >= t, "event_time"]
            if len(later) and later.min() <= t + a:
                converted += 1
            elif t + a <= end:
                abandoned += 1
        row["carts_abandoned_90d"] = abandoned
        row["cart_abandon_rate_90d"] = (
            abandoned / (abandoned + converted) if abandoned + converted else np.nan
        )
        # Channel mix over known channels, unknown ones as "other", null excluded.
        ch = g["channel"].dropna().map(lambda c: c if c in CHANNELS else "other")
        shares = ch.value_counts(normalize=True)
        row["channel_entropy"] = float(-(shares * np.log2(shares)).sum()) if len(ch) else np.nan
        row["share_web"] = shares.get("web", 0.0) if len(ch) else np.nan
        counts = ch.value_counts()
        top = sorted(c for c in counts.index if counts[c] == counts.max()) if len(ch) else [None]
        row["preferred_channel"] = top[0]
        # Intent: category distributions of the last I days and the I days before.
        i = cfg.intent_days * day
        cats = g.dropna(subset=["category"])
        now = cats.loc[cats["event_time"] >= end - i, "category"].value_counts()
        then = cats.loc[
            (cats["event_time"] >= end - 2 * i) & (cats["event_time"] < end - i), "category"
        ]
        then = then.value_counts()
        if len(now) and len(then):
            keys = sorted(set(now.index) | set(then.index))
            row["intent_shift"] = jensenshannon(
                now.reindex(keys, fill_value=0).to_numpy(float),
                then.reindex(keys, fill_value=0).to_numpy(float),
                base=2,
            )
        else:
            row["intent_shift"] = np.nan
        row["dominant_category_recent"] = min(now.index[now == now.max()]) if len(now) else None
        s = everything.dropna(subset=["sentiment"]).sort_values(["event_time", "sentiment"])
        row["sentiment_mean"] = s["sentiment"].mean() if len(s) else np.nan
        row["sentiment_last"] = s["sentiment"].iloc[-1] if len(s) else np.nan
        recent_s = s.loc[s["event_time"] >= end - 90 * day, "sentiment"]
        row["sentiment_90d"] = recent_s.mean() if len(recent_s) else np.nan
        row["sentiment_trend"] = (
            np.nan
            if not len(s)
            else 0.0
            if len(s) == 1
            else s["sentiment"].iloc[-1] - s["sentiment"].iloc[:-1].mean()
        )
        out[client] = row
    return pd.DataFrame.from_dict(out, orient="index")


def _assert_matches_pandas(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert sorted(want.index) == list(got.index)
    for col in want.columns:
        expected, actual = want[col], got.loc[want.index, col]
        if not pd.api.types.is_numeric_dtype(expected):
            assert (expected.fillna("<null>") == actual.fillna("<null>")).all(), col
        else:
            np.testing.assert_allclose(
                actual.astype(float), expected.astype(float), rtol=1e-9, atol=1e-4, err_msg=col
            )


def test_overlapping_windows_and_a_long_momentum_match_pandas(events: pd.DataFrame) -> None:
    # 2 x momentum = the fixed 90-day window, and a configured window equal to the momentum:
    # the packed counters share age buckets and must still count each window exactly.
    cfg = FeaturesConfig(windows_days=(7, 45), momentum_days=45, intent_days=10)
    con = duckdb.connect()
    make_events(con, events)
    got = build_features(con, AS_OF, cfg).to_pandas().set_index("client_id")
    _assert_matches_pandas(got, pandas_features(events, AS_OF, cfg))
    _assert_matches_pandas(got, stage_and_type_counts(events, AS_OF, cfg))


def test_stage_channel_and_type_counts_match_pandas(events: pd.DataFrame, built) -> None:
    _, got = built
    _assert_matches_pandas(got, stage_and_type_counts(events, AS_OF, FeaturesConfig()))


def stage_and_type_counts(events: pd.DataFrame, as_of: date, cfg: FeaturesConfig) -> pd.DataFrame:
    """Journey-stage, channel-window and event-type features recomputed in pandas."""
    end = pd.Timestamp(day_end(as_of))
    day = pd.Timedelta(days=1)
    taxonomy = load_taxonomy()
    ranks = {"awareness": 1, "consideration": 2, "purchase": 3, "retention": 4, "advocacy": 5}
    ev = events[events["event_time"] < end].copy()
    ev["event_time"] = pd.to_datetime(ev["event_time"])
    ev["rank"] = ev["event_type"].map(taxonomy.stage).map(ranks).fillna(0).astype(int)
    ev["own"] = ~ev["event_type"].isin(BRAND)
    ev.loc[~ev["own"], "rank"] = 0  # a brand touch never sets the client's stage
    ev["age"] = (pd.Timestamp(as_of) - ev["event_time"].dt.normalize()) // day
    m = cfg.momentum_days
    out = {}
    for client, everything in ev.groupby("client_id"):
        row: dict[str, object] = {}
        g = everything[everything["own"]]
        for etype, name in (("return", "n_returns"), ("support_ticket", "n_support_tickets")):
            row[name] = int((everything["event_type"] == etype).sum())
        if not len(g):
            out[client] = row
            continue
        top = everything[everything["rank"] == everything["rank"].max()]
        row["furthest_stage_rank"] = g["rank"].max()
        row["days_since_stage_advance"] = (end - top["event_time"].min()) / day
        staged = g[g["rank"] > 0].sort_values(["event_time", "rank"])
        row["current_stage_rank"] = staged["rank"].iloc[-1] if len(staged) else 0
        for w in (*cfg.windows_days, 30, 90):
            inside = g[g["age"] < w]
            row[f"events_{w}d"] = len(inside)
            for stage, rank in ranks.items():
                row[f"{stage}_events_{w}d"] = int((inside["rank"] == rank).sum())
        for w in (30, 90):
            row[f"web_events_{w}d"] = int(((g["age"] < w) & (g["channel"] == "web")).sum())
            row[f"call_center_events_{w}d"] = int(
                ((g["age"] < w) & (g["channel"] == "call_center")).sum()
            )
        before, inside = g[g["age"] >= m], g[g["age"] < m]
        gap = (inside["event_time"].min() - before["event_time"].max()) / day
        row["return_gap_days"] = gap if len(before) and len(inside) else np.nan
        row["returns_90d"] = int(((g["event_type"] == "return") & (g["age"] < 90)).sum())
        row["return_amount"] = g.loc[g["event_type"] == "return", "amount"].sum()
        out[client] = row
    return pd.DataFrame.from_dict(out, orient="index").sort_index()


def test_events_before_1970_match_pandas(events: pd.DataFrame, built) -> None:
    # Negative epoch microseconds: the stage and sentiment keys must order them correctly.
    shift = timedelta(days=365 * 60)
    old = events.assign(event_time=[t - shift for t in events["event_time"]])
    as_of = AS_OF - shift
    con = duckdb.connect()
    make_events(con, old)
    table = build_features(con, as_of)
    got = table.to_pandas().set_index("client_id")
    _assert_matches_pandas(got, pandas_features(old, as_of, FeaturesConfig()))
    assert build_features(con, as_of, shards=3).equals(table)
    # Every feature is relative to the as-of day, so the shifted build is the same table.
    assert table.equals(built[0])


def test_recency_weighted_mixes_match_pandas(events: pd.DataFrame, built) -> None:
    """The weighted stage and channel mixes, recomputed with a weight per event: RECENT_WEIGHT
    for the last 90 days, 1 before (stages: within the longest window; channels: the standard
    ones)."""
    _, got = built
    longest = FeaturesConfig().windows_days[-1]
    stage_of = load_taxonomy().stage
    ev = events[events["event_time"] < pd.Timestamp(END)].copy()
    ev["age"] = (pd.Timestamp(AS_OF) - pd.to_datetime(ev["event_time"]).dt.normalize()).dt.days
    ev["weight"] = np.where(ev["age"] < 90, float(RECENT_WEIGHT), 1.0)
    ev["stage"] = ev["event_type"].map(stage_of)
    ev = ev[~ev["event_type"].isin(BRAND)]  # mixes of the client's own events

    def share(frame: pd.DataFrame, column: str, value: str) -> float:
        if not len(frame):
            return np.nan
        return frame.loc[frame[column] == value, "weight"].sum() / frame["weight"].sum()

    checked = 0
    for client, g in ev.groupby("client_id"):
        year = g[g["age"] < longest]
        for stage in ("awareness", "purchase", "retention"):
            want = share(year, "stage", stage)
            assert got.loc[client, f"{stage}_share_weighted"] == pytest.approx(want, nan_ok=True)
        known = g[g["channel"].isin(CHANNELS)]
        for channel in ("web", "app", "store"):
            want = share(known, "channel", channel)
            assert got.loc[client, f"share_{channel}_weighted"] == pytest.approx(want, nan_ok=True)
        checked += 1
    assert checked == len(got) > 10
    # the weighting matters on this data: weighted and plain mixes differ
    assert (got["share_web_weighted"] - got["share_web"]).abs().max() > 0.01
    assert (got["purchase_share_weighted"] - got[f"purchase_share_{longest}d"]).abs().max() > 0.01


def test_brand_touches_are_exposure_not_activity() -> None:
    """A client who stopped acting while ads and emails kept coming reads as silent since
    their last own event; a client the brand only ever reached has no activity at all."""
    rows = []
    start = datetime(2025, 1, 1, 12)
    for d in range(0, 40, 2):  # acts for 40 days: views, a purchase
        rows.append(("a", start + timedelta(days=d), "product_view", "app", None, "shoes", None))
    rows.append(("a", start + timedelta(days=38), "purchase", "app", 30.0, "shoes", None))
    for d in range(0, 90):  # the brand keeps writing and showing ads, opens happen on their own
        when = start + timedelta(days=d, hours=3)
        rows.append(("a", when, "email_sent", "email", None, "hats", None))
        rows.append(("a", when, "email_open", "email", None, "hats", None))
        rows.append(("b", when, "ad_impression", "web", None, "hats", None))
    frame = pd.DataFrame(
        rows, columns=[*list(EVENT_SCHEMA)[:3], "channel", "amount", "category", "sentiment"]
    )
    frame["event_id"] = [f"e{i}" for i in range(len(frame))]
    con = duckdb.connect()
    make_events(con, frame)
    as_of = date(2025, 3, 31)  # 89 days after the start
    got = build_features(con, as_of).to_pandas().set_index("client_id")
    a, b = got.loc["a"], got.loc["b"]
    assert a["recency_days"] == pytest.approx((day_end(as_of) - (start + timedelta(38))).days + 0.5)
    assert a["tenure_days"] > a["recency_days"] + 30
    assert a["events_30d"] == 0 and a["active_days_30d"] == 0
    assert a["n_events"] == 21 and a["n_exposures"] == 180
    assert a["exposures_30d"] == 60
    assert a["current_stage"] == "purchase" and a["preferred_channel"] == "app"
    assert a["share_email"] == 0.0
    assert pd.isna(a["dominant_category_recent"])  # the brand's hats are not the client's intent
    assert a["activity_momentum"] == -1.0  # acted in the 30 days before the last 30, not since
    # Reached but never acting: silent since first seen, no stage, no channel of their own.
    assert b["n_events"] == 0 and b["n_exposures"] == 90
    assert b["recency_days"] == pytest.approx(b["tenure_days"])
    assert b["furthest_stage"] == "other" and b["current_stage"] == "other"
    assert b["active_days_90d"] == 0 and np.isnan(b["share_web"])
    assert pd.isna(b["preferred_channel"])


def test_a_single_purchase_shows_no_repeat_rate() -> None:
    """Hand-checked: repeat purchases per 30 days of the active span (at least 30 days)."""
    day = datetime(2024, 6, 1, 12)
    rows = [
        ("once", day, "purchase", "web", 50.0, None, None),  # one purchase: no rate
        ("regular", day, "purchase", "web", 20.0, None, None),  # 3 purchases over 60 days
        ("regular", day + timedelta(days=30), "purchase", "web", 20.0, None, None),
        ("regular", day + timedelta(days=60), "purchase", "web", 20.0, None, None),
        ("burst", day, "purchase", "web", 5.0, None, None),  # 2 purchases 5 days apart
        ("burst", day + timedelta(days=5), "purchase", "web", 5.0, None, None),
        ("browser", day, "product_view", "web", None, "hats", None),
    ]
    frame = pd.DataFrame(
        rows, columns=[*list(EVENT_SCHEMA)[:3], "channel", "amount", "category", "sentiment"]
    )
    frame["event_id"] = [f"e{i}" for i in range(len(frame))]
    con = duckdb.connect()
    make_events(con, frame)
    got = {
        r["client_id"]: r["purchases_per_active_month"]
        for r in build_features(con, date(2024, 12, 31)).to_pylist()
    }
    assert got["once"] == 0.0 and got["browser"] == 0.0
    assert got["regular"] == pytest.approx(30.0 * 2 / 60)
    assert got["burst"] == pytest.approx(30.0 * 1 / 30)  # the 30-day floor
