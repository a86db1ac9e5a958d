"""The nightly run's steps as plain functions: no Prefect here, so each step is testable alone.

The flow in `pipelines/nightly.py` wires these into Prefect tasks. Kedro-like split: the
steps take data and config and return data; where they read or write (DuckDB, the store,
MLflow) is decided by the flow.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from configs import EngineConfig
from features.events import ValidationReport, check_bad_share, load_configured_events
from models.backtest import backtest, split_btyd
from models.btyd import ConvergenceError
from models.cltv import BTYD_COLUMNS, SCORE_COLUMNS, CltvModel
from segmentation.clustering import ClusterModel
from segmentation.combine import (
    NOISE_SEGMENT_ID,
    NOISE_SEGMENT_NAME,
    assign_segments,
    segment_definitions,
)
from segmentation.drift import DriftReference, fit_reference, psi
from segmentation.rules import RuleSet, load_rules

log = logging.getLogger(__name__)


@dataclass
class ClusterBundle:
    """The registered clustering model: transforms, HDBSCAN, the assigner and the id mapping
    (all inside `model`), plus the drift reference of its training sample."""

    model: ClusterModel
    reference: DriftReference
    fitted_as_of: date
    config_digest: str

    def predict(self, X: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
        return self.model.predict(X, previous=previous)


@dataclass
class CltvBundle:
    """The registered CLTV model with the backtest that qualified it."""

    model: CltvModel
    backtest: dict[str, float]
    fitted_as_of: date

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.model.predict(X)


@dataclass(frozen=True)
class RefitDecision:
    """Whether to refit the clustering tonight, why, and the figures behind it."""

    refit: bool
    reason: str
    age_days: int | None = None
    max_psi: float | None = None
    drifted_features: tuple[str, ...] = ()
    champion_noise_share: float | None = None

    def metrics(self) -> dict[str, float]:
        out = {"refit": float(self.refit)}
        if self.age_days is not None:
            out["champion_age_days"] = float(self.age_days)
        if self.max_psi is not None:
            out["max_psi"] = self.max_psi
        if self.champion_noise_share is not None:
            out["champion_noise_share"] = self.champion_noise_share
        return out


@dataclass
class Segmentation:
    """Tonight's membership with what explains it."""

    membership: pd.DataFrame
    segments: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)


def read_events(
    con: duckdb.DuckDBPyConnection,
    config: EngineConfig,
    events_path: str,
    now: datetime | None = None,
) -> ValidationReport:
    """Load and validate events into `events`/`quarantine` on `con`; fail above the bad share."""
    report = load_configured_events(con, config, events_path, now=now)
    check_bad_share(report, config.events.max_bad_share)
    return report


def compute_features(
    con: duckdb.DuckDBPyConnection, as_of: date, config: EngineConfig
) -> pd.DataFrame:
    """The point-in-time feature table as pandas (nulls as NaN), one row per client."""
    from features.build import build_features

    table = build_features(con, as_of, config.features, shards=config.features.shards)
    if table.num_rows == 0:
        raise ValueError(f"no client has an event up to {as_of}: nothing to segment")
    frame = table.to_pandas()
    frame["client_id"] = frame["client_id"].astype(str)
    return frame


def btyd_inputs(features: pd.DataFrame) -> pd.DataFrame:
    """BTYD inputs per client in whole days (whole days collapse into far fewer unique rows)."""
    frame = features[["client_id", *BTYD_COLUMNS]].set_index("client_id")
    frame = frame.astype("float64").fillna(0.0)
    frame["recency"] = np.floor(frame["recency"])
    frame["T"] = np.maximum(np.floor(frame["T"]), frame["recency"])
    frame.loc[frame["frequency"] == 0, ["recency", "monetary_value"]] = 0.0
    return frame


def fit_cltv(
    con: duckdb.DuckDBPyConnection, as_of: date, btyd: pd.DataFrame, config: EngineConfig
) -> CltvBundle:
    """Backtest on a calibration/holdout split of the history, then fit on all of it.

    Raises ConvergenceError when either fit fails, so the caller keeps the previous model.
    """
    from features.build import purchase_log

    model = CltvModel(
        horizon_days=config.cltv.horizon_days,
        annual_discount_rate=config.cltv.annual_discount_rate,
        penalizer=config.cltv.penalizer,
    )
    purchases = purchase_log(con, as_of).rename(columns={"event_time": "day"})
    metrics: dict[str, float] = {}
    calibration, holdout = split_btyd(purchases, as_of, config.cltv.holdout_days)
    if (calibration["frequency"] > 0).sum() >= 20:
        try:
            metrics = backtest(calibration, holdout, model, config.cltv.holdout_days)
        except ConvergenceError as exc:
            log.warning("CLTV backtest did not converge: %s", exc)
            metrics = {"backtest_failed": 1.0}
    model.fit(btyd)
    return CltvBundle(model=model, backtest=metrics, fitted_as_of=as_of)


def score_clients(
    bundle: CltvBundle | None, btyd: pd.DataFrame, config: EngineConfig, version: str
) -> pd.DataFrame:
    """client_scores rows: p_alive, expected purchases and value, discounted CLTV, and
    cltv_percentile (share of tonight's scored clients with a predicted CLTV at most the
    client's own, 0..1; the rules define VIP as a top percentile, whatever the currency)."""
    columns = [*SCORE_COLUMNS, "cltv_percentile"]
    if bundle is None:
        return pd.DataFrame(columns=columns)
    predicted = bundle.model.predict(btyd)
    predicted = predicted.reset_index().rename(columns={"index": "client_id"})
    predicted["client_id"] = btyd.index.to_numpy()
    predicted["cltv_percentile"] = predicted["predicted_cltv"].rank(method="max", pct=True)
    predicted["horizon_days"] = bundle.model.horizon_days
    predicted["model_version"] = version
    return predicted[columns]


def decide_refit(
    champion: ClusterBundle | None,
    features: pd.DataFrame,
    as_of: date,
    config: EngineConfig,
    force: bool = False,
) -> RefitDecision:
    """Refit weekly, or earlier on feature drift (PSI) or a high noise share; never reuse a
    model fitted on data later than tonight's as-of date (that would leak the future)."""
    if force:
        return RefitDecision(True, "forced")
    if champion is None:
        return RefitDecision(True, "no champion model")
    age = (as_of - champion.fitted_as_of).days
    if age < 0:
        return RefitDecision(True, "champion was fitted after this as-of date", age_days=age)
    drift = psi(champion.reference, features)
    max_psi = max(drift.values(), default=0.0)
    drifted = tuple(sorted(k for k, v in drift.items() if v > config.refit.max_psi))
    sample = features.sample(n=min(len(features), 20_000), random_state=config.seed)
    noise = float(champion.predict(sample)["is_noise"].mean())
    figures = {"age_days": age, "max_psi": round(max_psi, 4), "champion_noise_share": noise}
    if age >= config.refit.every_days:
        return RefitDecision(True, f"scheduled: champion is {age} days old", **figures)
    if drifted:
        return RefitDecision(
            True,
            f"feature drift: PSI > {config.refit.max_psi} on {', '.join(drifted)}",
            drifted_features=drifted,
            **figures,
        )
    if noise > config.refit.max_noise_share:
        return RefitDecision(
            True, f"noise share {noise:.2f} above {config.refit.max_noise_share}", **figures
        )
    return RefitDecision(False, "champion is fresh and fits", **figures)


def fit_clusters(
    features: pd.DataFrame,
    as_of: date,
    config: EngineConfig,
    previous: ClusterBundle | None,
    previous_membership: pd.DataFrame | None = None,
) -> ClusterBundle:
    """Fit a new clustering, matching its segment ids to the previous model's."""
    model = ClusterModel.from_config(config.clustering, random_state=config.seed)
    assignments = None
    if previous_membership is not None and len(previous_membership):
        assignments = previous_membership[previous_membership["segment_source"] == "cluster"][
            ["client_id", "segment_id"]
        ]
    model.fit(
        features,
        previous=previous.model if previous else None,
        previous_assignments=assignments,
    )
    used = list(model.feature_names_in_)
    in_sample = pd.Index(model.sample_ids_).get_indexer(features["client_id"]) >= 0
    reference = fit_reference(features[in_sample], used)
    return ClusterBundle(model, reference, as_of, config.digest())


def quality_gate_failures(bundle: ClusterBundle, config: EngineConfig) -> list[str]:
    """The configured quality gates a refit fails; empty means it may become champion."""
    metrics = bundle.model.metrics_
    failures = []
    if metrics.get("n_clusters", 0) < config.refit.min_clusters:
        failures.append(f"n_clusters {metrics.get('n_clusters')} < {config.refit.min_clusters}")
    if metrics.get("noise_share", 1.0) > config.refit.max_noise_share:
        failures.append(f"noise_share {metrics['noise_share']} > {config.refit.max_noise_share}")
    quality = metrics.get("quality")
    if quality is not None and np.isfinite(quality) and quality < config.refit.min_quality:
        failures.append(f"quality {quality:.3f} < {config.refit.min_quality}")
    stability = metrics.get("stability")
    if stability is not None and np.isfinite(stability) and stability < config.refit.min_stability:
        failures.append(f"stability {stability:.3f} < {config.refit.min_stability}")
    return failures


def load_ruleset(config: EngineConfig) -> RuleSet:
    """The configured rules, checked against the feature catalog."""
    return load_rules(config.config_file(config.rules.file))


def segment_clients(
    features: pd.DataFrame,
    scores: pd.DataFrame,
    clusters: ClusterBundle | None,
    rules: RuleSet,
    cluster_version: str,
    rules_version: str,
    previous: pd.DataFrame | None = None,
) -> Segmentation:
    """Assign every client: override rules, else their cluster, else noise; plus the
    `segments` rows (definitions and profiles) for the store. `previous` is the last published
    membership (the rules' `stay_when` keeps members by it)."""
    assigned = None
    sticky = _cluster_members(previous)
    reasons: dict[str, str] = {}
    cluster_rows: list[dict[str, Any]] = []
    if clusters is not None:
        model = clusters.model
        assigned = clusters.predict(features, sticky)
        assigned["segment_name"] = assigned["segment_id"].map(model.segment_names_)
        assigned.loc[assigned["is_noise"], "segment_name"] = NOISE_SEGMENT_NAME
        for segment_id, profile in model.profiles_.items():
            if segment_id == NOISE_SEGMENT_ID:
                continue
            reasons[segment_id] = _cluster_reason(profile)
            cluster_rows.append(
                {
                    "segment_id": segment_id,
                    "segment_name": model.segment_names_.get(segment_id, segment_id),
                    "kind": "cluster",
                    "definition": json.dumps(_jsonable(profile), sort_keys=True),
                    "model_version": cluster_version,
                }
            )
    membership = assign_segments(
        features,
        assigned,
        rules,
        scores=scores if len(scores) else None,
        cluster_reasons=reasons,
        previous=previous,
    )
    if clusters is not None and sticky is not None:
        # Stickiness is for the clients the rules leave to the clusters: under a rule the
        # membership shows the plain nearest cluster, as it will on a re-run of the same night
        # (whose previous state then shows these clients under the rule).
        by_rule = (membership["segment_source"] == "rule").to_numpy()
        if by_rule.any():
            plain = clusters.predict(features.loc[by_rule])
            labels = plain["cluster_id"].where(~plain["is_noise"]).to_numpy()
            membership.loc[by_rule, "cluster_id"] = pd.array(labels, dtype="Int64")
    rule_rows = segment_definitions(rules).assign(model_version=rules_version)
    noise_row = {
        "segment_id": NOISE_SEGMENT_ID,
        "segment_name": NOISE_SEGMENT_NAME,
        "kind": "noise",
        "definition": json.dumps(
            {"description": "Clients in no dense behavioral group and matched by no rule."}
        ),
        "model_version": cluster_version,
    }
    segments = pd.concat(
        [pd.DataFrame(cluster_rows), rule_rows, pd.DataFrame([noise_row])], ignore_index=True
    )
    sizes = membership["segment_source"].value_counts()
    metrics = {
        "clients": float(len(membership)),
        "share_rule": float(sizes.get("rule", 0) / len(membership)),
        "share_cluster": float(sizes.get("cluster", 0) / len(membership)),
        "share_noise": float(sizes.get("noise", 0) / len(membership)),
    }
    for segment_id, size in membership["segment_id"].value_counts().items():
        metrics[f"size.{segment_id}"] = float(size)
    for stage, size in membership["lifecycle_stage"].value_counts().items():
        metrics[f"lifecycle.{stage}"] = float(size)
    return Segmentation(membership=membership, segments=segments, metrics=metrics)


def _cluster_members(previous: pd.DataFrame | None) -> pd.DataFrame | None:
    """The clients of the previous membership who were in a cluster segment (for stickiness)."""
    if previous is None or "segment_source" not in previous.columns:
        return None
    return previous.loc[previous["segment_source"] == "cluster", ["client_id", "segment_id"]]


def stability_against(previous: pd.DataFrame | None, current: pd.DataFrame) -> float | None:
    """Share of clients present in both runs who kept their segment id."""
    if previous is None or previous.empty:
        return None
    merged = current[["client_id", "segment_id"]].merge(
        previous[["client_id", "segment_id"]], on="client_id", suffixes=("", "_prev")
    )
    if merged.empty:
        return None
    return float((merged["segment_id"] == merged["segment_id_prev"]).mean())


def run_identity(as_of: date) -> tuple[str, datetime]:
    """A run id that sorts by time and names its as-of date, and the start time (UTC)."""
    started = datetime.now(UTC)
    return f"run-{as_of.isoformat()}-{started.strftime('%Y%m%dT%H%M%S%f')}", started


def _cluster_reason(profile: dict[str, Any]) -> str:
    top = profile.get("top_features") or []
    if not top:
        return "close to the population on every feature"
    parts = [f"{t['feature']} {'high' if t['z'] > 0 else 'low'} (z={t['z']:+.1f})" for t in top[:3]]
    return "defining features: " + ", ".join(parts)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
