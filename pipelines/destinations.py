"""Deliver the day's segment entries and exits to the configured destinations, at least once.

    summary = deliver(store, config)                  # the latest published as_of
    summary = deliver(store, config, as_of=day, retry=False)

Each destination (`config.destinations`: an HTTP webhook or a file drop) gets, per segment it
takes and per kind (entries, exits), the day's events from `segment_transitions` in batches.
A batch's id is a stable hash of its destination, day, segment, kind, number and client ids,
so the same content always has the same key; `destination_deliveries` records each batch
(pending before the first attempt, then delivered or failed) and a delivered batch is never
sent again. A failure is recorded and summarized, never raised, and never touches the
published tables. Guarantees, payload and re-sending: docs/destinations.md.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from configs import SegmentationError, as_date
from configs.schema import EngineConfig, FileDestination, WebhookDestination
from pipelines.locks import file_lock
from pipelines.store import Store, mask_url
from segmentation.holdout import holdout_flags

__all__ = [
    "EVENT_COLUMNS",
    "DeliveryError",
    "DeliverySummary",
    "DestinationResult",
    "batch_id",
    "deliver",
    "deliver_after_publish",
    "deliver_command",
    "event_id",
    "masked_location",
]

log = logging.getLogger("pipelines.destinations")

# The columns of one client event, in payload and file order.
EVENT_COLUMNS = (
    "event_id",
    "client_id",
    "segment_id",
    "segment_name",
    "kind",
    "from_segment_id",
    "to_segment_id",
    "from_lifecycle",
    "to_lifecycle",
    "as_of",
    "run_id",
    "holdout",
    "predicted_cltv",
    "p_purchase",
)
KINDS = {"entries": "entry", "exits": "exit"}  # batch kind -> event kind
BACKOFF_CAP_SECONDS = 60.0  # longest wait between two attempts (Retry-After included)
BUDGET_CAP_SECONDS = 600.0  # most time one destination may spend failing in one call
RETRY_DAYS = 7  # earlier days whose undelivered batches a retrying call sends again
LOCK_WAIT_SECONDS = 60.0  # how long a call waits for another deliverer of the same workdir
MAX_CONSECUTIVE_FAILURES = 3  # failed batches in a row after which a destination is left
NOISE_KIND = "noise"  # the segments table's kind of the no-segment "segment"

Clock = Callable[[], datetime]
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class DeliveryError(SegmentationError, RuntimeError):
    """Nothing can be delivered: no published run for the as_of, or another delivery holds
    the workdir's delivery lock. Failures of a destination are never raised (see deliver)."""


@dataclass(frozen=True)
class DestinationResult:
    """What one destination got in one `deliver` call.

    sent: batches delivered now; skipped: batches already delivered before; failed: batches
    that failed now (recorded `failed`, sent again by the next retrying call); pending: batches
    left for a later call (never attempted because the destination was given up on, or
    failed before and `retry=False`); clients: client events in the batches sent now."""

    destination: str
    kind: str
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    pending: int = 0
    clients: int = 0
    days: tuple[date, ...] = ()
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.error is None


@dataclass(frozen=True)
class DeliverySummary:
    """The outcome of one `deliver` call, per destination."""

    as_of: date | None
    destinations: tuple[DestinationResult, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when nothing failed (batches left pending for a retry are not failures)."""
        return self.error is None and all(r.ok for r in self.destinations)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (dates as ISO strings)."""
        return {
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "ok": self.ok,
            "error": self.error,
            "destinations": [
                {**asdict(r), "days": [d.isoformat() for d in r.days], "ok": r.ok}
                for r in self.destinations
            ],
        }


# -- ids ----------------------------------------------------------------------------------------
def _digest(parts: list[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:32]


def event_id(destination: str, as_of: date, segment_id: str, kind: str, client_id: str) -> str:
    """The id of one client event at one destination (kind: entries or exits): the same
    event always has the same id, so a receiver can deduplicate across batches and runs."""
    return _digest(["event", destination, as_of.isoformat(), segment_id, kind, client_id])


def batch_id(
    destination: str,
    as_of: date,
    segment_id: str,
    kind: str,
    batch_number: int,
    client_ids: list[str],
) -> str:
    """The idempotency key of one batch: a hash of where it goes, what day, segment, kind and
    number it is and which clients it holds (in order)."""
    head = ["batch", destination, as_of.isoformat(), segment_id, kind, str(batch_number)]
    return _digest(head + [str(c) for c in client_ids])


def masked_location(url: str) -> str:
    """A webhook URL as recorded and logged: without user info, query string or fragment
    (`?***` marks a query), `${VAR}` placeholders left as written."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    query = "?***" if parts.query else ""
    return mask_url(f"{parts.scheme}://{netloc}{parts.path}{query}")


# -- reading the day's events -------------------------------------------------------------------
@dataclass
class _Source:
    """What the destinations read from the store in one call, read once and shared."""

    store: Store
    config: EngineConfig
    _segments: pd.DataFrame | None = None
    _scores: pd.DataFrame | None = None
    _days: dict[date, pd.DataFrame] = field(default_factory=dict)

    def segments(self) -> pd.DataFrame:
        if self._segments is None:
            self._segments = self.store.segments()
        return self._segments

    def segment_ids(self) -> list[str]:
        """Segments a destination without a segment list takes: every non-noise segment
        that has members now."""
        seg = self.segments()
        live = seg[(seg["kind"] != NOISE_KIND) & (seg["size"].fillna(0) > 0)]
        return sorted(str(s) for s in live["segment_id"])

    def noise_ids(self) -> set[str]:
        seg = self.segments()
        return {str(s) for s in seg.loc[seg["kind"] == NOISE_KIND, "segment_id"]}

    def scores(self) -> pd.DataFrame:
        if self._scores is None:
            scores = self.store.scores()
            keep = [c for c in ("client_id", "predicted_cltv", "p_purchase") if c in scores]
            self._scores = scores[keep].copy()
        return self._scores

    def events(self, day: date) -> pd.DataFrame:
        """The day's entries and exits of every segment, without destination ids."""
        if day not in self._days:
            self._days[day] = self._read_events(day)
        return self._days[day]

    def _read_events(self, day: date) -> pd.DataFrame:
        t = self.store.transitions(day)
        events = _entries_exits(t)
        names = self.segments().set_index("segment_id")["segment_name"]
        events["segment_name"] = events["segment_id"].map(names)
        events["as_of"] = day
        scores = self.scores()
        events = events.merge(scores, on="client_id", how="left")
        for column in ("predicted_cltv", "p_purchase"):
            if column not in events:
                events[column] = np.nan
        events["holdout"] = self._holdout(events) if len(events) else False
        events["holdout"] = events["holdout"].astype(bool)
        return events.sort_values(["segment_id", "kind", "client_id"], kind="stable").reset_index(
            drop=True
        )

    def _holdout(self, events: pd.DataFrame) -> np.ndarray:
        """Whether each event's client is held out of the event's segment: the draw that
        published `segment_membership.holdout` (segmentation.holdout, the config's `holdout`
        section), so an exit is flagged by the segment the client left."""
        h = self.config.holdout
        return holdout_flags(
            events["client_id"],
            events["segment_id"],
            share=h.share,
            salt=h.salt,
            segment_shares=h.segments,
        )


def _entries_exits(t: pd.DataFrame) -> pd.DataFrame:
    """Entries (to the segment from another or none) and exits (from it to another or none)
    of a day's transitions; lifecycle-only changes are neither."""
    cols = ["client_id", "from_segment_id", "to_segment_id", "from_lifecycle", "to_lifecycle"]
    t = t.reindex(columns=[*cols, "run_id"])
    moved = t["from_segment_id"].fillna("\x00") != t["to_segment_id"].fillna("\x00")
    t = t[moved]
    entries = t[t["to_segment_id"].notna()].assign(segment_id=t["to_segment_id"], kind="entry")
    exits = t[t["from_segment_id"].notna()].assign(segment_id=t["from_segment_id"], kind="exit")
    out = pd.concat([entries, exits], ignore_index=True)
    for column in ("client_id", "segment_id", *cols[1:], "run_id"):
        out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out


# -- batches ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Batch:
    destination: str
    as_of: date
    run_id: str | None
    segment_id: str
    kind: str  # entries | exits
    batch_number: int
    batches: int
    events: pd.DataFrame
    batch_id: str

    def payload(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "batch_id": self.batch_id,
            "as_of": self.as_of.isoformat(),
            "segment_id": self.segment_id,
            "kind": self.kind,
            "batch_number": self.batch_number,
            "batches": self.batches,
            "events": _records(self.events),
        }


def _records(events: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in events[list(EVENT_COLUMNS)].itertuples(index=False):
        record: dict[str, Any] = {}
        for column, value in zip(EVENT_COLUMNS, row, strict=True):
            if isinstance(value, date):
                value = value.isoformat()
            elif isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, float) and math.isnan(value):
                value = None
            record[column] = value
        out.append(record)
    return out


def _destination_events(
    source: _Source, dest: WebhookDestination | FileDestination, day: date
) -> tuple[pd.DataFrame, list[str]]:
    """The day's events this destination takes (holdout removed unless included), with
    event ids, and the segment ids it takes."""
    events = source.events(day)
    wanted = list(dest.segments) if dest.segments is not None else source.segment_ids()
    if dest.segments is None:  # every segment, retired ones with exits today included
        taken = set(wanted) | (set(events["segment_id"]) - source.noise_ids())
    else:
        taken = set(wanted)
    known = set(source.segments()["segment_id"])
    for missing in sorted(set(wanted) - known):
        log.warning("destination %s: segment %r is not a published segment", dest.name, missing)
    events = events[events["segment_id"].isin(taken)]
    if not dest.include_holdout:
        events = events[~events["holdout"]]
    events = events.copy()
    kinds = events["kind"].map({v: k for k, v in KINDS.items()})
    events["event_id"] = [
        event_id(dest.name, day, s, k, c)
        for s, k, c in zip(events["segment_id"], kinds, events["client_id"], strict=True)
    ]
    return events.reindex(columns=list(EVENT_COLUMNS)), sorted(taken & known)


def _batches(
    dest: WebhookDestination | FileDestination,
    day: date,
    events: pd.DataFrame,
    segment_ids: list[str],
    run_id: str | None,
) -> list[_Batch]:
    """The batches of a day in a fixed order (segment, kind, number); a file drop gets one
    batch per segment and kind, empty ones included; a webhook no empty batch."""
    size = dest.batch_size if isinstance(dest, WebhookDestination) else None
    out = []
    for segment_id in segment_ids:
        for kind, event_kind in KINDS.items():
            rows = events[(events["segment_id"] == segment_id) & (events["kind"] == event_kind)]
            rows = rows.sort_values("client_id", kind="stable").reset_index(drop=True)
            if size is None:
                chunks = [rows]
            else:
                chunks = [rows.iloc[i : i + size] for i in range(0, len(rows), size)]
            for number, chunk in enumerate(chunks, start=1):
                ids = [str(c) for c in chunk["client_id"]]
                key = batch_id(dest.name, day, segment_id, kind, number, ids)
                out.append(
                    _Batch(
                        dest.name, day, run_id, segment_id, kind, number, len(chunks), chunk, key
                    )
                )
    return out


# -- recording ----------------------------------------------------------------------------------
@dataclass
class _Known:
    """A batch's recorded state before this call."""

    status: str
    attempts: int
    first_attempt_at: datetime | None


def _known(store: Store, destination: str, day: date) -> dict[str, _Known]:
    rows = store.deliveries(destination=destination, as_of=day)
    out = {}
    for row in rows.to_dict("records"):
        attempts: Any = row["attempts"]
        first: Any = row["first_attempt_at"]
        out[str(row["batch_id"])] = _Known(
            str(row["status"]),
            0 if pd.isna(attempts) else int(attempts),
            None if pd.isna(first) else pd.Timestamp(first).to_pydatetime(),
        )
    return out


def _row(
    batch: _Batch,
    *,
    status: str,
    attempts: int,
    first_attempt_at: datetime | None,
    last_attempt_at: datetime | None,
    delivered_at: datetime | None = None,
    error: str | None = None,
    location: str | None = None,
) -> dict[str, Any]:
    """One `destination_deliveries` row of a batch."""
    return {
        "batch_id": batch.batch_id,
        "run_id": batch.run_id,
        "as_of": batch.as_of,
        "destination": batch.destination,
        "segment_id": batch.segment_id,
        "kind": batch.kind,
        "batch_number": batch.batch_number,
        "clients": len(batch.events),
        "status": status,
        "attempts": attempts,
        "first_attempt_at": first_attempt_at,
        "last_attempt_at": last_attempt_at,
        "delivered_at": delivered_at,
        "error": error,
        "location": location,
    }


def _record(store: Store, rows: list[dict[str, Any]]) -> None:
    if rows:
        store.record_deliveries(pd.DataFrame(rows))


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# -- webhook ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    url: str
    headers: dict[str, str]
    secrets: tuple[str, ...]


def _expand(text: str, secrets: list[str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        found = os.environ.get(name)
        if found is None:
            raise _UnusableError(f"environment variable {name} is not set")
        if found:
            secrets.append(found)
        return found

    return _ENV_VAR.sub(value, text)


class _UnusableError(Exception):
    """A destination that cannot be tried (unset variable, unusable URL)."""


def _target(dest: WebhookDestination) -> _Target:
    """The URL and headers with `${VAR}` filled in at send time (never stored or logged)."""
    secrets: list[str] = []
    url = _expand(dest.url, secrets)
    headers = {k: _expand(v, secrets) for k, v in dest.headers.items()}
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise _UnusableError("the URL must start with http:// or https://")
    return _Target(url, headers, tuple(sorted(set(secrets), key=len, reverse=True)))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is answered as the HTTP error it is


@dataclass(frozen=True)
class _Attempt:
    ok: bool
    retryable: bool = False
    error: str | None = None
    retry_after: float | None = None


_RETRYABLE_STATUS = {408, 425, 429}


def _post(
    opener: urllib.request.OpenerDirector, target: _Target, body: bytes, key: str, timeout: float
) -> _Attempt:
    headers = {
        **target.headers,
        "Content-Type": "application/json",
        "Idempotency-Key": key,
        "User-Agent": "segmentation-destinations/1",
    }
    request = urllib.request.Request(target.url, data=body, headers=headers, method="POST")
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read()
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
        with contextlib.suppress(Exception):
            exc.read()
        exc.close()
        retryable = status in _RETRYABLE_STATUS or status >= 500
        reason = http.client.responses.get(status, "")
        return _Attempt(
            False, retryable, f"HTTP {status} {reason}".strip(), _retry_after(exc.headers)
        )
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        return _Attempt(False, True, _transport_error(exc, timeout))
    if 200 <= status < 300:
        return _Attempt(True)
    return _Attempt(False, False, f"HTTP {status} (not a 2xx answer)")


def _transport_error(exc: BaseException, timeout: float) -> str:
    """A short description of a connection problem, naming no host, URL or header."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, http.client.RemoteDisconnected | ConnectionResetError):
        return "connection closed by the server without an answer"
    if isinstance(reason, BrokenPipeError | ConnectionAbortedError):
        return "connection closed by the server"
    return f"connection failed ({type(reason).__name__})"


def _retry_after(headers: Message | None) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), or None."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _backoff(dest: WebhookDestination, retry: int, retry_after: float | None) -> float:
    """Seconds before retry number `retry` (0-based): backoff * 2**retry, at least the
    server's Retry-After, at most BACKOFF_CAP_SECONDS."""
    delay = dest.backoff_seconds * 2.0**retry
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, BACKOFF_CAP_SECONDS)


def _budget_seconds(dest: WebhookDestination) -> float:
    """Time one destination may spend on failed attempts and waits in one call: one batch's
    worst case (every attempt timing out, every wait taken), at most BUDGET_CAP_SECONDS."""
    waits = sum(_backoff(dest, k, None) for k in range(dest.max_attempts - 1))
    return min(BUDGET_CAP_SECONDS, dest.max_attempts * dest.timeout_seconds + waits)


@dataclass
class _Outcome:
    delivered: bool
    attempts: int
    error: str | None = None
    give_up: bool = False  # the destination looks down: leave its other batches for later


@dataclass
class _Budget:
    seconds: float
    spent: float = 0.0

    @property
    def left(self) -> float:
        return self.seconds - self.spent


def _send(
    opener: urllib.request.OpenerDirector,
    target: _Target,
    dest: WebhookDestination,
    batch: _Batch,
    budget: _Budget,
) -> _Outcome:
    """POST one batch with retries; `budget` counts the time spent failing and waiting."""
    body = json.dumps(batch.payload(), separators=(",", ":")).encode("utf-8")
    attempt = _Attempt(False, True, "time budget used")
    for number in range(1, dest.max_attempts + 1):
        started = time.monotonic()
        attempt = _post(opener, target, body, batch.batch_id, dest.timeout_seconds)
        if attempt.ok:
            return _Outcome(True, number)
        budget.spent += time.monotonic() - started
        error = _scrub(attempt.error or "failed", target.secrets)
        if not attempt.retryable:
            return _Outcome(False, number, error)
        if number == dest.max_attempts:
            return _Outcome(False, number, f"{error} (after {number} attempts)", give_up=True)
        delay = _backoff(dest, number - 1, attempt.retry_after)
        if delay >= budget.left:
            budget_note = f"time budget of {budget.seconds:g} s for this destination used"
            return _Outcome(False, number, f"{error}; {budget_note}", give_up=True)
        time.sleep(delay)
        budget.spent += delay
    raise AssertionError("unreachable")  # pragma: no cover


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    text = mask_url(text)
    for secret in secrets:
        text = text.replace(secret, "***")
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


# -- running a destination ----------------------------------------------------------------------
@dataclass
class _Tally:
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    pending: int = 0
    clients: int = 0
    error: str | None = None
    days: list[date] = field(default_factory=list)


Sender = Callable[[_Batch], _Outcome]


def _run_batches(
    store: Store,
    batches: list[_Batch],
    known: dict[str, _Known],
    send: Sender,
    location: Callable[[_Batch], str],
    *,
    retry: bool,
    clock: Clock,
    tally: _Tally,
) -> bool:
    """Send the batches not yet delivered, recording each `pending` before its first attempt
    and then its outcome (written with the next batch's `pending` row, in one transaction);
    False when the destination was given up on (the rest left pending)."""
    failures = 0
    outcome_rows: list[dict[str, Any]] = []
    try:
        for index, batch in enumerate(batches):
            before = known.get(batch.batch_id)
            if before is not None and before.status == "delivered":
                tally.skipped += 1
                continue
            if before is not None and not retry:
                tally.pending += 1
                continue
            attempts = before.attempts if before else 0
            started = clock()
            first = before.first_attempt_at if before and before.first_attempt_at else started
            where = location(batch)
            pending = _row(
                batch,
                status="pending",
                attempts=attempts,
                first_attempt_at=first,
                last_attempt_at=started,
                location=where,
            )
            _record(store, [*outcome_rows, pending])
            outcome_rows = []
            outcome = send(batch)
            ended = clock()
            outcome_rows = [
                _row(
                    batch,
                    status="delivered" if outcome.delivered else "failed",
                    attempts=attempts + outcome.attempts,
                    first_attempt_at=first,
                    last_attempt_at=ended,
                    delivered_at=ended if outcome.delivered else None,
                    error=outcome.error,
                    location=where,
                )
            ]
            if outcome.delivered:
                tally.sent += 1
                tally.clients += len(batch.events)
                failures = 0
                continue
            tally.failed += 1
            tally.error = outcome.error
            failures += 1
            if outcome.give_up or failures >= MAX_CONSECUTIVE_FAILURES:
                rest = batches[index + 1 :]
                tally.skipped += sum(_delivered(known, b) for b in rest)
                tally.pending += sum(not _delivered(known, b) for b in rest)
                return False
        return True
    finally:
        _record(store, outcome_rows)


def _delivered(known: dict[str, _Known], batch: _Batch) -> bool:
    before = known.get(batch.batch_id)
    return before is not None and before.status == "delivered"


def _webhook_sender(dest: WebhookDestination) -> tuple[Sender, Callable[[_Batch], str]]:
    location = masked_location(dest.url)
    try:
        target = _target(dest)
    except _UnusableError as exc:
        problem = str(exc)

        def refuse(batch: _Batch) -> _Outcome:
            return _Outcome(False, 0, problem, give_up=True)

        return refuse, lambda b: location
    opener = urllib.request.build_opener(_NoRedirect())
    budget = _Budget(_budget_seconds(dest))

    def send(batch: _Batch) -> _Outcome:
        return _send(opener, target, dest, batch, budget)

    return send, lambda b: location


def _file_path(config: EngineConfig, dest: FileDestination, batch: _Batch) -> Path:
    folder = Path(config.resolve(dest.path)).expanduser()
    name = f"{batch.segment_id}_{batch.kind}.{dest.format}"
    return folder / batch.as_of.isoformat() / dest.name / name


def _file_sender(
    config: EngineConfig, dest: FileDestination
) -> tuple[Sender, Callable[[_Batch], str]]:
    def send(batch: _Batch) -> _Outcome:
        path = _file_path(config, dest, batch)
        try:
            _write_atomically(batch.events, path, dest.format)
        except (OSError, ValueError, ImportError) as exc:
            error = f"cannot write {path.name}: {type(exc).__name__}: {exc}"
            return _Outcome(False, 1, _scrub(error, ()))
        return _Outcome(True, 1)

    return send, lambda b: str(_file_path(config, dest, b))


def _write_atomically(events: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write the file next to its final name, then rename it: a reader sees the whole file
    or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    frame = events.reset_index(drop=True).copy()
    frame["as_of"] = pd.to_datetime(frame["as_of"]).dt.date
    frame["holdout"] = frame["holdout"].astype(bool)
    for column in ("predicted_cltv", "p_purchase"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    try:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            special = {"as_of": pa.date32(), "holdout": pa.bool_()}
            special.update(predicted_cltv=pa.float64(), p_purchase=pa.float64())
            schema = pa.schema([(c, special.get(c, pa.string())) for c in EVENT_COLUMNS])
            table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
            pq.write_table(table, tmp)
        else:
            frame.to_csv(tmp, index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _run_destination(
    source: _Source,
    config: EngineConfig,
    dest: WebhookDestination | FileDestination,
    days: list[tuple[date, str | None]],
    *,
    retry: bool,
    clock: Clock,
) -> DestinationResult:
    started = time.monotonic()
    tally = _Tally()
    if isinstance(dest, WebhookDestination):
        send, location = _webhook_sender(dest)
    else:
        send, location = _file_sender(config, dest)
    try:
        for day, run_id in days:
            events, segment_ids = _destination_events(source, dest, day)
            batches = _batches(dest, day, events, segment_ids, run_id)
            known = _known(source.store, dest.name, day)
            tally.days.append(day)
            go_on = _run_batches(
                source.store,
                batches,
                known,
                send,
                location,
                retry=retry,
                clock=clock,
                tally=tally,
            )
            if not go_on:
                break
    except Exception as exc:  # a store or bug problem: recorded in the summary, never raised
        tally.error = _scrub(f"{type(exc).__name__}: {exc}", ())
        log.debug("destination %s failed", dest.name, exc_info=True)
    return DestinationResult(
        destination=dest.name,
        kind=dest.kind,
        sent=tally.sent,
        skipped=tally.skipped,
        failed=tally.failed,
        pending=tally.pending,
        clients=tally.clients,
        days=tuple(tally.days),
        seconds=round(time.monotonic() - started, 3),
        error=tally.error,
    )


def _log_result(result: DestinationResult, as_of: date) -> None:
    level = logging.INFO if result.ok else logging.WARNING
    log.log(
        level,
        "destination %s (%s) as_of %s: %d batches sent, %d already delivered, %d failed,"
        " %d left pending, %d clients in %.1f s%s",
        result.destination,
        result.kind,
        as_of,
        result.sent,
        result.skipped,
        result.failed,
        result.pending,
        result.clients,
        result.seconds,
        f"; last error: {result.error}" if result.error else "",
    )


# -- public entry points ------------------------------------------------------------------------
def _days_to_send(store: Store, dest_name: str, as_of: date, retry: bool) -> list[date]:
    """as_of, and with retry the earlier days (up to RETRY_DAYS back) that still have a
    pending or failed batch at this destination, oldest first."""
    days = {as_of}
    if retry:
        for status in ("pending", "failed"):
            rows = store.deliveries(status=status, destination=dest_name)
            for value in rows["as_of"] if len(rows) else []:
                day = as_date(value)
                if as_of - timedelta(days=RETRY_DAYS) <= day < as_of:
                    days.add(day)
    return sorted(days)


def _run_ids(store: Store) -> dict[date, str]:
    runs = store.runs()
    ok = runs[runs["status"] == "success"]
    out: dict[date, str] = {}
    for row in ok.itertuples(index=False):
        day = as_date(row.as_of)
        if day is not None:
            out[day] = str(row.run_id)
    return out


def deliver(
    store: Store,
    config: EngineConfig,
    *,
    as_of: date | None = None,
    retry: bool = True,
    now: Clock | None = None,
) -> DeliverySummary:
    """Deliver a day's segment entries and exits to every configured destination.

    Parameters
    ----------
    store : Store
        The store the run was published to (schema version 5 or later).
    config : EngineConfig
        Its `destinations` say where to deliver; `workdir` holds the delivery lock.
    as_of : datetime.date, optional
        The day (default: the as_of of the latest successful run).
    retry : bool
        True: batches recorded `pending` or `failed` are sent again, also those of the
        RETRY_DAYS days before as_of. False: only batches never attempted are sent.
    now : callable, optional
        The clock for the recorded times (naive UTC); default the system clock.

    Returns
    -------
    DeliverySummary
        Per destination: batches sent, skipped (already delivered), failed, left pending, and
        clients sent. A destination's failure is recorded and summarized, never raised.

    Raises
    ------
    DeliveryError
        No successful run for the as_of, or another delivery holds the lock for longer than
        LOCK_WAIT_SECONDS.
    """
    if not config.destinations:
        return DeliverySummary(as_of=as_of)
    day = as_of if as_of is not None else store.latest_as_of()
    run_ids = _run_ids(store) if day is not None else {}
    if day is None or day not in run_ids:
        what = f"as_of {day}" if day is not None else "any as_of"
        raise DeliveryError(f"no successful run published for {what} in {store.url}")
    clock = now or _utcnow
    source = _Source(store, config)
    results = []
    lock = config.workdir_path / f".deliver-{store.schema}.lock"
    with file_lock(lock, LOCK_WAIT_SECONDS, error=lambda: _busy(lock)):
        for dest in config.destinations:
            try:
                days = [(d, run_ids.get(d)) for d in _days_to_send(store, dest.name, day, retry)]
                result = _run_destination(source, config, dest, days, retry=retry, clock=clock)
            except Exception as exc:  # the store cannot be read: summarized, never raised
                result = DestinationResult(
                    dest.name, dest.kind, error=_scrub(f"{type(exc).__name__}: {exc}", ())
                )
            _log_result(result, day)
            results.append(result)
    return DeliverySummary(as_of=day, destinations=tuple(results))


def _busy(lock: Path) -> DeliveryError:
    return DeliveryError(
        f"another delivery held {lock} for more than {LOCK_WAIT_SECONDS:g} s; try again later"
    )


def deliver_after_publish(store: Store, config: EngineConfig, as_of: date) -> DeliverySummary:
    """The nightly's delivery after a successful publish: `deliver(..., retry=True)` that
    never raises (anything that goes wrong is logged and returned as the summary's error)."""
    try:
        return deliver(store, config, as_of=as_of, retry=True)
    except Exception as exc:
        line = _scrub(f"{type(exc).__name__}: {exc}", ())
        log.warning("delivery after the publish of %s failed: %s", as_of, line)
        return DeliverySummary(as_of=as_of, error=line)


def deliver_command(
    config: EngineConfig,
    *,
    store_url: str | None = None,
    as_of: date | None = None,
    retry: bool = False,
) -> int:
    """`segmentation deliver [--retry] [--as-of DATE] [--store URL]`: print the summary as
    JSON; exit code 0 when nothing failed, 1 otherwise (with one line on stderr)."""
    import sys

    from pipelines.store import open_store

    store = open_store(
        store_url or config.store_url,
        config.store.schema_name,
        lock_timeout=config.store.lock_timeout_seconds,
        reader_retry=config.store.reader_retry_seconds,
    )
    try:
        if not config.destinations:
            print("segmentation deliver: no destinations configured", file=sys.stderr)
        summary = deliver(store, config, as_of=as_of, retry=retry)
    finally:
        store.close()
    print(json.dumps(summary.to_dict(), default=str))
    if summary.ok:
        return 0
    failed = [r.destination for r in summary.destinations if not r.ok]
    print(
        f"segmentation deliver: delivery failed for {', '.join(failed) or 'the store'};"
        " `segmentation deliver --retry` sends it again",
        file=sys.stderr,
    )
    return 1
