"""The Prefect flows: nightly (validate, features, segments, scores, publish, track), backfill, refit.

Everything is computed before the store is touched; the publish is one atomic step under the
store's publish lock, so a failure anywhere leaves the published tables as they were (the
failed run is logged in `runs` with status `failed`). Tasks retry only transient errors
(a database connection), never bad input.

`nightly_run` is the whole run as a short sequence: `_compute` (the steps before the store,
`pipelines/steps.py`), `_publish`, then the promotions `pipelines/policy.py` allows only after
a publish, `_track` (MLflow) and the report (whose failure never undoes the publish). The
Prefect tasks at the bottom are thin wrappers of the steps, so Prefect tracks and retries them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypedDict, TypeVar

import duckdb
import pandas as pd
from prefect import flow, task

from configs import (
    EngineConfig,
)
from features.events import connect_for_events
from pipelines import flow_params, policy, scratch, steps
from pipelines.flow_params import FlowArgumentError
from pipelines.policy import ModelChoice, Promotion, RefitDecision
from pipelines.prefect_utils import ensure_prefect_api, retry_options
from pipelines.sharded import FeatureRows, InMemoryFeatures, build_on_dask
from pipelines.steps import (
    CltvBundle,
    ClusterBundle,
    EventsRead,
    Registration,
    Segmentation,
)

if TYPE_CHECKING:
    from distributed import Client

    from features.identity import Stitching
    from features.journey import JourneyMap
    from pipelines.registry import ModelRegistry
    from pipelines.store import PublishRequest, PublishResult, Store
    from pipelines.tracking import TrackedRun
    from segmentation.rules import RuleSet

__all__ = [
    "FlowArgumentError",
    "Progress",
    "RunSummary",
    "backfill",
    "nightly",
    "nightly_flow_for_demo",
    "nightly_run",
    "refit",
    "run_backfill",
    "run_nightly",
    "serve",
]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
P = ParamSpec("P")
R = TypeVar("R")


class RunSummary(TypedDict):
    """What one nightly run returns (`segmentation run` prints it as JSON)."""

    run_id: str
    as_of: str
    store: str
    events_read: int
    events_quarantined: int
    duplicates: int
    clients: int
    segments: int
    entries: int
    exits: int
    moves: int
    refit: bool
    refit_reason: str
    cluster_model_version: str
    cltv_model_version: str
    mlflow_run_id: str | None
    report: str | None
    seconds: dict[str, float]
    # This process's peak memory so far (GiB) at the end of each stage; on Dask, the
    # driver's (the workers' are their own processes).
    peak_rss_gb: dict[str, float]


def run_nightly(
    config: EngineConfig,
    *,
    as_of: date | None = None,
    events: str | None = None,
    store_url: str | None = None,
    force_refit: bool = False,
    rebuild: bool = False,
) -> RunSummary:
    """Run the nightly flow once (in this process, through Prefect) and return its summary.

    The flow's parameters (kept by Prefect in its database) carry no secret: URLs with a
    password go as their masked form, and the flow resolves the real ones in this process."""
    with (
        flow_params.secret_parameters(config, store_url) as params,
        _logged_if_not_started(params, config, store_url, as_of),
    ):
        ensure_prefect_api()
        return nightly(
            **params,
            as_of=as_of.isoformat() if as_of else None,
            events=events,
            force_refit=force_refit,
            rebuild=rebuild,
        )


def run_backfill(
    config: EngineConfig,
    *,
    start: date,
    end: date,
    events: str | None = None,
    store_url: str | None = None,
) -> list[RunSummary]:
    """The nightly flow for each date from start to end, in order."""
    with (
        flow_params.secret_parameters(config, store_url) as params,
        _logged_if_not_started(params, config, store_url, start),
    ):
        ensure_prefect_api()
        return backfill(**params, start=start.isoformat(), end=end.isoformat(), events=events)


@flow(name="segmentation-nightly", log_prints=False)
def nightly(
    config: dict[str, Any] | None = None,
    as_of: str | None = None,
    events: str | None = None,
    store_url: str | None = None,
    force_refit: bool = False,
    rebuild: bool = False,
    show_progress: bool = False,
    secrets_ref: str | None = None,
) -> RunSummary:
    """One nightly run as of a date (default: yesterday, UTC): the whole pipeline.

    `config` and `store_url` may hold masked URLs (`user:***@host`): the real ones come from
    `secrets_ref` (this process) or the environment or the config file (a served run)."""
    cfg, store_url = flow_params.resolve_secrets(config, store_url, secrets_ref)
    day = _as_of_or_yesterday(as_of)
    return nightly_run(
        cfg,
        day,
        events=events,
        store_url=store_url,
        force_refit=force_refit,
        rebuild=rebuild,
        progress=_print_progress if show_progress else None,
    )


def nightly_flow_for_demo(
    config: EngineConfig, dates: list[date], events: str, show_progress: bool = True
) -> list[RunSummary]:
    """One nightly flow run per date, in order, printing progress (the demo)."""
    with flow_params.secret_parameters(config, None) as params:
        ensure_prefect_api()
        return [
            nightly(**params, as_of=day.isoformat(), events=events, show_progress=show_progress)
            for day in dates
        ]


@flow(name="segmentation-backfill")
def backfill(
    config: dict[str, Any] | None = None,
    start: str = "",
    end: str = "",
    events: str | None = None,
    store_url: str | None = None,
    secrets_ref: str | None = None,
) -> list[RunSummary]:
    """The nightly run for every date from start to end (inclusive), oldest first."""
    cfg, store_url = flow_params.resolve_secrets(config, store_url, secrets_ref)
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    if last < first:
        raise FlowArgumentError(f"backfill end {last} is before start {first}")
    results = []
    day = first
    while day <= last:
        results.append(nightly_run(cfg, day, events=events, store_url=store_url))
        day += timedelta(days=1)
    return results


@flow(name="segmentation-refit")
def refit(
    config: dict[str, Any] | None = None,
    as_of: str | None = None,
    events: str | None = None,
    store_url: str | None = None,
    secrets_ref: str | None = None,
) -> RunSummary:
    """A nightly run that refits the clustering and CLTV models whatever the policy says."""
    cfg, store_url = flow_params.resolve_secrets(config, store_url, secrets_ref)
    day = _as_of_or_yesterday(as_of)
    return nightly_run(cfg, day, events=events, store_url=store_url, force_refit=True)


def serve(config: EngineConfig) -> None:
    """Serve the nightly flow on the configured cron (blocks until interrupted)."""
    from pipelines.schedule import serve_nightly

    # A deployment's parameters live in Prefect's database: secrets go masked, and each
    # scheduled run resolves them from the environment or the config file when it starts.
    parameters = {"config": flow_params.masked_payload(config), "as_of": None}
    serve_nightly(nightly, config, parameters=parameters)


def nightly_run(
    config: EngineConfig,
    as_of: date,
    *,
    events: str | None = None,
    store_url: str | None = None,
    force_refit: bool = False,
    rebuild: bool = False,
    progress: Progress | None = None,
) -> RunSummary:
    """The body of the nightly flow (called inside a flow run so the tasks are tracked).

    Every step is computed before the store is touched, then published in one atomic step;
    a failure up to there is recorded as a failed run and raised. Only a published run
    promotes its refits to champion; tracking and the report follow the publish.
    """
    from pipelines.registry import ModelRegistry
    from pipelines.tracking import Tracker

    url = store_url or config.store_url
    config.workdir_path.mkdir(parents=True, exist_ok=True)
    registry = ModelRegistry(config.tracking_uri) if config.mlflow.enabled else None
    run_id, started = steps.run_identity(as_of)
    with ExitStack() as stack:
        store = _open_store(config, url)
        stack.callback(store.close)
        tags = {"as_of": as_of.isoformat(), "run_id": run_id}
        try:
            tracked = stack.enter_context(
                Tracker.from_config(config).start_run(f"nightly {as_of}", tags=tags)
            )
        except Exception as exc:  # MLflow unusable: the run still goes in the log
            _record_failure(store, run_id, as_of, started, None, exc, config=config)
            raise
        clock = _Clock(as_of, progress or log.info)
        allowance = policy.noise_allowance(config.clustering, config.refit)
        if allowance:
            log.warning("%s", allowance)
        run = _Run(config, as_of, run_id, started, clock, store, registry, tracked)
        try:
            folder = stack.enter_context(scratch.scratch_folder(config))
            con = connect_for_events(config.features, folder)
            stack.callback(con.close)
            latest = _latest_as_of(store)
            _check_order(latest, as_of, rebuild)
            shard_events = stack.enter_context(scratch.shared_folder(config, f"run-{run_id}"))
            dask = _dask_client(stack, config)
            tonight = _compute(
                run, con, events or config.events_path, latest, force_refit, shard_events, dask
            )
            published = _publish(run, tonight, rebuild)
        except Exception as exc:
            _record_failure(store, run_id, as_of, started, tracked.run_id, exc, config=config)
            raise
        _promote(registry, policy.promotions([tonight.clusters, tonight.cltv], published=True))
        if config.destinations:  # a failed delivery is recorded and retried, never fails the run
            clock.say(f"delivering entries and exits to {len(config.destinations)} destinations")
            clock.time("deliver", _deliver, store, config, as_of)
        _track(run, tonight, published)
        report = clock.time("report", _write_report, config, url, as_of, tracked, clock)
        return _summary(run, tonight, published, report)


@dataclass
class _Clock:
    """Seconds per stage of one run (the summary's `seconds`), and its progress lines.

    The default sink (`log.info`) becomes the `pipelines.progress` logger (the CLI prints it
    on stderr unless -q), and there and in the demo's `_print_progress` each line starts with
    the seconds since the clock started; a caller's own callable gets the plain line."""

    as_of: date
    progress: Progress
    seconds: dict[str, float] = field(default_factory=dict)
    # The process's peak resident memory (GB) when each stage ended: the peak so far, so the
    # stage where it rises is the one that set it.
    peak_gb: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def say(self, message: str) -> None:
        """One progress line, naming the run's as-of date."""
        line = f"[{self.as_of}] {message}"
        elapsed = f"{time.perf_counter() - self.started:6.1f}s"
        if self.progress == log.info:
            logging.getLogger("pipelines.progress").info("%s %s", elapsed, line)
        elif self.progress is _print_progress:
            _print_progress(f"{elapsed} {line}")
        else:
            self.progress(line)

    def time(self, stage: str, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`fn(*args, **kwargs)`, its wall time recorded as `stage` (also when it raises)."""
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[stage] = time.perf_counter() - start
            self.peak_gb[stage] = _peak_rss_gb()


def _peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GiB (Linux reports KiB), the unit of
    the benchmarks' "GB"."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


@dataclass(frozen=True)
class _Run:
    """One nightly run's identity and what its steps write to: the store, MLflow, the clock."""

    config: EngineConfig
    as_of: date
    run_id: str
    started: datetime
    clock: _Clock
    store: Store
    registry: ModelRegistry | None
    tracked: TrackedRun


@dataclass(frozen=True)
class _Tonight:
    """Everything the run computes before it touches the store."""

    events: EventsRead
    clients: int  # with features tonight
    feature_names: list[str]
    decision: RefitDecision
    cltv: ModelChoice[CltvBundle]
    scores: pd.DataFrame
    clusters: ModelChoice[ClusterBundle]
    segmentation: Segmentation
    stability: float | None
    journey: JourneyMap | None = None
    holdout: pd.DataFrame | None = None  # treated against held-out members, per segment


def _compute(
    run: _Run,
    con: duckdb.DuckDBPyConnection,
    events_path: str,
    latest: date | None,
    force_refit: bool,
    shard_events: Path,
    dask: Client | None = None,
) -> _Tonight:
    """The steps before the publish: events, features, the refit decision, the CLTV model and
    scores, the clustering, the segments. The store is only read (the last membership)."""
    config, as_of, clock = run.config, run.as_of, run.clock
    rules = steps.load_ruleset(config)  # a bad rule fails in milliseconds, before heavy work
    features: FeatureRows
    if dask is not None:
        clock.say(
            f"validating events and building features on Dask"
            f" ({config.execution.shards} shards) from {events_path}"
        )

        def history() -> tuple[date | None, dict[str, str]]:
            return _identity_history(run.store, as_of, latest)  # read only when stitching

        events, features = clock.time(
            "features",
            dask_features_task,
            con,
            config,
            events_path,
            as_of,
            shard_events,
            dask,
            history,
        )
        if events.stitching is not None:
            _say_stitched(clock, events.stitching)
    else:
        events, features = _events_and_features(run, con, events_path, latest)
    previous = run.store.membership(columns=steps.PREVIOUS_COLUMNS) if latest is not None else None
    champions = clock.time(
        "load_models",
        load_champions_task.with_options(**retry_options(config.schedule)),
        run.registry,
        config,
    )
    current = champions.clusters.bundle if champions.clusters is not None else None
    decision = steps.decide_refit_by(
        current, as_of, config, lambda c: features.champion_fit(c, config), force=force_refit
    )
    clock.say(f"clustering: {'refit' if decision.refit else 'champion'} ({decision.reason})")
    registration = _registration(run)
    btyd = features.btyd()
    cltv = clock.time(
        "cltv", cltv_task, con, as_of, btyd, config, champions.cltv, decision.refit, registration
    )
    del btyd
    scores = clock.time("scores", scores_task, features, cltv.bundle, config, cltv.version)
    refitting = policy.cluster_refit_needed(decision, champions.clusters)
    clusters = clock.time(
        "clusters",
        clusters_task,
        features.fitting_rows(config) if refitting else pd.DataFrame(),  # rows only to refit
        as_of,
        config,
        champions.clusters,
        decision,
        previous,
        registration,
    )
    clock.say(f"assigning segments to {features.clients:,} clients")
    rules_version = f"rules-{config.digest()[:8]}"
    segmentation = clock.time(
        "segments",
        segments_task,
        features,
        scores,
        clusters.bundle,
        rules,
        clusters.version,
        rules_version,
        previous,
        as_of,
        config,
    )
    stability = steps.stability_against(previous, segmentation.membership)
    features.release()  # the journey map and the holdout read the events, not the rows
    journey = clock.time(
        "journey", journey_task, features, con, as_of, segmentation.membership, config
    )
    if journey is not None:
        clock.say(
            f"journey map: {int(journey.summary['clients']):,} clients in the window,"
            f" {int(journey.summary['stalled']):,} stalled"
        )
    holdout = clock.time(
        "holdout",
        steps.holdout_outcomes,
        con,
        as_of,
        segmentation.membership,
        previous,
        config,
        features.outcomes(con, config),
    )
    steps.drop_events(con)  # its last readers: the journey map and the holdout
    return _Tonight(
        events,
        features.clients,
        features.names,
        decision,
        cltv,
        scores,
        clusters,
        segmentation,
        stability,
        journey,
        holdout,
    )


def _events_and_features(
    run: _Run, con: duckdb.DuckDBPyConnection, events_path: str, latest: date | None
) -> tuple[EventsRead, InMemoryFeatures]:
    """In this process: read and validate the events, stitch identities, build features."""
    config, as_of, clock = run.config, run.as_of, run.clock
    clock.say(f"reading and validating events from {events_path}")
    retrying = retry_options(config.schedule)
    events = clock.time(
        "validate", read_events_task.with_options(**retrying), con, config, events_path
    )
    from features.identity import needs_stitching

    before, merged_before = (
        _identity_history(run.store, as_of, latest)
        if needs_stitching(con, config.links_path)
        else (None, {})
    )  # the merge log is read only for events that are stitched
    events = clock.time("identity", stitch_task, con, config, as_of, events, before, merged_before)
    if events.stitching is not None:
        _say_stitched(clock, events.stitching)
    clock.say(f"building features ({events.report.valid:,} valid events)")
    features = clock.time("features", features_task, con, as_of, config)
    return events, features


def _say_stitched(clock: _Clock, stitching: Stitching) -> None:
    summary = stitching.summary
    clock.say(
        f"identity: {summary['persons']:,} persons from {summary['identifiers']:,}"
        f" identifiers ({summary['over_linked']:,} over-linked, {summary['merges']:,} merges)"
    )


def _dask_client(stack: ExitStack, config: EngineConfig) -> Client | None:
    """The Dask client of a run with ``execution.mode: dask`` (closed with the run), else
    None."""
    if config.execution.mode != "dask":
        return None
    from pipelines.distributed import dask_client

    return stack.enter_context(dask_client(config.execution))


def _identity_history(
    store: Store, as_of: date, latest: date | None
) -> tuple[date | None, dict[str, str]]:
    """The published as-of date before `as_of` (whose persons tonight's merges are measured
    against) and the ids merged by runs before `as_of` -> the id they went into."""
    if latest is None:
        return None, {}
    runs = store.runs()
    dates = [
        d
        for d in pd.to_datetime(runs.loc[runs["status"] == "success", "as_of"]).dt.date
        if d < as_of
    ]
    merges = store.identity_merges()
    if len(merges):
        merges = merges[pd.to_datetime(merges["as_of"]).dt.date < as_of]
    merged = dict(zip(merges["merged_id"], merges["into_id"], strict=True))
    return (max(dates) if dates else None), merged


def _publish(run: _Run, tonight: _Tonight, rebuild: bool) -> PublishResult:
    """The one atomic publish of everything the run computed (retried on transient errors)."""
    from pipelines.store import PublishRequest

    run.clock.say(f"publishing to {run.store.url}")
    report = tonight.events.report
    stitching = tonight.events.stitching
    journey = tonight.journey
    request = PublishRequest(
        run_id=run.run_id,
        as_of=run.as_of,
        started_at=run.started,
        membership=tonight.segmentation.membership,
        segments=tonight.segmentation.segments,
        scores=tonight.scores,
        quarantine=tonight.events.quarantine,
        identity_map=stitching.identity_map if stitching else None,
        identity_merges=stitching.merges if stitching else None,
        journey_stages=journey.stages if journey else None,
        journey_touchpoints=journey.touchpoints if journey else None,
        journey_dropoffs=journey.dropoffs if journey else None,
        holdout_outcomes=tonight.holdout,
        run_info={
            "events_read": report.rows,
            "events_quarantined": report.quarantined,
            "cluster_model_version": tonight.clusters.version,
            "cltv_model_version": tonight.cltv.version,
            "mlflow_run_id": run.tracked.run_id,
        },
    )
    publish = publish_task.with_options(**retry_options(run.config.schedule))
    return run.clock.time("publish", publish, run.store, request, rebuild)


def _promote(registry: ModelRegistry | None, promotions: list[Promotion]) -> None:
    """Make the run's refits champion (the policy lists them only for a published run)."""
    if registry is None:  # without MLflow nothing is registered, so nothing to promote
        return
    for promotion in promotions:
        registry.promote(promotion.name, promotion.version)


def _track(run: _Run, tonight: _Tonight, published: PublishResult) -> None:
    """Log the run to MLflow: its params, metrics, and the segments and cluster profiles."""
    config, decision = run.config, tonight.decision
    report = tonight.events.report
    metrics = {
        "events_read": report.rows,
        "events_valid": report.valid,
        "duplicates": report.duplicates,
        "events_quarantined": report.quarantined,
        **{f"quarantined_by_reason.{k}": v for k, v in report.by_reason.items()},
        "unknown_event_types": sum(report.unknown_event_types.values()),
        "clients": tonight.clients,
        **decision.metrics(),
        **tonight.clusters.metrics,
        **tonight.cltv.metrics,
        **tonight.segmentation.metrics,
        "stability": tonight.stability,
        "entries": published.entries,
        "exits": published.exits,
        "moves": published.moves,
        "lifecycle_changes": published.lifecycle_changes,
        **{f"seconds.{k}": v for k, v in run.clock.seconds.items()},
    }
    params = {
        "as_of": run.as_of.isoformat(),
        "run_id": run.run_id,
        "config_digest": config.digest(),
        "features": tonight.feature_names,
        "clustering": config.clustering.model_dump(mode="json"),
        "cltv": config.cltv.model_dump(mode="json"),
        "refit_policy": config.refit.model_dump(mode="json"),
        "refit_reason": decision.reason,
        "cluster_model_version": tonight.clusters.version,
        "cltv_model_version": tonight.cltv.version,
    }
    artifacts: dict[str, object] = {
        "segments.json": tonight.segmentation.segments.to_dict(orient="records")
    }
    if tonight.clusters.bundle is not None:
        artifacts["profiles.json"] = tonight.clusters.bundle.model.profiles_
    run.clock.time("track", _log_run, run.tracked, params, metrics, artifacts)


def _summary(
    run: _Run, tonight: _Tonight, published: PublishResult, report_path: Path | None
) -> RunSummary:
    """The run's summary: counts, the refit decision, model versions, where things are."""
    report = tonight.events.report
    return {
        "run_id": run.run_id,
        "as_of": run.as_of.isoformat(),
        "store": run.store.url,
        "events_read": report.rows,
        "events_quarantined": report.quarantined,
        "duplicates": report.duplicates,
        "clients": published.clients,
        "segments": published.segments,
        "entries": published.entries,
        "exits": published.exits,
        "moves": published.moves,
        "refit": tonight.decision.refit,
        "refit_reason": tonight.decision.reason,
        "cluster_model_version": tonight.clusters.version,
        "cltv_model_version": tonight.cltv.version,
        "mlflow_run_id": run.tracked.run_id,
        "report": str(report_path) if report_path else None,
        "seconds": {k: round(v, 2) for k, v in run.clock.seconds.items()},
        "peak_rss_gb": {k: round(v, 2) for k, v in run.clock.peak_gb.items()},
    }


# The steps as Prefect tasks: tracked runs of the plain functions in `steps`, nothing more.
read_events_task = task(name="read-events", persist_result=False)(steps.read_events)
stitch_task = task(name="identity", persist_result=False)(steps.stitch_identities)


@task(name="features", persist_result=False)
def features_task(
    con: duckdb.DuckDBPyConnection, as_of: date, config: EngineConfig
) -> InMemoryFeatures:
    """The feature frame, inside the object that can let go of it (`InMemoryFeatures`):
    Prefect keeps a task's return value until the flow run ends."""
    return InMemoryFeatures(steps.compute_features(con, as_of, config))


dask_features_task = task(name="features-on-dask", persist_result=False)(build_on_dask)
load_champions_task = task(name="load-champions", persist_result=False)(steps.load_champions)
cltv_task = task(name="cltv", persist_result=False)(steps.choose_cltv_model)
clusters_task = task(name="clusters", persist_result=False)(steps.choose_cluster_model)


@task(name="journey", persist_result=False)
def journey_task(
    features: FeatureRows,
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    membership: pd.DataFrame,
    config: EngineConfig,
) -> JourneyMap | None:
    """Tonight's journey map (from the events on `con`, or shard by shard on Dask)."""
    return features.journey(con, as_of, membership, config)


@task(name="scores", persist_result=False)
def scores_task(
    features: FeatureRows, bundle: CltvBundle | None, config: EngineConfig, version: str
) -> pd.DataFrame:
    """Every client's CLTV scores (in this process, or shard by shard on Dask)."""
    return features.scores(bundle, config, version)


@task(name="segments", persist_result=False)
def segments_task(
    features: FeatureRows,
    scores: pd.DataFrame,
    clusters: ClusterBundle | None,
    rules: RuleSet,
    cluster_version: str,
    rules_version: str,
    previous: pd.DataFrame | None,
    as_of: date,
    config: EngineConfig,
) -> Segmentation:
    """Every client's segment (in this process, or shard by shard on Dask)."""
    return features.segmentation(
        scores, clusters, rules, cluster_version, rules_version, previous, as_of, config
    )


@task(name="publish", persist_result=False)
def publish_task(store: Store, request: PublishRequest, rebuild: bool) -> PublishResult:
    """The one atomic publish, under the store's publish lock."""
    with store.lock():
        return store.publish(request, rebuild_from=request.as_of if rebuild else None)


def _print_progress(message: str) -> None:
    """A progress line on stdout, indented under the demo's own lines."""
    print("    " + message, flush=True)


def _open_store(config: EngineConfig, url: str) -> Store:
    """The store at `url` with the config's schema, lock timeout and reader retry."""
    from pipelines.store import open_store

    return open_store(
        url,
        config.store.schema_name,
        lock_timeout=config.store.lock_timeout_seconds,
        reader_retry=config.store.reader_retry_seconds,
    )


def _registration(run: _Run) -> Registration | None:
    """Where refits are registered: the registry under the tracked run (None: MLflow off)."""
    if run.registry is None or not run.tracked.run_id:
        return None
    return Registration(run.registry, run.tracked.run_id)


def _log_run(
    tracked: TrackedRun,
    params: Mapping[str, object],
    metrics: Mapping[str, float | None],
    artifacts: Mapping[str, object],
) -> None:
    """Params, metrics and artifacts into the run's MLflow run."""
    tracked.log_params(params)
    tracked.log_metrics(metrics)
    tracked.log_artifacts(artifacts)


def _as_of_or_yesterday(as_of: str | None) -> date:
    """The given date, or yesterday in UTC: the run on the morning of D+1 publishes as of D."""
    return date.fromisoformat(as_of) if as_of else datetime.now(UTC).date() - timedelta(days=1)


def _check_order(latest: date | None, as_of: date, rebuild: bool) -> None:
    """Fail before any work when the date is older than the latest published one."""
    from pipelines.store import OutOfOrderError

    if latest is not None and as_of < latest and not rebuild:
        raise OutOfOrderError(
            f"as_of {as_of} is older than the latest published as_of {latest}: run dates in"
            f" order, or pass --rebuild to undo every run from {as_of} on and rebuild from there"
        )


def _latest_as_of(store: Store) -> date | None:
    """The latest published as-of date; None for a store without tables yet. Any other
    failure (an unreachable store) is raised now, before the heavy work."""
    from pipelines.store import StoreEmptyError

    try:
        return store.latest_as_of()
    except StoreEmptyError as exc:  # a new store has no tables yet
        log.info("no published run yet: %s", exc)
        return None


def _record_failure(
    store: Store,
    run_id: str,
    as_of: date,
    started: datetime,
    mlflow_run_id: str | None,
    exc: BaseException,
    *,
    config: EngineConfig | None = None,
) -> None:
    """Log the failed run in `runs` (status failed, with its error as one masked line) and
    tell the configured failure webhook; the caller raises the error. When the store cannot
    take it (unreachable: most often the very error being raised), the caller's one error
    line is the whole story: this only logs."""
    from pipelines.store import StoreConnectionError

    if config is not None and config.alerts.failure_webhook:
        from pipelines.alerts import notify_failure

        notify_failure(config, run_id=run_id, as_of=as_of, error=exc)

    info = {"mlflow_run_id": mlflow_run_id}
    try:
        store.record_failed_run(run_id, as_of, started, run_info=info, error=exc)
    except StoreConnectionError as inner:
        log.info("could not record the failed run %s: %s", run_id, inner)
    except Exception as inner:  # the original error matters more
        log.warning("could not record the failed run %s: %s", run_id, inner)
    log.info("run %s as of %s failed: %s", run_id, as_of, exc)  # the caller reports it


def _deliver(store: Store, config: EngineConfig, as_of: date) -> None:
    """Tonight's entries and exits to the configured destinations (`pipelines.destinations`:
    at least once, idempotency keys; what fails stays pending for the next run)."""
    from pipelines.destinations import deliver_after_publish

    summary = deliver_after_publish(store, config, as_of)
    if not summary.ok:
        log.warning("delivery incomplete: %s", summary.error or "see destination_deliveries")


def _write_report(
    config: EngineConfig, url: str, as_of: date, tracked: TrackedRun, clock: _Clock
) -> Path | None:
    """The run's HTML report, attached to its MLflow run; None when it cannot be written."""
    try:
        from pipelines.report import write_report

        path = write_report(config, store_url=url, as_of=as_of)
        tracked.log_artifacts({path.name: path}, folder="report")
        clock.say(f"report: {path}")
        return path
    except Exception as exc:  # the run is published; a report failure must not undo it
        log.warning("report for %s not written: %s", as_of, exc)
        return None


@contextmanager
def _logged_if_not_started(
    params: Mapping[str, Any], config: EngineConfig, store_url: str | None, as_of: date | None
) -> Iterator[None]:
    """A failure before the flow body ran (Prefect's server did not start, the flow run could
    not be created) is logged in `runs` here, since no run did it."""
    try:
        yield
    except Exception as exc:
        if not flow_params.started(params["secrets_ref"]):
            _record_unstarted_failure(config, store_url, as_of or _as_of_or_yesterday(None), exc)
        raise


def _record_unstarted_failure(
    config: EngineConfig, store_url: str | None, as_of: date, exc: BaseException
) -> None:
    """Log a run that failed before it started in `runs` (status failed, with its error)."""
    run_id, started = steps.run_identity(as_of)
    try:
        store = _open_store(config, store_url or config.store_url)
    except Exception as inner:  # a store that cannot even be opened: the error line says why
        log.info("could not record the failed run %s: %s", run_id, inner)
        return
    try:
        _record_failure(store, run_id, as_of, started, None, exc, config=config)
    finally:
        store.close()
