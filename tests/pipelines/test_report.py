"""Tests of the run report: sections and numbers, self-containment, determinism, edge cases."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import date, datetime

import pandas as pd
import pytest

from pipelines.report import (
    ReportData,
    describe_features,
    feature_label,
    funnel_table,
    load_report_data,
    membership_at,
    metrics_from_mlflow,
    movement,
    render_report,
    sample_report_data,
    segment_summary,
    sizes_from_changes,
    sizes_over_time,
    write_report,
)

D1, D2 = date(2026, 3, 1), date(2026, 3, 2)
NAMES = {"A": "Big spenders", "B": "Browsers", "R": "VIP rule", "N": "Unclustered"}
KINDS = {"A": "cluster", "B": "cluster", "R": "rule", "N": "noise"}
CLTV = {"A": 100.0, "B": 50.0, "R": 1000.0, "N": 10.0}

# Run 2 (as of D2): A 40, B 30, R 20, N 10. Since run 1: 7 moved B->A, 3 moved A->R,
# 5 new clients entered B, 2 clients of A left. So run 1 had A 38, B 32, R 17, N 10.
PLAN = (
    [("A", "A")] * 33 + [("B", "A")] * 7 + [("A", "R")] * 3 + [("R", "R")] * 17
    + [("B", "B")] * 25 + [(None, "B")] * 5 + [("N", "N")] * 10 + [("A", None)] * 2
)  # fmt: skip


def _definitions() -> dict[str, str]:
    return {
        "A": json.dumps(
            {
                "name": NAMES["A"],
                "description": "Spend far above the population.",
                "top_features": [
                    {"feature": "total_spend", "z": 2.0, "median": 320, "population_median": 100},
                    {"feature": "share_app", "z": 1.2, "median": 0.5, "population_median": 0.5},
                ],
            }
        ),
        "B": json.dumps(
            {
                "name": NAMES["B"],
                "top_features": [
                    {"feature": "events_90d", "z": 1.7, "median": 30, "population_median": 30},
                    {"feature": "n_purchases", "z": -1.0, "median": 0, "population_median": 2},
                ],
            }
        ),
        "R": json.dumps({"when": "total_spend > 5000", "priority": 1, "description": "VIPs"}),
        "N": json.dumps({"name": NAMES["N"], "description": "HDBSCAN noise"}),
    }


def make_data(first_run: bool = False, with_transitions: bool = True) -> ReportData:
    """Two runs, four segments (one rule, one noise), transitions, scores and quarantine."""
    members, history, transitions = [], [], []
    for i, (before, after) in enumerate(PLAN):
        client = f"c{i:03d}"
        if after is not None:
            members.append((client, after))
        if before is not None and before != after:
            history.append((client, before, D1, D2))
            if after is not None:
                history.append((client, after, D2, None))
        elif before is None:
            history.append((client, after, D2, None))
        else:
            history.append((client, after, D1, None))
        if before != after:
            transitions.append((D2, client, before, after))
    membership = pd.DataFrame(members, columns=["client_id", "segment_id"])
    membership["segment_name"] = membership["segment_id"].map(NAMES)
    membership["segment_source"] = membership["segment_id"].map(KINDS)
    membership["journey_stage"] = "consideration"
    definitions = _definitions()
    segments = pd.DataFrame(
        {
            "segment_id": list(NAMES),
            "segment_name": list(NAMES.values()),
            "kind": [KINDS[s] for s in NAMES],
            "definition": [definitions[s] for s in NAMES],
        }
    )
    scores = pd.DataFrame(
        {
            "client_id": membership["client_id"],
            "predicted_cltv": membership["segment_id"].map(CLTV),
            "horizon_days": 365,
        }
    )
    stages = ["awareness", "consideration", "purchase", "retention", "advocacy"]
    funnel = pd.DataFrame(
        {
            "client_id": membership["client_id"],
            "furthest_stage": [stages[i % 5] for i in range(len(membership))],
        }
    )
    run = {
        "run_id": "run-2",
        "as_of": D2,
        "started_at": datetime(2026, 3, 3, 2, 0),
        "finished_at": datetime(2026, 3, 3, 2, 4),
        "status": "success",
        "events_read": 5000,
        "events_quarantined": 17,
        "clients": 100,
        "segments": 4,
        "cluster_model_version": "3",
        "cltv_model_version": "2",
        "mlflow_run_id": "abc123",
        "metrics": {
            "duplicates": 9,
            "quarantined_by_reason": {"future_event_time": 12, "negative_amount": 5},
            "purchases_rmse": 1.25,
            "spend_corr": 0.777,
        },
    }
    runs = pd.DataFrame(
        [
            {"run_id": "run-1", "as_of": D1, "status": "success"},
            {"run_id": "run-x", "as_of": D2, "status": "failed"},
            {"run_id": "run-2", "as_of": D2, "status": "success"},
        ]
    )
    tr = pd.DataFrame(
        transitions, columns=["as_of", "client_id", "from_segment_id", "to_segment_id"]
    )
    hist = pd.DataFrame(history, columns=["client_id", "segment_id", "valid_from", "valid_to"])
    if first_run:
        runs = runs[runs["run_id"] == "run-2"]
        tr = pd.DataFrame(
            {"as_of": D2, "client_id": membership["client_id"], "from_segment_id": None,
             "to_segment_id": membership["segment_id"]}
        )  # fmt: skip
        hist = pd.DataFrame(
            {"client_id": membership["client_id"], "segment_id": membership["segment_id"],
             "valid_from": D2, "valid_to": None}
        )  # fmt: skip
    return ReportData(
        as_of=D2,
        run=run,
        membership=membership,
        segments=segments,
        transitions=tr if with_transitions else None,
        runs=runs,
        history=hist,
        scores=scores,
        funnel=funnel,
    )


@pytest.fixture(scope="module")
def page() -> str:
    return render_report(make_data())


def _section(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}">')
    return html[start : html.index("</section>", start)]


def _row(html: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell contains `first_cell`, as plain text."""
    for row in re.findall(r"<tr>(.*?)</tr>", html, flags=re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        if cells and first_cell in cells[0]:
            return cells
    raise AssertionError(f"no row starting with {first_cell!r}")


def test_segment_table_has_sizes_shares_cltv_and_readable_profiles(page: str) -> None:
    table = _section(page, "segments")
    assert _row(table, "Big spenders")[:6] == [
        "Big spenders",
        "A",
        "cluster",
        "40",
        "40.0%",
        "100.00",
    ]
    assert _row(table, "Browsers")[3:6] == ["30", "30.0%", "50.00"]
    assert _row(table, "VIP rule")[2:6] == ["rule", "20", "20.0%", "1,000.00"]
    assert _row(table, "Unclustered")[2:4] == ["noise", "10"]
    assert "total spend 3.2x population, share of app activity high" in table
    assert "actions in the last 90 days very high, purchases in total 0 (population 2)" in table
    assert "rule: total_spend &gt; 5000" in table
    # largest first
    assert table.index("Big spenders") < table.index("Browsers") < table.index("VIP rule")


def test_header_shows_run_facts(page: str) -> None:
    header = page[page.index("<header>") : page.index("</header>")]
    for text in ("run-2", "2026-03-02", "success", "5,000", "4.0 min", "abc123"):
        assert text in header


def test_movement_names_the_largest_flows(page: str) -> None:
    section = _section(page, "movement")
    assert "10 moved to another segment, 5 new clients entered, 2 left and 85 stayed" in section
    moves = re.findall(r"<li><b>(.*?)</b>: ([\d,]+) clients</li>", section)
    assert moves[0] == ("Browsers &rarr; Big spenders", "7")
    assert moves[1] == ("Big spenders &rarr; VIP rule", "3")
    assert "New clients entered</b>: Browsers (5)" in section
    assert "Clients left</b>: Big spenders (2)" in section
    assert 'id="fig-movement"' in section


def test_movement_flows_add_up_to_both_runs() -> None:
    flows = movement(make_data())
    now = flows[flows["to_segment_id"] != "(left)"].groupby("to_segment_id")["clients"].sum()
    assert now.to_dict() == {"A": 40, "B": 30, "R": 20, "N": 10}
    before = flows[flows["from_segment_id"] != "(new clients)"]
    assert before.groupby("from_segment_id")["clients"].sum().to_dict() == {
        "A": 38, "B": 32, "R": 17, "N": 10
    }  # fmt: skip


def test_sizes_over_time_from_history() -> None:
    data = make_data()
    sizes = sizes_over_time(data.runs, data.history)
    wide = sizes.pivot(index="segment_id", columns="as_of", values="size")
    assert wide[D1].to_dict() == {"A": 38, "B": 32, "N": 10, "R": 17}
    assert wide[D2].to_dict() == {"A": 40, "B": 30, "N": 10, "R": 20}
    section = _section(render_report(data), "history")
    assert '"y":[38,40]' in section and '"y":[17,20]' in section
    assert "the 2 published runs" in section


def test_membership_at_rebuilds_a_past_day() -> None:
    data = make_data()
    past = membership_at(data.history, D1, data.segments)
    assert past.groupby("segment_id").size().to_dict() == {"A": 38, "B": 32, "N": 10, "R": 17}
    assert set(past.loc[past["segment_id"] == "R", "segment_name"]) == {"VIP rule"}


def test_funnel_counts_and_drop_off(page: str) -> None:
    table = funnel_table(
        pd.Series(["awareness"] * 5 + ["purchase"] * 3 + ["advocacy"] * 2 + ["other"])
    )
    assert table["reached"].tolist() == [10, 5, 5, 2, 2]
    assert table["furthest"].tolist() == [5, 0, 3, 0, 2]
    assert table["drop_off"].iloc[0] == pytest.approx(0.5)
    assert table["drop_off"].iloc[2] == pytest.approx(0.6)
    assert pd.isna(table["drop_off"].iloc[4])
    section = _section(page, "funnel")
    assert _row(section, "Awareness")[1:5] == ["20", "100", "100.0%", "20.0%"]
    assert _row(section, "Advocacy")[1:4] == ["20", "20", "20.0%"]
    assert 'id="fig-funnel"' in section and 'id="fig-funnel-segments"' in section


def test_funnel_falls_back_to_journey_stage_with_a_note() -> None:
    section = _section(render_report(replace(make_data(), funnel=None)), "funnel")
    assert "uses the current journey stage" in section
    assert _row(section, "Consideration")[1:3] == ["100", "100"]


def test_cltv_and_backtest(page: str) -> None:
    section = _section(page, "cltv")
    assert "over 365 days" in section and "100 scored clients" in section
    assert "25,600.00 in total" in section  # 40*100 + 30*50 + 20*1000 + 10*10
    assert _row(section, "purchases per client")[2] == "1.25"
    assert _row(section, "spend per client")[4] == "0.777"


def test_data_quality_counts(page: str) -> None:
    section = _section(page, "quality")
    assert _row(section, "Events read")[1] == "5,000"
    assert _row(section, "Duplicates dropped")[1:3] == ["9", "0.2%"]
    assert _row(section, "Quarantined")[1:3] == ["17", "0.3%"]
    assert _row(section, "future_event_time")[1] == "12"
    assert _row(section, "negative_amount")[1] == "5"
    assert section.index("future_event_time") < section.index("negative_amount")


def test_page_is_self_contained_with_plotly_inlined_once(page: str) -> None:
    from plotly.offline import get_plotlyjs

    assert "<link" not in page.lower()
    assert not re.search(r"<script[^>]*\ssrc\s*=", page, flags=re.I)
    assert page.count(get_plotlyjs()[:500]) == 1
    assert len(re.findall(r"<script", page)) == 1 + page.count("Plotly.newPlot(")


def test_rendering_is_deterministic() -> None:
    assert render_report(make_data()) == render_report(make_data())


def test_first_run_says_there_is_nothing_to_compare() -> None:
    html = render_report(make_data(first_run=True))
    section = _section(html, "movement")
    assert "first published run: all 100 clients entered" in section
    assert "fig-movement" not in section
    assert "Only one run is published so far" in _section(html, "history")


def test_previous_run_without_transitions() -> None:
    section = _section(render_report(make_data(with_transitions=False)), "movement")
    assert "No client changed segment" in section
    assert "100 stayed" in section


def test_single_segment_and_missing_metrics() -> None:
    data = make_data()
    one = data.membership.assign(segment_id="A", segment_name="Big spenders")
    run = {"run_id": "r", "status": "success"}
    html = render_report(replace(data, membership=one, run=run, transitions=None, scores=None))
    assert _row(_section(html, "segments"), "Big spenders")[3:5] == ["100", "100.0%"]
    assert "No backtest figures" in html
    assert "No client scores" in html
    assert _row(_section(html, "quality"), "Events read")[1] == "not recorded"


def test_many_segments_are_capped_in_charts() -> None:
    data = make_data()
    m = data.membership.assign(segment_id=[f"S{i % 20:02d}" for i in range(100)])
    m["segment_name"] = "Segment " + m["segment_id"]
    segs = pd.DataFrame({"segment_id": sorted(set(m["segment_id"])), "kind": "cluster"})
    segs["segment_name"] = "Segment " + segs["segment_id"]
    history = pd.DataFrame(
        {
            "client_id": m["client_id"],
            "segment_id": m["segment_id"],
            "valid_from": D1,
            "valid_to": None,
        }
    )
    html = render_report(
        replace(data, membership=m, segments=segs, history=history, transitions=None, top_n=5)
    )
    assert len(segment_summary(replace(data, membership=m, segments=segs))) == 20
    assert html.count("<tr><td><b>Segment S") == 20
    chart = _section(html, "history")
    assert '"name":"other segments"' in chart and chart.count('"mode":"lines+markers"') == 6


def test_empty_run_renders() -> None:
    data = make_data()
    empty = data.membership.iloc[:0]
    html = render_report(
        replace(data, membership=empty, transitions=None, scores=None, funnel=None)
    )
    assert "The 0 segments" in html


def test_bad_input_names_the_problem() -> None:
    data = make_data()
    with pytest.raises(ValueError, match="membership is missing column.*segment_id"):
        render_report(replace(data, membership=data.membership.drop(columns="segment_id")))
    with pytest.raises(ValueError, match="top_n"):
        render_report(replace(data, top_n=0))


def test_feature_text() -> None:
    # the catalog's own words (segmentation.wording), never a column name
    assert feature_label("share_call_center") == "share of call center activity"
    assert feature_label("support_tickets_90d") == "support tickets in the last 90 days"
    assert feature_label("n_refunds") == "refunds in total"
    text = describe_features(
        [
            {"feature": "recency_days", "z": 2.0, "median": 200, "population_median": 20},
            {"feature": "spend_90d", "z": -0.4, "median": 10, "population_median": 200},
            {"feature": "sentiment_mean", "z": -1.6, "median": -0.2, "population_median": 0.1},
        ]
    )
    assert text == (
        "days since last activity 10.0x population, spend in the last 90 days 0.05x population,"
        " average sentiment (-1 to 1) very low"
    )


def test_metrics_from_mlflow() -> None:
    got = metrics_from_mlflow(
        {
            "duplicates": 3.0,
            "backtest.spend_rmse": 2.5,
            "quarantined_by_reason.negative_amount": 4.0,
            "x": 1,
        }
    )
    assert got == {
        "duplicates": 3.0,
        "spend_rmse": 2.5,
        "quarantined_by_reason": {"negative_amount": 4},
    }


def test_sample_report_renders() -> None:
    html = render_report(sample_report_data(clients=600))
    assert "Largest moves between segments" in html and "Backtest of the current model" in html


# ----------------------------------------------------------------------------- through the store


def _publish(store, data: ReportData, as_of: date, plan_index: int, quarantine=None):
    from pipelines.store import PublishRequest

    m = data.membership if plan_index == 2 else membership_at(data.history, D1, data.segments)
    m = m[["client_id", "segment_id"]].assign(
        segment_name=lambda d: d["segment_id"].map(NAMES),
        segment_source=lambda d: d["segment_id"].map(KINDS),
        cluster_id=None,
        confidence=1.0,
        lifecycle_stage="active",
        journey_stage="purchase",
        reason="test",
    )
    segs = data.segments.assign(model_version="1")
    scores = pd.DataFrame(
        {
            "client_id": m["client_id"],
            "p_alive": 0.9,
            "expected_purchases": 1.0,
            "expected_avg_value": 10.0,
            "predicted_cltv": m["segment_id"].map(CLTV),
            "horizon_days": 365,
            "model_version": "1",
        }
    )
    store.publish(
        PublishRequest(
            run_id=f"run-{plan_index}",
            as_of=as_of,
            started_at=datetime(as_of.year, as_of.month, as_of.day, 23, 0),
            membership=m.reset_index(drop=True),
            segments=segs,
            scores=scores,
            quarantine=quarantine,
            run_info={"events_read": 5000, "events_quarantined": 3},
        )
    )


def test_load_report_data_and_write_report_from_a_duckdb_store(tmp_path) -> None:
    store_mod = pytest.importorskip("pipelines.store")
    from configs import config_from_mapping

    url = f"duckdb:///{tmp_path}/store.duckdb"
    store = store_mod.open_store(url)
    data = make_data()
    _publish(store, data, D1, 1)
    quarantine = pd.DataFrame(
        {"reason": ["negative_amount", "negative_amount", "future_event_time"]}
    )
    _publish(store, data, D2, 2, quarantine)

    loaded = load_report_data(store)
    assert loaded.as_of == D2 and loaded.run["run_id"] == "run-2"
    assert loaded.run["metrics"]["quarantined_by_reason"] == {
        "future_event_time": 1,
        "negative_amount": 2,
    }
    summary = segment_summary(loaded).set_index("segment_id")
    assert summary["size"].to_dict() == {"A": 40, "B": 30, "R": 20, "N": 10}
    assert summary.loc["R", "mean_cltv"] == pytest.approx(1000.0)
    flows = movement(loaded)
    assert flows.iloc[0:0].columns.tolist() == [
        "from_segment_id",
        "to_segment_id",
        "clients",
        "kind",
    ]
    moved = flows[flows["kind"] == "move"].set_index(["from_segment_id", "to_segment_id"])[
        "clients"
    ]
    assert moved.to_dict() == {("B", "A"): 7, ("A", "R"): 3}

    past = load_report_data(store, as_of=D1)
    assert past.membership.groupby("segment_id").size().to_dict() == {
        "A": 38,
        "B": 32,
        "N": 10,
        "R": 17,
    }
    assert past.scores is None and past.notes
    with pytest.raises(ValueError, match="no successful run as of 2026-03-05"):
        load_report_data(store, as_of=date(2026, 3, 5))
    store.close()

    config = config_from_mapping({"workdir": str(tmp_path), "mlflow": {"enabled": False}})
    out = write_report(config, store_url=url, out=tmp_path / "r" / "report.html")
    html = out.read_text()
    assert "Browsers &rarr; Big spenders</b>: 7 clients" in html
    assert _row(_section(html, "quality"), "negative_amount")[1] == "2"


def test_sizes_and_a_past_membership_are_computed_in_the_store(store) -> None:
    """On both backends: the report reads counts of the history, not the history, and gets
    the figures the pandas computation over the whole history gives."""
    data = make_data()
    _publish(store, data, D1, 1)
    _publish(store, data, D2, 2)
    runs = store.runs()
    from_history = sizes_over_time(runs, store.history())
    from_store = sizes_from_changes(runs, store.segment_size_changes())
    pd.testing.assert_frame_equal(from_store, from_history, check_dtype=False)
    assert len(store.segment_size_changes()) <= 2 * 4 * 2  # per segment and day, not per client

    past = store.membership_on(D1).sort_values("client_id", ignore_index=True)
    rebuilt = membership_at(store.history(), D1)[["client_id", "segment_id", "lifecycle_stage"]]
    pd.testing.assert_frame_equal(past, rebuilt.sort_values("client_id", ignore_index=True))

    loaded = load_report_data(store)
    assert loaded.history is None  # the history itself is never read
    pd.testing.assert_frame_equal(loaded.sizes_over_time, from_history, check_dtype=False)
    assert set(loaded.membership.columns) < set(store.membership().columns)
    past_report = load_report_data(store, as_of=D1)
    assert past_report.membership.groupby("segment_id").size().to_dict() == {
        "A": 38, "B": 32, "N": 10, "R": 17
    }  # fmt: skip
    assert set(past_report.membership["segment_name"]) == set(NAMES.values())


def test_sizes_from_changes_sums_what_started_less_what_ended() -> None:
    runs = pd.DataFrame(
        {
            "as_of": [D1, D2, date(2026, 3, 3), date(2026, 3, 4)],
            "status": ["success", "success", "failed", "success"],
            "finished_at": pd.Timestamp("2026-03-05"),
        }
    )
    changes = pd.DataFrame(
        {
            "segment_id": ["A", "A", "B", "B", "B"],
            "day": [D1, date(2026, 3, 4), D1, D2, date(2026, 3, 4)],
            "change": [5, -5, 3, 2, -1],
        }
    )
    sizes = sizes_from_changes(runs, changes)
    assert sizes.values.tolist() == [
        [D1, "A", 5],
        [D1, "B", 3],
        [D2, "A", 5],
        [D2, "B", 5],
        [date(2026, 3, 4), "B", 4],
    ]  # fmt: skip  (A emptied on the 4th: no row; the failed run's day: none)
    assert sizes_from_changes(runs, changes, until=D1)["as_of"].unique().tolist() == [D1]


@pytest.mark.slow  # creating the MLflow SQLite database takes about 10 s
def test_report_is_attached_to_the_mlflow_run_and_reads_its_metrics(tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines.report import attach_report, mlflow_metrics

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("report-test", artifact_location=str(tmp_path / "art"))
    run_id = client.create_run(experiment).info.run_id
    client.log_metric(run_id, "duplicates", 11)
    client.log_metric(run_id, "quarantined.negative_amount", 4)
    path = tmp_path / "report-2026-03-02.html"
    path.write_text(render_report(make_data()))

    attach_report(path, run_id, uri)

    assert [a.path for a in client.list_artifacts(run_id, "report")] == [
        "report/report-2026-03-02.html"
    ]
    assert mlflow_metrics(uri, run_id) == {
        "duplicates": 11.0,
        "quarantined_by_reason": {"negative_amount": 4},
    }
    assert mlflow_metrics(uri, "no-such-run") == {}


def test_model_choice_lift_and_calibration_from_selection_metrics() -> None:
    logged = {
        "backtest.selection.btyd.purchases_rmse": 1.5,
        "backtest.selection.btyd.spend_rmse": 180.0,
        "backtest.selection.learned.purchases_rmse": 1.2,
        "backtest.selection.learned.spend_rmse": 150.0,
        "backtest.selection.learned_is_champion": 1.0,
        "backtest.selection.window_days": 90.0,
        "backtest.selection.prospect.test_clients": 400.0,
        "backtest.selection.prospect.auc": 0.81,
        "backtest.selection.prospect.predicted_converters": 52.4,
        "backtest.selection.prospect.actual_converters": 50.0,
        "backtest.selection.lift.d01.clients": 10.0,
        "backtest.selection.lift.d01.predicted_spend": 900.0,
        "backtest.selection.lift.d01.actual_spend": 870.0,
        "backtest.selection.calibration.b00.bin_low": 0.0,
        "backtest.selection.calibration.b00.mean_predicted": 0.04,
        "backtest.selection.calibration.b00.actual_rate": 0.05,
    }
    metrics = metrics_from_mlflow(logged)
    assert metrics["selection"]["learned.spend_rmse"] == 150.0  # type: ignore[index]
    data = make_data()
    data.run["metrics"] = {**data.run.get("metrics", {}), **metrics}
    section = _section(render_report(data), "cltv")
    assert "next 90 days" in section
    assert _row(section, "learned (gradient boosting) (champion)")[1] == "1.20"
    assert _row(section, "BG/NBD x Gamma-Gamma")[4] == "180.00"
    assert "AUC of p_purchase 0.810" in section and "actual 50 of 400" in section
    lift = _row(section, "1")  # decile 1
    assert lift[1] == "10" and lift[4] == "900.00" and lift[5] == "870.00"


def test_more_than_5_percent_unclustered_is_warned_and_loose_fits_counted() -> None:
    data = make_data()
    membership = data.membership.assign(segment_source="cluster")
    calm = render_report(replace(data, membership=membership))
    assert "published as unclustered" not in calm
    n = len(membership)
    membership["segment_source"] = ["noise"] * (n // 10) + ["cluster_outlier"] * (n - n // 10)
    html = render_report(replace(data, membership=membership))
    assert f"{n // 10 / n:.1%} of the clients are published as unclustered" in html
    assert "clustering.attach_outliers" in html
    assert "Loose fits" in html
