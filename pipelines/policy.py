"""The nightly run's decisions as pure functions: refit or not, the quality gates, which model
serves tonight (the champion or a refit), and which champions change once the run published.

Nothing here reads or writes (no Prefect, MLflow, database or data frames): the steps measure
and fit, these functions decide, so every branch of the champion / gate / promote policy has a
fast test (tests/pipelines/test_policy.py). The rules they implement:

- the clustering is refit weekly, or earlier on feature drift (PSI) or a high noise share, and
  always when forced, when there is no champion, or when the champion was fitted after the
  as-of date (a model never serves a date before the data it was fitted on);
- the CLTV model is refit with the clustering, or when no champion may serve the date; a
  refit that does not converge keeps the previous champion (or leaves the run without scores);
- a clustering refit that fails a quality gate keeps the champion; with no champion it serves
  anyway, since something must;
- a refit becomes champion only after the run has published.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Generic, Protocol, TypeVar

from configs import ClusteringConfig, RefitConfig

__all__ = [
    "Candidate",
    "ChampionFit",
    "ClusterQuality",
    "Fitted",
    "Metrics",
    "ModelChoice",
    "Promotion",
    "RefitDecision",
    "choose_cltv",
    "choose_clusters",
    "cltv_refit_needed",
    "cluster_refit_needed",
    "gate_failures",
    "needs_champion_fit",
    "noise_allowance",
    "promotions",
    "refit_decision",
]

# The share of clients a marketer may find in no segment before the run and report warn.
MAX_PUBLISHED_NOISE = 0.05

#: Metric name -> value for the run's MLflow log (None values are skipped when logged).
Metrics = Mapping[str, float | None]


class Fitted(Protocol):
    """A model bundle that knows the as-of date of the data it was fitted on."""

    @property
    def fitted_as_of(self) -> date: ...


B = TypeVar("B", bound=Fitted)
B_co = TypeVar("B_co", bound=Fitted, covariant=True)


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
        """The decision's figures for the run's MLflow log."""
        out = {"refit": float(self.refit)}
        if self.age_days is not None:
            out["champion_age_days"] = float(self.age_days)
        if self.max_psi is not None:
            out["max_psi"] = self.max_psi
        if self.champion_noise_share is not None:
            out["champion_noise_share"] = self.champion_noise_share
        return out


@dataclass(frozen=True)
class ChampionFit:
    """How the champion clustering fits tonight's clients: the PSI of each feature against
    its training sample, and the share of clients it assigns to noise."""

    psi: Mapping[str, float]
    noise_share: float


@dataclass(frozen=True)
class ClusterQuality:
    """The figures of a clustering fit that the quality gates judge (None: not measured)."""

    n_clusters: int | None
    noise_share: float | None
    quality: float | None = None
    stability: float | None = None
    # the share its membership would publish as unclustered, and its smallest segment's share
    # (None: not measured, a fit from before they were)
    published_noise_share: float | None = None
    smallest_segment_share: float | None = None

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, object]) -> ClusterQuality:
        """The gate figures out of a fitted ClusterModel's `metrics_`."""
        n_clusters = _number(metrics.get("n_clusters"))
        return cls(
            n_clusters=int(n_clusters) if n_clusters is not None else None,
            noise_share=_number(metrics.get("noise_share")),
            quality=_number(metrics.get("quality")),
            stability=_number(metrics.get("stability")),
            published_noise_share=_number(metrics.get("published_noise_share")),
            smallest_segment_share=_number(metrics.get("smallest_segment_share")),
        )


@dataclass(frozen=True)
class Candidate(Generic[B_co]):
    """A model bundle that may serve tonight: its registry version (None: not registered,
    MLflow is off) and the metrics it brings to the run's log."""

    bundle: B_co
    version: int | None
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class Promotion:
    """Make `version` of the registered model `name` its champion."""

    name: str
    version: int


@dataclass(frozen=True)
class ModelChoice(Generic[B_co]):
    """The model tonight's run uses (None: no model, so no scores), the version the run
    publishes for it, the metrics to log, and the promotion to make once the run published."""

    bundle: B_co | None
    version: str
    metrics: Metrics
    promotion: Promotion | None = None


def needs_champion_fit(as_of: date, fitted_as_of: date | None, *, force: bool = False) -> bool:
    """Whether `refit_decision` depends on how the champion fits tonight's features (so the
    caller measures it only then: not for a forced refit, no champion or one from the future)."""
    return not force and fitted_as_of is not None and fitted_as_of <= as_of


def refit_decision(
    as_of: date,
    fitted_as_of: date | None,
    fit: ChampionFit | None,
    rules: RefitConfig,
    *,
    force: bool = False,
) -> RefitDecision:
    """Refit the clustering weekly, or earlier on feature drift or a high noise share; never
    keep a champion fitted on data later than `as_of` (that would leak the future).

    `fitted_as_of` is the champion's (None: no champion); `fit` is needed when
    `needs_champion_fit` says so, and raises ValueError when missing then.
    """
    if force:
        return RefitDecision(True, "forced")
    if fitted_as_of is None:
        return RefitDecision(True, "no champion model")
    age = (as_of - fitted_as_of).days
    if age < 0:
        return RefitDecision(True, "champion was fitted after this as-of date", age_days=age)
    if fit is None:
        raise ValueError("a champion that may serve this date needs its fit to decide on it")
    max_psi = max(fit.psi.values(), default=0.0)
    drifted = tuple(sorted(k for k, v in fit.psi.items() if v > rules.max_psi))
    noise = fit.noise_share
    keep = RefitDecision(
        False,
        "champion is fresh and fits",
        age_days=age,
        max_psi=round(max_psi, 4),
        champion_noise_share=noise,
    )
    if age >= rules.every_days:
        return replace(keep, refit=True, reason=f"scheduled: champion is {age} days old")
    if drifted:
        reason = f"feature drift: PSI > {rules.max_psi} on {', '.join(drifted)}"
        return replace(keep, refit=True, reason=reason, drifted_features=drifted)
    if noise > rules.max_noise_share:
        reason = f"noise share {noise:.2f} above {rules.max_noise_share}"
        return replace(keep, refit=True, reason=reason)
    return keep


def gate_failures(
    quality: ClusterQuality, rules: RefitConfig, min_segment_share: float = 0.0
) -> list[str]:
    """The quality gates a clustering refit fails, in words; empty: it may become champion.

    A missing cluster count or noise share fails its gate; a missing or non-finite quality,
    stability, published noise or smallest segment share (not measured on this fit) passes.
    Published noise (unclustered clients after outliers are attached) must stay within
    `rules.max_published_noise_share`, and no segment under `min_segment_share` (the
    clustering's merge threshold) may be published.
    """
    failures = []
    if (quality.n_clusters or 0) < rules.min_clusters:
        failures.append(f"n_clusters {quality.n_clusters} < {rules.min_clusters}")
    noise = quality.noise_share
    if noise is None or noise > rules.max_noise_share:
        failures.append(f"noise_share {noise} > {rules.max_noise_share}")
    published = quality.published_noise_share
    if published is not None and published > rules.max_published_noise_share:
        failures.append(f"published noise share {published} > {rules.max_published_noise_share}")
    smallest = quality.smallest_segment_share
    if smallest is not None and math.isfinite(smallest) and smallest < min_segment_share:
        failures.append(f"smallest segment share {smallest:.4f} < {min_segment_share}")
    score = quality.quality
    if score is not None and math.isfinite(score) and score < rules.min_quality:
        failures.append(f"quality {score:.3f} < {rules.min_quality}")
    stability = quality.stability
    if stability is not None and math.isfinite(stability) and stability < rules.min_stability:
        failures.append(f"stability {stability:.3f} < {rules.min_stability}")
    return failures


def noise_allowance(clustering: ClusteringConfig, refit: RefitConfig) -> str | None:
    """Why this configuration may publish more than MAX_PUBLISHED_NOISE of the clients in no
    segment, in words, or None when it keeps unclustered clients within it."""
    reasons = []
    if not clustering.attach_outliers:
        reasons.append(
            "clustering.attach_outliers is false (clients outside every dense"
            " cluster stay unclustered)"
        )
    if clustering.min_confidence > 0:
        reasons.append(
            f"clustering.min_confidence {clustering.min_confidence} turns loose fits"
            " back into unclustered clients"
        )
    if refit.max_published_noise_share > MAX_PUBLISHED_NOISE:
        reasons.append(
            f"refit.max_published_noise_share {refit.max_published_noise_share}"
            f" is above {MAX_PUBLISHED_NOISE}"
        )
    if not reasons:
        return None
    return (
        f"this configuration may publish more than {MAX_PUBLISHED_NOISE:.0%} of the clients"
        " as unclustered, in no segment a campaign can use: " + "; ".join(reasons)
    )


def cltv_refit_needed(champion: Candidate[B] | None, as_of: date, refit_clusters: bool) -> bool:
    """Refit the CLTV model with the clustering, or when no champion may serve `as_of`."""
    return refit_clusters or _serving(champion, as_of) is None


def choose_cltv(
    champion: Candidate[B] | None,
    refit: Candidate[B] | None,
    *,
    as_of: date,
    refit_clusters: bool,
    model_name: str,
) -> ModelChoice[B]:
    """The CLTV model tonight: the champion unless a refit is due (`cltv_refit_needed`).

    `refit` is the due refit, None when it did not converge: then the champion stays if it
    may serve `as_of`, else the run has no CLTV model. A refit that serves is promoted once
    the run has published (when it was registered).
    """
    serving = _serving(champion, as_of)
    if serving is not None and not refit_clusters:
        return _keep(serving, serving.metrics)
    if refit is None:
        failed = {"cltv_refit_failed": 1.0}
        return _keep(serving, failed) if serving is not None else ModelChoice(None, "none", failed)
    return _adopt(refit, model_name)


def cluster_refit_needed(decision: RefitDecision, champion: Candidate[B] | None) -> bool:
    """Fit a new clustering when the decision says so, or when there is no champion."""
    return decision.refit or champion is None


def choose_clusters(
    champion: Candidate[B] | None,
    refit: Candidate[B] | None,
    failures: Sequence[str],
    *,
    as_of: date,
    model_name: str,
) -> ModelChoice[B]:
    """The clustering tonight: the champion when no refit was made (`refit` None); a refit
    that passes the quality gates (`failures` empty), to be promoted once the run has
    published; a refit that fails them keeps the champion (its figures are logged), and
    serves only when there is no champion that may serve `as_of` (one fitted on later data
    would leak the future into a backfill or rebuild)."""
    if refit is None:
        if champion is None:
            raise ValueError("no clustering to serve: neither a champion nor a refit")
        return _keep(champion, {**champion.metrics, "cluster_refit": 0.0})
    metrics = {**refit.metrics, "cluster_gates_failed": float(len(failures)), "cluster_refit": 1.0}
    serving = _serving(champion, as_of)
    if failures and serving is not None:
        return _keep(serving, metrics)
    return _adopt(replace(refit, metrics=metrics), model_name)


def promotions(choices: Iterable[ModelChoice[Fitted]], *, published: bool) -> list[Promotion]:
    """The champions to change, in order: only a run that published may change them (a failed
    run's refits stay registered, never champion)."""
    if not published:
        return []
    return [choice.promotion for choice in choices if choice.promotion is not None]


def _serving(champion: Candidate[B] | None, as_of: date) -> Candidate[B] | None:
    """The champion if it may serve `as_of` (fitted on data up to that date), else None."""
    if champion is None or champion.bundle.fitted_as_of > as_of:
        return None
    return champion


def _keep(champion: Candidate[B], metrics: Metrics) -> ModelChoice[B]:
    """The champion serves; champions are never promoted again."""
    return ModelChoice(champion.bundle, _label(champion.version), metrics)


def _adopt(refit: Candidate[B], model_name: str) -> ModelChoice[B]:
    """The refit serves, and becomes champion after the publish if it was registered."""
    promotion = Promotion(model_name, refit.version) if refit.version is not None else None
    return ModelChoice(refit.bundle, _label(refit.version), refit.metrics, promotion)


def _label(version: int | None) -> str:
    """The model version as the run publishes it."""
    return "unregistered" if version is None else str(version)


def _number(value: object) -> float | None:
    """A real number as float (numpy's too); None for anything else, flags included."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)
