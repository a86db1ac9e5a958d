"""Tests of the synthetic journey generator: contract, determinism, personas and the shift."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features import generator
from features.events import load_events, load_taxonomy
from features.generator import (
    CATEGORIES,
    CAUSE_CATEGORY,
    CHANNELS,
    EVENT_CATEGORIES,
    EVENT_SCHEMA,
    EVENT_TYPES,
    PERSONAS,
    SHIFT_TARGET,
    generate,
    write_dataset,
)

END = date(2025, 6, 30)
DAYS = 200
CLIENTS = 2000
SEED = 7
SHIFT = END - timedelta(days=DAYS // 4)


@pytest.fixture(scope="module")
def data() -> tuple[pa.Table, pd.DataFrame, pd.DataFrame]:
    events, truth = generate(CLIENTS, DAYS, END, SEED)
    frame = events.to_pandas()
    frame["event_time"] = frame["event_time"].dt.tz_convert("UTC").dt.tz_localize(None)
    frame = frame.merge(truth, on="client_id", how="left")
    return events, truth, frame


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("gen")
    summary = write_dataset(out, CLIENTS, DAYS, END, SEED, rows_per_file=20_000)
    return summary, out


def _files_bytes(out) -> list[bytes]:
    files = [*sorted((out / "events").glob("part-*.parquet")), out / "truth.parquet"]
    return [f.read_bytes() for f in files]


def test_same_seed_gives_identical_tables_and_bytes(tmp_path) -> None:
    a, truth_a = generate(300, 60, END, 11)
    b, truth_b = generate(300, 60, END, 11)
    assert a.equals(b)
    pd.testing.assert_frame_equal(truth_a, truth_b)
    write_dataset(tmp_path / "a", 300, 60, END, 11)
    write_dataset(tmp_path / "b", 300, 60, END, 11)
    assert _files_bytes(tmp_path / "a") == _files_bytes(tmp_path / "b")


def _fingerprint(events: pa.Table, truth: pd.DataFrame) -> str:
    """The tables' values, times and dates as integers: independent of the Python objects
    a library version converts them to (a time zone's repr changed under us once)."""
    digest = hashlib.sha256()
    for table in (events, pa.Table.from_pandas(truth, preserve_index=False)):
        for name in table.column_names:
            column = table[name]
            if pa.types.is_timestamp(column.type):
                column = column.cast(pa.timestamp("us")).cast(pa.int64())
            elif pa.types.is_date(column.type):
                column = column.cast(pa.int32())
            digest.update(repr((name, column.to_pylist())).encode())
    return digest.hexdigest()


def test_a_seed_keeps_giving_the_same_events() -> None:
    # Pinned content of generate(300, 60, END, 11), events and truth: a change of the order of
    # the random draws (or of any parameter) changes every data set made with a seed. Update
    # this only for an intended change of the generated data (numpy does not promise the same
    # streams across versions either: a numpy upgrade can move it too). Last intended change:
    # purchase intent episodes (research, then a burst of purchases, drawn from a stream of
    # their own before the journey plants). The pins were recomputed on 2026-12-01 when the
    # fingerprint moved to integers for times (same rows and counts: a fresh install had
    # started to turn UTC times into another tzinfo object, whose repr the old one hashed).
    # On 2026-12-01 a machine with AVX-512 gave other last bits in the truth's activity
    # rates (numpy's pow); the generator now uses the C library's pow, so the pins hold on
    # CPUs with and without it.
    events, truth = generate(300, 60, END, 11)
    assert events.num_rows == 2186
    expected = "d457e21afbdbd73ae8e424bdf530a25c9880f7ca5c205934664879ca1f2c0e3f"
    assert _fingerprint(events, truth) == expected
    # Without the plants and the intent episodes the data is exactly that of the generator
    # before them (the pin of issue 16: the brand keeps writing to dormant clients), the
    # plants' truth columns aside.
    events, truth = generate(300, 60, END, 11, journeys=False, intent=False)
    assert events.num_rows == 1530
    assert truth["dropoff_cause_date"].isna().all() and truth["moment_purchases"].eq(0).all()
    truth = truth.drop(columns=["dropoff_cause_date", "moment_purchases"])
    expected = "e91f889cc0640234edb1f85a0e4fda8b6089310414bcfb87246a39fe3d14437c"
    assert _fingerprint(events, truth) == expected


def test_different_seeds_differ() -> None:
    a, truth_a = generate(300, 60, END, 11)
    b, truth_b = generate(300, 60, END, 12)
    assert not a.equals(b)
    assert (truth_a["persona_before"] != truth_b["persona_before"]).any()


def test_file_split_and_chunking_do_not_change_events(written, data, tmp_path) -> None:
    summary, out = written
    events, truth, _ = data
    assert summary["files"] > 1
    assert summary["events"] == events.num_rows
    assert (
        pq.read_table(out / "events")
        .sort_by([("event_id", "ascending")])
        .equals(events.sort_by([("event_id", "ascending")]))
    )
    assert pq.read_table(out / "truth.parquet").to_pandas().equals(truth)
    # Chunk boundaries depend on clients only: the first chunk is the same in a larger dataset.
    n = generator.CHUNK_CLIENTS
    small, _ = generate(n, 20, END, 3)
    large, large_truth = generate(n + 50, 20, END, 3)
    assert large.slice(0, small.num_rows).equals(small)
    assert large_truth["client_id"].is_unique
    assert pc.count_distinct(large["event_id"]).as_py() == large.num_rows


def test_output_meets_the_event_contract(written, data) -> None:
    summary, out = written
    events, _, frame = data
    assert events.schema.equals(EVENT_SCHEMA)
    con = duckdb.connect()
    report = load_events(con, out / "events", now=pd.Timestamp(END).to_pydatetime())
    assert report.quarantined == 0 and report.duplicates == 0
    assert report.valid == report.rows == summary["events"]
    assert report.unknown_event_types == {}
    first, last, stages = con.execute(
        "SELECT min(event_time), max(event_time), count(DISTINCT stage) FROM events"
    ).fetchone()
    assert first.date() >= END - timedelta(days=DAYS - 1) and last.date() == END
    assert stages == 5
    assert frame["event_id"].is_unique
    assert set(frame["event_type"]) == set(EVENT_TYPES)
    assert set(frame["channel"]) == set(CHANNELS)
    assert set(frame["category"].dropna()) <= set(EVENT_CATEGORIES)
    # The one page category (the drop-off cause's page) is on page views only.
    assert set(frame.loc[frame["category"] == CAUSE_CATEGORY, "event_type"]) == {"page_view"}
    assert set(frame.loc[frame["event_type"] != "page_view", "category"].dropna()) <= set(
        CATEGORIES
    )
    money = frame["event_type"].isin(["purchase", "return", "refund"])
    assert frame.loc[money, "amount"].gt(0).all() and frame.loc[~money, "amount"].isna().all()
    felt = frame["event_type"].isin(["survey_response", "review", "support_ticket"])
    assert frame.loc[felt, "sentiment"].between(-1, 1).all()
    assert frame.loc[~felt, "sentiment"].isna().all()


def test_events_per_client_per_year_in_range(data) -> None:
    events, _, _ = data
    per_year = events.num_rows / CLIENTS * 365 / DAYS
    assert 20 <= per_year <= 60


def _per_persona(frame: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Simple statistics per persona over clients that did not shift."""
    stable = frame[~frame["shifted"]]
    clients = truth[~truth["shifted"]].groupby("persona_before").size()
    counts = pd.crosstab(stable["persona_before"], stable["event_type"])
    half = stable["event_time"] < pd.Timestamp(END - timedelta(days=DAYS // 2))
    purchases = stable[stable["event_type"] == "purchase"]
    stats = pd.DataFrame(
        {
            "purchases": counts["purchase"] / clients,
            "abandon": (counts["add_to_cart"] + counts["checkout_start"]) / counts["purchase"],
            "tickets": counts["support_ticket"] / clients,
            "advocacy": (counts["review"] + counts["referral"] + counts["share"]) / clients,
            "sentiment": stable.groupby("persona_before")["sentiment"].mean(),
            "store_share": stable["channel"].eq("store").groupby(stable["persona_before"]).mean(),
            "order_value": purchases.groupby("persona_before")["amount"].mean(),
            "late_share": (~half).groupby(stable["persona_before"]).mean(),
            "first_day": stable.groupby(["persona_before", "client_id"])["event_time"]
            .min()
            .groupby(level=0)
            .median(),
        }
    )
    return stats


def test_personas_are_distinguishable(data) -> None:
    _, truth, frame = data
    assert set(truth["persona_before"]) == set(PERSONAS)
    s = _per_persona(frame, truth)
    assert s["abandon"].idxmax() == "bargain_browser"
    assert s["tickets"].idxmax() == "support_strained"
    assert s["sentiment"].idxmin() == "support_strained"
    assert s["sentiment"].idxmax() == "loyal_advocate"
    assert s["advocacy"].idxmax() == "loyal_advocate"
    assert (
        s["store_share"].idxmax() == "store_regular" and s.loc["store_regular", "store_share"] > 0.3
    )
    assert s["order_value"].idxmax() == "high_value_vip"
    assert (
        s.loc["high_value_vip", "order_value"] > 3 * s["order_value"].drop("high_value_vip").max()
    )
    p = s["purchases"]
    assert (
        min(p["store_regular"], p["loyal_advocate"]) > p["support_strained"] > p["bargain_browser"]
    )
    assert s["first_day"].idxmax() == "new_explorer"
    assert s["late_share"].idxmin() == "lapsed"


def _rates(
    frame: pd.DataFrame, truth: pd.DataFrame, before: str, event_type: str | None = None
) -> tuple[float, float]:
    """Events per client-day before (last 100 days) and after the shift, for one group.

    Only clients active since before that 100-day window count, so newcomers joining during
    the window do not look like a change of behavior.
    """
    since = SHIFT - timedelta(days=100)
    group = truth[(truth["persona_before"] == before) & (truth["first_active"] <= since)]
    rows = frame[frame["client_id"].isin(group["client_id"])]
    if event_type == "own":  # what the client did, not what the brand sent
        rows = rows[~rows["event_type"].isin(load_taxonomy().brand_types)]
    elif event_type == "brand":
        rows = rows[rows["event_type"].isin(load_taxonomy().brand_types)]
    elif event_type is not None:
        rows = rows[rows["event_type"] == event_type]
    shift = pd.Timestamp(SHIFT)
    pre = rows[
        (rows["event_time"] < shift) & (rows["event_time"] >= shift - pd.Timedelta(days=100))
    ]
    post = rows[rows["event_time"] >= shift]
    return len(pre) / (len(group) * 100), len(post) / (len(group) * (DAYS // 4))


def test_shift_is_recorded_in_truth(data) -> None:
    _, truth, _ = data
    shifted = truth[truth["shifted"]]
    assert len(shifted) == round(0.2 * CLIENTS)
    assert (shifted["persona_after"] == shifted["persona_before"].map(SHIFT_TARGET)).all()
    assert (shifted["shift_date"] == SHIFT).all()
    assert truth.loc[~truth["shifted"], "shift_date"].isna().all()
    stable = truth[~truth["shifted"]]
    assert (stable["persona_after"] == stable["persona_before"]).all()
    assert (shifted["dominant_category_after"] != shifted["dominant_category_before"]).all()
    assert (stable["dominant_category_after"] == stable["dominant_category_before"]).all()


def test_shifted_clients_change_behavior_and_stable_ones_do_not(data) -> None:
    _, truth, frame = data
    moved, stable = truth[truth["shifted"]], truth[~truth["shifted"]]
    pre, post = _rates(frame, moved, "bargain_browser", "purchase")
    assert post > 2.5 * pre
    pre, post = _rates(frame, moved, "loyal_advocate", "own")
    assert post < 0.2 * pre
    # Lapsed clients still hear from the brand: about two touches a month.
    pre, post = _rates(frame, moved, "loyal_advocate", "brand")
    assert post > 1.0 / 30
    pre, post = _rates(frame, moved, "store_regular", "support_ticket")
    assert post > 3 * pre
    pre, post = _rates(frame, moved, "lapsed", "own")
    assert post > 2 * pre
    for persona in ("bargain_browser", "loyal_advocate", "store_regular"):
        pre, post = _rates(frame, stable, persona, "purchase")
        assert 0.6 < post / pre < 1.5, persona


def test_intent_shift_changes_the_dominant_category(data) -> None:
    _, truth, frame = data
    rows = frame[frame["category"].notna() & frame["persona_before"].ne("new_explorer")]
    side = np.where(rows["event_time"] < pd.Timestamp(SHIFT), "before", "after")
    top = (
        rows.groupby(["client_id", side])["category"]
        .agg(lambda c: c.value_counts().idxmax() if len(c) >= 8 else None)
        .unstack()
        .dropna()
    )
    changed = (top["before"] != top["after"]).rename("changed").to_frame()
    changed = changed.join(truth.set_index("client_id")["shifted"])
    assert changed["shifted"].sum() >= 30
    assert changed.loc[changed["shifted"], "changed"].mean() > 0.8
    assert changed.loc[~changed["shifted"], "changed"].mean() < 0.2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clients": 0}, "clients"),
        ({"days": 1}, "days"),
        ({"seed": -1}, "seed"),
        ({"shift_share": 1.5}, "shift_share"),
        ({"shift_date": END + timedelta(days=1)}, "shift_date"),
        ({"shift_date": END - timedelta(days=DAYS - 1)}, "shift_date"),
        ({"end": "2025-06-30"}, "end"),
    ],
)
def test_bad_arguments_fail_clearly(kwargs, message) -> None:
    args = {"clients": 10, "days": 30, "end": END, "seed": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        generate(**args)


def test_write_refuses_to_mix_with_existing_parts(tmp_path) -> None:
    write_dataset(tmp_path, 50, 30, END, 1)
    with pytest.raises(FileExistsError, match="part file"):
        write_dataset(tmp_path, 50, 30, END, 2)
    summary = write_dataset(tmp_path, 50, 30, END, 2, overwrite=True)
    assert pq.read_table(tmp_path / "events").num_rows == summary["events"]
    with pytest.raises(ValueError, match="rows_per_file"):
        write_dataset(tmp_path / "x", 50, 30, END, 2, rows_per_file=0)


def test_engaged_clients_browse_and_buy_more(data) -> None:
    # The behavioral signal a learned CLTV model can use: within a persona, a client's browsing
    # activity follows their purchase rate (rank correlation well above zero).
    _, truth, _ = data
    same = truth[truth["persona_before"] == truth["persona_before"].mode()[0]]
    rho = same["activity_rate_before"].rank().corr(same["purchase_rate_before"].rank())
    assert rho > 0.4, rho
