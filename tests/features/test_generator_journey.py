"""Tests of the generator's journey plants: a drop-off cause and a moment of truth.

Checked with plain DuckDB over the generated events, as the journey map defines them: the last
WINDOW days before the end, stalled = no own (client-initiated) event in the last STALL days,
the purchase stage reached by checkout_start or purchase.
"""

from __future__ import annotations

import json
from datetime import date

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.events import load_taxonomy
from features.generator import (
    CAUSE_CATEGORY,
    CHANNELS,
    PERSONAS,
    generate,
    journey_truth,
    write_dataset,
)

END = date(2025, 6, 30)
DAYS = 365
CLIENTS = 8000
SEED = 21
WINDOW, STALL = 180, 30
END_TS = f"TIMESTAMP '{END}' + INTERVAL 1 DAY"  # the end of the last day


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, pd.DataFrame]:
    out = tmp_path_factory.mktemp("journey")
    summary = write_dataset(out, CLIENTS, DAYS, END, SEED)
    truth = pq.read_table(out / "truth.parquet").to_pandas()
    with open(summary["journey_truth"]) as file:
        plants = json.load(file)
    return dict(summary), plants, truth


@pytest.fixture(scope="module")
def con(written) -> duckdb.DuckDBPyConnection:
    """Table `e`: the window's events of the clients who did not shift, with their persona and
    `own` (client-initiated)."""
    summary, _, _ = written
    brand = ", ".join(f"'{t}'" for t in load_taxonomy().brand_types)
    con = duckdb.connect()
    con.execute(
        f"""CREATE TABLE e AS
            SELECT ev.*, t.persona_before AS persona, ev.event_type NOT IN ({brand}) AS own
            FROM read_parquet('{summary["events_dir"]}/*.parquet') ev
            JOIN read_parquet('{summary["truth"]}') t USING (client_id)
            WHERE NOT t.shifted AND ev.event_time >= {END_TS} - INTERVAL {WINDOW} DAY"""
    )
    return con


def test_truth_names_the_plants(written) -> None:
    summary, plants, truth = written
    assert summary["journey_truth"].endswith("journey_truth.json")
    taxonomy = load_taxonomy()
    drop, moment = plants["dropoff"], plants["moment"]
    assert plants["enabled"] is True
    # The file is the plan of journey_truth() with what the plants did in this data set.
    plan = journey_truth()
    assert {k: v for k, v in drop.items() if k != "clients_left"} == plan["dropoff"]
    assert {k: v for k, v in moment.items() if k != "purchases_added"} == plan["moment"]

    assert drop["persona"] in PERSONAS and moment["persona"] in PERSONAS
    assert taxonomy.stage(drop["event_type"]) == drop["stage"] == "purchase"
    assert set(drop["channels"]) <= set(CHANNELS)
    cause = drop["cause"]
    assert cause["category"] == CAUSE_CATEGORY
    assert taxonomy.initiator(cause["event_type"]) == cause["initiator"] == "client"
    assert set(cause["channels"]) <= set(CHANNELS)
    assert 0.15 <= drop["exposure"] <= 0.3 and drop["p_leave"] > 0
    assert drop["expected"]["stall_ratio_at_least"] >= 3
    touch = moment["touchpoint"]
    assert taxonomy.stage(touch["event_type"]) == moment["stage"] == "consideration"
    assert moment["next_stage"] == "purchase" and touch["channel"] in CHANNELS
    assert taxonomy.initiator(touch["event_type"]) == touch["initiator"] == "client"
    assert moment["p_buy"] > 0 and moment["expected"]["uplift_at_least"] >= 0.25

    # Per client: only the planted personas are touched, and the counts agree.
    left = truth[truth["dropoff_cause_date"].notna()]
    assert drop["clients_left"] == len(left) > 0
    persona_then = left["persona_after"].where(left["shifted"], left["persona_before"])
    at_shift = pd.to_datetime(left["shift_date"])
    before = left["shifted"] & (pd.to_datetime(left["dropoff_cause_date"]) < at_shift)
    persona_then = persona_then.where(~before, left["persona_before"])
    assert (persona_then == drop["persona"]).all()
    assert (~left["alive_at_end"] | left["shifted"]).all()
    bought = truth[truth["moment_purchases"] > 0]
    assert moment["purchases_added"] == truth["moment_purchases"].sum() > 0
    assert (bought["persona_before"] == moment["persona"]).all()


def test_the_cause_precedes_checkouts_of_every_persona_alike(written, con) -> None:
    _, plants, _ = written
    drop = plants["dropoff"]
    hi = drop["cause"]["minutes_before"][1]
    rates = con.execute(
        f"""SELECT c.persona, count(*) AS n,
                   avg((EXISTS (SELECT 1 FROM e p WHERE p.client_id = c.client_id
                          AND p.category = '{CAUSE_CATEGORY}' AND p.event_type = 'page_view'
                          AND p.channel = c.channel
                          AND p.event_time BETWEEN c.event_time - INTERVAL {int(hi) + 1} MINUTE
                                               AND c.event_time))::INT) AS exposed
            FROM e c WHERE c.event_type = 'checkout_start' GROUP BY ALL"""
    ).df()
    rates = rates.set_index("persona")
    rates = rates[rates["n"] >= 300]
    assert drop["persona"] in rates.index and len(rates) >= 4
    assert (rates["exposed"] - drop["exposure"]).abs().max() < 0.05, rates
    # The cause page is on the web or the app, never anywhere else.
    channels = con.execute(
        f"SELECT DISTINCT channel FROM e WHERE category = '{CAUSE_CATEGORY}'"
    ).fetchall()
    assert {c for (c,) in channels} <= set(drop["cause"]["channels"])


def _stall_after_cause(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per persona and whether the cause page preceded the client's last checkout_start: the
    clients who did checkout_start and the share stalled there (their last own event is that
    checkout_start, more than STALL days before the end)."""
    return con.execute(
        f"""WITH last_co AS (
                SELECT client_id, persona, max(event_time) AS t
                FROM e WHERE event_type = 'checkout_start' GROUP BY ALL),
            exposed AS (
                SELECT c.client_id, bool_or(e.category = '{CAUSE_CATEGORY}'
                    AND e.event_time BETWEEN c.t - INTERVAL 1 HOUR AND c.t) AS exposed
                FROM last_co c JOIN e USING (client_id) GROUP BY ALL),
            last_own AS (SELECT client_id, max(event_time) AS t FROM e WHERE own GROUP BY ALL)
            SELECT c.persona, x.exposed, count(*) AS clients,
                   avg((o.t = c.t AND o.t < {END_TS} - INTERVAL {STALL} DAY)::INT) AS stalled
            FROM last_co c JOIN exposed x USING (client_id) JOIN last_own o USING (client_id)
            GROUP BY ALL"""
    ).df()


def test_the_cause_makes_the_planted_persona_stall_at_checkout(written, con) -> None:
    _, plants, _ = written
    drop = plants["dropoff"]
    stall = _stall_after_cause(con).pivot(index="persona", columns="exposed")
    base, after = stall[("stalled", False)], stall[("stalled", True)]
    n_after = stall[("clients", True)]
    planted = drop["persona"]
    assert n_after[planted] >= 150
    ratio = drop["expected"]["stall_ratio_at_least"]
    assert after[planted] >= max(ratio * base[planted], 0.25), stall
    # The same page does nothing to the other personas.
    others = stall.index[(stall.index != planted) & (n_after >= 50)]
    assert len(others) >= 4
    assert (after[others] <= base[others] + 0.05).all(), stall


def test_who_left_after_the_cause_stalled_at_checkout(written, con) -> None:
    # The clients the truth says left: no purchase after their checkout_start, which the
    # cause page preceded; their last own event is that checkout_start unless the rare page
    # view of a dormant client came later.
    _, _, truth = written
    left = truth.loc[truth["dropoff_cause_date"].notna() & ~truth["shifted"], ["client_id"]]
    con.register("left_clients", left)
    rows = con.execute(
        f"""WITH last_co AS (
                SELECT client_id, max(event_time) AS t FROM e
                WHERE event_type = 'checkout_start' GROUP BY ALL)
            SELECT c.client_id,
                   bool_or(e.category = '{CAUSE_CATEGORY}'
                           AND e.event_time BETWEEN c.t - INTERVAL 1 HOUR AND c.t) AS exposed,
                   bool_or(e.event_type = 'purchase' AND e.event_time > c.t) AS bought_after,
                   arg_max(e.event_type, e.event_time) FILTER (WHERE e.own) AS last_own
            FROM last_co c JOIN left_clients USING (client_id) JOIN e USING (client_id)
            GROUP BY ALL"""
    ).df()
    assert len(rows) >= 100
    assert rows["exposed"].all()
    assert not rows["bought_after"].any()
    assert (rows["last_own"] == "checkout_start").mean() > 0.75


def _conversion(con: duckdb.DuckDBPyConnection, event_type: str, channel: str) -> pd.DataFrame:
    """Per persona, among the clients who reached consideration (first own consideration
    event), with and without the touchpoint between then and first reaching the purchase stage
    (or the end): the clients and the share that reached the purchase stage."""
    taxonomy = load_taxonomy()
    consideration = ", ".join(
        f"'{t}'" for t, s in taxonomy.stage_of.items() if s == "consideration"
    )
    return con.execute(
        f"""WITH s AS (SELECT * FROM e WHERE own),
            reach AS (
                SELECT client_id, persona,
                       min(event_time) FILTER (WHERE event_type IN ({consideration})) AS t1
                FROM s GROUP BY ALL HAVING t1 IS NOT NULL),
            conv AS (
                SELECT r.client_id, r.persona, r.t1,
                       min(s.event_time) FILTER (WHERE s.event_type IN
                           ('checkout_start', 'purchase') AND s.event_time >= r.t1) AS t2
                FROM reach r JOIN s USING (client_id) GROUP BY ALL),
            had AS (
                SELECT c.client_id, c.persona, c.t2 IS NOT NULL AS converted,
                       bool_or(s.event_type = '{event_type}' AND s.channel = '{channel}'
                               AND s.event_time >= c.t1
                               AND (c.t2 IS NULL OR s.event_time < c.t2)) AS touched
                FROM conv c JOIN s USING (client_id) GROUP BY ALL)
            SELECT persona, touched, count(*) AS clients, avg(converted::INT) AS converted
            FROM had GROUP BY ALL"""
    ).df()


def test_the_moment_raises_conversion_for_the_planted_persona_only(written, con) -> None:
    _, plants, _ = written
    moment = plants["moment"]
    touch = moment["touchpoint"]
    conv = _conversion(con, touch["event_type"], touch["channel"])
    conv = conv.pivot(index="persona", columns="touched")
    uplift = conv[("converted", True)] - conv[("converted", False)]
    touched = conv[("clients", True)]
    planted = moment["persona"]
    share = touched[planted] / (touched[planted] + conv.loc[planted, ("clients", False)])
    assert touched[planted] >= 150 and 0.15 <= share <= 0.5, conv
    assert uplift[planted] >= moment["expected"]["uplift_at_least"], conv
    # Other personas have the touchpoint from their own habits, without the effect.
    others = uplift.index[(uplift.index != planted) & (touched >= 40)]
    assert len(others) >= 2
    assert (uplift[others] < 0.1).all(), conv
    assert (uplift[others] < uplift[planted] - 0.2).all(), conv


def test_switching_the_plants_off(tmp_path) -> None:
    summary = write_dataset(tmp_path, 2000, DAYS, END, SEED, journeys=False)
    with open(summary["journey_truth"]) as file:
        assert json.load(file) == {"enabled": False} == journey_truth(False)
    events, truth = generate(2000, DAYS, END, SEED, journeys=False)
    assert CAUSE_CATEGORY not in set(events["category"].drop_null().to_pylist())
    assert truth["dropoff_cause_date"].isna().all() and truth["moment_purchases"].eq(0).all()
    planted, _ = generate(2000, DAYS, END, SEED)
    assert planted.num_rows > events.num_rows


def _all_bytes(out) -> list[bytes]:
    files = [*sorted((out / "events").glob("part-*.parquet")), out / "truth.parquet"]
    return [f.read_bytes() for f in [*files, out / "journey_truth.json"]]


def test_a_seed_gives_the_same_plants(tmp_path) -> None:
    write_dataset(tmp_path / "a", 1500, DAYS, END, 5)
    write_dataset(tmp_path / "b", 1500, DAYS, END, 5, rows_per_file=10_000)
    a, b = pq.read_table(tmp_path / "a" / "events"), pq.read_table(tmp_path / "b" / "events")
    assert a.equals(b)
    assert (tmp_path / "a" / "truth.parquet").read_bytes() == (
        tmp_path / "b" / "truth.parquet"
    ).read_bytes()
    write_dataset(tmp_path / "c", 1500, DAYS, END, 5)
    assert _all_bytes(tmp_path / "a") == _all_bytes(tmp_path / "c")
    other, other_truth = generate(1500, DAYS, END, 6)
    assert not other.equals(a)
    assert other_truth["dropoff_cause_date"].notna().sum() > 0
