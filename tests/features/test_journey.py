"""Tests of the journey map: hand-checked small journeys, intervals against scipy and a
published example, planted drop-off causes and moments of truth found where planted and
only there, point in time, small samples, stage "other", determinism."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from scipy.stats.contingency import relative_risk

from configs.schema import JourneyConfig
from features.events import load_events
from features.journey import (
    ALL_SEGMENTS,
    CLIENT_TABLES,
    DROPOFF_COLUMNS,
    STAGE_COLUMNS,
    TOO_FEW,
    TOUCHPOINT_COLUMNS,
    journey_client_tables,
    journey_map,
    katz_interval,
    mantel_haenszel_interval,
    newcombe_interval,
    wilson_interval,
)

AS_OF = date(2025, 6, 30)
END = datetime(2025, 7, 1)
SMALL = JourneyConfig(min_clients=1, window_days=180, stall_days=30)


def _con(tmp_path, rows: list[tuple]) -> duckdb.DuckDBPyConnection:
    """An events table loaded through the event contract from (client, time, type, channel,
    category, sentiment) rows."""
    frame = pd.DataFrame(
        rows, columns=["client_id", "event_time", "event_type", "channel", "category", "sentiment"]
    )
    frame["amount"] = np.where(frame["event_type"] == "purchase", 10.0, np.nan)
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)
    con = duckdb.connect()
    load_events(con, path, now=END + timedelta(days=400))
    return con


def _members(clients: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "client_id": list(clients),
            "segment_id": list(clients.values()),
            "segment_name": [f"name {s}" for s in clients.values()],
        }
    )


def _t(days_before_end: float) -> datetime:
    return END - timedelta(days=days_before_end)


@pytest.fixture
def small(tmp_path):
    """Four clients in two segments, with journeys checked by hand below.

    a (seg A): page_view 100d -> product_view 90d -> checkout_start 80d; stalled at purchase
               stage, last touchpoint checkout_start/web.
    b (seg A): page_view 60d -> product_view 58d -> purchase 50d -> login 5d; in progress.
    c (seg B): product_view 40d (web), then ad_impression 10d (brand); stalled at
               consideration (last client event 40 days ago), last touchpoint product_view/web.
    d (seg B): page_view 3d; in progress at awareness.
    e (seg B): an unknown event type only (stage other), 20d.
    """
    rows = [
        ("a", _t(100), "page_view", "web", None, None),
        ("a", _t(90), "product_view", "web", "shoes", None),
        ("a", _t(80), "checkout_start", "web", "shoes", None),
        ("b", _t(60), "page_view", "app", None, None),
        ("b", _t(58), "product_view", "app", "bags", None),
        ("b", _t(50), "purchase", "app", "bags", None),
        ("b", _t(5), "login", "app", None, None),
        ("c", _t(40), "product_view", "web", "shoes", -0.8),
        ("c", _t(10), "ad_impression", "social", None, None),
        ("d", _t(3), "page_view", "web", None, None),
        ("e", _t(20), "mystery_event", "web", None, None),
        ("a", END + timedelta(days=2), "purchase", "web", "shoes", None),  # after the as-of
        ("b", _t(400), "page_view", "web", None, None),  # before the window
    ]
    con = _con(tmp_path, rows)
    members = _members({"a": "A", "b": "A", "c": "B", "d": "B", "e": "B"})
    return journey_map(con, AS_OF, members, SMALL)


def _row(frame: pd.DataFrame, **where) -> pd.Series:
    mask = np.ones(len(frame), dtype=bool)
    for column, value in where.items():
        mask &= (frame[column].isna() if value is None else frame[column] == value).to_numpy()
    assert mask.sum() == 1, f"{mask.sum()} rows match {where}"
    return frame[mask].iloc[0]


def test_columns_are_the_published_ones(small):
    assert list(small.stages.columns) == STAGE_COLUMNS
    assert list(small.touchpoints.columns) == TOUCHPOINT_COLUMNS
    assert list(small.dropoffs.columns) == DROPOFF_COLUMNS


def test_stage_flow_by_hand(small):
    stages = small.stages
    aware = _row(stages, segment_id="A", stage="awareness", to_stage=None)
    assert aware["clients"] == 2 and aware["stalled"] == 0  # a went on, b went on
    flow = _row(stages, segment_id="A", stage="awareness", to_stage="consideration")
    assert flow["moved"] == 2 and flow["conversion_rate"] == 1.0
    assert flow["median_days"] == pytest.approx(6.0)  # a: 10 days, b: 2 days
    to_purchase = _row(stages, segment_id="A", stage="consideration", to_stage="purchase")
    assert to_purchase["moved"] == 2  # a by checkout_start, b by purchase
    assert to_purchase["median_days"] == pytest.approx(9.0)  # a: 10, b: 8
    purchase = _row(stages, segment_id="A", stage="purchase", to_stage=None)
    assert purchase["stalled"] == 1  # a: checkout 80 days ago, nothing since
    retention = _row(stages, segment_id="A", stage="retention", to_stage=None)
    assert retention["in_progress"] == 1 and retention["stalled"] == 0  # b: login 5 days ago
    consideration_b = _row(stages, segment_id="B", stage="consideration", to_stage=None)
    assert consideration_b["stalled"] == 1  # c: an ad later does not count as its own act
    assert consideration_b["sentiment_mean"] == pytest.approx(-0.8)
    every = _row(stages, segment_id=ALL_SEGMENTS, stage="*", to_stage=None)
    assert every["clients"] == 5 and every["stalled"] == 2  # a and c
    assert every["in_progress"] == 3  # b, d, and e (an unknown event is still its own act)
    other = _row(stages, segment_id="B", stage="other", to_stage=None)
    assert other["clients"] == 1 and other["events"] == 1
    assert _row(stages, segment_id="A", stage="*", to_stage=None)["segment_name"] == "name A"


def test_no_event_after_the_as_of_or_before_the_window(small):
    a_purchase = _row(small.stages, segment_id="A", stage="purchase", to_stage=None)
    assert a_purchase["clients"] == 2  # a's purchase after the as-of does not count
    page_views = small.touchpoints[
        (small.touchpoints["segment_id"] == "A") & (small.touchpoints["event_type"] == "page_view")
    ]
    assert set(page_views["channel"]) == {"web", "app"}
    assert page_views["events"].sum() == 2  # b's page view 400 days ago is outside the window


def test_dropoff_points_are_last_touchpoints_of_stalled_clients(small):
    drops = small.dropoffs[small.dropoffs["kind"] == "dropoff"]
    overall = drops[drops["segment_id"] == ALL_SEGMENTS].set_index(["event_type", "channel"])
    assert overall.loc[("checkout_start", "web"), "clients"] == 1
    assert overall.loc[("product_view", "web"), "clients"] == 1
    # product_view/web: c dropped there, a went on from it
    assert overall.loc[("product_view", "web"), "other_clients"] == 1
    assert overall.loc[("product_view", "web"), "effect"] == pytest.approx(0.5)
    assert ("page_view", "web") not in overall.index  # d is still in progress


def test_touchpoints_reach_and_pains(tmp_path):
    rows = [(f"c{i}", _t(10 + i), "page_view", "web", None, None) for i in range(4)]
    rows += [("c0", _t(5), "support_ticket", "call_center", None, -0.9)]
    rows += [("c1", _t(5), "support_ticket", "call_center", None, 0.1)]
    con = _con(tmp_path, rows)
    config = JourneyConfig(min_clients=1, top_touchpoints=1)
    result = journey_map(con, AS_OF, _members({f"c{i}": "A" for i in range(4)}), config)
    tp = result.touchpoints[result.touchpoints["segment_id"] == "A"].set_index("event_type")
    assert tp.loc["page_view", "reach"] == 1.0 and tp.loc["page_view", "clients"] == 4
    ticket = tp.loc["support_ticket"]
    assert ticket["is_pain"] and ticket["reach"] == 0.5 and ticket["negative_events"] == 1
    assert ticket["sentiment_mean"] == pytest.approx(-0.4)
    assert ticket["initiated_by"] == "client"


def test_too_few_clients_shows_counts_not_numbers(tmp_path):
    rows = [(f"c{i}", _t(60 - i), "product_view", "web", None, None) for i in range(5)]
    rows += [(f"c{i}", _t(50 - i), "purchase", "web", None, None) for i in range(2)]
    con = _con(tmp_path, rows)
    result = journey_map(con, AS_OF, _members({f"c{i}": "A" for i in range(5)}), JourneyConfig())
    flow = _row(result.stages, segment_id="A", stage="consideration", to_stage="purchase")
    assert flow["clients"] == 5 and flow["moved"] == 2
    assert pd.isna(flow["conversion_rate"]) and flow["note"] == TOO_FEW
    drops = result.dropoffs[result.dropoffs["segment_id"] == "A"]
    assert len(drops) and drops["effect"].isna().all() and (drops["note"] == TOO_FEW).all()
    assert (result.touchpoints["note"] == TOO_FEW).all()


def test_no_events_in_the_window(tmp_path):
    con = _con(tmp_path, [("x", _t(900), "page_view", "web", None, None)])
    result = journey_map(con, AS_OF, _members({"x": "A"}), SMALL)
    assert result.touchpoints.empty and result.dropoffs.empty
    assert (result.stages["clients"] == 0).all()


# ------------------------------------------------------------------ intervals


def test_wilson_matches_scipy():
    for x, n in [(0, 10), (3, 10), (45, 60), (500, 1000), (1000, 1000)]:
        low, high = wilson_interval(np.array([x]), np.array([n]), 0.95)
        ref = binomtest(x, n).proportion_ci(0.95, method="wilson")
        assert low[0] == pytest.approx(ref.low, abs=1e-12)
        assert high[0] == pytest.approx(ref.high, abs=1e-12)


def test_katz_matches_scipy_relative_risk():
    for x1, n1, x0, n0 in [(30, 100, 10, 100), (5, 40, 12, 300), (200, 900, 150, 1200)]:
        ratio, low, high = katz_interval(*(np.array([v]) for v in (x1, n1, x0, n0)), 0.9)
        ref = relative_risk(x1, n1, x0, n0)
        ci = ref.confidence_interval(0.9)
        assert ratio[0] == pytest.approx(ref.relative_risk)
        assert low[0] == pytest.approx(ci.low) and high[0] == pytest.approx(ci.high)


def test_newcombe_matches_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, method 10 for 56/70 - 48/80:
    # 0.2000 (0.0524, 0.3339).
    diff, low, high = newcombe_interval(
        np.array([56]), np.array([70]), np.array([48]), np.array([80]), 0.95
    )
    assert diff[0] == pytest.approx(0.2)
    assert low[0] == pytest.approx(0.0524, abs=5e-5)
    assert high[0] == pytest.approx(0.3339, abs=5e-5)


# ------------------------------------------------------------------ planted effects


def _planted(tmp_path, seed: int = 3) -> tuple[duckdb.DuckDBPyConnection, pd.DataFrame]:
    """Two segments of 600 clients. Every client browses, adds to cart and starts checkout;
    a quarter see the delivery-cost page before checkout and a quarter have a consultation.
    In segment A only: after the delivery-cost page checkout stalls 3x as often, and a
    consultation raises the chance of reaching checkout by about 30 points. In B both are
    present at the same rates without any effect."""
    rng = np.random.default_rng(seed)
    rows: list[tuple] = []
    segments = {}
    for segment in ("A", "B"):
        for k in range(600):
            client = f"{segment}{k:04d}"
            segments[client] = segment
            start = rng.uniform(60, 170)
            rows.append((client, _t(start), "page_view", "web", None, None))
            rows.append((client, _t(start - 1), "product_view", "web", "shoes", None))
            consult = rng.random() < 0.25
            if consult:
                rows.append((client, _t(start - 2), "consultation", "call_center", None, 0.5))
            reach = 0.85 if (segment == "A" and consult) else 0.55
            if rng.random() > reach:
                continue  # stalls at consideration
            rows.append((client, _t(start - 3), "add_to_cart", "web", "shoes", None))
            delivery = rng.random() < 0.25
            if delivery:
                rows.append((client, _t(start - 3.5), "page_view", "web", "delivery_costs", None))
            rows.append((client, _t(start - 4), "checkout_start", "app", "shoes", None))
            stall = 0.6 if (segment == "A" and delivery) else 0.2
            if rng.random() < stall:
                continue  # stalls at checkout
            rows.append((client, _t(start - 4.2), "purchase", "app", "shoes", None))
            if rng.random() < 0.5:
                rows.append((client, _t(start - 30), "login", "app", None, None))
    return _con(tmp_path, rows), _members(segments)


def test_planted_cause_and_moment_are_found_where_planted_and_only_there(tmp_path):
    con, members = _planted(tmp_path)
    result = journey_map(con, AS_OF, members, JourneyConfig())
    causes = result.dropoffs[result.dropoffs["kind"] == "cause"]
    at_checkout = causes[
        (causes["event_type"] == "checkout_start") & (causes["channel"] == "app")
    ].sort_values("rank")
    a = at_checkout[at_checkout["segment_id"] == "A"]
    top = a.iloc[0]
    assert (top["factor_kind"], top["factor"]) == ("category", "delivery_costs")
    assert top["effect"] > 2 and top["effect_low"] > 1.5
    b = at_checkout[at_checkout["segment_id"] == "B"]
    found_b = b[(b["factor"] == "delivery_costs") & (b["effect_low"] > 1) & (b["rank"] <= 3)]
    assert found_b.empty

    moments = result.dropoffs[
        (result.dropoffs["kind"] == "moment")
        & (result.dropoffs["stage"] == "consideration")
        & (result.dropoffs["factor_kind"] == "raises")
    ]
    a_moments = moments[moments["segment_id"] == "A"].sort_values("rank")
    assert "consultation/call_center" in list(a_moments["factor"].iloc[:3])
    consult = a_moments[a_moments["factor"] == "consultation/call_center"].iloc[0]
    assert 0.15 < consult["effect"] < 0.45 and consult["effect_low"] > 0.1
    b_moments = moments[moments["segment_id"] == "B"]
    reliable_b = b_moments[
        (b_moments["factor"] == "consultation/call_center") & (b_moments["effect_low"] > 0)
    ]
    assert reliable_b.empty


def test_the_same_inputs_give_the_same_tables(tmp_path):
    con, members = _planted(tmp_path)
    first = journey_map(con, AS_OF, members, JourneyConfig())
    second = journey_map(con, AS_OF, members.sample(frac=1, random_state=1), JourneyConfig())
    for a, b in [
        (first.stages, second.stages),
        (first.touchpoints, second.touchpoints),
        (first.dropoffs, second.dropoffs),
    ]:
        pd.testing.assert_frame_equal(a, b)


def test_the_map_from_shards_of_clients_is_the_map_of_all_of_them(tmp_path):
    con, members = _planted(tmp_path)
    whole = journey_map(con, AS_OF, members, JourneyConfig())
    # Three shards of clients (by a hash of the id, not by segment), each with its own events.
    shard = members["client_id"].map(lambda c: sum(c.encode()) % 3)
    parts: dict[str, list[str]] = {name: [] for name in CLIENT_TABLES}
    for k in range(3):
        mine = members[shard == k]
        ids = ", ".join(f"'{c}'" for c in mine["client_id"])
        con.execute(
            f"CREATE OR REPLACE TABLE shard_events AS SELECT * FROM events WHERE client_id IN ({ids})"
        )
        files = journey_client_tables(
            con, AS_OF, mine, tmp_path, k, JourneyConfig(), events_table="shard_events"
        )
        for name, file in files.items():
            parts[name].append(file)
    assert len(parts["client"]) == 3
    sharded = journey_map(con, AS_OF, members, JourneyConfig(), parts=parts)
    for a, b in [
        (whole.stages, sharded.stages),
        (whole.touchpoints, sharded.touchpoints),
        (whole.dropoffs, sharded.dropoffs),
    ]:
        pd.testing.assert_frame_equal(b, a, check_exact=True)
    assert (whole.dropoffs["kind"] == "cause").any()
    assert sharded.summary["clients"] == whole.summary["clients"]


def test_mantel_haenszel_is_katz_for_one_stratum_and_removes_composition():
    one = mantel_haenszel_interval(np.array([0]), [30], [100], [10], [100], 0.95)
    katz = katz_interval(np.array([30]), np.array([100]), np.array([10]), np.array([100]), 0.95)
    for a, b in zip(one, katz, strict=True):
        assert a[0] == pytest.approx(b[0])
    # Two clusters, each with a lift of exactly 1 (the factor is as common among those who
    # dropped as among those who went on), but cluster 2 has both more drop-offs and more of
    # the factor: the crude lift is far above 1, the pooled one is 1.
    x1, n1, x0, n0 = [10, 80], [100, 100], [50, 80], [500, 100]
    crude = katz_interval(np.array([90]), np.array([200]), np.array([130]), np.array([600]))
    assert crude[0][0] > 2
    ratio, low, high = mantel_haenszel_interval(np.array([0, 0]), x1, n1, x0, n0, 0.95)
    assert ratio[0] == pytest.approx(1.0) and low[0] < 1 < high[0]


def test_a_cluster_trait_is_not_taken_for_a_cause(tmp_path):
    """In one segment, clients of cluster k2 search a lot and drop off at checkout more often;
    within each cluster searching makes no difference. Pooled over clusters the search is no
    cause; without the clusters it would look like one."""
    rng = np.random.default_rng(4)
    rows, members = [], []
    for k in range(1600):
        client, cluster = f"c{k:04d}", "k2" if k % 2 else "k1"
        members.append((client, "S", "S", cluster))
        start = rng.uniform(60, 170)
        rows.append((client, _t(start), "product_view", "web", "shoes", None))
        if rng.random() < (0.8 if cluster == "k2" else 0.1):
            rows.append((client, _t(start - 0.5), "search", "web", None, None))
        rows.append((client, _t(start - 1), "checkout_start", "web", "shoes", None))
        if rng.random() < (0.5 if cluster == "k2" else 0.1):
            continue
        rows.append((client, _t(start - 1.1), "purchase", "web", "shoes", None))
    con = _con(tmp_path, rows)
    frame = pd.DataFrame(members, columns=["client_id", "segment_id", "segment_name", "cluster_id"])
    causes = journey_map(con, AS_OF, frame, JourneyConfig()).dropoffs
    search = causes[(causes["kind"] == "cause") & (causes["factor"] == "search/web")]
    assert search.empty or (search["effect_low"] < 1).all()
    crude = journey_map(con, AS_OF, frame.drop(columns="cluster_id"), JourneyConfig()).dropoffs
    crude_search = crude[(crude["kind"] == "cause") & (crude["factor"] == "search/web")]
    assert (crude_search["effect_low"] > 1.5).any()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Generator journeys with the planted drop-off cause and moment of truth, and each
    client's persona (after the shift) as its segment."""
    import json

    from features.generator import write_dataset

    out = tmp_path_factory.mktemp("planted")
    write_dataset(out, clients=6000, days=365, end=AS_OF, seed=21)
    con = duckdb.connect()
    load_events(con, out / "events", now=END + timedelta(days=1))
    truth = pd.read_parquet(out / "truth.parquet", columns=["client_id", "persona_after"])
    members = truth.rename(columns={"persona_after": "segment_id"}).assign(
        segment_name=lambda f: f["segment_id"]
    )
    plants = json.loads((out / "journey_truth.json").read_text())
    return journey_map(con, AS_OF, members, JourneyConfig()), plants


def test_the_generators_plants_are_found_for_their_persona_only(generated):
    result, plants = generated
    drops = result.dropoffs
    cause, moment = plants["dropoff"], plants["moment"]
    causes = drops[
        (drops["kind"] == "cause")
        & (drops["event_type"] == cause["event_type"])
        & (drops["factor"] == cause["cause"]["category"])
        & (drops["effect_low"] > 1)
    ]
    assert (causes.loc[causes["segment_id"] == cause["persona"], "rank"] <= 3).any()
    elsewhere = causes[(causes["segment_id"] != cause["persona"]) & (causes["segment_id"] != "*")]
    assert elsewhere.empty, elsewhere[["segment_id", "rank", "effect", "effect_low"]]

    touchpoint = f"{moment['touchpoint']['event_type']}/{moment['touchpoint']['channel']}"
    moments = drops[
        (drops["kind"] == "moment")
        & (drops["stage"] == moment["stage"])
        & (drops["factor_kind"] == "raises")
        & (drops["factor"] == touchpoint)
        & (drops["effect_low"] > 0)
    ]
    assert (moments.loc[moments["segment_id"] == moment["persona"], "rank"] <= 3).any()
    others = moments[(moments["segment_id"] != moment["persona"]) & (moments["segment_id"] != "*")]
    assert not (others["rank"] <= 3).any(), others[["segment_id", "rank", "effect"]]


def test_the_pooled_ratio_is_the_same_bits_whatever_the_order_of_the_strata():
    rng = np.random.default_rng(8)
    n1 = rng.integers(20, 400, 60)
    n0 = rng.integers(20, 400, 60)
    x1 = rng.binomial(n1, 0.3)
    x0 = rng.binomial(n0, 0.2)
    groups = np.repeat(["a", "b", "c"], 20)
    first = mantel_haenszel_interval(groups, x1, n1, x0, n0)
    for seed in range(5):
        shuffle = np.random.default_rng(seed).permutation(60)
        again = mantel_haenszel_interval(
            groups[shuffle], x1[shuffle], n1[shuffle], x0[shuffle], n0[shuffle]
        )
        for a, b in zip(first, again, strict=True):
            assert np.array_equal(a, b)
