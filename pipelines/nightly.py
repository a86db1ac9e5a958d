"""The Prefect flows: nightly (validate, features, segments, scores, publish, track), backfill, refit.

Everything is computed before the store is touched; the publish is one atomic step under the
store's publish lock, so a failure anywhere leaves the published tables as they were (the
failed run is logged in `runs` with status `failed`). Tasks retry only transient errors
(a database connection), never bad input.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
from prefect import flow, task

from configs import EngineConfig, config_from_mapping, load_config
from features.events import connect_for_events
from pipelines import steps
from pipelines.prefect_utils import retry_options

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def run_nightly(
    config: EngineConfig,
    *,
    as_of: date | None = None,
    events: str | None = None,
    store_url: str | None = None,
    force_refit: bool = False,
    rebuild: bool = False,
) -> dict[str, Any]:
    """Run the nightly flow once (in this process, through Prefect) and return its summary."""
    return nightly(
        config=_config_payload(config),
        as_of=as_of.isoformat() if as_of else None,
        events=events,
        store_url=store_url,
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
) -> list[dict[str, Any]]:
    """The nightly flow for each date from start to end, in order."""
    return backfill(
        config=_config_payload(config),
        start=start.isoformat(),
        end=end.isoformat(),
        events=events,
        store_url=store_url,
    )


@flow(name="segmentation-nightly", log_prints=False)
def nightly(
    config: dict[str, Any] | None = None,
    as_of: str | None = None,
    events: str | None = None,
    store_url: str | None = None,
    force_refit: bool = False,
    rebuild: bool = False,
    show_progress: bool = False,
) -> dict[str, Any]:
    """One nightly run as of a date (default: yesterday, UTC): the whole pipeline."""
    cfg = _config_from_payload(config)
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
) -> list[dict[str, Any]]:
    """One nightly flow run per date, in order, printing progress (the demo)."""
    return [
        nightly(
            config=_config_payload(config),
            as_of=day.isoformat(),
            events=events,
            show_progress=show_progress,
        )
        for day in dates
    ]


def _print_progress(message: str) -> None:
    print("    " + message, flush=True)


@flow(name="segmentation-backfill")
def backfill(
    config: dict[str, Any] | None = None,
    start: str = "",
    end: str = "",
    events: str | None = None,
    store_url: str | None = None,
) -> list[dict[str, Any]]:
    """The nightly run for every date from start to end (inclusive), oldest first."""
    cfg = _config_from_payload(config)
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    if last < first:
        raise ValueError(f"backfill end {last} is before start {first}")
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
) -> dict[str, Any]:
    """A nightly run that refits the clustering and CLTV models whatever the policy says."""
    cfg = _config_from_payload(config)
    day = _as_of_or_yesterday(as_of)
    return nightly_run(cfg, day, events=events, store_url=store_url, force_refit=True)


def nightly_run(
    config: EngineConfig,
    as_of: date,
    *,
    events: str | None = None,
    store_url: str | None = None,
    force_refit: bool = False,
    rebuild: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The body of the nightly flow (called inside a flow run so the tasks are tracked)."""
    from pipelines.registry import ModelRegistry
    from pipelines.store import PublishRequest, open_store
    from pipelines.tracking import Tracker

    say = progress or (lambda message: log.info(message))
    run_id, started = steps.run_identity(as_of)
    events_path = events or config.events_path
    url = store_url or config.store_url
    config.workdir_path.mkdir(parents=True, exist_ok=True)
    store = open_store(
        url,
        config.store.schema_name,
        lock_timeout=config.store.lock_timeout_seconds,
        reader_retry=config.store.reader_retry_seconds,
    )
    tracker = Tracker.from_config(config)
    registry = ModelRegistry(config.tracking_uri) if config.mlflow.enabled else None
    timings: dict[str, float] = {}
    opts = retry_options(config.schedule)

    with ExitStack() as stack:
        tracked = stack.enter_context(
            tracker.start_run(
                f"nightly {as_of}", tags={"as_of": as_of.isoformat(), "run_id": run_id}
            )
        )
        tmp = stack.enter_context(
            tempfile.TemporaryDirectory(prefix="duckdb-", dir=config.workdir_path)
        )
        con = connect_for_events(config.features, tmp)
        stack.callback(con.close)
        try:
            latest = _latest_as_of(store)
            _check_order(latest, as_of, rebuild)
            say(f"[{as_of}] reading and validating events from {events_path}")
            report = _timed(
                timings, "validate", read_events_task.with_options(**opts), con, config, events_path
            )
            quarantine = con.execute("SELECT * FROM quarantine").df()

            say(f"[{as_of}] building features ({report.valid:,} valid events)")
            features = _timed(timings, "features", features_task, con, as_of, config)

            previous = store.membership() if latest is not None else None
            cluster_champion, cltv_champion = _timed(
                timings, "load_models", load_champions_task.with_options(**opts), registry, config
            )
            decision = steps.decide_refit(
                cluster_champion[0] if cluster_champion else None,
                features,
                as_of,
                config,
                force=force_refit,
            )
            say(
                f"[{as_of}] clustering: {'refit' if decision.refit else 'champion'} ({decision.reason})"
            )

            btyd = steps.btyd_inputs(features)
            cltv, cltv_version, cltv_info = _timed(
                timings,
                "cltv",
                cltv_task,
                con,
                as_of,
                btyd,
                config,
                cltv_champion,
                decision.refit,
                registry,
                tracked.run_id,
            )
            scores = steps.score_clients(cltv, btyd, config, cltv_version)
            con.execute("DROP TABLE events")  # its last reader was the CLTV backtest

            clusters, cluster_version, cluster_info = _timed(
                timings,
                "clusters",
                clusters_task,
                features,
                as_of,
                config,
                cluster_champion,
                decision,
                previous,
                registry,
                tracked.run_id,
            )

            say(f"[{as_of}] assigning segments to {len(features):,} clients")
            rules = steps.load_ruleset(config)
            result = _timed(
                timings,
                "segments",
                segments_task,
                features,
                scores,
                clusters,
                rules,
                cluster_version,
                f"rules-{config.digest()[:8]}",
                previous,
            )
            stability = steps.stability_against(previous, result.membership)

            say(f"[{as_of}] publishing to {store.url}")
            published = _timed(
                timings,
                "publish",
                publish_task.with_options(**opts),
                store,
                PublishRequest(
                    run_id=run_id,
                    as_of=as_of,
                    started_at=started,
                    membership=result.membership,
                    segments=result.segments,
                    scores=scores,
                    quarantine=quarantine,
                    run_info={
                        "events_read": report.rows,
                        "events_quarantined": report.quarantined,
                        "cluster_model_version": cluster_version,
                        "cltv_model_version": cltv_version,
                        "mlflow_run_id": tracked.run_id,
                    },
                ),
                rebuild,
            )
        except Exception as exc:
            _record_failure(store, run_id, as_of, started, tracked.run_id, exc)
            raise
        # Only a run that published may change the champions.
        for promotion in (cluster_info.get("promote"), cltv_info.get("promote")):
            if promotion and registry is not None:
                registry.promote(*promotion)

        metrics = {
            "events_read": report.rows,
            "events_valid": report.valid,
            "duplicates": report.duplicates,
            "events_quarantined": report.quarantined,
            **{f"quarantined_by_reason.{k}": v for k, v in report.by_reason.items()},
            "unknown_event_types": sum(report.unknown_event_types.values()),
            "clients": len(features),
            **decision.metrics(),
            **cluster_info.get("metrics", {}),
            **cltv_info.get("metrics", {}),
            **result.metrics,
            "stability": stability,
            "entries": published.entries,
            "exits": published.exits,
            "moves": published.moves,
            "lifecycle_changes": published.lifecycle_changes,
            **{f"seconds.{k}": v for k, v in timings.items()},
        }
        params = {
            "as_of": as_of.isoformat(),
            "run_id": run_id,
            "config_digest": config.digest(),
            "features": list(features.columns[1:]),
            "clustering": config.clustering.model_dump(mode="json"),
            "cltv": config.cltv.model_dump(mode="json"),
            "refit_policy": config.refit.model_dump(mode="json"),
            "refit_reason": decision.reason,
            "cluster_model_version": cluster_version,
            "cltv_model_version": cltv_version,
        }
        track_start = time.perf_counter()
        tracked.log_params(params)
        tracked.log_metrics(metrics)
        artifacts: dict[str, Any] = {"segments.json": result.segments.to_dict(orient="records")}
        if clusters is not None:
            artifacts["profiles.json"] = clusters.model.profiles_
        tracked.log_artifacts(artifacts)
        timings["track"] = time.perf_counter() - track_start
        report_path = _timed(timings, "report", _write_report, config, url, as_of, tracked, say)

    summary = {
        "run_id": run_id,
        "as_of": as_of.isoformat(),
        "store": store.url,
        "events_read": report.rows,
        "events_quarantined": report.quarantined,
        "duplicates": report.duplicates,
        "clients": published.clients,
        "segments": published.segments,
        "entries": published.entries,
        "exits": published.exits,
        "moves": published.moves,
        "refit": decision.refit,
        "refit_reason": decision.reason,
        "cluster_model_version": cluster_version,
        "cltv_model_version": cltv_version,
        "mlflow_run_id": tracked.run_id,
        "report": str(report_path) if report_path else None,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    store.close()
    return summary


@task(name="read-events", persist_result=False)
def read_events_task(con: duckdb.DuckDBPyConnection, config: EngineConfig, path: str):
    """Validate events into DuckDB (quarantine kept); fail above the bad share."""
    return steps.read_events(con, config, path)


@task(name="features", persist_result=False)
def features_task(con: duckdb.DuckDBPyConnection, as_of: date, config: EngineConfig):
    """The point-in-time feature table."""
    return steps.compute_features(con, as_of, config)


@task(name="load-champions", persist_result=False)
def load_champions_task(registry: Any, config: EngineConfig):
    """The champion clustering and CLTV models, or None where there is none yet."""
    if registry is None:
        return None, None
    return (
        registry.load_champion(config.mlflow.cluster_model_name),
        registry.load_champion(config.mlflow.cltv_model_name),
    )


@task(name="cltv", persist_result=False)
def cltv_task(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    btyd: Any,
    config: EngineConfig,
    champion: tuple[steps.CltvBundle, int] | None,
    refit_now: bool,
    registry: Any,
    mlflow_run_id: str | None,
) -> tuple[steps.CltvBundle | None, str, dict[str, Any]]:
    """Load the champion CLTV model or refit it (with the clustering, or when there is none);
    a refit that does not converge keeps the previous model."""
    from models.btyd import ConvergenceError

    usable = champion is not None and champion[0].fitted_as_of <= as_of
    if usable and not refit_now:
        bundle, version = champion
        return bundle, str(version), {"metrics": _prefixed("backtest", bundle.backtest)}
    try:
        bundle = steps.fit_cltv(con, as_of, btyd, config)
    except ConvergenceError as exc:
        log.warning("CLTV refit failed to converge (%s); keeping the previous model", exc)
        if usable:
            bundle, version = champion
            return bundle, str(version), {"metrics": {"cltv_refit_failed": 1.0}}
        return None, "none", {"metrics": {"cltv_refit_failed": 1.0}}
    metrics = {
        **_prefixed("backtest", bundle.backtest),
        **{f"cltv.{k}": v for k, v in bundle.model.params_.items()},
    }
    version = "unregistered"
    if registry is not None and mlflow_run_id:
        number = registry.register(
            config.mlflow.cltv_model_name,
            bundle,
            mlflow_run_id,
            metrics={k: v for k, v in bundle.backtest.items()},
            tags={"as_of": as_of.isoformat()},
        )
        version = str(number)
        return (
            bundle,
            version,
            {"metrics": metrics, "promote": (config.mlflow.cltv_model_name, number)},
        )
    return bundle, version, {"metrics": metrics}


@task(name="clusters", persist_result=False)
def clusters_task(
    features: Any,
    as_of: date,
    config: EngineConfig,
    champion: tuple[steps.ClusterBundle, int] | None,
    decision: steps.RefitDecision,
    previous_membership: Any,
    registry: Any,
    mlflow_run_id: str | None,
) -> tuple[steps.ClusterBundle, str, dict[str, Any]]:
    """The champion clustering, or a refit that becomes champion when it passes the gates."""
    current = champion[0] if champion else None
    if not decision.refit and champion is not None:
        return champion[0], str(champion[1]), {"metrics": {"cluster_refit": 0.0}}
    bundle = steps.fit_clusters(features, as_of, config, current, previous_membership)
    failures = steps.quality_gate_failures(bundle, config)
    model_metrics = {
        k: float(v)
        for k, v in bundle.model.metrics_.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    metrics = {
        **{f"cluster.{k}": v for k, v in model_metrics.items()},
        "noise_share": model_metrics.get("noise_share"),
        "cluster_quality": model_metrics.get("quality"),
        "cluster_gates_failed": float(len(failures)),
        "cluster_refit": 1.0,
    }
    if failures:
        log.warning("refit failed the quality gates: %s", "; ".join(failures))
    version = "unregistered"
    if registry is not None and mlflow_run_id:
        number = registry.register(
            config.mlflow.cluster_model_name,
            _without_client_ids(bundle),
            mlflow_run_id,
            metrics=model_metrics,
            tags={
                "as_of": as_of.isoformat(),
                "gates": "; ".join(failures) or "passed",
                "refit_reason": decision.reason,
            },
        )
        version = str(number)
    if failures and champion is not None:
        return champion[0], str(champion[1]), {"metrics": metrics}
    # Promoted to champion by the flow only once the run has published.
    promote = (config.mlflow.cluster_model_name, int(version)) if version.isdigit() else None
    return bundle, version, {"metrics": metrics, "promote": promote}


@task(name="segments", persist_result=False)
def segments_task(features, scores, clusters, rules, cluster_version, rules_version, previous):
    """Rules over clusters over noise, for every client."""
    return steps.segment_clients(
        features, scores, clusters, rules, cluster_version, rules_version, previous
    )


@task(name="publish", persist_result=False)
def publish_task(store: Any, request: Any, rebuild: bool):
    """The one atomic publish, under the store's publish lock."""
    with store.lock():
        return store.publish(request, rebuild_from=request.as_of if rebuild else None)


def serve(config: EngineConfig) -> None:
    """Serve the nightly flow on the configured cron (blocks until interrupted)."""
    from pipelines.schedule import serve_nightly

    serve_nightly(nightly, config, parameters={"config": _config_payload(config), "as_of": None})


def manage_models(config: EngineConfig, action: str, *, model: str, version: int | None) -> str:
    """`segmentation models list | promote VERSION | rollback` for analysts."""
    from pipelines.registry import ModelRegistry

    registry = ModelRegistry(config.tracking_uri)
    name = (
        config.mlflow.cluster_model_name if model == "clusters" else config.mlflow.cltv_model_name
    )
    if action == "list":
        table = registry.list_versions(name)
        return table.to_string(index=False) if len(table) else f"no versions of {name}"
    if action == "promote":
        previous = registry.promote(name, int(version))
        return f"{name}: version {version} is champion (was {previous})"
    restored = registry.rollback(name)
    return f"{name}: rolled back; version {restored} is champion"


def _timed(timings: dict[str, float], name: str, fn: Callable[..., Any], *args: Any) -> Any:
    start = time.perf_counter()
    try:
        return fn(*args)
    finally:
        timings[name] = time.perf_counter() - start


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


def _latest_as_of(store: Any) -> date | None:
    try:
        return store.latest_as_of()
    except Exception as exc:  # a new store has no tables yet
        log.info("no published run yet: %s", exc)
        return None


def _record_failure(store, run_id, as_of, started, mlflow_run_id, exc) -> None:
    try:
        store.record_failed_run(run_id, as_of, started, run_info={"mlflow_run_id": mlflow_run_id})
    except Exception as inner:  # the original error matters more
        log.error("could not record the failed run %s: %s", run_id, inner)
    log.info("run %s as of %s failed: %s", run_id, as_of, exc)  # the caller reports it


def _write_report(config, url, as_of, tracked, say) -> Path | None:
    try:
        from pipelines.report import write_report

        path = write_report(config, store_url=url, as_of=as_of)
        tracked.log_artifacts({path.name: path}, folder="report")
        say(f"[{as_of}] report: {path}")
        return path
    except Exception as exc:  # the run is published; a report failure must not undo it
        log.warning("report for %s not written: %s", as_of, exc)
        return None


def _without_client_ids(bundle: steps.ClusterBundle) -> steps.ClusterBundle:
    """A copy for MLflow without the training sample's client ids (no client ids in MLflow)."""
    import copy

    clean = copy.copy(bundle)
    clean.model = copy.copy(bundle.model)
    clean.model.sample_ids_ = None
    return clean


def _prefixed(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in (values or {}).items()}


def _config_payload(config: EngineConfig) -> dict[str, Any]:
    payload = config.model_dump(mode="json")
    payload["workdir"] = str(config.workdir_path)
    return payload


def _config_from_payload(payload: dict[str, Any] | None) -> EngineConfig:
    if payload is None:
        return load_config()
    raw = dict(payload)
    source = raw.pop("source", None) or "<flow parameter>"
    return config_from_mapping(raw, source=source)
