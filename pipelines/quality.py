"""Segment quality on generated data with known truth: persona recovery, shift response, stability.

Used by tests/segmentation/test_quality.py and benchmarks/quality_report.py. The nightly steps
(pipelines.steps) run exactly as in production: features, CLTV scores, clusters, rule layer.
Dates are relative to the generator's planned shift (truth.parquet): `before` is the day before
the shift, `earlier` a week before that, `after` the shift plus `after_days`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from configs import EngineConfig, load_config
from features.events import load_events
from pipelines import steps
from segmentation.rules import RuleSet

# A client with an action of their own within this many days before the shift was active then.
ACTIVE_DAYS = 30


@dataclass
class Night:
    """One nightly run: features, scores, the cluster bundle and the published membership."""

    as_of: date
    features: pd.DataFrame
    scores: pd.DataFrame
    bundle: steps.ClusterBundle
    membership: pd.DataFrame


@dataclass
class QualityReport:
    """The figures of `measure_quality` (rates are shares of clients in [0, 1])."""

    ari_segments: float
    ari_clusters: float
    noise_share: float
    quality: float | None
    quality_metric: str | None
    fallback: str | None
    n_clusters: int
    sizes: dict[str, int]
    refit_stability_unshifted: float
    change_predict: dict[str, float]  # same model after the shift: shifted / unshifted
    change_refit: dict[str, float]  # refit after the shift: shifted / unshifted
    # Shifted clients whose own activity stops at the shift (persona_after lapsed): the share
    # that left the segment they had the day before the shift, same model / refit.
    lapse_moved: dict[str, float] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)


def measure_quality(
    data_dir: str | Path,
    config: EngineConfig | None = None,
    after_days: int = 60,
    week: int = 7,
    supervised_ceiling: bool = False,
) -> QualityReport:
    """Run nights at shift-1-week, shift-1 and shift+after_days on a generated dataset.

    The shift-1 night refits with the earlier night as `previous` (identity matching); its
    final segments give the ARI against persona_before. After the shift the clients are
    segmented by the same model (predict) and by a refit; the change rates compare each
    client's segment with its segment the day before the shift.

    Ceilings of the persona ARI, in `extra`: `ari_personas_with_rules` puts the true personas
    in place of the clusters under the same rule overrides (the best any clustering could do on
    this measure); with `supervised_ceiling`, `ari_supervised*` replace the clusters by a
    classifier trained on the personas (5-fold cross-validated predictions on the clustering
    features), a bound no unsupervised method is expected to pass.
    """
    config = config or load_config()
    data_dir = Path(data_dir)
    truth = pd.read_parquet(data_dir / "truth.parquet").set_index("client_id")
    shift = _first_shift(truth, data_dir)
    con = duckdb.connect()
    load_events(con, str(data_dir / "events"))
    nights = _Nights(con, config)

    earlier = nights.run(shift - timedelta(days=1 + week))
    before = nights.run(shift - timedelta(days=1), previous=earlier)
    personas = truth.loc[before.membership["client_id"], "persona_before"].to_numpy()
    figures = _before_shift(truth, earlier, before, personas, supervised_ceiling)
    metrics = before.bundle.model.metrics_
    sizes = before.membership["segment_id"].value_counts().sort_index()

    same_model = nights.run(shift + timedelta(days=after_days), previous=before, refit=False)
    refitted = nights.run(shift + timedelta(days=after_days), previous=before)
    return QualityReport(
        ari_segments=figures.ari_segments,
        ari_clusters=figures.ari_clusters,
        noise_share=float(metrics["noise_share"]),
        quality=metrics.get("quality"),
        quality_metric=metrics.get("quality_metric"),
        fallback=metrics.get("fallback"),
        n_clusters=int(metrics["n_clusters"]),
        sizes={str(k): int(v) for k, v in sizes.items()},
        refit_stability_unshifted=figures.stability,
        change_predict=_change_rates(before, same_model, truth),
        change_refit=_change_rates(before, refitted, truth),
        lapse_moved={
            "same_model": _lapse_moved(before, same_model, truth),
            "refit": _lapse_moved(before, refitted, truth),
        },
        extra={
            **figures.ceilings,
            "refit_stability_steady": figures.stability_steady,
            "clients_before": len(personas),
            "shift_date": shift.isoformat(),
            "segment_sources": before.membership["segment_source"].value_counts().to_dict(),
            "changes_by_source": {
                "same_model": _changes_by_source(before.membership, same_model.membership, truth),
                "refit": _changes_by_source(before.membership, refitted.membership, truth),
            },
            "k_selection": _k_selection(
                {
                    "earlier": earlier.bundle.model.metrics_,
                    "before": metrics,
                    "after_refit": refitted.bundle.model.metrics_,
                }
            ),
        },
    )


def _first_shift(truth: pd.DataFrame, data_dir: Path) -> date:
    """The planned shift date of the generated data (the earliest, should there be several)."""
    shift_dates = truth["shift_date"].dropna()
    if shift_dates.empty:
        raise ValueError(f"{data_dir}/truth.parquet has no shifted client")
    return pd.Timestamp(shift_dates.min()).date()


class _Nights:
    """Runs nights on one connection with the production steps; the rules load once."""

    def __init__(self, con: duckdb.DuckDBPyConnection, config: EngineConfig) -> None:
        self.con = con
        self.config = config
        self.rules: RuleSet | None = None

    def run(self, as_of: date, previous: Night | None = None, refit: bool = True) -> Night:
        """One night as of `as_of`: refit the clusters (matched to `previous`), or with
        `refit=False` segment with the previous night's model."""
        con, config = self.con, self.config
        features = steps.compute_features(con, as_of, config)
        self.rules = self.rules or steps.load_ruleset(config)
        btyd = steps.btyd_inputs(features)
        scores = steps.score_clients(
            steps.fit_cltv(con, as_of, btyd, config), features, config, "q"
        )
        if refit or previous is None:
            bundle = steps.fit_clusters(
                features,
                as_of,
                config,
                previous.bundle if previous else None,
                previous.membership if previous else None,
            )
        else:
            bundle = previous.bundle
        seg = steps.segment_clients(
            features,
            scores,
            bundle,
            self.rules,
            "q",
            "q",
            previous.membership if previous else None,
            as_of,
        )
        return Night(as_of, features, scores, bundle, seg.membership)


@dataclass(frozen=True)
class _BeforeShift:
    """The figures of the night before the shift."""

    ari_segments: float
    ari_clusters: float
    stability: float  # unshifted clients that kept their segment since the earlier night
    ceilings: dict[str, float]
    stability_steady: float = float("nan")  # the same for steady clients (`_steady`)


def _before_shift(
    truth: pd.DataFrame,
    earlier: Night,
    before: Night,
    personas: np.ndarray,
    supervised_ceiling: bool,
) -> _BeforeShift:
    """Persona recovery (ARI of segments and of clusters alone), the ceilings, and stability."""
    ids = before.membership["client_id"]
    clusters = before.bundle.predict(before.features).set_index("client_id").loc[ids]
    unshifted = ~truth["shifted"]
    kept = _kept(earlier.membership, before.membership)
    stability = float(kept[unshifted.reindex(kept.index).to_numpy()].mean())
    steady = _steady(truth, earlier.as_of, before.as_of).reindex(kept.index).to_numpy(bool)

    by_rule = (before.membership["segment_source"] == "rule").to_numpy()
    rule_ids = before.membership["segment_id"].to_numpy(dtype=object)
    ceilings = {
        "ari_personas_with_rules": round(
            adjusted_rand_score(personas, np.where(by_rule, rule_ids, personas)), 4
        )
    }
    if supervised_ceiling:
        predicted = _supervised_personas(before, personas)
        ceilings["ari_supervised"] = round(adjusted_rand_score(personas, predicted), 4)
        ceilings["ari_supervised_with_rules"] = round(
            adjusted_rand_score(personas, np.where(by_rule, rule_ids, predicted)), 4
        )
    return _BeforeShift(
        ari_segments=round(adjusted_rand_score(personas, before.membership["segment_id"]), 4),
        ari_clusters=round(adjusted_rand_score(personas, clusters["segment_id"]), 4),
        stability=round(stability, 4),
        ceilings=ceilings,
        stability_steady=round(float(kept[steady].mean()), 4),
    )


def _k_selection(metrics: dict[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
    """Per night, from its cluster metrics: how k-means chose k (k, initialization, scores)."""
    return {
        name: {key: m.get(key) for key in ("kmeans_k", "kmeans_init", "kmeans_k_scores")}
        for name, m in metrics.items()
    }


def _supervised_personas(night: Night, personas: np.ndarray) -> np.ndarray:
    """Cross-validated persona predictions of a logistic regression on the clustering inputs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    model = night.bundle.model
    frame = night.features.set_index("client_id").loc[night.membership["client_id"]]
    Z = model.pipeline_.transform(frame.reset_index())
    classifier = LogisticRegression(max_iter=3000)
    return cross_val_predict(classifier, Z, personas, cv=5)


def _kept(previous: pd.DataFrame, current: pd.DataFrame) -> pd.Series:
    """Per client present in both memberships: whether the segment id is the same."""
    merged = previous[["client_id", "segment_id"]].merge(
        current[["client_id", "segment_id"]], on="client_id", suffixes=("_prev", "")
    )
    return pd.Series(
        (merged["segment_id"] == merged["segment_id_prev"]).to_numpy(),
        index=merged["client_id"].to_numpy(),
    )


def _change_rates(before: Night, after: Night, truth: pd.DataFrame) -> dict[str, float]:
    """The share of clients whose segment changed between the two nights: shifted, unshifted,
    and steady (unshifted, and no dropout of their own between the nights: no change at all)."""
    changed = ~_kept(before.membership, after.membership)
    shifted = truth["shifted"].reindex(changed.index).to_numpy(dtype=bool)
    steady = _steady(truth, before.as_of, after.as_of).reindex(changed.index).to_numpy(bool)
    return {
        "shifted": round(float(np.mean(changed[shifted])), 4),
        "unshifted": round(float(np.mean(changed[~shifted])), 4),
        "steady": round(float(np.mean(changed[steady])), 4),
    }


def _steady(truth: pd.DataFrame, start: date, end: date) -> pd.Series:
    """Per client: not shifted, and not dropping out (the generator's own lifetime) in
    (start, end]: a client whose behaviour did not change between the two days."""
    dropout = pd.to_datetime(truth["dropout_date"])
    dropped = (dropout > pd.Timestamp(start)) & (dropout <= pd.Timestamp(end))
    return ~truth["shifted"] & ~dropped.fillna(False)


def _lapse_moved(before: Night, after: Night, truth: pd.DataFrame) -> float:
    """The share of the clients who lapse at the shift (shifted to persona `lapsed`, and active
    then: an action of their own within ACTIVE_DAYS before it) whose segment is no longer the
    one they had the day before."""
    changed = ~_kept(before.membership, after.membership)
    recency = before.features.set_index("client_id")["recency_days"]
    active = recency.reindex(changed.index).to_numpy() <= ACTIVE_DAYS
    lapsers = truth["shifted"] & (truth["persona_after"] == "lapsed")
    group = lapsers.reindex(changed.index).to_numpy(dtype=bool) & active
    return round(float(np.mean(changed[group])), 4) if group.any() else float("nan")


def _changes_by_source(
    previous: pd.DataFrame, current: pd.DataFrame, truth: pd.DataFrame
) -> dict[str, dict[str, float]]:
    """Per group (shifted / unshifted): the share of clients whose segment changed, by the
    source of the segment before and after (e.g. "cluster->rule"): where the changes come from."""
    cols = ["client_id", "segment_id", "segment_source"]
    merged = previous[cols].merge(current[cols], on="client_id", suffixes=("_prev", ""))
    shifted = truth["shifted"].reindex(merged["client_id"]).to_numpy(dtype=bool)
    changed = (merged["segment_id"] != merged["segment_id_prev"]).to_numpy()
    kind = (merged["segment_source_prev"] + "->" + merged["segment_source"]).to_numpy()
    out = {}
    for label, group in (("shifted", shifted), ("unshifted", ~shifted)):
        kinds = pd.Series(kind[group & changed]).value_counts() / max(int(group.sum()), 1)
        out[label] = {str(k): round(float(v), 4) for k, v in kinds.sort_index().items()}
    return out
