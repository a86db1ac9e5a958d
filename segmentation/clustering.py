"""Behavioral clusters: HDBSCAN fit on a sample, fast assignment of every client, stable ids, profiles.

Pipeline (fitted state in `ClusterModel.pipeline_`): `FeatureEncoder` (column selection, nulls
imputed, log1p of counts, money and durations with negatives clipped to 0) -> `StandardScaler`
-> `ClipTransformer` (scaled values clipped to +-`clip`, so that a rare extreme feature, such as
a channel share a few clients max out, cannot dominate distances) -> optional `PCA`.
HDBSCAN (hdbscan package) is fit on a deterministic sample of `sample_size` clients. With
`select_by_quality` (default), the other cluster selection (leaf for eom, eom for leaf) is
computed on the same tree and used when its DBCV (relative validity) is higher by more than
QUALITY_MARGIN: eom alone often merges distinct groups into a few big clusters.

Guard rails. A fit is degenerate when it finds fewer than two clusters or its noise share is
above `max_noise_share`. Then, documented fallback, in order:
1. "retry_leaf": one retry with half the min_cluster_size (at least 5) and leaf selection;
2. "kmeans": k-means with k in 2..`kmeans_max_k`, every client in a cluster except points far
   outside every cluster (see `assigner.CentroidAssigner`). k is chosen by `kmeans_k_selection`:
   "gap" (default) adds clusters while each extra one raises the gap statistic (Tibshirani:
   log within-cluster dispersion of structureless reference data, uniform in the sample's
   principal-axis box, minus that of the sample) by at least `kmeans_min_gap_gain`, i.e. while
   the extra cluster explains clearly more than it would on data without structure; this finds
   the finer real structure where silhouette prefers the coarsest split. "silhouette" takes the
   best silhouette. On a refit (`previous` given, same k) k-means starts from the previous
   segments' centres mapped into the new feature space, so similar data keeps its partition,
   and keeps the previous k while the gap gains are within K_HYSTERESIS of the threshold;
3. "single": one segment for everybody, when the sample has fewer than two distinct points.
`metrics_` says which (degenerate, degenerate_reason, fallback); the engine never publishes
"everything is noise".

Assignment of every client: `assigner.NeighborAssigner` reproduces HDBSCAN's
approximate_predict decision (nearest fitted point in mutual reachability, noise below the
cluster's birth density) at a few hundred thousand clients/s. Its agreement with the fitted
labels on held-out sample points is measured at every fit (`metrics_["assigner_agreement"]`:
an assigner indexed on 80% of the sample predicts the other 20%).

Sticky assignment (hysteresis): `predict(X, previous=...)` keeps a client in the cluster segment
of the last published membership while that segment's centre is within (1 + `stickiness`)
times the distance of the cluster the client would join now. Clients on a border between two
segments then stop switching night after night on small changes of their rates, while a
client whose behavior really moved goes past the margin and changes segment.

Stable ids and names: `fit(X, previous=model)` matches the new clusters to the previous
model's segments (`stable_ids.match_cluster_ids`); a surviving segment keeps its id and name.
Profiles (`profiles_`) give each segment its distinguishing features, a name and a description.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypedDict

import hdbscan
import numpy as np
import pandas as pd
from pydantic import Field
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

from configs import ClusteringConfig
from configs.schema import validate_parameters
from segmentation import profiles, stable_ids
from segmentation.assigner import (
    NOISE,
    NOISE_CONFIDENCE_MAX,
    CentroidAssigner,
    ClusterGeometry,
    NeighborAssigner,
    hdbscan_geometry,
)

CLIENT_ID = "client_id"
NOISE_ID = stable_ids.NOISE_ID
K_HYSTERESIS = 1 / 3  # share of kmeans_min_gap_gain within which a refit keeps the previous k
QUALITY_MARGIN = 0.02  # DBCV gain needed to prefer the other cluster selection
# An attached outlier's confidence is its noise confidence (at most NOISE_CONFIDENCE_MAX, falling
# with the distance to the clusters) times this: at most 0.15, below every core member's 0.2.
OUTLIER_CONFIDENCE = 0.75

# The default behavioral subset of the feature catalog: how a client behaves, as rates that do
# not fade when the client goes quiet (journey-stage and channel mixes, purchases per active
# month, support, returns and advocacy per purchase, spend per order, sentiment), plus recency
# (a long silence is a behavior of its own). The mixes are the recency-weighted ones (the last
# 90 days count four times, features.catalog.RECENT_WEIGHT): measured on generated journeys
# (benchmarks/quality_report.py, with sticky assignment), clients whose behavior shifted change
# segment 2.1-2.2x as often as the others within 60 days, against 1.8-1.9x with the yearly
# mixes, for a persona ARI lower by about 0.01 (README, "Segment quality"). Counts that grow with
# tenure, momentum and other state features are left to the lifecycle rules; identifiers, text
# and BTYD inputs too.
DEFAULT_FEATURES: tuple[str, ...] = (
    "recency_days",
    "purchases_per_active_month",
    "avg_order_value",
    "purchase_share_weighted",
    "consideration_share_weighted",
    "retention_share_weighted",
    "advocacy_share_weighted",
    "tickets_per_purchase",
    "advocacy_per_purchase",
    "sentiment_mean",
    "sentiment_90d",  # how they feel now: a change of mood moves the segment within weeks
    "share_web_weighted",
    "share_app_weighted",
    "share_store_weighted",
    "share_call_center_weighted",
)

_COUNT_OR_MONEY = re.compile(
    r"^(n_\w+|events_\d+d|active_days_\d+d|purchases_\d+d|purchase_days|frequency"
    r"|carts_abandoned_\d+d|checkouts_abandoned_\d+d|support_tickets_\d+d|returns_\d+d"
    r"|reviews|referrals|shares|total_spend|avg_order_value|monetary_value|spend_\d+d"
    r"|purchases_per_active_month)$"
)
# Values per order: undefined (null) without an order, imputed like any unknown (median)
_PER_ORDER = frozenset({"avg_order_value"})
_DURATION = re.compile(r"^(recency_days|tenure_days|days_since_\w+|return_gap_days|recency|T)$")


def is_count_or_money(name: str) -> bool:
    """Counts and money: log1p-transformed, and a null means zero."""
    return bool(_COUNT_OR_MONEY.match(name))


def is_log_feature(name: str) -> bool:
    """Features that get log1p (negatives clipped to 0): counts, money and durations in days."""
    return is_count_or_money(name) or bool(_DURATION.match(name))


def fill_value_rule(name: str) -> str:
    """How a null is imputed: "zero" for counts, money and sentiment, else "median" (of the sample)."""
    if name in _PER_ORDER:
        return "median"
    if is_count_or_money(name) or name.startswith("sentiment_"):
        return "zero"
    return "median"


class FeatureEncoder(TransformerMixin, BaseEstimator):
    """Selects the feature columns, imputes nulls, applies log1p to counts/money/durations.

    Parameters
    ----------
    features : sequence of str or None, default=None
        The columns to encode, in order; None: every column of the frame fit on.
    log_features : sequence of str or None, default=None
        The columns that get log1p (negatives clipped to 0); None: by name
        (`is_log_feature`).

    Attributes
    ----------
    feature_names_in_ : ndarray of str
        The encoded columns, in order.
    n_features_in_ : int
        Their number.
    log_mask_ : ndarray of bool
        Per column, whether it gets log1p.
    fill_values_ : ndarray of float
        Per column, the value a null or infinite value is replaced with (`fill_value_rule`:
        zero, or the median of the frame fit on).
    """

    def __init__(
        self, features: Sequence[str] | None = None, log_features: Sequence[str] | None = None
    ):
        self.features = features
        self.log_features = log_features

    def fit(self, X: pd.DataFrame, y: None = None) -> FeatureEncoder:
        """Learn the fill values of `X`'s feature columns (numeric).

        Returns
        -------
        FeatureEncoder
            self, fitted.
        """
        names = list(self.features) if self.features is not None else list(X.columns)
        values = _numeric_block(X, names)
        logs = (
            set(self.log_features)
            if self.log_features is not None
            else {n for n in names if is_log_feature(n)}
        )
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.log_mask_ = np.array([n in logs for n in names])
        medians = profiles.nan_columns(np.nanmedian, np.where(np.isfinite(values), values, np.nan))
        zero = np.array([fill_value_rule(n) == "zero" for n in names])
        self.fill_values_ = np.where(zero | ~np.isfinite(medians), 0.0, medians)
        self.n_features_in_ = len(names)
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """The encoded feature columns of `X`.

        Returns
        -------
        ndarray of shape (n_rows, n_features_in_)
            Float64, nulls imputed, log1p applied where `log_mask_`.
        """
        check_is_fitted(self, "fill_values_")
        names = list(self.feature_names_in_)
        _check_columns(X, names)
        out = np.empty((len(X), len(names)), dtype=np.float64, order="F")
        for j, name in enumerate(names):
            col = X[name].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
            bad = ~np.isfinite(col)
            if bad.any():
                col[bad] = self.fill_values_[j]
            if self.log_mask_[j]:
                np.clip(col, 0, None, out=col)
                np.log1p(col, out=col)
            out[:, j] = col
        return out

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        """The output column names: `feature_names_in_` (`input_features` is ignored)."""
        check_is_fitted(self, "feature_names_in_")
        return self.feature_names_in_.copy()


class ClipTransformer(TransformerMixin, BaseEstimator):
    """Clips scaled values to [-limit, limit].

    Parameters
    ----------
    limit : float or None, default=5.0
        The bound; None: no clipping.

    Attributes
    ----------
    n_features_in_ : int
        Columns of the array fit on.
    """

    def __init__(self, limit: float | None = 5.0):
        self.limit = limit

    def fit(self, X: np.ndarray, y: None = None) -> ClipTransformer:
        """Record the number of columns; nothing else is learned.

        Returns
        -------
        ClipTransformer
            self, fitted.
        """
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """`X` as float64, clipped to [-limit, limit].

        Returns
        -------
        ndarray
            Same shape as `X`.
        """
        check_is_fitted(self, "n_features_in_")
        X = np.asarray(X, dtype=np.float64)
        return X if self.limit is None else np.clip(X, -self.limit, self.limit)


def build_pipeline(
    features: Sequence[str],
    clip: float | None = 5.0,
    pca_components: int | None = None,
    random_state: int = 42,
) -> Pipeline:
    """The feature transform pipeline (unfitted): encode -> robust scale -> clip [-> PCA]."""
    steps: list[tuple[str, BaseEstimator]] = [
        ("encode", FeatureEncoder(features=list(features))),
        ("scale", StandardScaler()),
        ("clip", ClipTransformer(clip)),
    ]
    if pca_components:
        steps.append(("pca", PCA(n_components=pca_components, random_state=random_state)))
    return Pipeline(steps)


def sample_client_ids(
    client_ids: Sequence[str] | pd.Series, size: int, random_state: int
) -> list[str]:
    """The ids of the clients `ClusterModel.fit` draws its sample from, given every client's
    id: fitting on those clients' rows alone gives the model fitted on all of them (a caller
    with the clients in shards gathers only the sample)."""
    ordered = pd.Series(list(client_ids), dtype=object).astype(str).sort_values(kind="stable")
    if len(ordered) <= size:
        return ordered.tolist()
    return ordered.iloc[_sample_positions(len(ordered), size, random_state)].tolist()


class _ClusterModelParams(ClusteringConfig):
    """All `ClusterModel` parameters with their constraints: the config keys (inherited from
    `ClusteringConfig`, declared there once) and the ones that are not config keys."""

    clip: float | None = Field(5.0, gt=0)
    validate_assigner: bool = True
    select_by_quality: bool = True
    n_jobs: int = -1
    random_state: int = Field(42, ge=0, lt=2**32)


class ClusterMetrics(TypedDict, total=False):
    """`ClusterModel.metrics_`: how a fit went (JSON-serialisable; logged to MLflow).

    Every fit has the keys from `degenerate` to `quality_metric` (but `selection`, only with
    an HDBSCAN result) and from `n_clusters` to `assigner_agreement`; the kmeans_* keys come
    with the k-means fallback, the stability and segments_* keys with a refit (`previous` or
    `previous_assignments` given).
    """

    degenerate: bool  # the configured density fit was not publishable
    published_noise_share: float  # sample share left unclustered after outliers are attached
    smallest_segment_share: float  # the smallest cluster's share of the sample, after merging
    merged_clusters: int  # clusters under min_segment_share merged into their neighbour
    degenerate_reason: str | None
    fallback: str | None  # None, "retry_leaf", "kmeans" or "single"
    algorithm: str  # "hdbscan", "kmeans" or "single"
    min_cluster_size_used: int | None
    cluster_selection_method_used: str | None
    selection: str  # the cluster selection kept, and why when it is not the configured one
    quality: float | None  # DBCV (hdbscan) or silhouette (kmeans)
    quality_metric: str | None  # "dbcv" or "silhouette"
    kmeans_k: int
    kmeans_k_selection: str
    kmeans_k_scores: dict[str, float]  # per k, the gap statistic or the silhouette
    kmeans_init: str  # "previous" (a refit from the previous centres) or "k-means++"
    n_clusters: int
    noise_share: float  # of the sample
    sizes: dict[str, int]  # sample clients per segment id, "noise" included
    sample_size: int
    assigner_agreement: float | None  # hold-out agreement of the assigner (None: not measured)
    stability: float  # kept share of the shared clients (the refit quality gate)
    stability_ari: float
    stability_kept_share: float
    stability_shared_clients: float
    segments_kept: list[str]
    segments_new: list[str]
    segments_retired: list[str]
    segments_renamed: list[str]  # kept ids whose name no longer fits their members: renamed
    segment_match: dict[str, dict[str, str | float]]  # new id -> how it was matched, score


@dataclass(frozen=True)
class _Clustering:
    """The outcome of `ClusterModel._cluster` on the transformed sample: labels (-1 noise),
    the fitted model behind them, what the assigner needs, and the metrics describing it."""

    labels: np.ndarray
    centers: np.ndarray | None  # k-means or single-segment centres (CentroidAssigner)
    hdbscan: hdbscan.HDBSCAN | None
    kmeans: KMeans | None
    geometry: ClusterGeometry | None  # what NeighborAssigner needs of an HDBSCAN fit
    metrics: ClusterMetrics


class ClusterModel(BaseEstimator):
    """HDBSCAN behavioral clusters fit on a sample, assigned to every client with stable ids.

    The module docstring explains the transform pipeline, the guard rails and the fallback.
    Every parameter but the last five is the `clustering` config key of the same name
    (`configs.ClusteringConfig`), with the same default; the constraints are declared there
    once and checked when the model is fit (`InvalidParameterError` names the parameter).

    Parameters
    ----------
    features : sequence of str or None, default=None
        Feature columns to cluster on; None: `DEFAULT_FEATURES`. At least one if given.
    sample_size : int, default=20_000
        Clients the transforms and HDBSCAN are fit on (a deterministic sample); >= 100.
    min_cluster_size : int, default=50
        HDBSCAN's smallest cluster; >= 2.
    min_samples : int or None, default=None
        HDBSCAN's density neighbourhood; None: `min_cluster_size`.
    cluster_selection_method : {"eom", "leaf"}, default="eom"
        HDBSCAN's cluster selection on the condensed tree.
    pca_components : int or None, default=None
        Principal components kept after scaling; None: no PCA.
    max_noise_share : float in (0, 1], default=0.3
        A density fit leaving a larger share of the sample as noise is degenerate.
    max_cluster_share : float in (0, 1], default=0.8
        A density fit with one cluster above this share of the clustered clients is
        degenerate.
    kmeans_max_k : int, default=12
        The k-means fallback tries k in 2..kmeans_max_k; >= 2.
    kmeans_k_selection : {"gap", "silhouette"}, default="gap"
        How the fallback chooses k.
    kmeans_min_gap_gain : float, default=0.03
        Least gap-statistic gain for one more k-means cluster; >= 0.
    kmeans_references : int, default=3
        Uniform reference samples of the gap statistic; >= 1.
    assigner_neighbors : int, default=10
        Neighbours per fitted point that define the assigner's search candidates (more is
        more exact and slower); >= 1. (`n_neighbors` in models saved before this name.)
    min_confidence : float in [0, 1], default=0.0
        Clients assigned with a lower confidence are noise.
    stickiness : float in [0, 1], default=0.15
        Sticky assignment margin of `predict(X, previous=...)`: a client keeps its previous
        cluster segment while that segment's centre is within (1 + stickiness) times the
        distance of the cluster it would join now. 0 turns it off.
    attach_outliers : bool, default=True
        `predict` attaches a client outside every dense cluster to the cluster of its nearest
        fitted point (which follows the cluster's shape; the nearest centre when that point is
        noise too), flagged `is_outlier`, with its noise confidence scaled by OUTLIER_CONFIDENCE
        (at most 0.15, where a member has at least 0.2 before stickiness): a marketer gets a
        segment for everyone, and the flag says who fits it loosely. False: such clients are
        noise.
    min_segment_share : float in [0, 0.5), default=0.01
        At fit, a cluster holding less than this share of the sample is merged into the
        cluster with the nearest centre (smallest first, down to two clusters), before the
        segments are named and matched: no segment too small to act on is published.
    clip : float or None, default=5.0
        Not a config key. Scaled values are clipped to +-clip; None: no clipping; > 0.
    validate_assigner : bool, default=True
        Not a config key. Measure the assigner's hold-out agreement at fit
        (`metrics_["assigner_agreement"]`).
    select_by_quality : bool, default=True
        Not a config key. Use the other cluster selection when its DBCV is clearly higher.
    n_jobs : int, default=-1
        Not a config key. Assigner worker threads; -1: all cores, 0: one.
    random_state : int, default=42
        Not a config key (the engine passes its `seed`). Seed of the sample, the k-means
        fallback, PCA and the assigner's cells; in [0, 2**32).

    Attributes
    ----------
    feature_names_in_ : ndarray of str
        The features clustered on, in order.
    pipeline_ : sklearn.pipeline.Pipeline
        The fitted transforms: encode, scale, clip [, pca].
    hdbscan_ : hdbscan.HDBSCAN or None
        The density fit; None after the k-means or single-segment fallback.
    kmeans_ : sklearn.cluster.KMeans or None
        The k-means fallback's fit; None otherwise.
    sample_ids_ : ndarray of str
        The client ids of the sample, sorted.
    sample_labels_ : ndarray of int
        Cluster label of each sample client (-1: noise).
    centers_ : ndarray of shape (n_labels, n_components)
        Per label, the mean of its sample members in the transformed space (NaN for a label
        without members); absent in models saved before sticky assignment.
    assigner_ : NeighborAssigner or CentroidAssigner
        Assigns transformed points to the fitted labels (`segmentation.assigner`).
    segment_ids_ : dict of int to str
        Cluster label -> stable segment id ("C001", ...).
    segment_names_ : dict of str to str
        Stable segment id -> name, "noise" included.
    profiles_ : dict of str to dict
        Stable segment id -> profile (distinguishing features, name, description), "noise"
        included; JSON-serialisable values.
    next_segment_number_ : int
        The number the next new segment id will take.
    metrics_ : ClusterMetrics
        Fit diagnostics (a JSON-serialisable dict; keys in `ClusterMetrics`): algorithm,
        degenerate and why, fallback, quality, n_clusters, noise_share, sizes, sample_size,
        assigner_agreement; kmeans_* after the k-means fallback; stability and segments_*
        on a refit.

    See Also
    --------
    configs.ClusteringConfig : the config section, where the constraints live.
    segmentation.assigner.NeighborAssigner : the fast assignment of every client.
    """

    def __init__(
        self,
        features: Sequence[str] | None = None,
        sample_size: int = 20_000,
        min_cluster_size: int = 50,
        min_samples: int | None = None,
        cluster_selection_method: str = "eom",
        pca_components: int | None = None,
        max_noise_share: float = 0.3,
        max_cluster_share: float = 0.8,
        kmeans_max_k: int = 12,
        kmeans_k_selection: str = "gap",
        kmeans_min_gap_gain: float = 0.03,
        kmeans_references: int = 3,
        assigner_neighbors: int = 10,
        min_confidence: float = 0.0,
        stickiness: float = 0.15,
        attach_outliers: bool = True,
        min_segment_share: float = 0.01,
        clip: float | None = 5.0,
        validate_assigner: bool = True,
        select_by_quality: bool = True,
        n_jobs: int = -1,
        random_state: int = 42,
    ):
        self.features = features
        self.sample_size = sample_size
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_method = cluster_selection_method
        self.pca_components = pca_components
        self.max_noise_share = max_noise_share
        self.max_cluster_share = max_cluster_share
        self.kmeans_max_k = kmeans_max_k
        self.kmeans_k_selection = kmeans_k_selection
        self.kmeans_min_gap_gain = kmeans_min_gap_gain
        self.kmeans_references = kmeans_references
        self.assigner_neighbors = assigner_neighbors
        self.min_confidence = min_confidence
        self.stickiness = stickiness
        self.attach_outliers = attach_outliers
        self.min_segment_share = min_segment_share
        self.clip = clip
        self.validate_assigner = validate_assigner
        self.select_by_quality = select_by_quality
        self.n_jobs = n_jobs
        self.random_state = random_state

    @classmethod
    def from_config(
        cls, config: ClusteringConfig, random_state: int = 42, **overrides: object
    ) -> ClusterModel:
        """A model with every key of `config` as the parameter of the same name.

        Parameters
        ----------
        config : configs.ClusteringConfig
            The `clustering` section of the engine config.
        random_state : int, default=42
            The engine seed (`EngineConfig.seed`).
        **overrides
            Further parameters, e.g. `n_jobs`; they win over `config`.

        Returns
        -------
        ClusterModel
            Unfitted.
        """
        model = cls(random_state=random_state)
        model.set_params(**{name: getattr(config, name) for name in type(config).model_fields})
        model.set_params(**overrides)
        return model

    def __setstate__(self, state: dict[str, object]) -> None:
        """Unpickle, bringing the parameters of a model saved by an earlier version up to date:
        `n_neighbors` is now `assigner_neighbors`, a model saved before sticky assignment has
        stickiness 0 and one saved before outliers were attached keeps its noise (what they
        did), other absent parameters take their defaults. Fitted state
        is left as saved (`predict` handles a model without `centers_`)."""
        state = dict(state)
        if "n_neighbors" in state and "assigner_neighbors" not in state:
            state["assigner_neighbors"] = state.pop("n_neighbors")
        state.setdefault("stickiness", 0.0)
        state.setdefault("attach_outliers", False)  # saved before: its noise stays noise
        for name, field in _ClusterModelParams.model_fields.items():
            state.setdefault(name, field.default)
        super().__setstate__(state)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        X: pd.DataFrame,
        y: None = None,
        previous: ClusterModel | None = None,
        previous_assignments: pd.DataFrame | None = None,
    ) -> ClusterModel:
        """Fit transforms and clusters on a sample of `X`, then name the segments.

        Parameters
        ----------
        X : pandas.DataFrame
            One row per client: `client_id` (unique, not null) and the feature columns.
        y : None
            Ignored (scikit-learn convention).
        previous : ClusterModel or None, default=None
            The model this one replaces; its segment ids and names are carried over to the
            matching clusters, and a k-means refit starts from its centres.
        previous_assignments : pandas.DataFrame or None, default=None
            (client_id, segment_id) of the previous published membership, used for the
            overlap with `previous` instead of re-assigning the sample with it.

        Returns
        -------
        ClusterModel
            self, fitted.

        Raises
        ------
        InvalidParameterError
            A parameter breaks its constraint (`configs.ClusteringConfig`).
        ValueError
            `X` lacks a column, has no rows, or its client ids are null or repeated.
        """
        params = self._validate_params()
        features = list(params.features) if params.features is not None else list(DEFAULT_FEATURES)
        _check_frame(X, features)
        if self.pca_components and self.pca_components > len(features):
            raise ValueError(
                f"pca_components={self.pca_components} exceeds the {len(features)} features"
            )
        # single-threaded BLAS/OpenMP: k-means and neighbour searches are several times faster
        # than with oversubscribed threads on a shared machine
        with threadpool_limits(1):
            return self._fit(X, features, previous, previous_assignments)

    def _fit(
        self,
        X: pd.DataFrame,
        features: list[str],
        previous: ClusterModel | None,
        previous_assignments: pd.DataFrame | None,
    ) -> ClusterModel:
        sample = _sample(X, self.sample_size, self.random_state)
        self.feature_names_in_ = np.asarray(features, dtype=object)
        self.sample_ids_ = sample[CLIENT_ID].astype(str).to_numpy()
        self.pipeline_ = build_pipeline(features, self.clip, self.pca_components, self.random_state)
        Z = self.pipeline_.fit_transform(sample)

        found, merged = _merge_small(self._cluster(Z, previous), Z, self.min_segment_share)
        labels = found.labels
        self.sample_labels_ = labels
        self.centers_ = _member_means(Z, labels)
        self.hdbscan_ = found.hdbscan
        self.kmeans_ = found.kmeans
        self.assigner_ = self._make_assigner(Z, labels, found.geometry, found.centers)
        agreement = self._holdout_agreement(Z, labels, found.geometry, found.centers)

        stability = self._name_segments(sample, labels, previous, previous_assignments)
        sizes = pd.Series(labels).map(self.segment_ids_).fillna(NOISE_ID).value_counts()
        noise_share = float(np.mean(labels == NOISE))
        clustered = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(1)
        self.metrics_: ClusterMetrics = {
            **found.metrics,
            "n_clusters": len(self.segment_ids_),
            "noise_share": round(noise_share, 4),
            # what membership publishes as unclustered: outliers are attached unless disabled
            "published_noise_share": 0.0 if self.attach_outliers else round(noise_share, 4),
            "smallest_segment_share": round(float(clustered.min() / len(labels)), 4),
            "merged_clusters": merged,
            "sizes": {str(k): int(v) for k, v in sizes.sort_index().items()},
            "sample_size": len(sample),
            "assigner_agreement": agreement,
            **stability,
        }
        return self

    # -------------------------------------------------------------- predict
    def predict(self, X: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
        """Assign every client to a segment of this model, or to noise.

        Parameters
        ----------
        X : pandas.DataFrame
            One row per client: `client_id` and the columns of `feature_names_in_`.
        previous : pandas.DataFrame or None, default=None
            (client_id, segment_id) of the last published cluster memberships; with
            `stickiness` > 0 a client keeps its previous segment while it is nearly as close
            as the one it would join (module docstring). Unknown ids and absent clients are
            ignored.

        Returns
        -------
        pandas.DataFrame
            One row per row of `X`, in order: client_id, cluster_id (-1: noise), segment_id
            ("noise" for noise), confidence in [0, 1], is_noise, is_outlier (outside every
            dense cluster, attached to the nearest one: `attach_outliers`).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            The model is not fitted.
        """
        check_is_fitted(self, "assigner_")
        _check_frame(X, list(self.feature_names_in_), require_rows=False)
        ids = X[CLIENT_ID].reset_index(drop=True)
        labels, conf, outlier = self._assign(X, self._sticky_state(previous, ids))
        if self.min_confidence > 0:
            weak = (labels >= 0) & (conf < self.min_confidence)
            labels[weak] = NOISE
            conf[weak] = np.minimum(conf[weak], NOISE_CONFIDENCE_MAX)
            outlier &= ~weak
        # label -> id lookup; the last slot (reached by -1) is noise
        lookup = np.array([NOISE_ID] * (max(self.segment_ids_, default=-1) + 2), dtype=object)
        for label, sid in self.segment_ids_.items():
            lookup[label] = sid
        segment = lookup[labels]
        return pd.DataFrame(
            {
                CLIENT_ID: ids,
                "cluster_id": labels,
                "segment_id": segment,
                "confidence": np.round(conf, 4),
                "is_noise": labels == NOISE,
                "is_outlier": outlier,
            }
        )

    def _assign(
        self, X: pd.DataFrame, sticky: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, confidences and outlier flags of the rows of `X`, in blocks: noise attached
        to a cluster (`attach_outliers`, `_attach`); with `sticky` (each client's previous
        label, the label centres) clients keep their previous label by the margin."""
        labels = np.empty(len(X), dtype=np.int64)
        conf = np.empty(len(X))
        outlier = np.zeros(len(X), dtype=bool)
        # models saved before outliers were attached may lack centres
        attach_to: np.ndarray | None = getattr(self, "centers_", None)
        if not self.attach_outliers or attach_to is None or not len(attach_to):
            attach_to = None
        step = 250_000
        for start in range(0, len(X), step):
            block = slice(start, start + step)
            Z = self.pipeline_.transform(X.iloc[block])
            result = self.assigner_.assign(Z)
            labels[block] = result.labels
            conf[block] = result.confidence
            if attach_to is not None:
                out = np.flatnonzero(labels[block] == NOISE)
                labels[block][out] = _attach(Z[out], result.nearest, out, attach_to)
                conf[block][out] *= OUTLIER_CONFIDENCE
                outlier[block][out] = True
            if sticky is not None:
                before, centers = sticky
                _keep_previous(
                    Z, labels[block], conf[block], before[block], centers, self.stickiness
                )
        return labels, conf, outlier

    def _sticky_state(
        self, previous: pd.DataFrame | None, ids: pd.Series
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Each client's label in `previous` and the label centres, when assignment is sticky."""
        # models saved before sticky assignment have no centers_ (and stickiness 0)
        centers: np.ndarray | None = getattr(self, "centers_", None)
        if previous is None or not self.stickiness or centers is None:
            return None
        for column in (CLIENT_ID, "segment_id"):
            if column not in previous.columns:
                raise ValueError(f"previous has no column {column!r}")
        label_of = {sid: label for label, sid in self.segment_ids_.items()}
        labels = previous["segment_id"].map(label_of).fillna(NOISE).to_numpy(dtype=np.int64)
        position = pd.Index(previous[CLIENT_ID]).get_indexer(ids)
        return np.where(position >= 0, labels[position], NOISE), centers

    def segment_centers(self) -> pd.DataFrame:
        """Each segment's profile medians, transformed into this model's scaled space.

        Returns
        -------
        pandas.DataFrame
            One row per segment id (noise excluded), one column per transformed dimension.
        """
        check_is_fitted(self, "assigner_")
        return self._centers_in(self, self)

    # ------------------------------------------------------------ internals
    def _validate_params(self) -> _ClusterModelParams:
        """The parameters, checked against their constraints (`configs.ClusteringConfig`)."""
        return validate_parameters(
            _ClusterModelParams, self.get_params(deep=False), type(self).__name__
        )

    def _cluster(self, Z: np.ndarray, previous: ClusterModel | None = None) -> _Clustering:
        """HDBSCAN with the configured settings, then the fallbacks (module docstring)."""
        n = len(Z)
        attempts = [(self.min_cluster_size, self.min_samples, self.cluster_selection_method)]
        attempts.append((max(5, self.min_cluster_size // 2), self.min_samples, "leaf"))
        reason = None
        for i, (mcs, ms, method) in enumerate(attempts):
            fitted = self._fit_hdbscan(Z, mcs, ms, method)
            if fitted is None:
                problem: str | None = "hdbscan could not fit the sample"
            else:
                problem = self._degenerate(fitted.labels_, fitted)
            if fitted is not None and problem is None:
                selection = method
                if self.select_by_quality:
                    fitted, selection = self._best_selection(fitted, Z, mcs, ms, method)
                labels = fitted.labels_.astype(np.int64)
                min_samples = min(ms or mcs, n)
                geometry = hdbscan_geometry(
                    Z, labels, fitted.condensed_tree_.to_numpy(), min_samples
                )
                metrics: ClusterMetrics = {
                    "degenerate": i > 0,
                    "degenerate_reason": reason,
                    "fallback": None if i == 0 else "retry_leaf",
                    "algorithm": "hdbscan",
                    "min_cluster_size_used": mcs,
                    "cluster_selection_method_used": fitted.cluster_selection_method,
                    "selection": selection,
                    "quality": _dbcv(fitted),
                    "quality_metric": "dbcv",
                }
                return _Clustering(labels, None, fitted, None, geometry, metrics)
            reason = reason or problem
        return self._kmeans_fallback(Z, reason, previous)

    def _best_selection(
        self, fitted: hdbscan.HDBSCAN, Z: np.ndarray, mcs: int, ms: int | None, method: str
    ) -> tuple[hdbscan.HDBSCAN, str]:
        """The other cluster selection on the same tree, kept if its DBCV is clearly higher.

        Guards against eom's known under-segmentation (a few big clusters merging distinct
        groups) and leaf's over-fragmentation; `metrics_["selection"]` records the choice.
        """
        other = "leaf" if method == "eom" else "eom"
        alternative = _reselect(fitted, other, mcs)
        if alternative is None:
            alternative = self._fit_hdbscan(Z, mcs, ms, other)
        if alternative is None or self._degenerate(alternative.labels_, alternative) is not None:
            return fitted, method
        mine, theirs = _dbcv(fitted), _dbcv(alternative)
        if theirs is not None and (mine is None or theirs > mine + QUALITY_MARGIN):
            return alternative, f"{other} (DBCV {theirs} > {method} {mine})"
        return fitted, method

    def _fit_hdbscan(
        self, Z: np.ndarray, mcs: int, ms: int | None, method: str
    ) -> hdbscan.HDBSCAN | None:
        n = len(Z)
        if mcs > n // 2:
            mcs = max(2, n // 4)
        ms = None if ms is None else min(ms, n - 1)
        if (ms or mcs) >= n:
            return None
        try:
            return hdbscan.HDBSCAN(
                min_cluster_size=mcs,
                min_samples=ms,
                cluster_selection_method=method,
                gen_min_span_tree=True,
                core_dist_n_jobs=1,
            ).fit(Z)
        except (ValueError, MemoryError):
            return None

    def _degenerate(self, labels: np.ndarray, fitted: hdbscan.HDBSCAN | None = None) -> str | None:
        """Why a density fit cannot be published, or None: too few clusters, too much noise,
        one cluster holding nearly everyone clustered, or no density structure (DBCV <= 0)."""
        n_clusters = int(labels.max()) + 1 if labels.size else 0
        noise = float(np.mean(labels == NOISE)) if labels.size else 1.0
        if n_clusters < 2:
            return f"{n_clusters} cluster(s) found"
        if noise > self.max_noise_share:
            return f"noise share {noise:.2f} above max_noise_share {self.max_noise_share:.2f}"
        largest = float(np.bincount(labels[labels >= 0]).max() / np.sum(labels >= 0))
        if largest > self.max_cluster_share:
            return (
                f"largest cluster holds {largest:.2f} of the clustered clients"
                f" (max_cluster_share {self.max_cluster_share:.2f})"
            )
        quality = _dbcv(fitted) if fitted is not None else None
        if quality is not None and quality <= 0:
            return f"no density structure (DBCV {quality})"
        return None

    def _kmeans_fallback(
        self, Z: np.ndarray, reason: str | None, previous: ClusterModel | None = None
    ) -> _Clustering:
        info: ClusterMetrics = {
            "degenerate": True,
            "degenerate_reason": reason,
            "min_cluster_size_used": None,
            "cluster_selection_method_used": None,
        }
        distinct = len(np.unique(np.round(Z, 9), axis=0))
        if distinct < 3:
            labels = np.zeros(len(Z), dtype=np.int64)
            centers = Z.mean(axis=0, keepdims=True)
            info.update(
                {
                    "fallback": "single",
                    "algorithm": "single",
                    "quality": None,
                    "quality_metric": None,
                }
            )
            return _Clustering(labels, centers, None, None, None, info)
        rng = np.random.default_rng(self.random_state)
        pick = rng.choice(len(Z), size=min(len(Z), 5000), replace=False)
        ks = list(range(2, min(self.kmeans_max_k, distinct - 1) + 1))
        k, scores = self._select_k(Z[pick], ks, rng, _previous_k(previous))
        init = self._previous_centers(previous, k)
        if init is not None:
            km = KMeans(k, init=init, n_init=1, random_state=self.random_state).fit(Z)
        else:
            km = KMeans(k, n_init=4, random_state=self.random_state).fit(Z)
        sub = km.labels_[pick]
        score = (
            float(silhouette_score(Z[pick], sub, random_state=self.random_state))
            if len(np.unique(sub)) > 1
            else float("nan")
        )
        info.update(
            {
                "fallback": "kmeans",
                "algorithm": "kmeans",
                "quality": round(score, 4) if np.isfinite(score) else None,
                "quality_metric": "silhouette",
                "kmeans_k": k,
                "kmeans_k_selection": self.kmeans_k_selection,
                "kmeans_k_scores": scores,
                "kmeans_init": "previous" if init is not None else "k-means++",
            }
        )
        return _Clustering(km.labels_.astype(np.int64), km.cluster_centers_, None, km, None, info)

    def _select_k(
        self,
        Z: np.ndarray,
        ks: list[int],
        rng: np.random.Generator,
        previous_k: int | None = None,
    ) -> tuple[int, dict[str, float]]:
        """k for the k-means fallback and the per-k criterion values (module docstring).

        With "gap", a refit keeps the previous k while the criterion is within
        K_HYSTERESIS * kmeans_min_gap_gain of accepting it, so that k does not flip between
        refits on gains that sit on the threshold."""
        if self.kmeans_k_selection == "silhouette":
            scores = {}
            for k in ks:
                labels = KMeans(k, n_init=4, random_state=self.random_state).fit_predict(Z)
                if len(np.unique(labels)) > 1:
                    scores[k] = float(silhouette_score(Z, labels, random_state=self.random_state))
            best = max(scores, key=lambda k: (scores[k], -k), default=2)
            return best, {str(k): round(v, 4) for k, v in scores.items()}
        gaps = gap_statistic(Z, ks, self.kmeans_references, rng, self.random_state)
        gains = {larger: gaps[larger] - gaps[smaller] for smaller, larger in itertools.pairwise(ks)}
        k = ks[0]
        for larger, gain in gains.items():
            if gain < self.kmeans_min_gap_gain:
                break
            k = larger
        margin = K_HYSTERESIS * self.kmeans_min_gap_gain
        if previous_k in gaps and previous_k != k:
            low = self.kmeans_min_gap_gain - margin
            reached = all(gains[j] >= low for j in ks[1:] if j <= previous_k)
            stops = gains.get(previous_k + 1, -np.inf) < self.kmeans_min_gap_gain + margin
            if reached and stops:
                k = previous_k
        return k, {str(k): round(v, 4) for k, v in gaps.items()}

    def _previous_centers(self, previous: ClusterModel | None, k: int) -> np.ndarray | None:
        """The previous k-means segments' centres in this model's space, when there are k."""
        if previous is None or getattr(previous, "kmeans_", None) is None:
            return None
        try:
            centers = self._centers_in(previous, self)
        except (ValueError, KeyError, AttributeError):
            return None
        if len(centers) != k or not np.isfinite(centers.to_numpy()).all():
            return None
        return np.ascontiguousarray(centers.to_numpy(dtype=np.float64))

    def _make_assigner(
        self,
        Z: np.ndarray,
        labels: np.ndarray,
        geometry: ClusterGeometry | None,
        centers: np.ndarray | None,
        scale: float = 1.0,
    ) -> NeighborAssigner | CentroidAssigner:
        """The assigner of an HDBSCAN fit (`geometry`) or of the k-means fallback (`centers`)."""
        if geometry is not None:
            return NeighborAssigner(
                n_neighbors=self.assigner_neighbors,
                n_jobs=self.n_jobs,
                random_state=self.random_state,
            ).fit(Z, labels, geometry, count_scale=scale)
        if centers is None:
            raise ValueError("an assigner needs the HDBSCAN geometry or the cluster centres")
        return CentroidAssigner().fit(Z, labels, centers)

    def _holdout_agreement(
        self,
        Z: np.ndarray,
        labels: np.ndarray,
        geometry: ClusterGeometry | None,
        centers: np.ndarray | None,
    ) -> float | None:
        """Agreement with the fitted labels of an assigner indexed on 80% of the sample."""
        if not self.validate_assigner or len(Z) < 20:
            return None
        rng = np.random.default_rng(self.random_state + 1)
        perm = rng.permutation(len(Z))
        cut = int(len(Z) * 0.8)
        train, test = perm[:cut], perm[cut:]
        sub = None
        if geometry is not None:
            sub = ClusterGeometry(
                geometry.core_distances[train],
                geometry.birth_distances,
                geometry.densest_distances,
                geometry.min_samples,
            )
        assigner = self._make_assigner(Z[train], labels[train], sub, centers, cut / len(Z))
        predicted = assigner.predict(Z[test])
        return round(float(np.mean(predicted == labels[test])), 4)

    def _name_segments(
        self,
        sample: pd.DataFrame,
        labels: np.ndarray,
        previous: ClusterModel | None,
        previous_assignments: pd.DataFrame | None,
    ) -> ClusterMetrics:
        """Stable ids (matched to `previous`), names and profiles; returns stability metrics."""
        features = list(self.feature_names_in_)
        raw = sample[features].apply(pd.to_numeric, errors="coerce").astype(float)
        cluster_profiles = profiles.cluster_profiles(raw, labels, features)
        sample_labels = pd.Series(labels, index=self.sample_ids_)
        stability: ClusterMetrics = {}
        start = getattr(previous, "next_segment_number_", 1)
        if previous is None and previous_assignments is None:
            sizes = sample_labels[sample_labels >= 0].value_counts()
            match = stable_ids.fresh_ids(sizes, start)
            kept_names: dict[str, str] = {}
        else:
            prev_ids = self._previous_ids(sample, previous, previous_assignments)
            new_centers = self._label_centers(cluster_profiles)
            prev_centers = self._centers_in(previous, self) if previous is not None else None
            match = stable_ids.match_cluster_ids(
                prev_ids,
                sample_labels,
                prev_centers,
                new_centers,
                next_number=start,
                previous_segments=_previous_segments(previous),
            )
            prev_names = dict(getattr(previous, "segment_names_", {}) or {})
            kept_names = {sid: prev_names[sid] for sid in match.kept if sid in prev_names}
            renamed = _untrue_names(kept_names, match.ids, cluster_profiles)
            kept_names = {sid: n for sid, n in kept_names.items() if sid not in renamed}
            new_ids = sample_labels.map(match.ids).fillna(NOISE_ID)
            stab = stable_ids.stability(prev_ids, new_ids)
            stability = {
                "stability": stab["kept_share"],
                "stability_ari": stab["ari"],
                "stability_kept_share": stab["kept_share"],
                "stability_shared_clients": stab["shared_clients"],
                "segments_kept": match.kept,
                "segments_new": match.new,
                "segments_retired": match.retired,
                "segments_renamed": renamed,
                "segment_match": {
                    match.ids[k]: {"how": match.how[k], "score": match.score[k]} for k in match.ids
                },
            }
        self.segment_ids_ = dict(sorted(match.ids.items()))
        self.next_segment_number_ = match.next_number
        fresh = {k: v for k, v in cluster_profiles.items() if match.ids[k] not in kept_names}
        generated = profiles.name_profiles(fresh, taken=list(kept_names.values()))
        self.segment_names_ = {}
        self.profiles_ = {}
        for label, sid in self.segment_ids_.items():
            prof = cluster_profiles[label]
            name = kept_names.get(sid) or generated[label]
            self.segment_names_[sid] = name
            self.profiles_[sid] = {
                "segment_id": sid,
                "cluster_id": int(label),
                "name": name,
                "description": profiles.describe(prof),
                **prof,
            }
        self.profiles_[NOISE_ID] = {
            "segment_id": NOISE_ID,
            "cluster_id": NOISE,
            **profiles.noise_profile(raw, labels),
        }
        self.segment_names_[NOISE_ID] = profiles.NOISE_NAME
        return stability

    def _previous_ids(
        self,
        sample: pd.DataFrame,
        previous: ClusterModel | None,
        previous_assignments: pd.DataFrame | None,
    ) -> pd.Series:
        if previous_assignments is not None:
            missing = {CLIENT_ID, "segment_id"} - set(previous_assignments.columns)
            if missing:
                raise ValueError(f"previous_assignments lacks column(s) {sorted(missing)}")
            frame = previous_assignments.drop_duplicates(CLIENT_ID, keep="last")
            return pd.Series(
                frame["segment_id"].to_numpy(), index=frame[CLIENT_ID].astype(str).to_numpy()
            )
        if previous is None:
            raise ValueError("the previous segment ids need previous or previous_assignments")
        assigned = previous.predict(sample)
        # ids are matched on dense members: an attached outlier counts as noise
        loose = assigned.get("is_outlier", pd.Series(False, index=assigned.index)).to_numpy(bool)
        ids = np.where(loose, NOISE_ID, assigned["segment_id"].to_numpy(dtype=object))
        return pd.Series(ids, index=assigned[CLIENT_ID].to_numpy())

    def _label_centers(self, cluster_profiles: dict[int, dict[str, Any]]) -> pd.DataFrame:
        medians = pd.DataFrame({k: v["median"] for k, v in cluster_profiles.items()}).T
        Z = self.pipeline_.transform(medians.reindex(columns=list(self.feature_names_in_)))
        return pd.DataFrame(Z, index=medians.index)

    @staticmethod
    def _centers_in(source: ClusterModel, target: ClusterModel) -> pd.DataFrame:
        """`source`'s segment medians transformed by `target`'s pipeline (missing -> imputed)."""
        rows = {sid: p["median"] for sid, p in source.profiles_.items() if sid != NOISE_ID}
        if not rows:
            return pd.DataFrame()
        medians = pd.DataFrame(rows).T.reindex(columns=list(target.feature_names_in_))
        Z = target.pipeline_.transform(medians)
        return pd.DataFrame(Z, index=medians.index)


def _member_means(Z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per cluster label (0..max), the mean of its sample members (NaN for an empty label)."""
    k = int(labels.max()) + 1 if labels.size else 0
    centers = np.full((k, Z.shape[1]), np.nan)
    for label in range(k):
        members = labels == label
        if members.any():
            centers[label] = Z[members].mean(axis=0)
    return centers


def _untrue_names(
    names: Mapping[str, str], ids: Mapping[int, str], cluster_profiles: Mapping[int, Any]
) -> list[str]:
    """The segment ids among `names` (kept from the previous model) whose name the segment's
    statistics tonight no longer support: the id stays (campaigns are bound to it), the name
    is made again, since a name that says "store" of app clients misleads whoever reads it."""
    label_of = {sid: label for label, sid in ids.items()}
    untrue = []
    for sid, name in names.items():
        profile = cluster_profiles.get(label_of.get(sid, -1))
        if profile and profiles.check_name(name, profile, profile.get("population") or {}):
            untrue.append(sid)
    return sorted(untrue)


def _attach(
    Z: np.ndarray, nearest: np.ndarray | None, rows: np.ndarray, centers: np.ndarray
) -> np.ndarray:
    """The cluster each noise point (rows `rows` of the block, coordinates `Z`) joins: the
    cluster of its nearest fitted point in the density's own terms (`Assignment.nearest`),
    which follows a cluster's shape; the nearest centre where that point is noise itself."""
    target = np.full(len(rows), NOISE, dtype=np.int64) if nearest is None else nearest[rows]
    unknown = target < 0
    target[unknown] = _nearest(Z[unknown], centers)
    return target


def _nearest(Z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """The index of the nearest of `centers` for each row of `Z`."""
    if not len(Z):
        return np.zeros(0, dtype=np.int64)
    d2 = (Z**2).sum(1)[:, None] - 2 * Z @ centers.T + (centers**2).sum(1)
    return np.argmin(d2, axis=1).astype(np.int64)


def _merge_small(found: _Clustering, Z: np.ndarray, min_share: float) -> tuple[_Clustering, int]:
    """`found` with every cluster under `min_share` of the sample merged into the cluster with
    the nearest centre (member means), smallest first, while more than two remain; labels are
    renumbered 0.. in order. Returns the clustering and how many clusters were merged.

    An HDBSCAN geometry is carried over: a merged cluster is born at the loosest of its parts'
    birth distances and its densest core is the densest of theirs; k-means centres become the
    merged clusters' member means."""
    labels = found.labels.copy()
    n = len(labels)
    k = int(labels.max()) + 1 if n and labels.max() >= 0 else 0
    owner = np.arange(k)
    merged = 0
    while True:
        sizes = np.bincount(labels[labels >= 0], minlength=k)
        alive = np.flatnonzero(sizes > 0)
        small = [c for c in alive if sizes[c] < min_share * n]
        if not small or len(alive) <= 2:
            break
        c = min(small, key=lambda label: (sizes[label], label))
        centers = _member_means(Z, labels)
        others = alive[alive != c]
        target = int(others[np.argmin(np.linalg.norm(centers[others] - centers[c], axis=1))])
        labels[labels == c] = target
        owner[owner == c] = target
        merged += 1
    if not merged:
        return found, 0
    kept = np.unique(owner)
    new_of = np.full(k, -1, dtype=np.int64)
    new_of[kept] = np.arange(len(kept))
    relabelled = np.where(labels >= 0, new_of[np.maximum(labels, 0)], NOISE)
    geometry = found.geometry
    if geometry is not None:
        birth = np.array([geometry.birth_distances[owner == c].max() for c in kept])
        densest = np.array([geometry.densest_distances[owner == c].min() for c in kept])
        geometry = geometry._replace(birth_distances=birth, densest_distances=densest)
    merged_centers = None if found.centers is None else _member_means(Z, relabelled)
    return replace(found, labels=relabelled, centers=merged_centers, geometry=geometry), merged


def _keep_previous(
    Z: np.ndarray,
    labels: np.ndarray,
    conf: np.ndarray,
    before: np.ndarray,
    centers: np.ndarray,
    stickiness: float,
) -> None:
    """In place: clients assigned to another cluster than `before` keep `before` while its
    centre is within (1 + stickiness) times the distance to the new cluster's centre."""
    moved = np.flatnonzero((labels >= 0) & (before >= 0) & (before != labels))
    moved = moved[before[moved] < len(centers)]
    if not moved.size:
        return
    d_new = np.linalg.norm(Z[moved] - centers[labels[moved]], axis=1)
    d_old = np.linalg.norm(Z[moved] - centers[before[moved]], axis=1)
    keep = np.isfinite(d_old) & (d_old <= (1 + stickiness) * d_new)
    kept = moved[keep]
    labels[kept] = before[kept]
    # less sure than a client who is nearest to its segment: scaled by how much nearer it is
    conf[kept] *= np.clip(d_new[keep] / np.maximum(d_old[keep], 1e-12), 0.0, 1.0)


def gap_statistic(
    Z: np.ndarray,
    ks: Sequence[int],
    references: int,
    rng: np.random.Generator,
    random_state: int,
) -> dict[int, float]:
    """Gap statistic per k: mean log k-means inertia of uniform reference data (in the box of
    the sample's principal axes) minus the sample's log inertia (Tibshirani et al. 2001)."""
    centered = Z - Z.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    rotated = centered @ vt.T
    low, high = rotated.min(axis=0), rotated.max(axis=0)
    refs = [rng.uniform(low, high, size=rotated.shape) for _ in range(references)]
    gaps = {}
    for k in ks:
        own = KMeans(k, n_init=4, random_state=random_state).fit(Z).inertia_
        ref = [KMeans(k, n_init=1, random_state=random_state).fit(R).inertia_ for R in refs]
        gaps[k] = float(np.mean(np.log(np.maximum(ref, 1e-12))) - np.log(max(own, 1e-12)))
    return gaps


def _reselect(fitted: hdbscan.HDBSCAN, method: str, mcs: int) -> hdbscan.HDBSCAN | None:
    """`fitted` with another cluster selection on its single-linkage tree (no refit), or None.

    Uses hdbscan 0.8.x internals (`_tree_to_labels`, `_single_linkage_tree`); on any change
    there it returns None and the caller refits instead.
    """
    try:
        from hdbscan.hdbscan_ import _tree_to_labels

        labels, probabilities, persistence, condensed, _ = _tree_to_labels(
            None, fitted._single_linkage_tree, mcs, method
        )
        alternative = copy.copy(fitted)
        alternative.labels_ = labels
        alternative.probabilities_ = probabilities
        alternative.cluster_persistence_ = persistence
        alternative._condensed_tree = condensed
        alternative._relative_validity = None
        alternative._outlier_scores = None
        alternative._prediction_data = None
        alternative.cluster_selection_method = method
        alternative.relative_validity_  # noqa: B018 - computed now, fails here if unsupported
        return alternative
    except Exception:
        return None


def _previous_k(previous: ClusterModel | None) -> int | None:
    km = getattr(previous, "kmeans_", None) if previous is not None else None
    return int(km.n_clusters) if km is not None else None


def _previous_segments(previous: ClusterModel | None) -> list[str] | None:
    if previous is None:
        return None
    return [sid for sid in getattr(previous, "profiles_", {}) if sid != NOISE_ID]


def _dbcv(fitted: hdbscan.HDBSCAN) -> float | None:
    try:
        value = float(fitted.relative_validity_)
    except (AttributeError, ValueError, ZeroDivisionError, IndexError):
        return None
    return round(value, 4) if np.isfinite(value) else None


def _check_frame(X: pd.DataFrame, features: list[str], require_rows: bool = True) -> None:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(X).__name__}")
    if CLIENT_ID not in X.columns:
        raise ValueError(f"the feature frame has no {CLIENT_ID!r} column")
    missing = [f for f in features if f not in X.columns]
    if missing:
        raise ValueError(f"the feature frame lacks feature column(s): {', '.join(missing)}")
    if require_rows and len(X) == 0:
        raise ValueError("the feature frame has no rows")
    if X[CLIENT_ID].isna().any():
        raise ValueError(f"{CLIENT_ID} has {int(X[CLIENT_ID].isna().sum())} null value(s)")
    if require_rows and X[CLIENT_ID].duplicated().any():
        dup = X.loc[X[CLIENT_ID].duplicated(), CLIENT_ID].iloc[0]
        raise ValueError(f"{CLIENT_ID} is not unique (e.g. {dup!r})")


def _numeric_block(X: pd.DataFrame, names: list[str]) -> np.ndarray:
    _check_columns(X, names)
    return X[names].to_numpy(dtype=np.float64, na_value=np.nan)


def _check_columns(X: pd.DataFrame, names: list[str]) -> None:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(X).__name__}")
    missing = [n for n in names if n not in X.columns]
    if missing:
        raise ValueError(f"missing feature column(s): {', '.join(missing)}")
    bad = [
        n
        for n in names
        if not (pd.api.types.is_numeric_dtype(X[n]) or pd.api.types.is_bool_dtype(X[n]))
    ]
    if bad:
        raise ValueError(f"feature column(s) are not numeric: {', '.join(bad)}")


def _sample(X: pd.DataFrame, size: int, random_state: int) -> pd.DataFrame:
    """A sample independent of row order: clients sorted by id, then drawn with the seed."""
    ordered = X.assign(**{CLIENT_ID: X[CLIENT_ID].astype(str)}).sort_values(
        CLIENT_ID, kind="stable"
    )
    if len(ordered) <= size:
        return ordered.reset_index(drop=True)
    return ordered.iloc[_sample_positions(len(ordered), size, random_state)].reset_index(drop=True)


def _sample_positions(n: int, size: int, random_state: int) -> np.ndarray:
    """Sorted positions of `size` of `n` clients ordered by id, drawn with the seed."""
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=size, replace=False))
