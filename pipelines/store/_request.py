"""The publish request and result, their validation, and conversion to Arrow for bulk loading."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from configs import ID_TYPES
from models.cltv import SCORE_COLUMNS
from models.scoring import SCORE_SOURCES
from pipelines.store._analyses import (
    HOLDOUT_OUTCOMES_INPUT,
    JOURNEY_DROPOFFS_INPUT,
    JOURNEY_STAGES_INPUT,
    JOURNEY_TOUCHPOINTS_INPUT,
    validate_analyses,
)
from pipelines.store._common import PublishInputError
from pipelines.store._frames import flags, select_columns, to_arrow
from pipelines.store._schema import IDENTITY_MAP, IDENTITY_MERGES, QUARANTINE_RAW
from segmentation.combine import MEMBERSHIP_COLUMNS, SEGMENT_COLUMNS, SEGMENT_SOURCES

__all__ = [
    "HOLDOUT_OUTCOMES_INPUT",
    "IDENTITY_MAP_INPUT",
    "IDENTITY_MERGES_INPUT",
    "JOURNEY_DROPOFFS_INPUT",
    "JOURNEY_STAGES_INPUT",
    "JOURNEY_TOUCHPOINTS_INPUT",
    "MEMBERSHIP_INPUT",
    "MEMBERSHIP_OPTIONAL",
    "RUN_INFO_KEYS",
    "SCORES_INPUT",
    "SEGMENTS_INPUT",
    "CleanRequest",
    "PublishRequest",
    "PublishResult",
    "RunInfo",
    "check_run_identity",
    "check_run_info",
    "naive_utc",
    "to_arrow",
    "validate_request",
]

RunInfo = dict[str, int | str | None]
"""Checked run_info: every key of RUN_INFO_KEYS, counts as int, versions and ids as text."""

RUN_INFO_KEYS = (
    "events_read",
    "events_quarantined",
    "cluster_model_version",
    "cltv_model_version",
    "mlflow_run_id",
)
MEMBERSHIP_INPUT = list(MEMBERSHIP_COLUMNS)
# Added by schema version 5: a producer written before it may leave it out (false then).
MEMBERSHIP_OPTIONAL = ("holdout",)
SEGMENTS_INPUT = list(SEGMENT_COLUMNS)
SCORES_INPUT = list(SCORE_COLUMNS)
# Added by schema version 3: a producer written before it may leave them out (null then).
SCORES_OPTIONAL = ("p_purchase", "cltv_model")
SEGMENT_KINDS = ("cluster", "rule", "noise")
# Identity stitching (schema version 4): the store adds as_of and run_id.
IDENTITY_MAP_INPUT = ["id_type", "id_value", "person_id", "first_seen", "last_seen"]
IDENTITY_MERGES_INPUT = ["merged_id", "into_id", "evidence"]


@dataclass
class PublishRequest:
    """Everything one run publishes. Frames hold the columns named in docs/store.md;
    extra columns are ignored. `scores` and `quarantine` may be empty or None.

    Identity stitching: `identity_map` (IDENTITY_MAP_INPUT; a pandas DataFrame or a pyarrow
    Table) replaces the `identity_map` table, None (a run that did no stitching) empties it;
    `identity_merges` (IDENTITY_MERGES_INPUT) are tonight's merges: appended to the log, and
    the merged ids' history follows their person (docs/store.md).

    Analyses (schema version 5): `journey_stages`, `journey_touchpoints`, `journey_dropoffs`
    (JOURNEY_*_INPUT) and `holdout_outcomes` (HOLDOUT_OUTCOMES_INPUT) become tonight's rows
    of their tables; None publishes none for this as_of (rows of other dates are kept)."""

    run_id: str
    as_of: date
    started_at: datetime
    membership: pd.DataFrame
    segments: pd.DataFrame
    scores: pd.DataFrame | None = None
    quarantine: pd.DataFrame | None = None
    run_info: Mapping[str, object] = field(default_factory=dict)
    identity_map: pd.DataFrame | pa.Table | None = None
    identity_merges: pd.DataFrame | pa.Table | None = None
    journey_stages: pd.DataFrame | None = None
    journey_touchpoints: pd.DataFrame | None = None
    journey_dropoffs: pd.DataFrame | None = None
    holdout_outcomes: pd.DataFrame | None = None


@dataclass(frozen=True)
class PublishResult:
    """What a publish did: counts of clients and transitions, replaced runs, timings."""

    run_id: str
    as_of: date
    clients: int
    segments: int
    entries: int
    exits: int
    moves: int
    lifecycle_changes: int
    history_opened: int
    history_closed: int
    replaced_run_ids: tuple[str, ...]
    seconds: float
    stage_seconds: dict[str, float]
    merges: int = 0  # identity_merges rows appended


def check_run_identity(
    run_id: object, as_of: object, started_at: object
) -> tuple[str, date, datetime]:
    """Validate run_id, as_of and started_at; return started_at as naive UTC."""
    if not isinstance(run_id, str) or not run_id.strip() or len(run_id) > 200:
        raise PublishInputError(
            f"run_id must be a non-empty string of at most 200 chars: {run_id!r}"
        )
    if isinstance(as_of, datetime) or not isinstance(as_of, date):
        raise PublishInputError(f"as_of must be a datetime.date (not a datetime): {as_of!r}")
    if not isinstance(started_at, datetime):
        raise PublishInputError(f"started_at must be a datetime: {started_at!r}")
    return run_id, as_of, naive_utc(started_at)


def check_run_info(run_info: Mapping[str, object] | None) -> RunInfo:
    """Known run_info keys only; counts must be non-negative integers."""
    info = dict(run_info or {})
    unknown = sorted(set(info) - set(RUN_INFO_KEYS))
    if unknown:
        raise PublishInputError(
            f"run_info has unknown key(s) {unknown}; known keys: {', '.join(RUN_INFO_KEYS)}"
        )
    clean: RunInfo = dict.fromkeys(RUN_INFO_KEYS)
    for key in ("events_read", "events_quarantined"):
        value = info.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise PublishInputError(f"run_info[{key!r}] must be a non-negative int: {value!r}")
            clean[key] = int(value)
    for key in ("cluster_model_version", "cltv_model_version", "mlflow_run_id"):
        text = info.get(key)
        if text is not None:
            clean[key] = str(text)
    return clean


def naive_utc(value: datetime) -> datetime:
    """An aware datetime converted to naive UTC; a naive one is taken as UTC already."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


@dataclass(frozen=True)
class CleanRequest:
    """A validated request: frames restricted to contract columns, ids as text."""

    run_id: str
    as_of: date
    started_at: datetime
    membership: pd.DataFrame
    segments: pd.DataFrame
    scores: pd.DataFrame
    quarantine: pd.DataFrame
    run_info: RunInfo
    # Identity stitching, ready to load: the map (None: the run did no stitching) and the
    # merges, both in their table's columns with as_of and run_id.
    identity_map: pa.Table | None = None
    identity_merges: pa.Table | None = None
    # Tonight's rows of the per-as_of analysis tables, by table name (absent: none given).
    analyses: Mapping[str, pa.Table] = field(default_factory=dict)


def validate_request(run: PublishRequest) -> CleanRequest:
    """Check a publish request against the contract; raise PublishInputError naming the problem."""
    if not isinstance(run, PublishRequest):
        raise PublishInputError(f"publish expects a PublishRequest, got {type(run).__name__}")
    run_id, as_of, started_at = check_run_identity(run.run_id, run.as_of, run.started_at)
    info = check_run_info(run.run_info)

    membership = _membership(run.membership)
    segments = select_columns(run.segments, "segments", SEGMENTS_INPUT)
    segments["segment_id"] = _text(segments["segment_id"], "segments.segment_id")
    _unique_ids(segments, "segment_id", "segments")
    _allowed(segments["kind"], SEGMENT_KINDS, "segments.kind")
    segments["definition"] = segments["definition"].map(_definition_text).astype(object)
    unknown = pd.Index(membership["segment_id"].unique()).difference(segments["segment_id"])
    if len(unknown):
        raise PublishInputError(
            f"membership uses segment_id(s) missing from segments: {list(unknown[:5])}"
        )

    scores = select_columns(
        run.scores if run.scores is not None else pd.DataFrame(columns=SCORES_INPUT),
        "scores",
        [c for c in SCORES_INPUT if c not in SCORES_OPTIONAL],
        keep=SCORES_INPUT,
    )
    for col in SCORES_OPTIONAL:
        if col not in scores.columns:
            scores[col] = None
    scores = scores[SCORES_INPUT]
    scores["client_id"] = _text(scores["client_id"], "scores.client_id")
    _unique_ids(scores, "client_id", "scores")
    _in_range(scores["p_alive"], "scores.p_alive", 0.0, 1.0)
    _in_range(scores["p_purchase"], "scores.p_purchase", 0.0, 1.0)
    _allowed(scores["cltv_model"], SCORE_SOURCES, "scores.cltv_model")

    quarantine = run.quarantine if run.quarantine is not None else pd.DataFrame(columns=["reason"])
    kept = ["reason", *QUARANTINE_RAW, "line_number", "detail"]
    quarantine = select_columns(quarantine, "quarantine", ["reason"], keep=kept)
    for col in kept[1:]:
        if col not in quarantine.columns:
            quarantine[col] = None
    quarantine = quarantine[kept]
    lines = pd.to_numeric(quarantine["line_number"], errors="coerce")
    quarantine["line_number"] = lines.astype("Int64")
    if quarantine["reason"].isna().any():
        raise PublishInputError("quarantine.reason has null values: every rejected row needs one")

    constants = {"as_of": as_of, "run_id": run_id}
    identity_map = _identity_map(run.identity_map, constants)
    merges = _identity_merges(run.identity_merges, constants, membership, identity_map)
    analyses = validate_analyses(
        {
            "journey_stages": run.journey_stages,
            "journey_touchpoints": run.journey_touchpoints,
            "journey_dropoffs": run.journey_dropoffs,
            "holdout_outcomes": run.holdout_outcomes,
        },
        constants,
    )
    return CleanRequest(
        run_id,
        as_of,
        started_at,
        membership,
        segments,
        scores,
        quarantine,
        info,
        identity_map,
        merges,
        analyses,
    )


def _membership(frame: object) -> pd.DataFrame:
    """Membership in its contract columns: one row per client, each in a segment, known
    sources, confidence in [0, 1], holdout true or false (absent or null: false)."""
    required = [c for c in MEMBERSHIP_INPUT if c not in MEMBERSHIP_OPTIONAL]
    optional = [c for c in MEMBERSHIP_OPTIONAL if c not in MEMBERSHIP_INPUT]
    membership = select_columns(frame, "membership", required, keep=[*MEMBERSHIP_INPUT, *optional])
    if "holdout" not in membership.columns:
        membership["holdout"] = False
    membership["holdout"] = flags(membership["holdout"], "membership.holdout", null=False)
    for col in ("client_id", "segment_id"):
        membership[col] = _text(membership[col], f"membership.{col}")
    _unique_ids(membership, "client_id", "membership")
    if membership["segment_id"].isna().any():
        raise PublishInputError(
            "membership.segment_id has null values: every client needs a segment"
        )
    _allowed(membership["segment_source"], SEGMENT_SOURCES, "membership.segment_source")
    _in_range(membership["confidence"], "membership.confidence", 0.0, 1.0)
    return membership


def _identity_map(frame: object, constants: Mapping[str, object]) -> pa.Table | None:
    """The identity map as the `identity_map` table: known id types, no null ids, one row
    per (id_type, id_value), first_seen <= last_seen. Arrow throughout (millions of rows)."""
    if frame is None:
        return None
    table = to_arrow(_columns(frame, "identity_map", IDENTITY_MAP_INPUT), IDENTITY_MAP, constants)
    id_type = table["id_type"]
    bad = pc.invert(pc.fill_null(pc.is_in(id_type, value_set=pa.array(ID_TYPES)), False))
    if pc.any(bad).as_py():
        value = id_type.filter(bad)[0].as_py()
        raise PublishInputError(
            f"identity_map.id_type has value {value!r}; allowed: {', '.join(ID_TYPES)}"
        )
    for col in ("id_value", "person_id"):
        if table[col].null_count:
            raise PublishInputError(f"identity_map.{col} has null values")
    _unique_identifiers(table)
    late = pc.fill_null(pc.greater(table["first_seen"], table["last_seen"]), False)
    if pc.any(late).as_py():
        row = table.filter(late).slice(0, 1).to_pylist()[0]
        raise PublishInputError(
            f"identity_map.first_seen is after last_seen for id_type {row['id_type']!r}"
            f" id_value {row['id_value']!r}"
        )
    return table


def _unique_identifiers(table: pa.Table) -> None:
    """One row per (id_type, id_value). Values rarely repeat across types, so distinct values
    alone settle it in one hash pass (a second of 5M rows saved); else the pairs decide."""
    if len(pc.unique(table["id_value"])) == table.num_rows:
        return
    keys = table.select(["id_type", "id_value"])
    distinct = keys.group_by(["id_type", "id_value"]).aggregate([([], "count_all")])
    if distinct.num_rows != table.num_rows:
        dup = distinct.filter(pc.greater(distinct["count_all"], 1)).slice(0, 1).to_pylist()[0]
        raise PublishInputError(
            f"identity_map has more than one row for id_type {dup['id_type']!r}"
            f" id_value {dup['id_value']!r}"
        )


def _identity_merges(
    frame: object,
    constants: Mapping[str, object],
    membership: pd.DataFrame,
    identity_map: pa.Table | None,
) -> pa.Table:
    """Tonight's merges as `identity_merges` rows: chains resolved (no merged_id twice, none
    merged into itself or into another merged id), merged ids gone from tonight's membership
    and map, evidence as JSON text."""
    if frame is None:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in IDENTITY_MERGES_INPUT})
    columns = _columns(frame, "identity_merges", IDENTITY_MERGES_INPUT)
    frame = columns.to_pandas() if isinstance(columns, pa.Table) else columns
    for col in ("merged_id", "into_id"):
        frame[col] = _text(frame[col], f"identity_merges.{col}")
        if frame[col].isna().any():
            raise PublishInputError(f"identity_merges.{col} has null values")
    _unique_ids(frame, "merged_id", "identity_merges")
    merged, into = frame["merged_id"], frame["into_id"]
    same = merged == into
    if same.any():
        raise PublishInputError(f"identity_merges merges {merged[same].iloc[0]!r} into itself")
    chained = into.isin(set(merged))
    if chained.any():
        raise PublishInputError(
            f"identity_merges.into_id {into[chained].iloc[0]!r} is also a merged_id: resolve"
            " chains before publishing (merge every id into its final person)"
        )
    ids = pa.array(merged, type=pa.string())
    for name, present in (
        ("membership.client_id", pa.array(membership["client_id"], from_pandas=True)),
        ("identity_map.person_id", None if identity_map is None else identity_map["person_id"]),
    ):
        if present is not None and len(ids):
            hit = pc.is_in(present, value_set=ids)
            if pc.any(hit).as_py():
                value = present.filter(hit)[0].as_py()
                raise PublishInputError(
                    f"identity_merges.merged_id {value!r} is in {name}: a merged id is no"
                    " longer a person of its own"
                )
    frame["evidence"] = frame["evidence"].map(_evidence_text).astype(object)
    return to_arrow(frame, IDENTITY_MERGES, constants)


def _columns(frame: object, name: str, required: list[str]) -> pd.DataFrame | pa.Table:
    """The required columns of a DataFrame or an Arrow table (extra ones ignored)."""
    if isinstance(frame, pa.Table):
        missing = [c for c in required if c not in frame.column_names]
        if missing:
            raise PublishInputError(f"{name} is missing column(s): {', '.join(missing)}")
        return frame.select(required)
    return select_columns(frame, name, required)


def _evidence_text(value: object) -> str | None:
    """Evidence as JSON text: text must parse as JSON, other values are serialized."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            raise PublishInputError(
                f"identity_merges.evidence {value[:80]!r} is not JSON text"
            ) from None
        return value
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except TypeError:
        raise PublishInputError(f"identity_merges.evidence {value!r} is not JSON-able") from None


def _text(series: pd.Series, label: str) -> pd.Series:
    """Ids as text (an int id 3 becomes '3'); nulls stay null."""
    if pd.api.types.is_string_dtype(series) and series.dtype != object:
        return series
    if pd.api.types.is_float_dtype(series):
        raise PublishInputError(f"{label} is float: give ids as text or integers")
    return (
        series.astype(object)
        .where(series.notna(), None)
        .map(lambda v: v if v is None or isinstance(v, str) else str(v))
        .astype("str")
    )


def _unique_ids(frame: pd.DataFrame, column: str, name: str) -> None:
    ids = pa.array(frame[column], from_pandas=True)
    if ids.null_count:
        raise PublishInputError(f"{name}.{column} has null values")
    if len(pc.unique(ids)) != len(ids):
        counts = pc.value_counts(ids)
        dup = counts.field("values").filter(pc.greater(counts.field("counts"), 1))[0].as_py()
        raise PublishInputError(f"{name} has more than one row for {column} {dup!r}")


def _allowed(series: pd.Series, allowed: tuple[str, ...], label: str) -> None:
    bad = series[series.notna() & ~series.isin(allowed)]
    if len(bad):
        raise PublishInputError(f"{label} has value {bad.iloc[0]!r}; allowed: {', '.join(allowed)}")


def _in_range(series: pd.Series, label: str, low: float, high: float) -> None:
    try:
        values = pd.to_numeric(series)
    except (ValueError, TypeError):
        raise PublishInputError(f"{label} must be numeric") from None
    bad = values.notna() & ((values < low) | (values > high))
    if bad.any():
        raise PublishInputError(
            f"{label} has value {float(values[bad].iloc[0]):g} outside [{low}, {high}]"
        )


def _definition_text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except TypeError:
        raise PublishInputError(f"segments.definition {value!r} is neither text nor JSON") from None
