"""`segmentation demo`: generate journeys, run the nightly flow across the behavior shift, summarize.

Runs on embedded defaults only (a DuckDB file and an MLflow SQLite file in the work
directory), prints progress as it goes and a summary at the end: segments with sizes and
mean CLTV, the largest transitions, where the tables are and how to open MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from configs import SegmentationError

if TYPE_CHECKING:
    from configs import EngineConfig
    from pipelines.nightly import RunSummary

__all__ = [
    "DEMO_MANIFEST",
    "DemoWorkdirError",
    "demo_end",
    "reset_workdir",
    "run_demo",
]

# What a demo makes in its work directory (relative paths), recorded in DEMO_MANIFEST so that
# the next demo removes exactly these and nothing else. The events go where the default
# config reads them (`{workdir}/events`), so a plain `segmentation run` in the same folder
# works on the demo's data.
DEMO_MANIFEST = ".segmentation-demo.json"
DEMO_FILES = (
    "events",
    "truth.parquet",
    "journey_truth.json",
    "identity_links.parquet",
    "identity_truth.parquet",
    "store.duckdb",
    "store.duckdb.wal",
    "store.duckdb.lock",
    "mlflow.db",
    "mlflow.db.init.lock",
    "mlartifacts",
    "reports",
)
# The layout of demos before the manifest (events under data/): recognized by data/truth.parquet.
_LEGACY_FILES = ("data", *DEMO_FILES[5:])


class DemoWorkdirError(SegmentationError, FileExistsError):
    """The work directory holds a store or events the demo did not make: it touches neither."""


def demo_end(today: date | None = None) -> date:
    """The last day of the demo's events: yesterday (UTC), the as-of of a plain `run`."""
    return (today or datetime.now(UTC).date()) - timedelta(days=1)


def run_demo(
    workdir: str = "./segmentation-work",
    clients: int = 20_000,
    days: int = 365,
    nights: int = 5,
    seed: int = 42,
    end: date | None = None,
    rebuild: bool = False,
) -> int:
    """Generate a data set, run `nights` nightly runs spanning the planned shift, summarize.

    By default the demo starts over: it removes what an earlier demo made in `workdir` (the
    paths in its manifest, `.segmentation-demo.json`), and refuses to touch a store or events
    it did not make. With `rebuild` it keeps its store and MLflow registry and re-runs its
    nights over them (as `segmentation run --rebuild` does: history from the first night on
    is undone and rebuilt, the registered models stay)."""
    from configs import config_from_mapping
    from features.generator import write_dataset
    from pipelines.store import open_store

    started = time.perf_counter()
    work = Path(workdir).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    for name in ("SEGMENTATION_STORE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_CONFIG"):
        if os.environ.get(name):
            _say(f"note: ignoring ${name} (the demo uses embedded defaults only)")
            os.environ.pop(name)
    removed = reset_workdir(work, keep_store=rebuild)
    if rebuild and (work / "store.duckdb").exists():
        _say(f"keeping the demo's store and models in {work}; re-running its nights over them")
    elif removed:
        _say(f"starting over: removed the earlier demo's {', '.join(removed)} in {work}")
    _write_manifest(work)
    config = config_from_mapping(
        {
            "workdir": str(work),
            "seed": seed,
            "clustering": {"sample_size": min(10_000, clients), "min_cluster_size": 40},
        },
        source=str(work / "demo-config"),
    )
    end = end or demo_end()
    shift = end - timedelta(days=days // 4)
    _say(f"1/3 generating {clients:,} clients x {days} days of journeys into {work / 'events'}")
    summary = write_dataset(
        work, clients=clients, days=days, end=end, seed=seed, shift_date=shift, overwrite=True
    )
    _say(
        f"    {summary['events']:,} events up to {end}; {summary['shifted']:,} clients change"
        f" behavior on {summary['shift_date']}"
    )
    # Nightly runs a week apart from two weeks before the shift to several weeks after it,
    # so the shifted clients have time to show it in their 30-day features.
    dates = [shift - timedelta(days=14) + timedelta(days=7 * i) for i in range(nights)]
    dates = [d for d in dates if d <= end]
    _say(f"2/3 nightly runs as of {', '.join(d.isoformat() for d in dates)} (Prefect flow)")
    results = _nightly_runs(config, dates, str(work / "events"), rebuild)

    _say("3/3 summary")
    store = open_store(config.store_url, config.store.schema_name)
    try:
        membership = store.membership()
        segments = store.segments()
        transitions = store.transitions()
        scores = store.scores()
    finally:
        store.close()
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
    print(
        f"Next:             segmentation run   (in {Path.cwd()}: as of {end}, on these events)"
        if work == (Path.cwd() / "segmentation-work").resolve()
        else f"Next:             segmentation run --config <a config with workdir {work}>"
    )
    print(f"Done in {time.perf_counter() - started:.0f} s.")
    return 0


def _nightly_runs(
    config: EngineConfig, dates: list[date], events: str, rebuild: bool
) -> list[RunSummary]:
    """One nightly flow run per date, in order, printing progress; the first with `rebuild`
    when asked (the later ones follow it in order)."""
    from pipelines import flow_params
    from pipelines.nightly import nightly
    from pipelines.prefect_utils import ensure_prefect_api

    with flow_params.secret_parameters(config, None) as params:
        ensure_prefect_api()
        return [
            nightly(
                **params,
                as_of=day.isoformat(),
                events=events,
                show_progress=True,
                rebuild=rebuild and i == 0,
            )
            for i, day in enumerate(dates)
        ]


def reset_workdir(work: Path, *, keep_store: bool = False) -> list[str]:
    """Remove what an earlier demo made in `work` (its manifest's paths, or the layout of
    demos before the manifest); return the names removed.

    With `keep_store`, the store and the MLflow registry stay (the events and reports are
    remade anyway). Nothing else is touched.

    Raises
    ------
    DemoWorkdirError
        `work` holds a store, an MLflow database or events that no demo made.
    """
    manifest = work / DEMO_MANIFEST
    if manifest.exists():
        try:
            made = [str(p) for p in json.loads(manifest.read_text())["paths"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DemoWorkdirError(f"{manifest}: unreadable demo manifest ({exc})") from exc
    elif (work / "data" / "truth.parquet").exists():
        made = list(_LEGACY_FILES)
    else:
        foreign = [
            name
            for name in ("store.duckdb", "mlflow.db", "events", "truth.parquet")
            if (work / name).exists()
        ]
        if foreign:
            raise DemoWorkdirError(
                f"{work} holds {', '.join(foreign)} that the demo did not make: it would"
                " overwrite them; use another --workdir (or remove them yourself)"
            )
        return []
    keep = {"store.duckdb", "store.duckdb.wal", "mlflow.db", "mlartifacts"} if keep_store else set()
    removed = []
    for name in made:
        path = (work / name).resolve()
        if path.parent != work or name in keep or name == DEMO_MANIFEST:
            continue  # only the demo's own top-level entries, never outside the work dir
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def _write_manifest(work: Path) -> None:
    """Record what the demo makes here, before it makes it (a killed demo is cleaned too)."""
    payload = {
        "made_by": "segmentation demo",
        "written_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "paths": list(DEMO_FILES),
    }
    (work / DEMO_MANIFEST).write_text(json.dumps(payload, indent=2) + "\n")


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
