"""Combine the layers into one membership row per client: override rule, else cluster, else noise.

Precedence (DESIGN.md, segment_membership): the highest-priority matching business rule wins
(source ``rule``, confidence 1.0, reason: the client's own values of what the rule reads, in
words, "kept in the segment: ..." for a member its `stay_when` keeps, given the last published
membership); a client no rule takes keeps its behavioral cluster (source ``cluster``, the
cluster's confidence, reason: the features where the client is most like its segment and
unlike the rest, with its values, from `segmentation.reasons`), or, outside every dense
cluster, the one it was attached to (source ``cluster_outlier``, a low confidence, a reason
saying it fits loosely); a client left outside every cluster is ``noise``. Every client also
gets a lifecycle stage from the lifecycle rules and its journey stage from the features.
A member of a segment may be held out of its campaigns (`holdout`, from `segmentation.holdout`
and the config's `holdout` section; noise never is).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date

import numpy as np
import pandas as pd

from configs.schema import HoldoutConfig
from segmentation.holdout import holdout_flags
from segmentation.reasons import rule_reasons
from segmentation.rules import LIFECYCLE_COLUMN, RuleSet, SegmentMatch

# The membership columns this layer produces: the store publishes exactly these.
MEMBERSHIP_COLUMNS = (
    "client_id",
    "segment_id",
    "segment_name",
    "segment_source",
    "cluster_id",
    "confidence",
    "lifecycle_stage",
    "journey_stage",
    "reason",
    "holdout",
)
# The segment definition columns (`segments` table, before sizes and run ids).
SEGMENT_COLUMNS = ("segment_id", "segment_name", "kind", "definition", "model_version")
CLUSTER_COLUMNS = (
    "client_id",
    "cluster_id",
    "segment_id",
    "segment_name",
    "confidence",
    "is_noise",
)
NOISE_SEGMENT_ID = "noise"
NOISE_SEGMENT_NAME = "unclustered"
NOISE_REASON = "no rule matched; outside every cluster"
OUTLIER_NOTE = "a loose fit: outside the segment's dense core, nearer to it than to any other"
# Values of segment_source (the store checks them).
SEGMENT_SOURCES = ("rule", "cluster", "cluster_outlier", "noise")
RULE_CONFIDENCE = 1.0
JOURNEY_COLUMN = "current_stage"


def assign_segments(
    features: pd.DataFrame,
    clusters: pd.DataFrame | None,
    rules: RuleSet,
    scores: pd.DataFrame | None = None,
    cluster_reasons: Mapping[str, str] | None = None,
    previous: pd.DataFrame | None = None,
    as_of: date | None = None,
    *,
    holdout: HoldoutConfig | None = None,
) -> pd.DataFrame:
    """One membership row per client of `features`, in the order of `features`.

    The highest-priority matching segment rule wins; a client no rule takes keeps its
    cluster; a client outside every cluster is noise. Every client also gets a lifecycle
    stage (lifecycle rules) and its journey stage (the features' current_stage).

    Parameters
    ----------
    features : pandas.DataFrame
        client_id (unique, no nulls), the features the rules read, and current_stage.
    clusters : pandas.DataFrame or None
        One row per client with CLUSTER_COLUMNS (optionally `reason`; rows of other clients
        are ignored); None means no cluster model yet (everyone a rule does not take is noise).
    rules : RuleSet
        The lifecycle and segment rules.
    scores : pandas.DataFrame, optional
        client_id plus CLTV scores, joined in before the rules run (a client without scores
        reads null; scores win over same-named feature columns).
    cluster_reasons : mapping of str to str, optional
        segment_id -> the cluster's defining features, e.g. from the clustering profiles; it
        takes precedence over a `reason` column in `clusters`.
    previous : pandas.DataFrame, optional
        The last published membership (client_id, segment_id), which the rules' `stay_when`
        conditions need; None means no previous state.
    as_of : datetime.date, optional
        The as-of day: the reasons say dates ("no purchase since 2026-05-02") rather than
        days.
    holdout : configs.schema.HoldoutConfig, optional
        Who is held out of each segment's campaigns (share, salt, per-segment shares; see
        `segmentation.holdout.holdout_flags`); None holds nobody out.

    Returns
    -------
    pandas.DataFrame
        Exactly MEMBERSHIP_COLUMNS; text columns have pandas' `str` dtype (missing: NaN),
        cluster_id is nullable Int64 when cluster ids are numeric, holdout is bool (never
        True for noise).

    Raises
    ------
    ValueError
        A required column is missing, client ids are null or duplicated, a client has no
        cluster row, or cluster segment ids collide with rule segment ids.
    RuleEvaluationError
        A rule cannot be evaluated on the frame (a column is missing or has the wrong type).
    """
    _require(features, ("client_id", JOURNEY_COLUMN), "features")
    ids = features["client_id"]
    _unique(ids, "features")
    frame = _with_scores(features, scores)

    stage, _ = rules.assign_lifecycle(frame)
    ruled = frame.assign(**{LIFECYCLE_COLUMN: stage})
    match = rules.match_segments(ruled, _previous_segments(previous, ids))
    texts = rule_reasons(rules, ruled, match.segment_id, match.stayed, as_of)
    cluster = _aligned_clusters(clusters, ids)
    _check_no_clash(rules, cluster)
    out = pd.DataFrame(
        {
            "client_id": ids.to_numpy(dtype=object),
            **_layers(rules, match, cluster, cluster_reasons, texts),
            "cluster_id": _cluster_ids(cluster),
            "lifecycle_stage": stage,
            "journey_stage": features[JOURNEY_COLUMN].to_numpy(dtype=object),
        }
    )
    out["holdout"] = _holdout(out, holdout)
    text = [c for c in MEMBERSHIP_COLUMNS if c not in ("cluster_id", "confidence", "holdout")]
    return out.astype(dict.fromkeys(text, "str")).loc[:, list(MEMBERSHIP_COLUMNS)]


def _holdout(membership: pd.DataFrame, holdout: HoldoutConfig | None) -> np.ndarray:
    """Each member's holdout flag; noise rows are never held out."""
    if holdout is None or not len(membership):
        return np.zeros(len(membership), dtype=bool)
    segment = membership["segment_id"].to_numpy(dtype=object).copy()
    segment[(membership["segment_source"] == "noise").to_numpy()] = None
    return holdout_flags(
        membership["client_id"].to_numpy(dtype=object),
        segment,
        share=holdout.share,
        salt=holdout.salt,
        segment_shares=holdout.segments,
    )


def _check_no_clash(rules: RuleSet, cluster: pd.DataFrame) -> None:
    """Fail when a cluster segment id is also a rule segment id."""
    rule_ids = {rule.segment_id for rule in rules.segment_rules if rule.segment_id is not None}
    clash = rule_ids & set(cluster.loc[~cluster["is_noise"], "segment_id"].unique())
    if clash:
        raise ValueError(f"cluster segment ids collide with rule segment ids: {sorted(clash)}")


def _layers(
    rules: RuleSet,
    match: SegmentMatch,
    cluster: pd.DataFrame,
    cluster_reasons: Mapping[str, str] | None,
    rule_texts: np.ndarray,
) -> dict[str, np.ndarray]:
    """segment_id, segment_name, segment_source, confidence and reason per client: the rule
    that takes the client, else its cluster, else noise."""
    rule_id = match.segment_id
    by_rule = pd.notna(rule_id)
    in_cluster = ~cluster["is_noise"].to_numpy(dtype=bool) & ~by_rule
    noise = ~by_rule & ~in_cluster
    outlier = in_cluster & cluster["is_outlier"].to_numpy(dtype=bool)

    names = {rule.segment_id: rule.name for rule in rules.segment_rules}
    segment_id = np.where(by_rule, rule_id, cluster["segment_id"].to_numpy(dtype=object))
    segment_id[noise] = NOISE_SEGMENT_ID
    segment_name = cluster["segment_name"].to_numpy(dtype=object).copy()
    segment_name[by_rule] = pd.Series(rule_id[by_rule], dtype=object).map(names).to_numpy()
    segment_name[noise] = NOISE_SEGMENT_NAME
    source = np.full(len(rule_id), "cluster", dtype=object)
    source[by_rule] = "rule"
    source[outlier] = "cluster_outlier"
    source[noise] = "noise"

    confidence = cluster["confidence"].to_numpy(dtype=float, na_value=np.nan).copy()
    confidence[by_rule] = RULE_CONFIDENCE
    confidence = np.clip(np.nan_to_num(confidence, nan=0.0), 0.0, 1.0)

    reason = np.full(len(rule_id), NOISE_REASON, dtype=object)
    reason[by_rule] = rule_texts[by_rule]
    reason[in_cluster] = _cluster_reasons(cluster.loc[in_cluster], cluster_reasons)
    reason[outlier] = (
        "cluster "
        + cluster.loc[outlier, "segment_name"].astype(str).to_numpy(dtype=object)
        + (" (" + OUTLIER_NOTE + ")")
    )
    return {
        "segment_id": segment_id,
        "segment_name": segment_name,
        "segment_source": source,
        "confidence": confidence,
        "reason": reason,
    }


def segment_definitions(rules: RuleSet) -> pd.DataFrame:
    """Rows for the `segments` table describing the rule segments (kind 'rule').

    `definition` is JSON with the condition, priority, description and the names it reads.
    """
    rows = [
        {
            "segment_id": rule.segment_id,
            "segment_name": rule.name,
            "kind": "rule",
            "definition": json.dumps(
                {
                    "when": rule.when,
                    "priority": rule.priority,
                    "description": rule.description,
                    "features": sorted(rule.features),
                },
                sort_keys=True,
            ),
        }
        for rule in rules.segment_rules
    ]
    return pd.DataFrame(rows, columns=["segment_id", "segment_name", "kind", "definition"])


def _require(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} has no column(s) {missing}")


def _unique(ids: pd.Series, what: str) -> None:
    if ids.isna().any():
        raise ValueError(f"{what}: {int(ids.isna().sum())} rows have no client_id")
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        examples = ", ".join(map(str, duplicated.unique()[:3]))
        raise ValueError(f"{what}: {len(duplicated)} duplicate client_id rows (e.g. {examples})")


def _with_scores(features: pd.DataFrame, scores: pd.DataFrame | None) -> pd.DataFrame:
    if scores is None:
        return features
    _require(scores, ("client_id",), "scores")
    _unique(scores["client_id"], "scores")
    columns = [column for column in scores.columns if column != "client_id"]
    aligned = scores.set_index("client_id")[columns].reindex(features["client_id"].to_numpy())
    # Scores win over same-named columns already in the features.
    base = features.drop(columns=[c for c in columns if c in features.columns])
    return base.assign(**{column: aligned[column].to_numpy() for column in columns})


def _previous_segments(previous: pd.DataFrame | None, ids: pd.Series) -> np.ndarray | None:
    """Each client's segment id in the previous membership, aligned with `ids` (None if absent)."""
    if previous is None:
        return None
    _require(previous, ("client_id", "segment_id"), "previous")
    _unique(previous["client_id"], "previous")
    position = pd.Index(previous["client_id"]).get_indexer(ids)
    segments = previous["segment_id"].to_numpy(dtype=object)
    return np.where(position >= 0, segments[position], np.array(None, dtype=object))


def _aligned_clusters(clusters: pd.DataFrame | None, ids: pd.Series) -> pd.DataFrame:
    n = len(ids)
    if clusters is None:
        return pd.DataFrame(
            {
                "cluster_id": pd.array([pd.NA] * n, dtype="Int64"),
                "segment_id": np.full(n, None, dtype=object),
                "segment_name": np.full(n, None, dtype=object),
                "confidence": np.zeros(n),
                "is_noise": np.ones(n, dtype=bool),
                "is_outlier": np.zeros(n, dtype=bool),
                "reason": np.full(n, None, dtype=object),
            }
        )
    _require(clusters, CLUSTER_COLUMNS, "clusters")
    _unique(clusters["client_id"], "clusters")
    indexed = clusters.set_index("client_id")
    position = indexed.index.get_indexer(pd.Index(ids))  # hash; isin on arrow strings is slow
    absent = position < 0
    if absent.any():
        examples = ", ".join(map(str, ids[absent].iloc[:3]))
        raise ValueError(
            f"clusters: {int(absent.sum())} clients have no cluster row (e.g. {examples})"
        )
    aligned = indexed.iloc[position].reset_index(drop=True)
    if "reason" not in aligned.columns:
        aligned["reason"] = None
    if "is_outlier" not in aligned.columns:  # an assigner that attaches nobody
        aligned["is_outlier"] = False
    aligned["is_outlier"] = aligned["is_outlier"].astype(object).fillna(False).astype(bool)
    flagged = aligned["is_noise"].astype(object).fillna(True).astype(bool).to_numpy()
    aligned["is_noise"] = flagged | aligned["segment_id"].isna().to_numpy()
    return aligned


def _cluster_ids(cluster: pd.DataFrame) -> pd.Series:
    values = cluster["cluster_id"].where(~cluster["is_noise"])
    if pd.api.types.is_numeric_dtype(cluster["cluster_id"].dtype) or values.isna().all():
        return values.astype("Int64")
    return values.astype(object).where(values.notna(), None)


def _cluster_reasons(cluster: pd.DataFrame, reasons: Mapping[str, str] | None) -> np.ndarray:
    text = cluster["segment_id"].map(dict(reasons or {})).astype(object)
    own = cluster["reason"].astype(object)
    text = text.where(text.notna(), own.where(own.astype(str).str.len() > 0))
    label = "cluster " + cluster["segment_name"].astype(str)
    return label.where(text.isna(), label + ": " + text.astype(str)).to_numpy(dtype=object)
