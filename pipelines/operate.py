"""Daily operation: what the `export`, `explain`, `runs`, `status` and `models` commands do.

Each function reads the published store (or the MLflow registry) and returns plain values;
`pipelines/cli.py` parses the arguments and prints. Nothing here imports Prefect, and the
model listing does not import MLflow when the registry is a SQLite file, so these commands
answer in a second or two.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from configs import EngineConfig, SegmentationError

if TYPE_CHECKING:
    from pipelines.store import Reader, Store

__all__ = [
    "EXPORT_COLUMNS",
    "TRANSITION_EXPORT_COLUMNS",
    "ExportResult",
    "RunStatus",
    "StatusError",
    "UnknownClientError",
    "UnknownSegmentError",
    "check_status",
    "explain_client",
    "explain_text",
    "export_segment",
    "manage_models",
    "open_config_store",
    "progress_logger",
    "run_log",
    "runs_text",
    "unknown_segment_error",
]

log = logging.getLogger(__name__)

# What a destination needs of a member (the order of the exported columns).
EXPORT_COLUMNS = (
    "client_id",
    "segment_id",
    "segment_name",
    "lifecycle_stage",
    "journey_stage",
    "confidence",
    "holdout",
    "valid_from",
    "as_of",
    "p_alive",
    "p_purchase",
    "predicted_cltv",
    "cltv_model",
)
# An entry into (or exit from) the segment, with the published day it happened.
TRANSITION_EXPORT_COLUMNS = (
    "client_id",
    "segment_id",
    "segment_name",
    "change",
    "as_of",
    "from_segment_id",
    "to_segment_id",
    "from_lifecycle",
    "to_lifecycle",
    "holdout",
)
_SCORE_COLUMNS = ("p_alive", "p_purchase", "predicted_cltv", "cltv_model")


class UnknownSegmentError(SegmentationError, LookupError):
    """A segment id the store never published; the message names the closest ids."""


class UnknownClientError(SegmentationError, LookupError):
    """A client the store has no membership or history for."""


class StatusError(SegmentationError, RuntimeError):
    """The run log is not healthy (latest run failed, too old, or no successful run)."""


def unknown_segment_error(segment_id: str, known_ids: Iterable[str]) -> UnknownSegmentError:
    """The one-line error for a segment id that does not exist, naming the closest ids.

    Parameters
    ----------
    segment_id : str
        The id that was asked for.
    known_ids : iterable of str
        The ids that exist (the `segments` table).

    Returns
    -------
    UnknownSegmentError
        To raise; its message names up to three close ids (difflib, case-insensitive), or
        lists the known ids when none is close (the first ten).
    """
    known = sorted({str(k) for k in known_ids})
    if not known:
        return UnknownSegmentError(
            f"unknown segment {segment_id!r}: the store has no segments yet (publish a run first)"
        )
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(str(segment_id).lower(), list(by_lower), n=3, cutoff=0.5)
    if close:
        hint = "did you mean " + ", ".join(by_lower[c] for c in close) + "?"
    else:
        shown = ", ".join(known[:10]) + (f", ... ({len(known)} in all)" if len(known) > 10 else "")
        hint = f"known segments: {shown}"
    return UnknownSegmentError(f"unknown segment {segment_id!r}; {hint}")


def open_config_store(config: EngineConfig, url: str | None = None) -> Store:
    """The store at `url` (default: the config's, after $SEGMENTATION_STORE_URL) with the
    config's schema, lock timeout and reader retry."""
    from pipelines.store import open_store

    return open_store(
        url or config.store_url,
        config.store.schema_name,
        lock_timeout=config.store.lock_timeout_seconds,
        reader_retry=config.store.reader_retry_seconds,
    )


@contextmanager
def _snapshot(store: Store, what: str) -> Iterator[Reader]:
    """A consistent read of the store; an empty store is an error naming `what` was asked."""
    from pipelines.store import StoreEmptyError

    try:
        with store.snapshot() as reader:
            yield reader
    except StoreEmptyError as exc:
        raise StoreEmptyError(f"{what}: {exc}") from None


# -- export ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    """What `export_segment` wrote."""

    rows: int
    path: Path
    kind: str  # "members" or "transitions"


def export_segment(
    store: Store,
    segment_id: str,
    *,
    out: str | os.PathLike[str],
    fmt: str,
    entries_since: date | None = None,
    exits: bool = False,
) -> ExportResult:
    """Write a segment's current members, or its entries (and exits) since a date.

    Parameters
    ----------
    store : Store
        The published store.
    segment_id : str
        A published segment id (an unknown one raises `UnknownSegmentError` naming the
        closest ids).
    out : path
        The file written, atomically (a temporary file beside it, then renamed).
    fmt : {"csv", "parquet"}
        The file format.
    entries_since : date, optional
        Instead of the members: the clients who entered the segment on a published day on
        or after this date (`TRANSITION_EXPORT_COLUMNS`, oldest day first).
    exits : bool
        With `entries_since`: the exits from the segment too (`change` says which).

    Returns
    -------
    ExportResult
        Rows written and the path.
    """
    if fmt not in ("csv", "parquet"):
        raise SegmentationError(f"export format {fmt!r}: use csv or parquet")
    if exits and entries_since is None:
        raise SegmentationError("--exits needs --entries-since DATE")
    with _snapshot(store, f"export of segment {segment_id!r}") as r:
        segments = r.segments()
        if str(segment_id) not in set(segments["segment_id"].astype(str)):
            raise unknown_segment_error(segment_id, segments["segment_id"])
        name = str(segments.set_index("segment_id").loc[segment_id, "segment_name"])
        members = r.membership(segment_id)
        if entries_since is None:
            frame = _members_frame(members, r.scores())
            kind = "members"
        else:
            frame = _transitions_frame(r, segment_id, name, members, entries_since, exits)
            kind = "transitions"
    path = _write_atomically(frame, Path(out), fmt)
    return ExportResult(len(frame), path, kind)


def _holdout(members: pd.DataFrame) -> pd.Series:
    """The membership's `holdout` flag (False for a store from before holdout groups)."""
    if "holdout" not in members.columns:
        return pd.Series(False, index=members.index, dtype=bool)
    return members["holdout"].astype("boolean").fillna(False).astype(bool)


def _members_frame(members: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    frame = members.assign(holdout=_holdout(members))
    present = [c for c in _SCORE_COLUMNS if c in scores.columns]
    frame = frame.merge(scores[["client_id", *present]], on="client_id", how="left")
    for column in EXPORT_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    frame = frame[list(EXPORT_COLUMNS)].sort_values("client_id", ignore_index=True)
    return _dates(frame, ("valid_from", "as_of"))


def _transitions_frame(
    r: Reader,
    segment_id: str,
    name: str,
    members: pd.DataFrame,
    since: date,
    exits: bool,
) -> pd.DataFrame:
    runs = r.runs()
    days = sorted(
        {
            d
            for d in pd.to_datetime(runs.loc[runs["status"] == "success", "as_of"]).dt.date
            if d >= since
        }
    )
    parts = []
    for day in days:  # one indexed read per published day, not the whole table
        t = r.transitions(day)
        entered = (t["to_segment_id"] == segment_id) & (
            t["from_segment_id"].isna() | (t["from_segment_id"] != segment_id)
        )
        parts.append(t[entered].assign(change="entry"))
        if exits:
            left = (t["from_segment_id"] == segment_id) & (
                t["to_segment_id"].isna() | (t["to_segment_id"] != segment_id)
            )
            parts.append(t[left].assign(change="exit"))
    columns = [c for c in TRANSITION_EXPORT_COLUMNS if c not in ("segment_id", "segment_name")]
    frame = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame({c: pd.Series(dtype=object) for c in columns if c != "holdout"})
    )
    held = dict(zip(members["client_id"], _holdout(members), strict=True))
    # holdout is per (client, segment): known for clients still in the segment
    frame["holdout"] = [bool(held.get(c, False)) for c in frame["client_id"]]
    frame["segment_id"] = segment_id
    frame["segment_name"] = name
    frame = frame[list(TRANSITION_EXPORT_COLUMNS)]
    frame = frame.sort_values(["as_of", "change", "client_id"], ignore_index=True)
    return _dates(frame, ("as_of",))


def _dates(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Date columns as dates (a store returns timestamps at midnight)."""
    for column in columns:
        frame[column] = pd.to_datetime(frame[column]).dt.date
    return frame


def _write_atomically(frame: pd.DataFrame, out: Path, fmt: str) -> Path:
    """Write to a temporary file beside `out`, then rename it: a reader sees the previous
    file or the complete new one, never a partial one."""
    out = out.expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out.resolve()


# -- explain -----------------------------------------------------------------------------------


def explain_client(store: Store, client_id: str, *, moves: int = 10) -> dict[str, Any]:
    """Why a client is where they are: segment, reason, scores, stages, holdout, last moves.

    Returns
    -------
    dict
        JSON-ready: the client's current membership and scores, and `moves`, their latest
        membership stretches (segment_history), newest first.

    Raises
    ------
    UnknownClientError
        The store has neither a current membership nor any history for the client.
    """
    with _snapshot(store, f"explain {client_id!r}") as r:
        current = r.client(client_id)
        history = r.history(client_id)
        names = dict(zip(r.segments()["segment_id"], r.segments()["segment_name"], strict=True))
        if len(current) and "holdout" not in current.columns:
            segment = current["segment_id"].iloc[0]
            members = r.membership(segment)
            held = members.loc[members["client_id"] == client_id]
            holdout = bool(_holdout(held).iloc[0]) if len(held) else False
        else:
            holdout = bool(_holdout(current).iloc[0]) if len(current) else False
        latest = r.latest_as_of()
    if not len(current) and not len(history):
        raise UnknownClientError(
            f"client {client_id!r} is not in the store {store.url}"
            f" (no membership or history as of {latest})"
        )
    row = _record(current.iloc[0]) if len(current) else {}
    stretches = history.sort_values("valid_from", ascending=False).head(moves)
    return {
        "client_id": client_id,
        "segment_id": row.get("segment_id"),
        "segment_name": row.get("segment_name"),
        "segment_source": row.get("segment_source"),
        "confidence": row.get("confidence"),
        "reason": row.get("reason"),
        "lifecycle_stage": row.get("lifecycle_stage"),
        "journey_stage": row.get("journey_stage"),
        "holdout": holdout,
        "scores": {
            k: row.get(k)
            for k in (
                "p_alive",
                "p_purchase",
                "expected_purchases",
                "expected_avg_value",
                "predicted_cltv",
                "cltv_model",
                "cltv_model_version",
                "horizon_days",
            )
        },
        "valid_from": row.get("valid_from"),
        "as_of": row.get("as_of") or (str(latest) if latest else None),
        "run_id": row.get("run_id"),
        "moves": [
            {
                "valid_from": s.get("valid_from"),
                "valid_to": s.get("valid_to"),
                "segment_id": s.get("segment_id"),
                "segment_name": names.get(s.get("segment_id")),
                "lifecycle_stage": s.get("lifecycle_stage"),
            }
            for s in (_record(x) for _, x in stretches.iterrows())
        ],
    }


def _record(row: pd.Series) -> dict[str, Any]:
    """A row as JSON-ready values: nulls None, timestamps as ISO dates, numpy as Python."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            out[str(key)] = None
        elif isinstance(value, pd.Timestamp | datetime):
            out[str(key)] = value.date().isoformat()
        elif isinstance(value, date):
            out[str(key)] = value.isoformat()
        elif hasattr(value, "item"):
            out[str(key)] = value.item()
        else:
            out[str(key)] = value
    return out


def explain_text(e: dict[str, Any]) -> str:
    """`explain_client`'s answer as lines for a terminal."""
    s = e["scores"]
    if e["segment_id"] is None:
        head = f"Client {e['client_id']}: in no segment as of {e['as_of']}"
    else:
        head = (
            f"Client {e['client_id']}: {e['segment_name']} ({e['segment_id']}, "
            f"{e['segment_source']}, confidence {_num(e['confidence'], '.2f')})"
            f" since {e['valid_from']}, as of {e['as_of']}"
        )
    lines = [head]
    if e["reason"]:
        lines.append(f"  why: {e['reason']}")
    lines.append(
        f"  lifecycle: {e['lifecycle_stage']}; journey stage: {e['journey_stage']};"
        f" holdout: {'yes (held out of campaigns)' if e['holdout'] else 'no'}"
    )
    lines.append(
        f"  scores ({s['cltv_model'] or 'none'} model v{s['cltv_model_version'] or '-'}):"
        f" p_alive {_num(s['p_alive'], '.3f')}, p_purchase {_num(s['p_purchase'], '.3f')},"
        f" expected purchases {_num(s['expected_purchases'], '.2f')},"
        f" predicted CLTV {_num(s['predicted_cltv'], ',.2f')}"
        + (f" over {s['horizon_days']} days" if s["horizon_days"] else "")
    )
    if e["moves"]:
        lines.append("  last moves (newest first):")
        for m in e["moves"]:
            until = m["valid_to"] or "now"
            name = m["segment_name"] or m["segment_id"] or "no segment"
            lines.append(
                f"    {m['valid_from']} -> {until}: {name} ({m['segment_id']}),"
                f" {m['lifecycle_stage']}"
            )
    return "\n".join(lines)


def _num(value: object, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


# -- runs and status ---------------------------------------------------------------------------

_RUN_COLUMNS = (
    "run_id",
    "as_of",
    "status",
    "started_at",
    "finished_at",
    "duration_seconds",
    "events_read",
    "events_quarantined",
    "clients",
    "segments",
    "error",
)


def run_log(store: Store, limit: int | None = 20) -> pd.DataFrame:
    """The run log newest first (`_RUN_COLUMNS`), at most `limit` runs (None: all); empty
    for a store that has published nothing yet."""
    from pipelines.store import StoreEmptyError

    try:
        runs = store.runs()
    except StoreEmptyError:
        runs = pd.DataFrame(columns=[c for c in _RUN_COLUMNS if c != "duration_seconds"])
    runs = runs.sort_values(["started_at", "run_id"], ascending=False, ignore_index=True)
    if limit is not None:
        runs = runs.head(max(limit, 0))
    started = pd.to_datetime(runs["started_at"])
    finished = pd.to_datetime(runs["finished_at"])
    runs["duration_seconds"] = (finished - started).dt.total_seconds().round(1)
    return runs[list(_RUN_COLUMNS)].reset_index(drop=True)


def runs_records(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """The run log as JSON-ready records (times as ISO text, UTC)."""
    out = []
    for _, row in runs.iterrows():
        record: dict[str, Any] = {}
        for key, value in row.items():
            if value is None or (not isinstance(value, str) and pd.isna(value)):
                record[str(key)] = None
            elif key == "as_of":
                record[str(key)] = pd.Timestamp(value).date().isoformat()
            elif isinstance(value, pd.Timestamp | datetime):
                record[str(key)] = pd.Timestamp(value).isoformat()
            elif hasattr(value, "item"):
                record[str(key)] = value.item()
            else:
                record[str(key)] = value
        out.append(record)
    return out


def runs_text(runs: pd.DataFrame) -> str:
    """The run log as a table for a terminal (an error cut to one short line)."""
    if not len(runs):
        return "no runs yet"
    view = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "as_of": pd.to_datetime(runs["as_of"]).dt.date,
            "status": runs["status"],
            "started (UTC)": pd.to_datetime(runs["started_at"]).dt.strftime("%Y-%m-%d %H:%M:%S"),
            "finished (UTC)": pd.to_datetime(runs["finished_at"])
            .dt.strftime("%Y-%m-%d %H:%M:%S")
            .fillna("-"),
            "seconds": runs["duration_seconds"].map(lambda v: "-" if pd.isna(v) else f"{v:.0f}"),
            "events": runs["events_read"].map(_count),
            "quarantined": runs["events_quarantined"].map(_count),
            "clients": runs["clients"].map(_count),
            "segments": runs["segments"].map(_count),
            "error": runs["error"].map(lambda v: "" if v is None or pd.isna(v) else _cut(v, 80)),
        }
    )
    return view.to_string(index=False)


def _count(value: object) -> str:
    if value is None or pd.isna(value):  # type: ignore[call-overload]
        return "-"
    return f"{int(value):,}"  # type: ignore[call-overload]


def _cut(text: object, width: int) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 3] + "..."


@dataclass(frozen=True)
class RunStatus:
    """The health of the run log: `ok`, the one-line `message`, and the figures behind it."""

    ok: bool
    message: str
    latest_run_id: str | None
    latest_status: str | None
    latest_success_as_of: str | None
    latest_success_finished_at: str | None
    age_hours: float | None
    max_age_hours: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dict(self.__dict__)


def check_status(
    store: Store, *, max_age_hours: float = 26, now: datetime | None = None
) -> RunStatus:
    """Whether the nightly is healthy, for monitoring.

    Not OK when the store has no successful run, when the latest run (replaced runs aside)
    failed, or when the latest successful run finished more than `max_age_hours` ago.
    """
    runs = run_log(store, limit=None)
    runs = runs[runs["status"] != "replaced"]
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    latest = runs.iloc[0] if len(runs) else None
    good = runs[runs["status"] == "success"]
    success = good.iloc[0] if len(good) else None
    finished = pd.Timestamp(success["finished_at"]) if success is not None else None
    age = (now - finished.to_pydatetime()).total_seconds() / 3600 if finished is not None else None

    def status(ok: bool, message: str) -> RunStatus:
        return RunStatus(
            ok=ok,
            message=message,
            latest_run_id=None if latest is None else str(latest["run_id"]),
            latest_status=None if latest is None else str(latest["status"]),
            latest_success_as_of=None
            if success is None
            else pd.Timestamp(success["as_of"]).date().isoformat(),
            latest_success_finished_at=None if finished is None else finished.isoformat(),
            age_hours=None if age is None else round(age, 2),
            max_age_hours=max_age_hours,
        )

    if latest is not None and latest["status"] == "failed":
        when = pd.Timestamp(latest["started_at"]).strftime("%Y-%m-%d %H:%M UTC")
        error = _cut(latest["error"], 200) if latest["error"] is not None else "no error recorded"
        return status(
            False,
            f"latest run {latest['run_id']} as of {pd.Timestamp(latest['as_of']).date()}"
            f" failed (started {when}): {error}",
        )
    if success is None or age is None:
        return status(False, f"no successful run in {store.url}")
    as_of = pd.Timestamp(success["as_of"]).date()
    if age > max_age_hours:
        return status(
            False,
            f"latest successful run {success['run_id']} as of {as_of} finished {_ago(age)},"
            f" more than the allowed {max_age_hours:g} h",
        )
    return status(
        True,
        f"OK: run {success['run_id']} as of {as_of} finished {_ago(age)}"
        f" ({_count(success['clients'])} clients, {_count(success['segments'])} segments)",
    )


def _ago(hours: float) -> str:
    return f"{hours * 60:.0f} min ago" if abs(hours) < 1 else f"{hours:.1f} h ago"


# -- models ------------------------------------------------------------------------------------


def manage_models(config: EngineConfig, action: str, *, model: str, version: int | None) -> str:
    """`segmentation models list | promote VERSION | rollback` without Prefect.

    `list` reads a SQLite registry directly (`registry.list_versions_fast`); promote and
    rollback go through MLflow's client."""
    from pipelines import registry

    name = (
        config.mlflow.cluster_model_name if model == "clusters" else config.mlflow.cltv_model_name
    )
    if action == "list":
        table = registry.list_versions_fast(config.tracking_uri, name)
        if not len(table):
            return f"no versions of {name}"
        with pd.option_context("display.width", 250, "display.max_columns", None):
            return table.to_string(index=False)
    reg = registry.ModelRegistry(config.tracking_uri)
    if action == "promote":
        if version is None:
            raise SegmentationError("models promote needs a VERSION")
        previous = reg.promote(name, version)
        return f"{name}: version {version} is champion (was {previous})"
    restored = reg.rollback(name)
    return f"{name}: rolled back; version {restored} is champion"


# -- progress ----------------------------------------------------------------------------------

PROGRESS_LOGGER = "pipelines.progress"


def progress_logger(quiet: bool) -> logging.Logger:
    """The logger of progress lines (`[elapsed] [as_of] step`): on stderr as plain lines,
    silenced by `quiet`; it does not propagate, so -v does not print them twice."""
    logger = logging.getLogger(PROGRESS_LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    return logger
