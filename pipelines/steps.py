"""The nightly run's steps as plain functions over typed values: no Prefect here, so each
step is testable alone.

The flow in `pipelines/nightly.py` wires these into Prefect tasks. Kedro-like split: the
steps take data and config and return data (frames and dataclasses); where they read or write
(the DuckDB connection, the MLflow registry) is handed to them by the flow, and what to decide
(refit or not, the quality gates, champion or refit) is asked of `pipelines.policy`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import numpy as np
import pandas as pd

from configs import EngineConfig, SegmentationError
from features.events import ValidationReport, check_bad_share, load_configured_events
from models.backtest import backtest, split_btyd
from models.btyd import ConvergenceError
from models.cltv import BTYD_COLUMNS, SCORE_COLUMNS, CltvModel
from models.learned import btyd_signals, model_inputs, window_labels
from models.scoring import level_prospects
from models.scoring import score_clients as score_with_models
from models.selection import CltvChoice, Window, select_cltv_model
from pipelines import policy
from pipelines.policy import Candidate, ChampionFit, ModelChoice, RefitDecision
from segmentation.clustering import ClusterModel
from segmentation.combine import (
    NOISE_SEGMENT_ID,
    NOISE_SEGMENT_NAME,
    assign_segments,
    segment_definitions,
)
from segmentation.drift import DriftReference, fit_reference, psi
from segmentation.reasons import cluster_reasons
from segmentation.rules import RuleSet, load_rules

if TYPE_CHECKING:
    import pyarrow as pa

    from features.identity import Stitching
    from features.journey import JourneyMap
    from pipelines.registry import ModelRegistry

__all__ = [
    "JOURNEY_MEMBER_COLUMNS",
    "Champions",
    "CltvBundle",
    "ClusterBundle",
    "EventsRead",
    "NothingToSegmentError",
    "Registration",
    "Segmentation",
    "btyd_inputs",
    "champion_fit",
    "choose_cltv_model",
    "choose_cluster_model",
    "compute_features",
    "decide_refit",
    "decide_refit_by",
    "drop_events",
    "fit_cltv",
    "fit_clusters",
    "holdout_outcomes",
    "load_champions",
    "load_ruleset",
    "map_journeys",
    "quality_gate_failures",
    "read_events",
    "run_identity",
    "score_clients",
    "segment_clients",
    "select_learned_models",
    "selection_metrics",
    "stability_against",
    "training_inputs",
    "window_shards",
]

log = logging.getLogger(__name__)

# Clients scored (and assigned) at once: 2.26M clients at once took 5 GB above the feature
# frame (the inputs' copies and the models' arrays); a batch takes a tenth of it.
SCORE_BATCH = 200_000
# What the journey map needs of each member: its segment, and its cluster (the stratum of the
# pooled drop-off comparisons).
JOURNEY_MEMBER_COLUMNS = ("client_id", "segment_id", "segment_name", "cluster_id")
# What a run reads of the last published membership: stickiness and rule conditions (segment
# id and source), stability, the holdout's entry dates (valid_from), the preview's names.
PREVIOUS_COLUMNS = ("client_id", "segment_id", "segment_name", "segment_source", "valid_from")

_BundleT = TypeVar("_BundleT", "ClusterBundle", "CltvBundle")
CHAMPION_SAMPLE = 20_000  # clients the champion's noise share is measured on


class NothingToSegmentError(SegmentationError, ValueError):
    """No client has a valid event up to the as-of date."""


@dataclass
class ClusterBundle:
    """The registered clustering model: transforms, HDBSCAN, the assigner and the id mapping
    (all inside `model`), plus the drift reference of its training sample."""

    model: ClusterModel
    reference: DriftReference
    fitted_as_of: date
    config_digest: str

    def predict(self, X: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
        """Each client's segment (sticky to `previous` memberships; the registry's contract)."""
        return self.model.predict(X, previous=previous)


@dataclass
class CltvBundle:
    """The registered CLTV models with the backtest that qualified them: BG/NBD x Gamma-Gamma
    fit on the history up to `fitted_as_of`, and the selection (`models.selection`) with the
    learned buyer model and the prospects' conversion model (None: a bundle registered before
    they existed, or no history before the window; BG/NBD then scores the buyers alone)."""

    model: CltvModel
    backtest: dict[str, float]
    fitted_as_of: date
    choice: CltvChoice | None = None
    window_days: int = 90

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        """Each client's CLTV figures from BTYD inputs (the registry's contract)."""
        return self.model.predict(X)

    def level(self, scores: pd.DataFrame) -> pd.DataFrame:
        """`score` rows of every client tonight (client_id a column) with the prospects at
        the conversion model's level (`models.scoring.level_prospects`)."""
        choice = getattr(self, "choice", None)
        conversion = choice.conversion_model if choice is not None else None
        return level_prospects(scores, self.model, getattr(self, "window_days", 90), conversion)

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """Every client's scores (`models.scoring.score_clients`), index client_id."""
        btyd = btyd_inputs(features)
        is_buyer = features["has_purchased"].fillna(0).to_numpy() > 0
        choice = getattr(self, "choice", None)  # absent from bundles pickled before it
        window = getattr(self, "window_days", 90)
        if choice is None:
            return score_with_models(self.model, btyd, None, is_buyer, window)
        inputs = model_inputs(features, btyd_signals(self.model, btyd, window))
        return score_with_models(
            self.model,
            btyd,
            inputs,
            is_buyer,
            window,
            champion=choice.champion,
            purchase_model=choice.purchase_model,
            conversion_model=choice.conversion_model,
        )


@dataclass(frozen=True)
class EventsRead:
    """Tonight's events as read: the validation counts, and the rejected rows with their
    reasons for the store's quarantine table (the valid ones are `events` on the connection)."""

    report: ValidationReport
    quarantine: pd.DataFrame
    # Identity stitching's result when the events carry other identifiers or a links file is
    # configured (the `events` table is then on person ids); None otherwise.
    stitching: Stitching | None = None


@dataclass(frozen=True)
class Champions:
    """The registered champions the run starts from (None where there is none yet)."""

    clusters: Candidate[ClusterBundle] | None = None
    cltv: Candidate[CltvBundle] | None = None


@dataclass(frozen=True)
class Registration:
    """Where tonight's refits are registered: the MLflow registry, under the tracked run
    that fitted them (a registered version becomes champion only by a promotion)."""

    registry: ModelRegistry
    mlflow_run_id: str

    def register(
        self,
        name: str,
        bundle: ClusterBundle | CltvBundle,
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
    ) -> int:
        """Register `bundle` as a new version of `name`; returns the version number."""
        return self.registry.register(name, bundle, self.mlflow_run_id, metrics=metrics, tags=tags)


@dataclass
class Segmentation:
    """Tonight's membership with what explains it."""

    membership: pd.DataFrame
    segments: pd.DataFrame
    metrics: dict[str, float] = field(default_factory=dict)


def read_events(
    con: duckdb.DuckDBPyConnection,
    config: EngineConfig,
    events_path: str,
    now: datetime | None = None,
) -> EventsRead:
    """Load and validate events into `events`/`quarantine` on `con`; fail above the bad share."""
    report = load_configured_events(con, config, events_path, now=now)
    check_bad_share(report, config.events.max_bad_share)
    return EventsRead(report, con.execute("SELECT * FROM quarantine").df())


def stitch_identities(
    con: duckdb.DuckDBPyConnection,
    config: EngineConfig,
    as_of: date,
    events: EventsRead,
    previous_as_of: date | None = None,
    merged_before: Mapping[str, str] | None = None,
) -> EventsRead:
    """Stitch the events' identifiers into persons as of `as_of` (`features.identity`) when
    they carry any besides client_id or a links file is configured; fail above the bad share
    once the events left without a usable identifier are counted."""
    from features.identity import needs_stitching, stitch_events, stitched_report

    links = config.links_path
    if not needs_stitching(con, links):
        return events
    stitching = stitch_events(
        con,
        as_of,
        config.identity,
        links_path=links,
        previous_as_of=previous_as_of,
        merged_before=merged_before,
    )
    report = stitched_report(events.report, stitching)
    check_bad_share(report, config.events.max_bad_share)
    return EventsRead(report, con.execute("SELECT * FROM quarantine").df(), stitching)


def compute_features(
    con: duckdb.DuckDBPyConnection, as_of: date, config: EngineConfig
) -> pd.DataFrame:
    """The point-in-time feature table as pandas (nulls as NaN), one row per client."""
    from features.build import build_features

    table = build_features(con, as_of, config.features, shards=config.features.shards)
    if table.num_rows == 0:
        raise NothingToSegmentError(f"no client has an event up to {as_of}: nothing to segment")
    return _feature_frame(table)


def drop_events(con: duckdb.DuckDBPyConnection) -> None:
    """Drop tonight's ``events`` (a table in one process, a view over the shards' files on
    Dask) once its last reader is done."""
    kind = con.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_name = 'events'"
    ).fetchone()
    con.execute("DROP VIEW events" if kind and kind[0] == "VIEW" else "DROP TABLE events")


def _feature_frame(table: pa.Table) -> pd.DataFrame:
    """A feature table as pandas (nulls as NaN), client ids as text."""
    frame = table.to_pandas()
    frame["client_id"] = frame["client_id"].astype(str)
    return frame


def load_champions(registry: ModelRegistry | None, config: EngineConfig) -> Champions:
    """The champion clustering and CLTV models (none without MLflow); a CLTV champion brings
    the backtest that qualified it to tonight's log."""
    if registry is None:
        return Champions()
    clusters = _champion(registry, config.mlflow.cluster_model_name, ClusterBundle)
    cltv = _champion(registry, config.mlflow.cltv_model_name, CltvBundle)
    if cltv is not None:
        cltv = Candidate(cltv.bundle, cltv.version, _prefixed("backtest", cltv.bundle.backtest))
    return Champions(clusters=clusters, cltv=cltv)


def decide_refit(
    champion: ClusterBundle | None,
    features: pd.DataFrame,
    as_of: date,
    config: EngineConfig,
    force: bool = False,
) -> RefitDecision:
    """Whether to refit the clustering tonight (`policy.refit_decision`), measuring how the
    champion fits tonight's features only when the decision depends on it."""
    return decide_refit_by(
        champion, as_of, config, lambda c: champion_fit(c, features, config), force=force
    )


def decide_refit_by(
    champion: ClusterBundle | None,
    as_of: date,
    config: EngineConfig,
    measure: Callable[[ClusterBundle], ChampionFit],
    force: bool = False,
) -> RefitDecision:
    """`decide_refit` with the champion's fit measured by `measure` (called only when the
    decision depends on it)."""
    fitted = champion.fitted_as_of if champion is not None else None
    fit = None
    if champion is not None and policy.needs_champion_fit(as_of, fitted, force=force):
        fit = measure(champion)
    return policy.refit_decision(as_of, fitted, fit, config.refit, force=force)


def champion_fit(
    champion: ClusterBundle, features: pd.DataFrame, config: EngineConfig
) -> ChampionFit:
    """PSI of each feature against the champion's training sample, and the noise share the
    champion gives a sample of tonight's clients (at most 20,000, seeded)."""
    drift = psi(champion.reference, features)
    sample = features.iloc[champion_sample_positions(len(features), config)]
    return ChampionFit(psi=drift, noise_share=noise_share(champion, sample))


def champion_sample_positions(clients: int, config: EngineConfig) -> np.ndarray:
    """Positions (in tonight's feature table, sorted by client_id) of the clients the
    champion's noise share is measured on: at most 20,000, seeded."""
    positions = pd.RangeIndex(clients).to_series()
    return positions.sample(n=min(clients, CHAMPION_SAMPLE), random_state=config.seed).to_numpy()


def noise_share(champion: ClusterBundle, sample: pd.DataFrame) -> float:
    """The share of `sample` the champion leaves as noise."""
    return float(champion.predict(sample)["is_noise"].mean())


def btyd_inputs(features: pd.DataFrame) -> pd.DataFrame:
    """BTYD inputs per client in whole days (whole days collapse into far fewer unique rows)."""
    frame = features[["client_id", *BTYD_COLUMNS]].set_index("client_id")
    frame = frame.astype("float64").fillna(0.0)
    frame["recency"] = np.floor(frame["recency"])
    frame["T"] = np.maximum(np.floor(frame["T"]), frame["recency"])
    frame.loc[frame["frequency"] == 0, ["recency", "monetary_value"]] = 0.0
    return frame


def choose_cltv_model(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    btyd: pd.DataFrame,
    config: EngineConfig,
    champion: Candidate[CltvBundle] | None,
    refit_clusters: bool,
    registration: Registration | None,
) -> ModelChoice[CltvBundle]:
    """The CLTV model tonight (`policy.choose_cltv`): the champion, or a refit (with the
    clustering, or when no champion may serve) registered in MLflow; a refit that does not
    converge keeps the previous model."""
    refit = None
    if policy.cltv_refit_needed(champion, as_of, refit_clusters):
        refit = _refit_cltv(con, as_of, btyd, config, registration)
    return policy.choose_cltv(
        champion,
        refit,
        as_of=as_of,
        refit_clusters=refit_clusters,
        model_name=config.mlflow.cltv_model_name,
    )


def fit_cltv(
    con: duckdb.DuckDBPyConnection, as_of: date, btyd: pd.DataFrame, config: EngineConfig
) -> CltvBundle:
    """Backtest on a calibration/holdout split of the history, then fit on all of it.

    With more than `cltv.window_clients` clients, the backtest and the learned models' windows
    read the purchases of one hash partition of the clients only (`window_shards`): about
    `window_clients` clients, a sample large enough for the figures, and the purchase log
    read into memory stays bounded whatever the number of clients.

    Raises ConvergenceError when BG/NBD cannot be fitted, so the caller keeps the previous
    model (Gamma-Gamma falls back to the mean spend: `CltvModel`).
    """
    from features.build import purchase_log
    from features.events import scan_memory

    model = CltvModel.from_config(config.cltv)
    shards = window_shards(len(btyd), config)
    with scan_memory(con):  # a partition's purchases: a small result from a scan of them all
        purchases = purchase_log(con, as_of, shards=shards).rename(columns={"event_time": "day"})
    metrics: dict[str, float] = {}
    calibration, holdout = split_btyd(purchases, as_of, config.cltv.holdout_days)
    if (calibration["frequency"] > 0).sum() >= 20:
        try:
            metrics = backtest(calibration, holdout, model, config.cltv.holdout_days)
        except ConvergenceError as exc:
            log.warning("CLTV backtest did not converge: %s", exc)
            metrics = {"backtest_failed": 1.0}
    model.fit(btyd)
    choice = None
    if np.isfinite(model.gamma_gamma_.population_mean_):
        with scan_memory(con):  # two windows' features for about window_clients clients
            choice = select_learned_models(con, as_of, purchases, config, clients=len(btyd))
    else:  # no amounts to learn a value from: BG/NBD's alive-ness and purchases only
        log.warning("CLTV: no client has any spend; CLTV is unknown, no learned models")
    if choice is not None:
        metrics.update(selection_metrics(choice, config.cltv.holdout_days))
    return CltvBundle(
        model=model,
        backtest=metrics,
        fitted_as_of=as_of,
        choice=choice,
        window_days=config.cltv.holdout_days,
    )


def select_learned_models(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    purchases: pd.DataFrame,
    config: EngineConfig,
    clients: int = 0,
) -> CltvChoice | None:
    """Train the learned buyer model and the prospects' conversion model on the history and
    let the buyer model compete with BG/NBD on a later window than it learned from
    (`models.selection`); None, with the reason logged, when the history before the latest
    window cannot train anything.

    With more than `cltv.window_clients` clients tonight, both windows are built for one hash
    partition of the clients (the same clients in both; about `window_clients` of them): the
    fits sample at most `max_training_clients` rows anyway, and the judge needs tens of
    thousands of buyers, not every one (each window is a feature build of its own).
    `purchases` needs to hold the purchases of that partition's clients only."""
    shards = window_shards(clients, config)
    latest = training_inputs(con, as_of, purchases, config, shards)
    if isinstance(latest, str):
        log.warning("CLTV: BG/NBD alone, no learned models: %s", latest)
        return None
    earlier = training_inputs(
        con, as_of - timedelta(days=config.cltv.holdout_days), purchases, config, shards
    )
    if isinstance(earlier, str):
        log.warning("CLTV: the learned buyer model cannot be judged: %s", earlier)
    choice = select_cltv_model(
        earlier if isinstance(earlier, Window) else None, latest, config.cltv, config.seed
    )
    log.info("CLTV champion for buyers: %s (%s)", choice.champion, choice.reason)
    return choice


def window_shards(clients: int, config: EngineConfig) -> int:
    """The number of hash partitions whose partition 0 holds about `cltv.window_clients` of
    `clients` (1: every client)."""
    return max(1, -(-clients // config.cltv.window_clients))


def selection_metrics(choice: CltvChoice, window_days: int) -> dict[str, float]:
    """The selection as flat metrics for MLflow and the report: `selection.<metric>`, the
    decile lift as `selection.lift.dNN.<column>` and the calibration of p_purchase as
    `selection.calibration.bNN.<column>`."""
    out = {f"selection.{k}": float(v) for k, v in choice.metrics.items()}
    out["selection.window_days"] = float(window_days)
    for row in choice.lift.to_dict(orient="records"):
        d = int(row.pop("decile"))
        out.update({f"selection.lift.d{d:02d}.{k}": float(v) for k, v in row.items()})
    for i, row in enumerate(choice.calibration.to_dict(orient="records")):
        out.update({f"selection.calibration.b{i:02d}.{k}": float(v) for k, v in row.items()})
    return out


def training_inputs(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    purchases: pd.DataFrame,
    config: EngineConfig,
    shards: int = 1,
) -> Window | str:
    """The window of h days ending at `as_of` (h = `cltv.holdout_days`) as training data:
    inputs as of as_of - h (the point-in-time features and a BG/NBD fit on the purchases up to
    then), whether each client had bought by then, and the purchases and spend in
    (as_of - h, as_of]. With `shards > 1`, for the clients of hash partition 0 only. A string
    says why there is none (no client, or no BG/NBD fit, before the window)."""
    from features.build import build_features_shard

    window = config.cltv.holdout_days
    then = as_of - timedelta(days=window)
    table = build_features_shard(con, then, config.features, 0, shards)
    if table.num_rows == 0:
        return f"no client has an event up to {then} (as-of minus cltv.holdout_days)"
    past = _feature_frame(table)
    btyd = btyd_inputs(past)
    is_buyer = past["has_purchased"].fillna(0).to_numpy() > 0
    try:
        calibration = CltvModel.from_config(config.cltv).fit(btyd[is_buyer])
    except ConvergenceError as exc:
        return f"BG/NBD does not converge on the history up to {then}: {exc}"
    inputs = model_inputs(past, btyd_signals(calibration, btyd, window))
    labels = window_labels(purchases, then, as_of).reindex(inputs.index, fill_value=0.0)
    return Window(inputs, is_buyer, labels)


def score_clients(
    bundle: CltvBundle | None, features: pd.DataFrame, config: EngineConfig, version: str
) -> pd.DataFrame:
    """client_scores rows (`models.scoring`: p_alive, p_purchase, expected purchases and value,
    discounted CLTV, the model behind them) and cltv_percentile (share of tonight's scored
    clients with a predicted CLTV at most the client's own, 0..1; the rules define VIP as a
    top percentile, whatever the currency)."""
    if bundle is None:
        return pd.DataFrame(columns=[*SCORE_COLUMNS, "cltv_percentile"])
    return finish_scores(predict_scores(bundle, features), bundle, version)


def predict_scores(bundle: CltvBundle, features: pd.DataFrame) -> pd.DataFrame:
    """Each client's own CLTV figures (a shard of the clients gets its rows), client_id a
    column. Scored `SCORE_BATCH` clients at a time: the learned models' inputs are a copy of
    the rows, and every figure is the client's own, so batches give the same rows."""
    return pd.concat(
        [
            bundle.score(batch).rename_axis("client_id").reset_index()
            for batch in _batches(features)
        ],
        ignore_index=True,
    )


def _batches(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """`frame` in slices of `SCORE_BATCH` rows: one slice (maybe empty) when it is smaller."""
    return [frame.iloc[s : s + SCORE_BATCH] for s in range(0, max(len(frame), 1), SCORE_BATCH)]


def finish_scores(predicted: pd.DataFrame, bundle: CltvBundle, version: str) -> pd.DataFrame:
    """`predict_scores` rows of every client tonight with the percentile among them, the
    horizon and the model version: the client_scores rows."""
    columns = [*SCORE_COLUMNS, "cltv_percentile"]
    predicted = bundle.level(predicted)
    predicted["cltv_percentile"] = predicted["predicted_cltv"].rank(method="max", pct=True)
    predicted["horizon_days"] = bundle.model.horizon_days
    predicted["model_version"] = version
    return predicted[columns]


def choose_cluster_model(
    features: pd.DataFrame,
    as_of: date,
    config: EngineConfig,
    champion: Candidate[ClusterBundle] | None,
    decision: RefitDecision,
    previous_membership: pd.DataFrame | None,
    registration: Registration | None,
) -> ModelChoice[ClusterBundle]:
    """The clustering tonight (`policy.choose_clusters`): the champion, or a refit that is
    registered (tagged with the gates it failed) and serves when it passes the quality gates
    or there is no champion."""
    refit, failures = None, []
    if policy.cluster_refit_needed(decision, champion):
        previous = champion.bundle if champion is not None else None
        bundle = fit_clusters(features, as_of, config, previous, previous_membership)
        failures = quality_gate_failures(bundle, config)
        if failures:
            log.warning("refit failed the quality gates: %s", "; ".join(failures))
        refit = _registered_clusters(bundle, as_of, config, decision, failures, registration)
    return policy.choose_clusters(
        champion, refit, failures, as_of=as_of, model_name=config.mlflow.cluster_model_name
    )


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
        # ids are matched on the dense members; attached outliers fit loosely
        assignments = previous_membership[previous_membership["segment_source"] == "cluster"][
            ["client_id", "segment_id"]
        ]
    model.fit(
        features,
        previous=previous.model if previous else None,
        previous_assignments=assignments,
    )
    used = list(model.feature_names_in_)
    in_sample = pd.Index(model.sample_ids_).get_indexer(pd.Index(features["client_id"])) >= 0
    reference = fit_reference(features[in_sample], used)
    return ClusterBundle(model, reference, as_of, config.digest())


def quality_gate_failures(bundle: ClusterBundle, config: EngineConfig) -> list[str]:
    """The configured quality gates a refit fails (`policy.gate_failures`); empty means it
    may become champion."""
    return policy.gate_failures(
        policy.ClusterQuality.from_metrics(bundle.model.metrics_),
        config.refit,
        config.clustering.min_segment_share,
    )


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
    as_of: date | None = None,
    *,
    config: EngineConfig | None = None,
) -> Segmentation:
    """Assign every client: override rules, else their cluster, else noise; plus the
    `segments` rows (definitions and profiles) for the store. `previous` is the last published
    membership (the rules' `stay_when` keeps members by it); `as_of` turns the days in the
    reasons into dates; `config.holdout` says who is held out of each segment's campaigns
    (`holdout` in the membership; without a config nobody is)."""
    membership = assign_members(features, scores, clusters, rules, previous, as_of, config)
    return Segmentation(
        membership,
        segment_rows(clusters, rules, cluster_version, rules_version),
        _membership_metrics(membership),
    )


def assign_members(
    features: pd.DataFrame,
    scores: pd.DataFrame,
    clusters: ClusterBundle | None,
    rules: RuleSet,
    previous: pd.DataFrame | None = None,
    as_of: date | None = None,
    config: EngineConfig | None = None,
) -> pd.DataFrame:
    """The membership rows of `segment_clients`: each client's own, from its own features,
    scores and previous membership only (so a shard of the clients gets its rows). Assigned
    `SCORE_BATCH` clients at a time, which gives the same rows with a bounded memory."""
    batches = _batches(features)
    if len(batches) == 1:
        return _assign_batch(features, scores, clusters, rules, previous, as_of, config)
    parts = []
    for batch in batches:
        mine = pd.Index(batch["client_id"])
        parts.append(
            _assign_batch(
                batch,
                scores[scores["client_id"].isin(mine)] if len(scores) else scores,
                clusters,
                rules,
                previous[previous["client_id"].isin(mine)] if previous is not None else None,
                as_of,
                config,
            )
        )
    return pd.concat(parts, ignore_index=True)


def _assign_batch(
    features: pd.DataFrame,
    scores: pd.DataFrame,
    clusters: ClusterBundle | None,
    rules: RuleSet,
    previous: pd.DataFrame | None,
    as_of: date | None,
    config: EngineConfig | None,
) -> pd.DataFrame:
    assigned = None
    sticky = _cluster_members(previous)
    if clusters is not None:
        model = clusters.model
        assigned = clusters.predict(features, sticky)
        assigned["segment_name"] = assigned["segment_id"].map(model.segment_names_)
        assigned.loc[assigned["is_noise"], "segment_name"] = NOISE_SEGMENT_NAME
        # each dense member's own values where it is most like its segment and unlike the
        # rest (an attached outlier's reason says it fits loosely: not computed)
        dense = assigned["segment_id"].where(~assigned["is_outlier"]).to_numpy(object)
        assigned["reason"] = cluster_reasons(features, dense, model.profiles_)
    membership = assign_segments(
        features,
        assigned,
        rules,
        scores=scores if len(scores) else None,
        previous=previous,
        as_of=as_of,
        holdout=config.holdout if config is not None else None,
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
    return membership


def segment_rows(
    clusters: ClusterBundle | None, rules: RuleSet, cluster_version: str, rules_version: str
) -> pd.DataFrame:
    """The `segments` rows of tonight: the clusters' (definitions, profiles), the rules' and
    the noise segment's."""
    cluster_rows: list[dict[str, Any]] = []
    if clusters is not None:
        cluster_rows = _cluster_segment_rows(clusters.model, cluster_version)
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
    return pd.concat(
        [pd.DataFrame(cluster_rows), rule_rows, pd.DataFrame([noise_row])], ignore_index=True
    )


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


def map_journeys(
    con: duckdb.DuckDBPyConnection, as_of: date, membership: pd.DataFrame, config: EngineConfig
) -> JourneyMap | None:
    """Tonight's journey map per segment and overall (None when `journey.enabled` is off):
    it reads the events table, so it runs before the events are dropped."""
    if not config.journey.enabled:
        return None
    from features.journey import journey_map

    return journey_map(con, as_of, membership[list(JOURNEY_MEMBER_COLUMNS)], config.journey)


def holdout_outcomes(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    membership: pd.DataFrame,
    previous: pd.DataFrame | None,
    config: EngineConfig,
    outcomes_of: Callable[[pd.DataFrame, date], pd.DataFrame] | None = None,
) -> pd.DataFrame | None:
    """Per segment, held-out against treated members: purchases and spend since they entered
    their current membership stretch (None when nobody is held out anywhere).

    The entry date is the published `valid_from` of a client already in the same segment
    (`previous`, the last published membership), else tonight. The outcomes are read from
    the events on `con` (`features.outcomes.outcomes_since`), or by `outcomes_of` (the same
    frame from elsewhere: the Dask shards' own events)."""
    if "holdout" not in membership.columns or not membership["holdout"].any():
        return None
    from features.outcomes import outcomes_since
    from segmentation.holdout import compare_holdout

    read = outcomes_of or (lambda since, day: outcomes_since(con, since, day))

    since = membership[["client_id", "segment_id"]].assign(since=pd.Timestamp(as_of))
    if previous is not None and "valid_from" in previous.columns and len(previous):
        stayed = since[["client_id", "segment_id"]].merge(
            previous[["client_id", "segment_id", "valid_from"]],
            on=["client_id", "segment_id"],
            how="left",
        )
        entered = pd.Series(pd.to_datetime(stayed["valid_from"]).to_numpy(), index=since.index)
        # a rebuild from an earlier date reads a membership published later: an entry after
        # tonight is no entry yet, so it counts from tonight
        entered = entered.where(entered <= pd.Timestamp(as_of))
        since["since"] = entered.fillna(pd.Timestamp(as_of))
    outcomes = read(since[["client_id", "since"]], as_of)
    frame = membership[["client_id", "segment_id", "segment_name", "holdout"]].merge(
        outcomes, on="client_id", how="left"
    )
    return compare_holdout(
        frame,
        confidence=config.journey.confidence,
        min_clients=max(2, config.journey.min_clients),  # a variance needs two members
    )


def run_identity(as_of: date) -> tuple[str, datetime]:
    """A run id that sorts by time and names its as-of date, and the start time (UTC)."""
    started = datetime.now(UTC)
    return f"run-{as_of.isoformat()}-{started.strftime('%Y%m%dT%H%M%S%f')}", started


def _cluster_segment_rows(model: ClusterModel, cluster_version: str) -> list[dict[str, Any]]:
    """The `segments` rows of the model's clusters (noise apart): name and profile as JSON."""
    return [
        {
            "segment_id": segment_id,
            "segment_name": model.segment_names_.get(segment_id, segment_id),
            "kind": "cluster",
            "definition": json.dumps(_jsonable(profile), sort_keys=True),
            "model_version": cluster_version,
        }
        for segment_id, profile in model.profiles_.items()
        if segment_id != NOISE_SEGMENT_ID
    ]


def _membership_metrics(membership: pd.DataFrame) -> dict[str, float]:
    """Shares by segment source, and sizes by segment and by lifecycle stage, for MLflow."""
    sizes = membership["segment_source"].value_counts()
    metrics = {
        "clients": float(len(membership)),
        "share_rule": float(sizes.get("rule", 0) / len(membership)),
        "share_cluster": float(sizes.get("cluster", 0) / len(membership)),
        "share_cluster_outlier": float(sizes.get("cluster_outlier", 0) / len(membership)),
        "share_noise": float(sizes.get("noise", 0) / len(membership)),
    }
    for segment_id, size in membership["segment_id"].value_counts().items():
        metrics[f"size.{segment_id}"] = float(size)
    for stage, size in membership["lifecycle_stage"].value_counts().items():
        metrics[f"lifecycle.{stage}"] = float(size)
    return metrics


def _cluster_members(previous: pd.DataFrame | None) -> pd.DataFrame | None:
    """The clients of the previous membership who were in a cluster segment, dense members and
    attached outliers alike (for stickiness)."""
    if previous is None or "segment_source" not in previous.columns:
        return None
    in_cluster = previous["segment_source"].isin(("cluster", "cluster_outlier"))
    return previous.loc[in_cluster, ["client_id", "segment_id"]]


def _champion(
    registry: ModelRegistry, name: str, kind: type[_BundleT]
) -> Candidate[_BundleT] | None:
    """The champion of `name` with its version, None when there is none yet."""
    loaded = registry.load_champion(name)
    if loaded is None:
        return None
    bundle, version = loaded
    if not isinstance(bundle, kind):
        from pipelines.registry import RegistryError

        raise RegistryError(
            f"model {name!r}: champion version {version} is a {type(bundle).__name__},"
            f" not a {kind.__name__}"
        )
    return Candidate(bundle, version)


def _refit_cltv(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    btyd: pd.DataFrame,
    config: EngineConfig,
    registration: Registration | None,
) -> Candidate[CltvBundle] | None:
    """A new CLTV model, registered when MLflow is on; None when it does not converge."""
    try:
        bundle = fit_cltv(con, as_of, btyd, config)
    except ConvergenceError as exc:
        log.warning("CLTV refit failed to converge (%s); keeping the previous model", exc)
        return None
    version = None
    if registration is not None:
        # The version's tags carry the headline figures; the lift and calibration tables go
        # with the run's metrics only (a tag is one registry write each: 100 of them added
        # 4-5 s to every refit on SQLite).
        headline = {
            k: v
            for k, v in bundle.backtest.items()
            if not k.startswith(("selection.lift.", "selection.calibration."))
        }
        version = registration.register(
            config.mlflow.cltv_model_name,
            bundle,
            metrics=headline,
            tags={"as_of": as_of.isoformat()},
        )
    metrics = {
        **_prefixed("backtest", bundle.backtest),
        **{f"cltv.{k}": v for k, v in bundle.model.params_.items()},
    }
    return Candidate(bundle, version, metrics)


def _registered_clusters(
    bundle: ClusterBundle,
    as_of: date,
    config: EngineConfig,
    decision: RefitDecision,
    failures: list[str],
    registration: Registration | None,
) -> Candidate[ClusterBundle]:
    """The refit as a candidate, registered (without client ids) when MLflow is on."""
    model_metrics = _numeric(bundle.model.metrics_)
    version = None
    if registration is not None:
        version = registration.register(
            config.mlflow.cluster_model_name,
            _without_client_ids(bundle),
            metrics=model_metrics,
            tags={
                "as_of": as_of.isoformat(),
                "gates": "; ".join(failures) or "passed",
                "refit_reason": decision.reason,
            },
        )
    metrics = {
        **{f"cluster.{k}": v for k, v in model_metrics.items()},
        "noise_share": model_metrics.get("noise_share"),
        "cluster_quality": model_metrics.get("quality"),
    }
    return Candidate(bundle, version, metrics)


def _numeric(metrics: Mapping[str, object]) -> dict[str, float]:
    """The numeric figures of a fit's diagnostics (no flags, texts or nested values)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _without_client_ids(bundle: ClusterBundle) -> ClusterBundle:
    """A copy for MLflow without the training sample's client ids (no client ids in MLflow)."""
    clean = copy.copy(bundle)
    clean.model = copy.copy(bundle.model)
    clean.model.__dict__["sample_ids_"] = None  # typed as an array once fitted
    return clean


def _prefixed(prefix: str, values: Mapping[str, float] | None) -> dict[str, float]:
    """Metric names under `prefix.` (e.g. the backtest's)."""
    return {f"{prefix}.{k}": v for k, v in (values or {}).items()}


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
