"""`segmentation demo`: generate journeys, run the nightly flow across the behavior shift, summarize.

Runs on embedded defaults only (a DuckDB file and an MLflow SQLite file in the work
directory), prints progress as it goes and a summary at the end: segments with sizes and
mean CLTV, the largest transitions, where the tables are and how to open MLflow.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from pipelines.nightly import RunSummary

__all__ = [
    "DEMO_END",
    "run_demo",
]

DEMO_END = date(2025, 12, 31)


def run_demo(
    workdir: str = "./segmentation-work",
    clients: int = 20_000,
    days: int = 365,
    nights: int = 5,
    seed: int = 42,
) -> int:
    """Generate a data set, run `nights` nightly runs spanning the planned shift, summarize."""
    from configs import config_from_mapping
    from features.generator import write_dataset
    from pipelines.nightly import nightly_flow_for_demo
    from pipelines.store import open_store

    started = time.perf_counter()
    work = Path(workdir).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    for name in ("SEGMENTATION_STORE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_CONFIG"):
        if os.environ.get(name):
            _say(f"note: ignoring ${name} (the demo uses embedded defaults only)")
            os.environ.pop(name)
    config = config_from_mapping(
        {
            "workdir": str(work),
            "seed": seed,
            "clustering": {"sample_size": min(10_000, clients), "min_cluster_size": 40},
        },
        source=str(work / "demo-config"),
    )
    data = work / "data"
    shift = DEMO_END - timedelta(days=days // 4)
    _say(f"1/3 generating {clients:,} clients x {days} days of journeys into {data}")
    summary = write_dataset(
        data, clients=clients, days=days, end=DEMO_END, seed=seed, shift_date=shift, overwrite=True
    )
    _say(
        f"    {summary['events']:,} events; {summary['shifted']:,} clients change behavior"
        f" on {summary['shift_date']}"
    )
    # Nightly runs a week apart from two weeks before the shift to several weeks after it,
    # so the shifted clients have time to show it in their 30-day features.
    dates = [shift - timedelta(days=14) + timedelta(days=7 * i) for i in range(nights)]
    dates = [d for d in dates if d <= DEMO_END]
    _say(f"2/3 nightly runs as of {', '.join(d.isoformat() for d in dates)} (Prefect flow)")
    results = nightly_flow_for_demo(config, dates, str(data / "events"))

    _say("3/3 summary")
    store = open_store(config.store_url, config.store.schema_name)
    membership = store.membership()
    segments = store.segments()
    transitions = store.transitions()
    scores = store.scores()
    _print_summary(membership, segments, transitions, scores, results)
    db_path = config.tracking_uri.removeprefix("sqlite:///")
    print()
    print(f"Tables (DuckDB):  {config.store_url.removeprefix('duckdb:///')}")
    print(
        "  e.g. python -c \"import duckdb; print(duckdb.connect('"
        + config.store_url.removeprefix("duckdb:///")
        + "', read_only=True).sql('SELECT * FROM segmentation.v_segment_members LIMIT 5'))\""
    )
    last_report = results[-1].get("report") if results else None
    if last_report:
        print(f"Report (HTML):    {last_report}")
    print(f"MLflow:           mlflow ui --backend-store-uri sqlite:///{db_path}")
    print(f"Done in {time.perf_counter() - started:.0f} s.")
    return 0


def _print_summary(
    membership: pd.DataFrame,
    segments: pd.DataFrame,
    transitions: pd.DataFrame,
    scores: pd.DataFrame,
    results: list[RunSummary],
) -> None:
    """Segments with sizes and mean CLTV, the lifecycle, each run's moves, the top transitions."""
    last = results[-1]
    print(
        f"Latest run {last['run_id']} as of {last['as_of']}: {last['clients']:,} clients,"
        f" {last['segments']} segments; clustering {last['refit_reason']}"
    )
    merged = membership.merge(scores[["client_id", "predicted_cltv"]], on="client_id", how="left")
    # a cluster segment holds its dense members and its loose fits (cluster_outlier)
    merged["kind"] = merged["segment_source"].replace({"cluster_outlier": "cluster"})
    merged["loose"] = merged["segment_source"] == "cluster_outlier"
    table = (
        merged.groupby(["segment_id", "segment_name", "kind"], dropna=False)
        .agg(
            clients=("client_id", "size"),
            loose_fits=("loose", "sum"),
            mean_cltv=("predicted_cltv", "mean"),
        )
        .reset_index()
        .sort_values("clients", ascending=False)
    )
    table["share"] = (table["clients"] / table["clients"].sum()).map("{:.1%}".format)
    table["mean_cltv"] = table["mean_cltv"].map(lambda v: "" if pd.isna(v) else f"{v:,.0f}")
    print("\nSegments:")
    print(table.to_string(index=False))
    lifecycle = membership["lifecycle_stage"].value_counts()
    print("\nLifecycle: " + ", ".join(f"{k} {v:,}" for k, v in lifecycle.items()))
    print("\nRuns:")
    for r in results:
        print(
            f"  {r['as_of']}: entries {r['entries']:,}, exits {r['exits']:,}, moves {r['moves']:,}"
            f"  (clustering: {'refit' if r['refit'] else 'champion'} v{r['cluster_model_version']})"
        )
    if len(transitions):
        names = dict(zip(segments["segment_id"], segments["segment_name"], strict=False))
        moved = transitions.dropna(subset=["from_segment_id", "to_segment_id"])
        moved = moved[moved["from_segment_id"] != moved["to_segment_id"]]
        flows = moved.groupby(["from_segment_id", "to_segment_id"]).size().nlargest(5)
        if len(flows):
            print(f"\nLargest transitions as of {last['as_of']}:")
            for src, dst, n in flows.reset_index(name="clients").itertuples(index=False):
                print(f"  {names.get(src, src)} -> {names.get(dst, dst)}: {n:,} clients")


def _say(message: str) -> None:
    """One line of the demo's progress."""
    print(message, file=sys.stdout, flush=True)
