"""The run report: one self-contained HTML page of segments, movement, funnel, CLTV and data quality.

Rendering is pure (`render_report(ReportData) -> str`): the same data gives the same bytes, so
the page can be tested and attached to the MLflow run. Charts are plotly figures; the plotly.js
bundle is inlined once in the page head and every figure gets a fixed div id, so the page opens
without a network and without random ids. Loading (`load_report_data`) reads the published
tables through the store's reader API; `write_report` is what `segmentation report` calls.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, SupportsFloat, SupportsIndex, TypeAlias

import numpy as np
import pandas as pd

from configs import STAGES, EngineConfig, SegmentationError
from pipelines.journey_view import JourneyTables, journey_section
from pipelines.policy import MAX_PUBLISHED_NOISE
from pipelines.report_holdout import holdout_section
from segmentation.wording import words_for

if TYPE_CHECKING:
    import plotly.graph_objects as go

NEW = "(new clients)"
GONE = "(left)"
OTHER = "other segments"
NOISE_KINDS = ("noise",)
BACKTEST_TARGETS = ("purchases", "spend")
BACKTEST_STATS = (("bias", "bias"), ("rmse", "RMSE"), ("mae", "MAE"), ("corr", "correlation"))

_MEMBERSHIP_REQUIRED = ("client_id", "segment_id")
# The columns the page reads of the current membership and scores: read from a store, only
# these (a full membership of millions of clients is most of the report's memory).
_REPORT_MEMBERSHIP = ("client_id", "segment_id", "segment_name", "segment_source", "journey_stage")
_REPORT_SCORES = ("client_id", "predicted_cltv", "horizon_days")
_REPORT_TRANSITIONS = ("as_of", "from_segment_id", "to_segment_id")
_SIZES_COLUMNS = ["as_of", "segment_id", "size"]
_PALETTE = (
    "#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2",
    "#EECA3B", "#9D755D", "#FF9DA6", "#2E6F9E", "#8CD17D", "#D37295",
)  # fmt: skip
_GREY = "#B0B0B0"

# A parsed JSON value, or a value as read back from a table cell or MLflow (text, number, date
# or timestamp, null, a list or mapping): arbitrary by nature; the report formats it or reads
# it through the coercing helpers at the end of this module.
JsonValue: TypeAlias = Any
# One row of the `runs` table as a dict, plus `metrics` (see ReportData).
RunRecord: TypeAlias = Mapping[str, JsonValue]
# What `metrics_from_mlflow` picks: numbers, and `quarantined_by_reason` {reason: rows}.
MlflowMetrics: TypeAlias = dict[str, float | dict[str, int] | dict[str, float]]


class ReportError(SegmentationError, ValueError):
    """There is nothing to report yet (no run, or none successful as of the date asked)."""


class TableSource(Protocol):
    """The store's reader API the report reads (`pipelines.store.Store` or a snapshot reader)."""

    def runs(self) -> pd.DataFrame: ...
    def latest_as_of(self) -> date | None: ...
    def segments(self) -> pd.DataFrame: ...
    def history(self) -> pd.DataFrame: ...
    def transitions(
        self, as_of: date | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame: ...
    def membership(
        self, segment_id: str | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame: ...
    def scores(self, columns: Sequence[str] | None = None) -> pd.DataFrame: ...
    def read_sql(self, name: str) -> pd.DataFrame: ...


@dataclass(frozen=True, eq=False)
class ReportData:
    """Everything the report shows, as frames shaped like the published tables (DESIGN.md).

    `run` is one row of `runs` as a dict plus an optional `metrics` dict (duplicates,
    quarantined_by_reason {reason: n}, noise_share, cluster_quality, stability and the CLTV
    backtest keys `<purchases|spend>_<bias|rmse|mae|corr>`). `history` (segment_history) or a
    ready `sizes_over_time` frame (as_of, segment_id, size) gives the sizes across runs.
    `funnel` (client_id, furthest_stage) gives the furthest journey stage; without it the
    report falls back to membership.journey_stage and says so.
    """

    as_of: date
    run: RunRecord
    membership: pd.DataFrame
    segments: pd.DataFrame
    transitions: pd.DataFrame | None = None
    runs: pd.DataFrame | None = None
    history: pd.DataFrame | None = None
    sizes_over_time: pd.DataFrame | None = None
    scores: pd.DataFrame | None = None
    funnel: pd.DataFrame | None = None
    notes: tuple[str, ...] = ()
    # Identity stitching of the run (None: the events carried client ids only): the counts
    # of `features.identity.identity_map_summary`, `merges` (tonight's) and the
    # quarantined identifiers by reason.
    identity: dict[str, Any] | None = None
    # The journey map of the as-of date (docs/journey.md); None: not published.
    journey: JourneyTables | None = None
    # Treated against held-out members per segment (table holdout_outcomes); None: none.
    holdout: pd.DataFrame | None = None
    top_n: int = 8
    title: str = "Segmentation run report"


def render_report(data: ReportData) -> str:
    """Render the whole report as one self-contained HTML page (plotly.js inlined once)."""
    _check(data)
    summary = segment_summary(data)
    labels = _labels(summary)
    colors = _colors(summary)
    sections = [
        _header(data, summary),
        _segments_section(summary),
        _movement_section(data, summary, labels, colors),
        _over_time_section(data, summary, labels, colors),
        _funnel_section(data, summary, labels),
        journey_section(data.journey, labels),
        holdout_section(data.holdout) if data.holdout is not None else "",
        _cltv_section(data, summary, labels, colors),
        _identity_section(data),
        _quality_section(data),
    ]
    return _page(data.title + f" as of {_date_text(data.as_of)}", "\n".join(sections))


def load_report_data(
    store: TableSource, as_of: date | None = None, metrics: Mapping[str, JsonValue] | None = None
) -> ReportData:
    """Read the published tables for one as-of date (default: the latest successful run).

    The store is `pipelines.store.open_store(url)`. Membership and scores are the current
    state; for an earlier as-of the membership is rebuilt from segment_history and scores are
    left out (the store keeps only the latest), with a note in the page. `metrics` (e.g. from
    the run's MLflow run) is merged into the run's metrics.
    """
    snapshot = getattr(store, "snapshot", None)
    if callable(snapshot):  # one consistent read of all tables
        with snapshot() as reader:
            return _load(reader, as_of, metrics)
    return _load(store, as_of, metrics)


def _load(
    store: TableSource, as_of: date | None, metrics: Mapping[str, JsonValue] | None
) -> ReportData:
    runs = _frame(store.runs())
    if runs.empty:
        raise ReportError("the store has no runs yet: run `segmentation run` first")
    runs = runs.assign(as_of=_to_date(runs["as_of"]))
    latest = store.latest_as_of()
    latest = _to_date(pd.Series([latest])).iloc[0] if latest is not None else None
    chosen = as_of or latest
    if chosen is None:
        raise ReportError("the store has no successful run yet")
    ok = runs[(runs["as_of"] == chosen) & (runs["status"].astype(str) == "success")]
    if ok.empty:
        known = ", ".join(sorted({_date_text(d) for d in runs["as_of"].dropna()}))
        raise ReportError(f"no successful run as of {_date_text(chosen)} (runs as of: {known})")
    run_row = ok.sort_values("finished_at", kind="stable").iloc[-1].to_dict()
    run = {str(k): _plain(v) for k, v in run_row.items()}
    run_metrics = dict(_parse_json(run.pop("metrics", None)) or {})
    run_metrics.update(metrics or {})

    segments = _frame(store.segments())
    transitions = _frame(store.transitions(as_of=chosen, columns=_REPORT_TRANSITIONS))
    # Sizes over time and a past membership are computed in the store when it can: the
    # history grows every night and the report needs only counts of it.
    history: pd.DataFrame | None = None
    changes = getattr(store, "segment_size_changes", None)
    over_time = sizes_from_changes(runs, _frame(changes()), chosen) if callable(changes) else None
    if over_time is None:
        history = _frame(store.history())
    notes: list[str] = []
    if latest is not None and chosen == latest:
        membership = _frame(store.membership(columns=_REPORT_MEMBERSHIP))
        scores = _frame(store.scores(columns=_REPORT_SCORES))
    else:
        on = getattr(store, "membership_on", None)
        if callable(on):
            membership = _with_segment_names(_frame(on(chosen)), segments)
        else:
            membership = membership_at(history, chosen, segments)
        scores = None
        notes.append(
            f"As of {_date_text(chosen)} is not the latest run: membership is rebuilt from "
            "segment_history and client scores (kept for the latest run only) are not shown."
        )
    if "quarantined_by_reason" not in run_metrics:
        by_reason = _quarantine_counts(store, run["run_id"])
        if by_reason is not None:
            run_metrics["quarantined_by_reason"] = by_reason
    run["metrics"] = run_metrics
    identity = _identity_data(store, chosen, run_metrics.get("quarantined_by_reason"))
    journey = _journey_tables(store, chosen)
    holdout_reader = getattr(store, "holdout_outcomes", None)
    holdout = _frame(holdout_reader(as_of=chosen)) if callable(holdout_reader) else None
    funnel = None
    if "furthest_stage" in membership.columns:
        funnel = membership[["client_id", "furthest_stage"]]
    return ReportData(
        as_of=chosen,
        run=run,
        membership=membership,
        segments=segments,
        transitions=transitions,
        runs=runs,
        history=history,
        sizes_over_time=over_time,
        scores=scores,
        funnel=funnel,
        notes=tuple(notes),
        identity=identity,
        journey=journey,
        holdout=holdout if holdout is not None and len(holdout) else None,
    )


def _journey_tables(store: TableSource, as_of: date) -> JourneyTables | None:
    """The journey tables of `as_of` (None from a store written before schema version 5)."""
    readers = [getattr(store, f"journey_{t}", None) for t in ("stages", "touchpoints", "dropoffs")]
    if not all(callable(r) for r in readers):
        return None
    frames = [_frame(r(as_of=as_of)) for r in readers]  # type: ignore[misc]
    return None if frames[0].empty else JourneyTables(*frames)


def write_report(
    config: EngineConfig,
    store_url: str | None = None,
    as_of: date | None = None,
    out: str | Path | None = None,
    attach: bool = False,
) -> Path:
    """Open the store, load one run's data, render it and write the HTML file; return its path.

    This is what `segmentation report` calls. The run's MLflow metrics (duplicates, quality,
    backtest) are read when MLflow is enabled and the run has an MLflow run id; with
    `attach=True` the page is also logged to that run as the artifact `report/<file name>`.

    Parameters
    ----------
    config : EngineConfig
        The engine config: store, MLflow and work directory settings.
    store_url : str, optional
        The store to read (``duckdb:///...`` or ``postgresql://...``); default the config's.
    as_of : datetime.date, optional
        The run to report; default the latest successful run.
    out : str or Path, optional
        The HTML file to write; default ``<workdir>/reports/report-<as_of>.html``. Parent
        folders are created.
    attach : bool, default False
        Also log the page to the run's MLflow run (when MLflow is enabled and the run has one).

    Returns
    -------
    Path
        The HTML file written.

    Raises
    ------
    ValueError
        The store has no runs, or no successful run as of `as_of` (the message lists the
        as-of dates it has).
    """
    from pipelines.store import open_store

    store = open_store(
        store_url or config.store_url,
        schema=config.store.schema_name,
        lock_timeout=config.store.lock_timeout_seconds,
        reader_retry=config.store.reader_retry_seconds,
    )
    try:
        data = load_report_data(store, as_of=as_of)
    finally:
        close = getattr(store, "close", None)
        if callable(close):
            close()
    mlflow_run_id = data.run.get("mlflow_run_id")
    if config.mlflow.enabled and mlflow_run_id:
        extra = mlflow_metrics(config.tracking_uri, str(mlflow_run_id))
        merged = {**extra, **_metrics(data.run)}
        data = _replace_run(data, {**data.run, "metrics": merged})
    path = Path(out) if out else config.workdir_path / "reports" / f"report-{data.as_of}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(data), encoding="utf-8")
    if attach and config.mlflow.enabled and mlflow_run_id:
        attach_report(path, str(mlflow_run_id), config.tracking_uri)
    return path


def attach_report(path: str | Path, mlflow_run_id: str, tracking_uri: str) -> None:
    """Log the report file to an existing MLflow run, as the artifact `report/<file name>`."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).log_artifact(mlflow_run_id, str(path), "report")


def mlflow_metrics(tracking_uri: str, mlflow_run_id: str) -> MlflowMetrics:
    """The report's metrics from an MLflow run: the known keys (bare or under `backtest.`),
    and the quarantine counts as `quarantined_by_reason.<reason>` (or `quarantined.<reason>`).

    A run that cannot be read gives an empty dict: the report then says the figures are missing
    rather than failing.
    """
    try:
        from mlflow.tracking import MlflowClient

        logged = MlflowClient(tracking_uri=tracking_uri).get_run(mlflow_run_id).data.metrics
    except Exception:
        return {}
    return metrics_from_mlflow(logged)


def metrics_from_mlflow(logged: Mapping[str, float]) -> MlflowMetrics:
    """Pick the report's metrics from a flat MLflow metrics dict (see `mlflow_metrics`)."""
    keys = {"duplicates", "noise_share", "cluster_quality", "stability"}
    keys |= {f"{t}_{s}" for t in BACKTEST_TARGETS for s, _ in BACKTEST_STATS}
    out: MlflowMetrics = {}
    for k, v in logged.items():
        for prefix in ("", "backtest_", "backtest.", "events_", "events."):
            if k.startswith(prefix) and k[len(prefix) :] in keys:
                out.setdefault(k[len(prefix) :], float(v))
    selection = {
        k.split("selection.", 1)[1]: float(v)
        for k, v in logged.items()
        if k.startswith(("selection.", "backtest.selection.", "backtest_selection."))
    }
    if selection:
        out["selection"] = selection
    reasons = {
        k.split(".", 1)[1]: int(v)
        for k, v in logged.items()
        if k.startswith(("quarantined.", "quarantine.", "quarantined_by_reason."))
    }
    if reasons:
        out["quarantined_by_reason"] = reasons
    return out


# ----------------------------------------------------------------------------- derived tables


def segment_summary(data: ReportData) -> pd.DataFrame:
    """One row per current segment: id, name, kind, size, share, mean CLTV, profile text.

    Sizes come from the membership (the truth of this run); mean CLTV from the client scores
    when given, else from the segments table. Sorted by size, largest first (ties by id).
    """
    m = data.membership
    total = len(m)
    sizes = m.groupby("segment_id", sort=True).size().rename("size")
    seg = data.segments.drop_duplicates("segment_id", keep="last").set_index("segment_id")
    names = (
        m.groupby("segment_id", sort=True)["segment_name"].first() if "segment_name" in m else None
    )
    out = pd.DataFrame({"size": sizes})
    out["segment_name"] = [
        _first_text(
            names.get(s) if names is not None else None,
            seg["segment_name"].get(s) if "segment_name" in seg else None,
            str(s),
        )
        for s in out.index
    ]
    # a cluster segment's members are dense ones and attached outliers: its kind is cluster
    kind_of = (
        m["segment_source"].replace({"cluster_outlier": "cluster"})
        if "segment_source" in m
        else None
    )
    source = kind_of.groupby(m["segment_id"]).first() if kind_of is not None else None
    out["kind"] = [
        _first_text(
            source.get(s) if source is not None else None,
            seg["kind"].get(s) if "kind" in seg else None,
            "",
        )
        for s in out.index
    ]
    out["share"] = out["size"] / total if total else 0.0
    cltv = _mean_cltv(data)
    fallback = (
        seg["mean_predicted_cltv"] if "mean_predicted_cltv" in seg else pd.Series(dtype=float)
    )
    out["mean_cltv"] = [
        _finite(cltv.get(s)) if cltv is not None else _finite(fallback.get(s)) for s in out.index
    ]
    definitions = seg["definition"] if "definition" in seg else pd.Series(dtype=object)
    profiles = [describe_definition(definitions.get(s)) for s in out.index]
    out["profile"] = [p[0] for p in profiles]
    out["description"] = [p[1] for p in profiles]
    out = out.reset_index().rename(columns={"index": "segment_id"})
    out["segment_id"] = out["segment_id"].astype(str)
    return out.sort_values(
        ["size", "segment_id"], ascending=[False, True], kind="stable"
    ).reset_index(drop=True)


def describe_definition(definition: object) -> tuple[str, str]:
    """(readable profile, description) from a segment definition: profile JSON, rule JSON or text."""
    if definition is None or (isinstance(definition, float) and math.isnan(definition)):
        return "", ""
    parsed = _parse_json(definition)
    if not isinstance(parsed, Mapping):
        return f"rule: {definition}", ""
    description = str(parsed.get("description") or "")
    if parsed.get("top_features"):
        return describe_features(parsed["top_features"]), description
    if parsed.get("when"):
        return f"rule: {parsed['when']}", description
    return "", description


def describe_features(top_features: Sequence[Mapping[str, object]], k: int = 3) -> str:
    """Readable text for a cluster's distinguishing features, e.g. "total spend 3.2x population".

    A feature whose median is a clear multiple of the population median is said as that ratio;
    otherwise its z score is said as high / low (very, beyond 1.5).
    """
    parts = []
    for item in list(top_features)[:k]:
        name = feature_label(str(item.get("feature", "?")))
        z = _finite(item.get("z"))
        median = _finite(item.get("median"))
        population = _finite(item.get("population_median"))
        if median is not None and population is not None and population > 0 and median >= 0:
            ratio = median / population
            if ratio == 0:
                parts.append(f"{name} 0 (population {population:g})")
                continue
            if ratio >= 1.25 or ratio <= 0.8:
                digits = 2 if ratio < 0.1 else 1
                parts.append(f"{name} {ratio:.{digits}f}x population")
                continue
        if z is not None and z != 0:
            level = "high" if z > 0 else "low"
            parts.append(f"{name} {'very ' if abs(z) >= 1.5 else ''}{level}")
        else:
            parts.append(name)
    return ", ".join(parts)


def feature_label(feature: str) -> str:
    """A feature name as the catalog says it in words: share_store_weighted -> "share of store
    activity", recency_days -> "days since last activity" (segmentation.wording)."""
    return words_for(feature).label


def membership_at(
    history: pd.DataFrame | None, as_of: date, segments: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The membership on a date, rebuilt from segment_history stretches.

    A client is in segment S on date D when valid_from <= D and (valid_to is null or > D).
    """
    if history is None or history.empty:
        return pd.DataFrame(columns=["client_id", "segment_id", "segment_name", "segment_source"])
    day = pd.Timestamp(as_of)
    vf = pd.to_datetime(history["valid_from"])
    vt = pd.to_datetime(history["valid_to"])
    live = history[(vf <= day) & (vt.isna() | (vt > day))]
    columns = [c for c in ("client_id", "segment_id", "lifecycle_stage") if c in live]
    return _with_segment_names(live[columns], segments)


def sizes_from_changes(
    runs: pd.DataFrame | None, changes: pd.DataFrame, until: date | None = None
) -> pd.DataFrame:
    """Segment sizes (as_of, segment_id, size) at each successful run's as-of, from the
    store's `segment_size_changes` (segment_id, day, change): the same figures as
    `sizes_over_time` on the history, from one small row per segment and day."""
    if runs is None or runs.empty or changes.empty:
        return pd.DataFrame(columns=_SIZES_COLUMNS)
    day = pd.to_datetime(changes["day"]).to_numpy()
    codes, ids = pd.factorize(changes["segment_id"].astype(str), sort=True)
    change = changes["change"].to_numpy(dtype=np.int64)

    def sizes_on(t: np.datetime64) -> np.ndarray:
        upto = day <= t
        summed = np.bincount(codes[upto & (codes >= 0)], weights=change[upto], minlength=len(ids))
        return summed.round().astype(np.int64)

    return _sizes_on_run_days(runs, until, ids, sizes_on)


def sizes_over_time(
    runs: pd.DataFrame | None, history: pd.DataFrame | None, until: date | None = None
) -> pd.DataFrame:
    """Segment sizes (as_of, segment_id, size) at each successful run's as-of, from history."""
    if runs is None or runs.empty or history is None or history.empty:
        return pd.DataFrame(columns=_SIZES_COLUMNS)
    vf = pd.to_datetime(history["valid_from"]).to_numpy()
    vt = pd.to_datetime(history["valid_to"]).to_numpy()
    codes, ids = pd.factorize(history["segment_id"].astype(str), sort=True)

    def sizes_on(t: np.datetime64) -> np.ndarray:
        live = (vf <= t) & (np.isnat(vt) | (vt > t))
        return np.bincount(codes[live & (codes >= 0)], minlength=len(ids))

    return _sizes_on_run_days(runs, until, ids, sizes_on)


def _sizes_on_run_days(
    runs: pd.DataFrame,
    until: date | None,
    ids: pd.Index,
    sizes_on: Callable[[np.datetime64], np.ndarray],
) -> pd.DataFrame:
    """(as_of, segment_id, size) on each successful run's as-of up to `until`; `sizes_on(day)`
    gives the size of each of `ids` that day, and empty segments are left out."""
    days = sorted(set(_to_date(_successful(runs)["as_of"]).dropna()))
    frames = []
    for d in days:
        if until is not None and d > until:
            continue
        sizes = sizes_on(np.datetime64(pd.Timestamp(d)))
        present = sizes > 0
        frames.append(
            pd.DataFrame({"as_of": d, "segment_id": ids[present], "size": sizes[present]})
        )
    if not frames:
        return pd.DataFrame(columns=_SIZES_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def _with_segment_names(membership: pd.DataFrame, segments: pd.DataFrame | None) -> pd.DataFrame:
    """A membership rebuilt from history, with the segments' names and kinds, one row per
    client."""
    out = membership.copy()
    if segments is not None and not segments.empty:
        seg = segments.drop_duplicates("segment_id", keep="last").set_index("segment_id")
        out["segment_name"] = out["segment_id"].map(seg["segment_name"])
        if "kind" in seg:
            out["segment_source"] = out["segment_id"].map(seg["kind"])
    return out.drop_duplicates("client_id", keep="last").reset_index(drop=True)


def movement(data: ReportData) -> pd.DataFrame | None:
    """Flows (from_segment_id, to_segment_id, clients, kind) between the previous run and this one.

    kind is "stay" (same segment; derived from the membership), "move", "entry" (from a new
    client, from_segment_id = NEW) or "exit" (to_segment_id = GONE). None on a first run.
    """
    t = data.transitions
    if t is not None and not t.empty and "as_of" in t:
        t = t[pd.to_datetime(t["as_of"]) == pd.Timestamp(data.as_of)]
    known_before = t is not None and not t.empty and t["from_segment_id"].notna().any()
    if previous_as_of(data) is None and not known_before:
        return None
    moves = pd.DataFrame(columns=["from_segment_id", "to_segment_id", "clients"])
    if t is not None and not t.empty:
        f = t["from_segment_id"].astype("object").where(t["from_segment_id"].notna(), NEW)
        to = t["to_segment_id"].astype("object").where(t["to_segment_id"].notna(), GONE)
        changed = pd.DataFrame({"from_segment_id": f.astype(str), "to_segment_id": to.astype(str)})
        changed = changed[changed["from_segment_id"] != changed["to_segment_id"]]
        moves = (
            changed.groupby(["from_segment_id", "to_segment_id"], sort=True)
            .size()
            .rename("clients")
            .reset_index()
        )
    arrived = moves[moves["to_segment_id"] != GONE].groupby("to_segment_id")["clients"].sum()
    sizes = data.membership.groupby("segment_id").size()
    stays = pd.DataFrame(
        {
            "from_segment_id": [str(s) for s in sizes.index],
            "to_segment_id": [str(s) for s in sizes.index],
            "clients": [int(n - arrived.get(str(s), 0)) for s, n in sizes.items()],
        }
    )
    stays = stays[stays["clients"] > 0]
    out = pd.concat([stays, moves], ignore_index=True)
    out["kind"] = np.select(
        [
            out["from_segment_id"] == out["to_segment_id"],
            out["from_segment_id"] == NEW,
            out["to_segment_id"] == GONE,
        ],
        ["stay", "entry", "exit"],
        default="move",
    )
    out["clients"] = out["clients"].astype(int)
    return out.sort_values(
        ["clients", "from_segment_id", "to_segment_id"],
        ascending=[False, True, True],
        kind="stable",
    ).reset_index(drop=True)


def previous_as_of(data: ReportData) -> date | None:
    """The as-of of the latest successful run before this one, or None (a first run)."""
    if data.runs is None or data.runs.empty:
        return None
    runs = data.runs
    ok = _successful(runs)
    earlier = [d for d in _to_date(ok["as_of"]).dropna() if d < data.as_of]
    return max(earlier) if earlier else None


def funnel_table(stages: pd.Series) -> pd.DataFrame:
    """Clients reaching at least each journey stage, and the drop-off to the next stage.

    `stages` holds each client's furthest stage; anything outside the five stages (other,
    missing) counts as having reached none of them.
    """
    return _funnel_from_ranks(_stage_ranks(stages))


def _stage_ranks(stages: pd.Series) -> np.ndarray:
    """0..4 for the five journey stages, NaN for anything else."""
    return stages.map({s: i for i, s in enumerate(STAGES)}).to_numpy(dtype=float)


def _funnel_from_ranks(rank: np.ndarray) -> pd.DataFrame:
    furthest = np.bincount(rank[~np.isnan(rank)].astype(int), minlength=len(STAGES))
    reached = [int(v) for v in furthest[::-1].cumsum()[::-1]]
    nxt = [*reached[1:], None]
    return pd.DataFrame(
        {
            "stage": list(STAGES),
            "furthest": [int(v) for v in furthest],
            "reached": reached,
            "share": [r / len(rank) if len(rank) else 0.0 for r in reached],
            "drop_off": [
                (1 - n / r) if (n is not None and r) else None
                for r, n in zip(reached, nxt, strict=True)
            ],
        }
    )


# ----------------------------------------------------------------------------- sections


def _header(data: ReportData, summary: pd.DataFrame) -> str:
    run = data.run
    metrics = _metrics(run)
    started, finished = run.get("started_at"), run.get("finished_at")
    duration = ""
    if started is not None and finished is not None:
        try:
            seconds = (pd.Timestamp(finished) - pd.Timestamp(started)).total_seconds()
            duration = _duration(seconds)
        except (TypeError, ValueError):
            duration = ""
    facts = [
        ("As of", _date_text(data.as_of)),
        ("Run", run.get("run_id")),
        ("Status", run.get("status")),
        ("Started", _time_text(started)),
        ("Duration", duration),
        ("Events read", _int_text(run.get("events_read"))),
        ("Quarantined", _int_text(run.get("events_quarantined"))),
        ("Clients", _int_text(len(data.membership))),
        ("Segments", _int_text(len(summary))),
        ("Noise share (fit sample)", _pct(metrics.get("noise_share"))),
        ("Unclustered", _pct(_source_share(data.membership, "noise"))),
        ("Loose fits", _pct(_source_share(data.membership, "cluster_outlier"))),
        ("Cluster quality", _num(metrics.get("cluster_quality"), 3)),
        ("Stability vs previous", _pct(metrics.get("stability"))),
        ("Cluster model", run.get("cluster_model_version")),
        ("CLTV model", run.get("cltv_model_version")),
        ("MLflow run", run.get("mlflow_run_id")),
    ]
    cards = "".join(
        f'<div class="fact"><span>{_e(k)}</span><b>{_e(v)}</b></div>'
        for k, v in facts
        if v not in (None, "", "nan")
    )
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in (*data.notes, *_noise_notes(data)))
    return (
        f"<header><h1>{_e(data.title)} <small>as of {_e(_date_text(data.as_of))}</small></h1>"
        f'<div class="facts">{cards}</div>{notes}</header>'
    )


def _source_share(membership: pd.DataFrame, source: str) -> float | None:
    if "segment_source" not in membership.columns or not len(membership):
        return None
    return float((membership["segment_source"] == source).mean())


def _noise_notes(data: ReportData) -> list[str]:
    """A warning when more than MAX_PUBLISHED_NOISE of the clients are in no segment."""
    share = _source_share(data.membership, "noise")
    if share is None or share <= MAX_PUBLISHED_NOISE:
        return []
    return [
        f"{share:.1%} of the clients are published as unclustered, above"
        f" {MAX_PUBLISHED_NOISE:.0%}: the configuration lets them be (clustering.attach_outliers"
        " false, or refit.max_published_noise_share above 0.05). No campaign bound to a"
        " segment reaches them."
    ]


def _segments_section(summary: pd.DataFrame) -> str:
    rows = []
    for r in summary.itertuples(index=False):
        profile = _e(r.profile)
        if r.description:
            profile += f'<div class="desc">{_e(r.description)}</div>'
        rows.append(
            "<tr>"
            f"<td><b>{_e(r.segment_name)}</b></td><td><code>{_e(r.segment_id)}</code></td>"
            f"<td>{_e(r.kind)}</td><td class=num>{r.size:,}</td>"
            f"<td class=num>{_pct(r.share)}</td><td class=num>{_money(r.mean_cltv)}</td>"
            f"<td>{profile}</td></tr>"
        )
    table = (
        '<table class="segments"><thead><tr><th>Segment</th><th>Id</th><th>Kind</th>'
        "<th class=num>Clients</th><th class=num>Share</th><th class=num>Mean CLTV</th>"
        "<th>Profile (distinguishing features)</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    return _section(
        "segments",
        "Segments",
        f"The {len(summary)} segments of this run, largest first: clusters are named from the "
        "features that set them apart from the population, rules say what fired.",
        table,
    )


def _movement_section(
    data: ReportData, summary: pd.DataFrame, labels: dict[str, str], colors: dict[str, str]
) -> str:
    flows = movement(data)
    title = "Movement since the previous run"
    if flows is None:
        return _section(
            "movement",
            title,
            f"This is the first published run: all {len(data.membership):,} clients entered their "
            "first segment, and there is no previous run to compare with.",
            "",
        )
    prev = previous_as_of(data)
    prev_text = f"the run as of {_date_text(prev)}" if prev else "the previous run"
    counts = {k: int(flows.loc[flows["kind"] == k, "clients"].sum()) for k in _FLOW_KINDS}
    explain = (
        f"Where the clients of {prev_text} went by {_date_text(data.as_of)}: "
        f"{counts['move']:,} moved to another segment, {counts['entry']:,} new clients entered, "
        f"{counts['exit']:,} left and {counts['stay']:,} stayed (the pale bands)."
    )
    if counts["move"] + counts["entry"] + counts["exit"] == 0:
        return _section(
            "movement", title, explain, "<p>No client changed segment since the previous run.</p>"
        )
    largest = _largest_flows(flows, labels)
    keep = set(summary["segment_id"].head(data.top_n))

    def bucket(s: str) -> str:
        return s if s in keep or s in (NEW, GONE) else OTHER

    grouped = (
        flows.assign(
            src=flows["from_segment_id"].map(bucket), dst=flows["to_segment_id"].map(bucket)
        )
        .groupby(["src", "dst"], sort=True)["clients"]
        .sum()
        .reset_index()
    )
    fig = _sankey(grouped, labels, colors)
    ends = (
        f'<div class="ends"><span>{_e("as of " + _date_text(prev) if prev else "before")}</span>'
        f"<span>as of {_e(_date_text(data.as_of))}</span></div>"
    )
    return _section("movement", title, explain, largest + ends + _figure(fig, "fig-movement", 560))


_FLOW_KINDS = ("stay", "move", "entry", "exit")


def _largest_flows(flows: pd.DataFrame, labels: Mapping[str, str], n: int = 5) -> str:
    """The largest moves between segments named, then where new clients went and who left."""
    out = ""
    moves = flows[flows["kind"] == "move"].head(n)
    if not moves.empty:
        items = "".join(
            f"<li><b>{_e(_flow_label(str(r.from_segment_id), labels))} &rarr; "
            f"{_e(_flow_label(str(r.to_segment_id), labels))}</b>: {r.clients:,} clients</li>"
            for r in moves.itertuples(index=False)
        )
        out += f'<p class="flows-title">Largest moves between segments</p><ol class="flows">{items}</ol>'
    for kind, column, text in (
        ("entry", "to_segment_id", "New clients entered"),
        ("exit", "from_segment_id", "Clients left"),
    ):
        part = flows[flows["kind"] == kind].head(n)
        if not part.empty:
            named = ", ".join(
                f"{_e(_flow_label(getattr(r, column), labels))} ({r.clients:,})"
                for r in part.itertuples(index=False)
            )
            out += f"<p class=flows-line><b>{text}</b>: {named}.</p>"
    return out


def _over_time_section(
    data: ReportData, summary: pd.DataFrame, labels: dict[str, str], colors: dict[str, str]
) -> str:
    import plotly.graph_objects as go

    title = "Segment sizes over time"
    sizes = data.sizes_over_time
    if sizes is None:
        sizes = sizes_over_time(data.runs, data.history, until=data.as_of)
    if sizes is None or sizes.empty:
        return _section("history", title, "No segment history has been published yet.", "")
    sizes = sizes.assign(as_of=_to_date(sizes["as_of"]), segment_id=sizes["segment_id"].astype(str))
    keep = list(summary["segment_id"].head(data.top_n))
    sizes = sizes.assign(
        segment_id=sizes["segment_id"].where(sizes["segment_id"].isin(keep), OTHER)
    )
    table = sizes.groupby(["as_of", "segment_id"], sort=True)["size"].sum().unstack(fill_value=0)
    order = [s for s in keep if s in table.columns] + ([OTHER] if OTHER in table.columns else [])
    x = [_date_text(d) for d in table.index]
    fig = go.Figure()
    for s in order:
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[int(v) for v in table[s]],
                name=labels.get(s, s),
                mode="lines+markers",
                line={"color": colors.get(s, _GREY), "width": 2},
            )
        )
    fig.update_layout(
        xaxis={"title": "run as of", "type": "category"},
        yaxis={"title": "clients", "rangemode": "tozero"},
        legend={"orientation": "v"},
    )
    runs_n = len(table.index)
    explain = (
        f"Clients per segment at each of the {runs_n} published runs (top {data.top_n} "
        "segments of this run; the rest summed as other segments)."
        if runs_n > 1
        else "Only one run is published so far: the line will grow with the nightly runs."
    )
    return _section("history", title, explain, _figure(fig, "fig-history", 400))


def _funnel_section(data: ReportData, summary: pd.DataFrame, labels: dict[str, str]) -> str:
    title = "Journey funnel"
    stages = _funnel_stages(data)
    if stages is None:
        return _section("funnel", title, "No journey stages are available for this run.", "")
    m, basis, note = stages
    overall = funnel_table(m["stage"])
    none = len(m) - int(overall["reached"].iloc[0])
    keep = list(summary["segment_id"].head(data.top_n))
    explain = (
        f"Clients by {basis}: how many reached at least each stage and how many were lost "
        "between stages, overall and (below) per segment as the share reaching each stage."
    )
    body = (
        note
        + '<div class="two">'
        + f"<div>{_figure(_funnel_figure(overall), 'fig-funnel', 360)}</div>"
        + f"<div>{_funnel_table_html(overall, none)}</div></div>"
        + _figure(
            _segment_funnel_figure(m, keep, labels), "fig-funnel-segments", 110 + 34 * len(keep)
        )
    )
    return _section("funnel", title, explain, body)


def _funnel_stages(data: ReportData) -> tuple[pd.DataFrame, str, str] | None:
    """(client_id, segment_id, stage) per member, the basis in words and a note on it.

    The stage is the furthest stage reached when the data has it, else the current journey
    stage (with a note saying what that means); None when neither is there.
    """
    m = data.membership[["client_id", "segment_id"]].assign(
        segment_id=lambda d: d["segment_id"].astype(str)
    )
    if data.funnel is not None and not data.funnel.empty:
        stages = data.funnel.drop_duplicates("client_id", keep="last").set_index("client_id")
        m = m.assign(stage=m["client_id"].map(stages["furthest_stage"]))
        return m, "the furthest journey stage each client has reached", ""
    if "journey_stage" in data.membership:
        m = m.assign(stage=data.membership["journey_stage"].to_numpy())
        note = (
            '<p class="note">The furthest stage reached is not in this data: the funnel uses the '
            "current journey stage, so a client who bought and then only browses counts at the "
            "stage they are in now.</p>"
        )
        return m, "each client's journey stage", note
    return None


def _funnel_figure(overall: pd.DataFrame) -> go.Figure:
    """The overall funnel: clients reaching at least each stage."""
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Funnel(
            y=[s.title() for s in overall["stage"]],
            x=[int(v) for v in overall["reached"]],
            textinfo="value+percent previous",
            textposition="inside",
            marker={"color": _PALETTE[0]},
            connector={"line": {"color": _GREY}},
        )
    )
    fig.update_layout(margin={"l": 130})
    return fig


def _funnel_table_html(overall: pd.DataFrame, none: int) -> str:
    """The funnel as a table, with a note on the clients that reached no stage."""
    rows = "".join(
        f"<tr><td>{_e(str(r.stage).title())}</td><td class=num>{r.furthest:,}</td>"
        f"<td class=num>{r.reached:,}</td><td class=num>{_pct(r.share)}</td>"
        f"<td class=num>{_pct(r.drop_off) if r.drop_off is not None else '&ndash;'}</td></tr>"
        for r in overall.itertuples(index=False)
    )
    table = (
        "<table><thead><tr><th>Stage</th><th class=num>Furthest here</th>"
        "<th class=num>Reached</th><th class=num>Of all clients</th>"
        "<th class=num>Drop-off to next</th></tr></thead><tbody>" + rows + "</tbody></table>"
    )
    if none:
        table += f'<p class="note">{none:,} clients have no event in the five journey stages.</p>'
    return table


def _segment_funnel_figure(m: pd.DataFrame, keep: list[str], labels: dict[str, str]) -> go.Figure:
    """A heatmap of the share of each kept segment's members reaching each stage."""
    import plotly.graph_objects as go

    z, text, names = [], [], []
    ranks = _stage_ranks(m["stage"])
    codes, uniques = pd.factorize(m["segment_id"])
    code_of = {u: i for i, u in enumerate(uniques)}
    for s in keep:
        part = _funnel_from_ranks(ranks[codes == code_of.get(s, -2)])
        z.append([round(float(v), 4) for v in part["share"]])
        text.append([_pct(v) for v in part["share"]])
        names.append(labels.get(s, s))
    heat = go.Figure(
        go.Heatmap(
            z=z[::-1],
            x=[s.title() for s in STAGES],
            y=names[::-1],
            text=text[::-1],
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar={"title": "reached", "tickformat": ".0%"},
            hovertemplate="%{y}<br>%{x}: %{text} reached<extra></extra>",
        )
    )
    heat.update_layout(margin={"l": 220}, yaxis={"automargin": True})
    return heat


def _cltv_section(
    data: ReportData, summary: pd.DataFrame, labels: dict[str, str], colors: dict[str, str]
) -> str:
    import plotly.graph_objects as go

    title = "Customer lifetime value"
    metrics = _metrics(data.run)
    backtest = _backtest_table(metrics)
    scores, cltv = data.scores, _cltv_by_client(data.scores)
    if scores is None or cltv is None:
        return _section("cltv", title, "No client scores are available for this run.", backtest)
    m = data.membership[["client_id", "segment_id"]]
    values = m.assign(segment_id=m["segment_id"].astype(str), cltv=m["client_id"].map(cltv))
    values = values.dropna(subset=["cltv"])
    fig = go.Figure()
    keep = list(summary["segment_id"].head(data.top_n))
    medians: list[tuple[float, float]] = []
    for s in keep:
        v = values.loc[values["segment_id"] == s, "cltv"].to_numpy(dtype=float)
        if not len(v):
            continue
        q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
        medians.append((float(q[0]), float(q[2])))
        name = labels.get(s, s)
        fig.add_trace(
            go.Box(
                x=[name],
                q1=[_r(q[1])],
                median=[_r(q[2])],
                q3=[_r(q[3])],
                lowerfence=[_r(q[0])],
                upperfence=[_r(q[4])],
                mean=[_r(v.mean())],
                name=name,
                marker={"color": colors.get(s, _GREY)},
                boxpoints=False,
                showlegend=False,
            )
        )
    log = _use_log(medians)
    yaxis = {"title": "predicted CLTV" + (" (log scale)" if log else "")}
    fig.update_layout(yaxis={**yaxis, "type": "log"} if log else {**yaxis, "rangemode": "tozero"})
    total = float(values["cltv"].sum())
    horizon = (
        scores["horizon_days"].dropna().iloc[0]
        if "horizon_days" in scores and scores["horizon_days"].notna().any()
        else None
    )
    horizon_text = f" over {int(horizon)} days" if horizon is not None else ""
    explain = (
        f"Predicted CLTV{horizon_text} per segment (box: quartiles, whiskers: 5th to 95th "
        f"percentile, dashed line: mean{'; log scale, the segments differ by orders of magnitude' if log else ''}); "
        f"{len(values):,} scored clients, "
        f"{_money(total)} in total. Below: how the current model did on held-out purchases."
    )
    selection = _selection_tables(metrics)
    return _section("cltv", title, explain, _figure(fig, "fig-cltv", 420) + backtest + selection)


def _selection_tables(metrics: Mapping[str, object]) -> str:
    """The model choice (BG/NBD against the learned model on the test clients), the decile
    lift of the champion and the calibration of p_purchase, from `selection.*` metrics."""
    sel = {str(k): float(v) for k, v in dict(metrics.get("selection") or {}).items()}  # type: ignore[call-overload]
    if not sel:
        return ""
    rows = ""
    for model, label in (
        ("btyd", "BG/NBD x Gamma-Gamma"),
        ("learned", "learned (gradient boosting)"),
    ):
        if f"{model}.purchases_rmse" not in sel:
            continue
        champion = (sel.get("learned_is_champion") == 1.0) == (model == "learned")
        cells = "".join(
            f"<td class=num>{_num(sel.get(f'{model}.{t}_{s}'), 2)}</td>"
            for t in BACKTEST_TARGETS
            for s in ("rmse", "mae", "bias")
        )
        mark = " (champion)" if champion else ""
        rows += f"<tr><td>{_e(label + mark)}</td>{cells}</tr>"
    head = "".join(
        f"<th class=num>{_e(t)} {_e(s)}</th>"
        for t in BACKTEST_TARGETS
        for s in ("RMSE", "MAE", "bias")
    )
    html = (
        '<p class="flows-title">Model choice: fit on one window, judged on the next '
        f"{_num(sel.get('window_days'), 0)} days (every buyer of the latest window)</p>"
        if "window_days" in sel
        else '<p class="flows-title">Model choice: fit on one window, judged on the next</p>'
    )
    html += (
        f"<table class=backtest><thead><tr><th>Buyers' model</th>{head}</tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    if "prospect.test_clients" in sel:
        auc = _num(sel.get("prospect.auc"), 3) if "prospect.auc" in sel else "n/a"
        html += (
            f"<p class=note>Prospects (never bought): AUC of p_purchase {auc};"
            f" predicted converters {_num(sel.get('prospect.predicted_converters'), 1)},"
            f" actual {_num(sel.get('prospect.actual_converters'), 0)}"
            f" of {_num(sel.get('prospect.test_clients'), 0)} test prospects.</p>"
        )
    html += _grouped_table(
        sel,
        "lift.d",
        "Decile lift of the champion (decile 1: highest predicted spend; per client)",
        ("clients", "predicted_purchases", "actual_purchases", "predicted_spend", "actual_spend"),
    )
    html += _grouped_table(
        sel,
        "calibration.b",
        "Calibration of p_purchase (test buyers and prospects)",
        ("bin_low", "bin_high", "clients", "mean_predicted", "actual_rate"),
    )
    return html


def _grouped_table(
    sel: Mapping[str, float], prefix: str, title: str, columns: Sequence[str]
) -> str:
    groups = sorted({k[len(prefix) :].split(".", 1)[0] for k in sel if k.startswith(prefix)})
    if not groups:
        return ""
    head = "".join(f"<th class=num>{_e(c.replace('_', ' '))}</th>" for c in columns)
    body = ""
    for g in groups:
        cells = "".join(
            f"<td class=num>{_num(sel.get(f'{prefix}{g}.{c}'), 0 if c == 'clients' else 2)}</td>"
            for c in columns
        )
        label = str(int(g)) if prefix == "lift.d" else ""  # calibration rows: the bin columns
        body += f"<tr><td>{_e(label)}</td>{cells}</tr>"
    return (
        f'<p class="flows-title">{_e(title)}</p>'
        f"<table class=backtest><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _use_log(stats: Sequence[tuple[float, float]]) -> bool:
    """Log scale when all values are positive and segment medians differ 20-fold or more."""
    if len(stats) < 2 or min(low for low, _ in stats) <= 0:
        return False
    medians = [m for _, m in stats]
    return max(medians) / min(medians) >= 20


def _backtest_table(metrics: Mapping[str, object]) -> str:
    present = [t for t in BACKTEST_TARGETS if any(f"{t}_{s}" in metrics for s, _ in BACKTEST_STATS)]
    if not present:
        return '<p class="note">No backtest figures were recorded for the current CLTV model.</p>'
    head = "".join(f"<th class=num>{_e(label)}</th>" for _, label in BACKTEST_STATS)
    rows = ""
    for t in present:
        cells = "".join(
            f"<td class=num>{_num(metrics.get(f'{t}_{s}'), 3 if s == 'corr' else 2)}</td>"
            for s, _ in BACKTEST_STATS
        )
        what = "purchases per client" if t == "purchases" else "spend per client"
        rows += f"<tr><td>{_e(what)}</td>{cells}</tr>"
    return (
        '<p class="flows-title">Backtest of the current model (holdout period)</p>'
        f"<table class=backtest><thead><tr><th>Predicted</th>{head}</tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _identity_data(store: TableSource, as_of: date, by_reason: object) -> dict[str, Any] | None:
    """How many persons came from how many identifiers, tonight's merges and the identifiers
    quarantined, from the identity tables (None when the run did no stitching or the store
    predates them)."""
    from features.identity import identity_map_summary

    try:
        identity_map = _frame(store.read_sql("identity_map"))
        merges = _frame(store.read_sql("identity_merges"))
    except Exception:  # a store without the identity tables: nothing to show
        return None
    if identity_map.empty:
        return None
    summary = identity_map_summary(identity_map["person_id"], identity_map["id_type"])
    if not merges.empty:
        merges = merges[_to_date(merges["as_of"]) == as_of]
    reasons = dict(by_reason) if isinstance(by_reason, Mapping) else {}
    summary["merges"] = len(merges)
    summary["merge_sample"] = merges.head(5)[["merged_id", "into_id"]].to_dict("records")
    summary["quarantined"] = {
        k: int(v)
        for k, v in reasons.items()
        if k in ("identifier_over_linked", "identifier_ambiguous", "no_identifier")
    }
    return summary


def _identity_section(data: ReportData) -> str:
    """Persons from identifiers: the stitching in one table and a sentence."""
    identity = data.identity
    if not identity:
        return ""
    by_type = ", ".join(f"{k} {v:,}" for k, v in identity["identifiers_by_type"].items())
    sizes = pd.DataFrame(
        {
            "Identifiers per person": list(identity["persons_by_identifiers"]),
            "Persons": [f"{v:,}" for v in identity["persons_by_identifiers"].values()],
        }
    )
    quarantined = identity.get("quarantined") or {}
    lines = [
        f"<p>{identity['persons']:,} persons from {identity['identifiers']:,} identifiers"
        f" ({_e(by_type)}): {identity['known_persons']:,} with a known client id,"
        f" {identity['anonymous_persons']:,} anonymous. Largest person:"
        f" {identity['largest_person']:,} identifiers.</p>",
        f"<p>Merged tonight: {identity['merges']:,} ids joined another person (table"
        " <code>identity_merges</code>; re-key by it)."
        + (
            " Quarantined: "
            + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in quarantined.items())
            + "."
            if quarantined
            else ""
        )
        + "</p>",
        sizes.to_html(index=False, classes="table", border=0),
    ]
    explain = (
        "Identifiers seen together (a cookie, a device, a hashed email or phone, a client id) are"
        " stitched into one person; over-linked identifiers (a shared tablet, a default email)"
        " are quarantined instead of merging people."
    )
    return _section("identity", "Identity: persons from identifiers", explain, "\n".join(lines))


def _quality_section(data: ReportData) -> str:
    import plotly.graph_objects as go

    run = data.run
    metrics = _metrics(run)
    read = _int(run.get("events_read"))
    quarantined = _int(run.get("events_quarantined"))
    duplicates = _int(metrics.get("duplicates"))
    reasons = {str(k): int(v) for k, v in dict(metrics.get("quarantined_by_reason") or {}).items()}
    if quarantined is None and reasons:
        quarantined = sum(reasons.values())
    rows = [
        ("Events read", _int_text(read), ""),
        ("Duplicates dropped", _int_text(duplicates), _share_of(duplicates, read)),
        ("Quarantined", _int_text(quarantined), _share_of(quarantined, read)),
    ]
    ordered = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    rows += [(f"&nbsp;&nbsp;{_e(r)}", f"{n:,}", _share_of(n, read)) for r, n in ordered]
    table = (
        "<table class=quality><tbody>"
        + "".join(
            f"<tr><td>{k if k.startswith('&nbsp;') else _e(k)}</td><td class=num>{v or 'not recorded'}"
            f"</td><td class=num>{s}</td></tr>"
            for k, v, s in rows
        )
        + "</tbody></table>"
    )
    chart = ""
    if ordered:
        fig = go.Figure(
            go.Bar(
                x=[n for _, n in ordered][::-1],
                y=[r for r, _ in ordered][::-1],
                orientation="h",
                marker={"color": _PALETTE[3]},
                text=[f"{n:,}" for _, n in ordered][::-1],
                textposition="auto",
            )
        )
        fig.update_layout(xaxis={"title": "rows quarantined"}, yaxis={"automargin": True})
        chart = _figure(fig, "fig-quarantine", 120 + 32 * len(ordered))
    elif quarantined == 0:
        chart = "<p>No row was quarantined.</p>"
    explain = (
        "What went into this run: rows read, duplicates dropped (by event id) and rows set "
        "aside in the quarantine table by reason, with their share of the rows read."
    )
    return _section(
        "quality",
        "Data quality",
        explain,
        f'<div class="two"><div>{table}</div><div>{chart}</div></div>',
    )


# ----------------------------------------------------------------------------- plotly helpers


def _sankey(grouped: pd.DataFrame, labels: dict[str, str], colors: dict[str, str]) -> go.Figure:
    """A Sankey of flows (src, dst, clients): previous segments left, current ones right."""
    import plotly.graph_objects as go

    def order(column: str) -> list[str]:
        totals = grouped.groupby(column)["clients"].sum()
        special = (NEW, GONE, OTHER)
        return sorted(totals.index, key=lambda s: (s in special, -int(totals[s]), s))

    left, right = order("src"), order("dst")
    node_labels = [_flow_label(s, labels) for s in left] + [_flow_label(s, labels) for s in right]
    node_colors = [colors.get(s, _GREY) for s in left] + [colors.get(s, _GREY) for s in right]
    index_left = {s: i for i, s in enumerate(left)}
    index_right = {s: len(left) + i for i, s in enumerate(right)}
    link_colors = [
        _rgba(colors.get(str(r.src), _GREY), 0.18 if str(r.src) == str(r.dst) else 0.55)
        for r in grouped.itertuples(index=False)
    ]
    fig = go.Figure(
        go.Sankey(
            arrangement="snap",
            node={
                "label": node_labels,
                "color": node_colors,
                "pad": 14,
                "thickness": 16,
                "line": {"color": "white", "width": 0.5},
            },
            link={
                "source": [index_left[s] for s in grouped["src"]],
                "target": [index_right[s] for s in grouped["dst"]],
                "value": [int(v) for v in grouped["clients"]],
                "color": link_colors,
            },
        )
    )
    fig.update_layout(margin={"t": 10, "l": 10, "r": 10})
    return fig


def _figure(fig: go.Figure, div_id: str, height: int) -> str:
    """A figure as an HTML fragment with a fixed div id and no script bundle (inlined once)."""
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin={**{"l": 60, "r": 30, "t": 30, "b": 50}, **_margin(fig)},
        font={"family": "Helvetica, Arial, sans-serif", "size": 12},
    )
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    )


def _margin(fig: go.Figure) -> dict[str, int]:
    current = fig.layout.margin
    return {k: getattr(current, k) for k in ("l", "r", "t", "b") if getattr(current, k) is not None}


def _page(title: str, body: str) -> str:
    from plotly.offline import get_plotlyjs

    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


_CSS = """
body{font-family:Helvetica,Arial,sans-serif;color:#222;background:#f4f5f7;margin:0}
main{max-width:1320px;margin:0 auto;padding:18px 28px 40px}
h1{font-size:24px;margin:8px 0 14px}h1 small{font-weight:normal;color:#666;font-size:17px}
h2{font-size:19px;margin:0 0 4px}
section,header{background:#fff;border-radius:8px;padding:16px 20px;margin:0 0 16px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
.explain{color:#555;margin:0 0 12px;max-width:1000px}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:8px}
.fact{background:#f4f6fa;border-radius:6px;padding:7px 10px;overflow:hidden}
.fact span{display:block;font-size:11px;color:#667;text-transform:uppercase;letter-spacing:.04em}
.fact b{font-size:15px;word-break:break-all}
table{border-collapse:collapse;font-size:13px;width:100%}
th{text-align:left;border-bottom:2px solid #ccd;padding:5px 8px;color:#444}
td{border-bottom:1px solid #eee;padding:5px 8px;vertical-align:top}
.num{text-align:right;white-space:nowrap}
code{font-size:12px;color:#555}
.desc{color:#777;font-size:12px}
.note{color:#8a5a00;background:#fff7e6;border-radius:4px;padding:6px 10px;font-size:13px}
.flows-title{font-weight:bold;margin:10px 0 4px}
ol.flows{margin:0 0 8px;padding-left:22px}
.flows-line{margin:4px 0}
.ends{display:flex;justify-content:space-between;font-weight:bold;color:#444;margin-top:10px}
.two{display:grid;grid-template-columns:1fr 1fr;gap:20px;align-items:start}
table.backtest{max-width:720px}
"""


# ----------------------------------------------------------------------------- small helpers


def _section(anchor: str, title: str, explain: str, body: str) -> str:
    return (
        f'<section id="{anchor}"><h2>{_e(title)}</h2><p class="explain">{_e(explain)}</p>'
        f"{body}</section>"
    )


def _check(data: ReportData) -> None:
    if not isinstance(data.membership, pd.DataFrame):
        raise TypeError("ReportData.membership must be a pandas DataFrame")
    missing = [c for c in _MEMBERSHIP_REQUIRED if c not in data.membership.columns]
    if missing:
        raise ValueError(f"ReportData.membership is missing column(s): {', '.join(missing)}")
    if not isinstance(data.segments, pd.DataFrame) or "segment_id" not in data.segments:
        raise ValueError("ReportData.segments must be a DataFrame with a segment_id column")
    if data.transitions is not None and not data.transitions.empty:
        need = [c for c in ("from_segment_id", "to_segment_id") if c not in data.transitions]
        if need:
            raise ValueError(f"ReportData.transitions is missing column(s): {', '.join(need)}")
    if data.top_n < 1:
        raise ValueError(f"ReportData.top_n must be at least 1, got {data.top_n}")


def _labels(summary: pd.DataFrame) -> dict[str, str]:
    labels = {str(r.segment_id): str(r.segment_name) for r in summary.itertuples(index=False)}
    counts = pd.Series(list(labels.values())).value_counts()
    return {s: (f"{n} ({s})" if counts[n] > 1 else n) for s, n in labels.items()}


def _colors(summary: pd.DataFrame) -> dict[str, str]:
    colors, i = {}, 0
    for r in summary.itertuples(index=False):
        if str(r.kind) in NOISE_KINDS:
            colors[str(r.segment_id)] = _GREY
        else:
            colors[str(r.segment_id)] = _PALETTE[i % len(_PALETTE)]
            i += 1
    colors[OTHER] = "#8C8C8C"
    colors[NEW] = "#C7C7C7"
    colors[GONE] = "#C7C7C7"
    return colors


def _successful(runs: pd.DataFrame) -> pd.DataFrame:
    """The successful runs (all of them when the frame has no status)."""
    return runs[runs["status"].astype(str) == "success"] if "status" in runs else runs


def _metrics(run: RunRecord) -> Mapping[str, JsonValue]:
    """The run's metrics (empty when it has none)."""
    return dict(run.get("metrics") or {}) if run else {}


def _flow_label(segment_id: str, labels: Mapping[str, str]) -> str:
    return labels.get(segment_id, segment_id)


def _cltv_by_client(scores: pd.DataFrame | None) -> pd.Series | None:
    """Predicted CLTV by client_id (the last row of a client), None without scores."""
    if scores is None or scores.empty or "predicted_cltv" not in scores:
        return None
    return scores.drop_duplicates("client_id", keep="last").set_index("client_id")["predicted_cltv"]


def _mean_cltv(data: ReportData) -> pd.Series | None:
    cltv = _cltv_by_client(data.scores)
    if cltv is None:
        return None
    m = data.membership
    values = pd.DataFrame(
        {"segment_id": m["segment_id"].astype(str), "v": m["client_id"].map(cltv)}
    )
    return values.groupby("segment_id")["v"].mean()


def _quarantine_counts(store: TableSource, run_id: str) -> dict[str, int] | None:
    """Quarantined rows of one run by reason, from the store's quarantine table (None if unreadable)."""
    reader = getattr(store, "quarantine", None)
    try:
        q = (
            _frame(reader(run_id=run_id))
            if callable(reader)
            else _frame(store.read_sql("quarantine"))
        )
    except Exception:
        return None
    if q.empty or "reason" not in q:
        return {}
    if "run_id" in q:
        q = q[q["run_id"].astype(str) == str(run_id)]
    counts = q["reason"].astype(str).value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items())}


def _replace_run(data: ReportData, run: RunRecord) -> ReportData:
    return replace(data, run=run)


def _frame(value: object) -> pd.DataFrame:
    """A table as read from a store, as a DataFrame (None: an empty one)."""
    if value is None:
        return pd.DataFrame()
    if isinstance(value, pd.DataFrame):
        return value
    to_pandas = getattr(value, "to_pandas", None) or getattr(value, "df", None)
    if callable(to_pandas):
        return to_pandas()
    if not isinstance(value, Iterable):
        raise TypeError(f"not a table: {type(value).__name__}")
    return pd.DataFrame(value)


def _to_date(values: pd.Series) -> pd.Series:
    def one(v: object) -> date | None:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
            return None
        if isinstance(v, datetime | pd.Timestamp):
            return v.date()
        if isinstance(v, date):
            return v
        if isinstance(v, np.datetime64):
            return pd.Timestamp(v).date()
        return date.fromisoformat(str(v)[:10])

    return pd.Series([one(v) for v in values], index=values.index, dtype=object)


def _parse_json(value: object) -> JsonValue:
    """A mapping as it is, JSON text parsed, anything else (or bad JSON) None."""
    if isinstance(value, Mapping):
        return value
    if not isinstance(value, str):
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def _plain(v: JsonValue) -> JsonValue:
    """A numpy scalar as the Python value; anything else as it is."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def _first_text(*values: object) -> str:
    for v in values:
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) != "":
            return str(v)
    return ""


def _finite(v: object) -> float | None:
    """The value as a finite float, or None (null, NaN, infinite, not a number)."""
    if not isinstance(v, str | bytes | bytearray | SupportsFloat | SupportsIndex):
        return None  # float() would raise TypeError
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v: object) -> int | None:
    f = _finite(v)
    return int(f) if f is not None else None


def _r(v: float) -> float:
    return round(float(v), 2)


def _e(v: object) -> str:
    return html.escape("" if v is None else str(v))


def _date_text(d: object) -> str:
    if d is None:
        return ""
    return d.isoformat() if isinstance(d, date) else str(d)[:10]


def _time_text(t: date | str | None) -> str:
    """A timestamp cell as 'YYYY-MM-DD HH:MM UTC' (text that is no time as it is)."""
    if t is None or t is pd.NaT:
        return ""
    try:
        return pd.Timestamp(t).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        return str(t)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _int_text(v: object) -> str:
    i = _int(v)
    return f"{i:,}" if i is not None else ""


def _pct(v: object) -> str:
    f = _finite(v)
    if f is None:
        return ""
    return f"{100 * f:.1f}%" if abs(f) >= 0.001 or f == 0 else f"{100 * f:.2g}%"


def _num(v: object, digits: int) -> str:
    f = _finite(v)
    return f"{f:,.{digits}f}" if f is not None else ""


def _money(v: object) -> str:
    f = _finite(v)
    return f"{f:,.2f}" if f is not None else "&ndash;"


def _share_of(n: int | None, total: int | None) -> str:
    if n is None or not total:
        return ""
    return _pct(n / total)


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


# ----------------------------------------------------------------------------- sample data

# (feature, z, median, population median) of a sample cluster's distinguishing features
_SampleFeature = tuple[str, float, float, float]
# (segment id, name, kind, distinguishing features): 5 clusters, a rule and the noise
_SAMPLE_SEGMENTS: tuple[tuple[str, str, str, tuple[_SampleFeature, ...]], ...] = (
    ("C1", "Loyal app buyers", "cluster", (("share_app", 2.1, 0.62, 0.18), ("n_purchases", 1.6, 9, 2.8), ("sentiment_mean", 1.1, 0.5, 0.1))),
    ("C2", "Cart abandoners", "cluster", (("cart_abandon_rate_90d", 2.4, 0.78, 0.2), ("events_90d", 1.2, 41, 18), ("n_purchases", -0.8, 1, 2.8))),
    ("C3", "Dormant email readers", "cluster", (("recency_days", 2.0, 210, 35), ("share_email", 1.7, 0.55, 0.15), ("events_30d", -1.3, 0, 6))),
    ("C4", "Support-strained", "cluster", (("support_tickets_90d", 2.6, 4, 0.2), ("sentiment_mean", -2.0, -0.55, 0.1), ("share_call_center", 1.9, 0.4, 0.03))),
    ("C5", "Store regulars", "cluster", (("share_store", 2.3, 0.7, 0.1), ("avg_order_value", 1.0, 120, 64), ("channel_entropy", -1.1, 0.4, 1.2))),
    ("R_vip", "VIP (rule)", "rule", ()),
    ("NOISE", "Unclustered", "noise", ()),
)  # fmt: skip
_SAMPLE_IDS = [s[0] for s in _SAMPLE_SEGMENTS]
_SAMPLE_WEIGHTS = np.array([0.22, 0.2, 0.18, 0.08, 0.14, 0.06, 0.12])
_SAMPLE_DAYS = (date(2026, 11, 19), date(2026, 11, 20), date(2026, 11, 21))
_SAMPLE_CLTV_SCALE = np.array([900, 120, 60, 300, 700, 5200, 150.0])  # per segment
# Per segment: the share of clients reaching at least each journey stage.
_SAMPLE_REACH = np.array(
    [[1, .95, .9, .85, .4], [1, .97, .35, .2, .02], [1, .8, .6, .5, .05], [1, .9, .8, .75, .1],
     [1, .85, .8, .7, .15], [1, 1, 1, .98, .7], [1, .6, .3, .2, .02]]
)  # fmt: skip
# A row of segment_history or segment_transitions while the sample is built.
_SampleRow = list[str | date | None]


@dataclass
class _SampleHistory:
    """The sample's segment history, built night by night: who is where, since when."""

    current: dict[str, int] = field(default_factory=dict)  # client -> segment index
    open_row: dict[str, int] = field(default_factory=dict)  # client -> its open history row
    history: list[_SampleRow] = field(default_factory=list)  # client, segment, from, to
    transitions: list[_SampleRow] = field(default_factory=list)  # as_of, client, from, to

    def enter(self, client: str, segment: int, day: date) -> None:
        """The client is in `segment` from `day` on (a new history row, left open)."""
        self.current[client] = segment
        self.open_row[client] = len(self.history)
        self.history.append([client, _SAMPLE_IDS[segment], day, None])

    def move(self, client: str, segment: int, day: date) -> None:
        """Close the client's open history row on `day` and enter `segment`, as a transition."""
        old = self.current[client]
        self.history[self.open_row[client]][3] = day
        self.enter(client, segment, day)
        self.transitions.append([day, client, _SAMPLE_IDS[old], _SAMPLE_IDS[segment]])


def sample_report_data(clients: int = 4000, seed: int = 7) -> ReportData:
    """A deterministic synthetic ReportData (3 runs, 7 segments incl. noise and a rule) for demos.

    Used to make the screenshot in docs/ and by `python -m pipelines.report --sample PATH`.

    Parameters
    ----------
    clients : int, default 4000
        Number of client ids: 90% present at the first run, 5% more new at each later run.
    seed : int, default 7
        Seed of the random draws: the same seed gives the same data.

    Returns
    -------
    ReportData
        Three nightly runs a day apart, the last one as of 2026-11-21.
    """
    rng = np.random.default_rng(seed)
    p = _SAMPLE_WEIGHTS / _SAMPLE_WEIGHTS.sum()
    client_ids = [f"c{i:08d}" for i in range(clients)]
    n_first = int(clients * 0.9)
    first = rng.choice(len(_SAMPLE_IDS), size=n_first, p=p)
    built = _SampleHistory()
    for c, s in zip(client_ids[:n_first], first.tolist(), strict=True):
        built.enter(c, s, _SAMPLE_DAYS[0])
    runs = []
    for k, day in enumerate(_SAMPLE_DAYS):
        if k > 0:
            new = client_ids[
                int(n_first + (k - 1) * clients * 0.05) : int(n_first + k * clients * 0.05)
            ]
            _sample_night(rng, built, new, day, p)
        else:
            built.transitions += [[day, c, None, _SAMPLE_IDS[s]] for c, s in built.current.items()]
        runs.append(_sample_run(day, k, len(built.current), seed))
    current = built.current
    membership = _sample_membership(rng, current)
    seg_index = np.array(list(current.values()))
    scores = _sample_scores(rng, list(current), seg_index)
    funnel = _sample_funnel(rng, list(current), seg_index)
    run = dict(runs[-1])
    run["metrics"] = _sample_metrics(float(_SAMPLE_WEIGHTS[-1]))
    return ReportData(
        as_of=_SAMPLE_DAYS[-1],
        run=run,
        membership=membership,
        segments=_sample_segments(),
        transitions=pd.DataFrame(
            built.transitions, columns=["as_of", "client_id", "from_segment_id", "to_segment_id"]
        ),
        runs=pd.DataFrame(runs),
        history=pd.DataFrame(
            built.history, columns=["client_id", "segment_id", "valid_from", "valid_to"]
        ),
        scores=scores,
        funnel=funnel,
        title="Segmentation run report (sample data)",
    )


def _sample_night(
    rng: np.random.Generator, built: _SampleHistory, new: list[str], day: date, p: np.ndarray
) -> None:
    """One later night: the `new` clients enter, then 5% of the others move (cart abandoners
    drift to the dormant readers more often)."""
    for c in new:
        s = int(rng.choice(len(_SAMPLE_IDS), p=p))
        built.enter(c, s, day)
        built.transitions.append([day, c, None, _SAMPLE_IDS[s]])
    for c in sorted(built.current):
        if c in new or rng.random() > 0.05:
            continue
        old = built.current[c]
        target = 2 if old == 1 and rng.random() < 0.6 else int(rng.integers(len(_SAMPLE_IDS)))
        if target == old:
            continue
        built.move(c, target, day)


def _sample_run(day: date, k: int, clients: int, seed: int) -> dict[str, object]:
    """The `runs` row of the sample's k-th night."""
    return {
        "run_id": f"run-{day.isoformat()}",
        "as_of": day,
        "started_at": datetime(day.year, day.month, day.day + 1, 2, 0),
        "finished_at": datetime(day.year, day.month, day.day + 1, 2, 3, 41),
        "status": "success",
        "events_read": 1_250_000 + 31_000 * k,
        "events_quarantined": 412 + k,
        "clients": clients,
        "segments": len(_SAMPLE_IDS),
        "cluster_model_version": "3",
        "cltv_model_version": "2",
        "mlflow_run_id": f"{seed:02d}{k:02d}" + "ab4f1c9e0d2b7a6e5f3c1d9b8a7e",
    }


def _sample_segments() -> pd.DataFrame:
    """The sample's `segments` table, with profile and rule definitions as JSON."""
    definitions = []
    for _, name, kind, feats in _SAMPLE_SEGMENTS:
        definition: dict[str, object]
        if kind == "cluster":
            definition = {
                "name": name,
                "description": f"Cluster of clients: {name.lower()}.",
                "top_features": [
                    {"feature": f, "z": z, "median": m, "population_median": pop}
                    for f, z, m, pop in feats
                ],
            }
        elif kind == "rule":
            definition = {"when": "total_spend > 5000 and recency_days < 30", "priority": 10,
                          "description": "Top spenders active in the last month."}  # fmt: skip
        else:
            definition = {"name": name, "description": "Clients no cluster claims (HDBSCAN noise)."}
        definitions.append(json.dumps(definition))
    return pd.DataFrame(
        {
            "segment_id": _SAMPLE_IDS,
            "segment_name": [s[1] for s in _SAMPLE_SEGMENTS],
            "kind": ["cluster" if s[2] == "noise" else s[2] for s in _SAMPLE_SEGMENTS],
            "definition": definitions,
        }
    )


def _sample_membership(rng: np.random.Generator, current: dict[str, int]) -> pd.DataFrame:
    """The current membership of the sample, with a random journey stage per client."""
    return pd.DataFrame(
        {
            "client_id": list(current),
            "segment_id": [_SAMPLE_IDS[s] for s in current.values()],
            "segment_name": [_SAMPLE_SEGMENTS[s][1] for s in current.values()],
            "segment_source": [_SAMPLE_SEGMENTS[s][2] for s in current.values()],
            "journey_stage": rng.choice(list(STAGES), size=len(current)),
            "as_of": _SAMPLE_DAYS[-1],
        }
    )


def _sample_scores(
    rng: np.random.Generator, client_ids: list[str], seg_index: np.ndarray
) -> pd.DataFrame:
    """Gamma-distributed predicted CLTV around each segment's scale."""
    cltv = rng.gamma(2.0, _SAMPLE_CLTV_SCALE[seg_index] / 2.0)
    return pd.DataFrame(
        {
            "client_id": client_ids,
            "as_of": _SAMPLE_DAYS[-1],
            "predicted_cltv": np.round(cltv, 2),
            "horizon_days": 365,
        }
    )


def _sample_funnel(
    rng: np.random.Generator, client_ids: list[str], seg_index: np.ndarray
) -> pd.DataFrame:
    """The furthest journey stage per client, drawn from its segment's reach shares."""
    u = rng.random(len(client_ids))
    furthest = [STAGES[int((u[i] < _SAMPLE_REACH[s]).sum()) - 1] for i, s in enumerate(seg_index)]
    return pd.DataFrame({"client_id": client_ids, "furthest_stage": furthest})


def _sample_metrics(noise_share: float) -> dict[str, object]:
    """The sample run's metrics: quality, quarantine counts and the CLTV backtest."""
    return {
        "duplicates": 2_318,
        "quarantined_by_reason": {
            "future_event_time": 181,
            "negative_amount": 97,
            "missing_client_id": 64,
            "unparseable_event_time": 41,
            "sentiment_out_of_range": 31,
        },
        "noise_share": noise_share,
        "cluster_quality": 0.412,
        "stability": 0.93,
        "purchases_bias": -0.08,
        "purchases_rmse": 1.31,
        "purchases_mae": 0.74,
        "purchases_corr": 0.812,
        "spend_bias": -6.4,
        "spend_rmse": 212.5,
        "spend_mae": 88.1,
        "spend_corr": 0.768,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipelines.report --sample PATH.html`: write the sample report."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.report")
    parser.add_argument(
        "--sample", required=True, metavar="PATH", help="write a sample report here"
    )
    args = parser.parse_args(argv)
    path = Path(args.sample)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(sample_report_data()), encoding="utf-8")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
