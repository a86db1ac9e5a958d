"""MLflow run tracking for the engine: params, metrics and artifacts of aggregates only.

`Tracker(tracking_uri, experiment)` owns one MLflow experiment. `tracker.start_run(name, tags)`
is a context manager yielding a `TrackedRun`; its `log_params`, `log_metrics` and
`log_artifacts` clean what they are given so a nightly run never fails on a name or a value
MLflow would reject (names sanitized, long values truncated, None/NaN metrics skipped). The
run ends FINISHED, or FAILED when the block raises; `run.run_id` is the id to publish in the
`runs` table.

No client identifiers in MLflow: MLflow is shared with analysts and keeps history forever, so
only aggregates belong there (segment sizes, shares, quality, backtest errors, profiles of
segments). Pass a sample of client ids as `client_ids=` to `start_run` and every param, metric
name, tag and artifact payload (JSON objects and text files) is checked against it before it
is logged; `assert_no_client_ids` is the same check as a function. Tokens are compared whole
(a client id inside a longer word is not a match), strings only (numbers are never ids here).

Everything goes through an explicit `MlflowClient`; the process-wide MLflow state is only
touched, briefly and restored, by `fluent_context` (model logging needs MLflow's fluent API).
For SQLite URIs the database's folder is created and the experiment's artifacts live next to
the database (`<db folder>/mlartifacts`), not in the current directory. MLflow's usage
telemetry is switched off unless the environment says otherwise: nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from numbers import Number
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Imported after the telemetry switch so it applies from the first MLflow call.
import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from configs import EngineConfig, SegmentationError

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_PARAM_LENGTH",
    "MAX_TAG_LENGTH",
    "TRUNCATION_MARK",
    "ClientIdLeakError",
    "TrackedRun",
    "Tracker",
    "TrackingError",
    "assert_no_client_ids",
    "clean_metrics",
    "clean_params",
    "default_artifact_location",
    "ensure_sqlite_parent",
    "fluent_context",
    "make_client",
    "sanitize_name",
    "sqlite_path",
    "to_json",
    "truncate",
]

_T = TypeVar("_T")
log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
TRUNCATION_MARK = "...[truncated]"


class ClientIdLeakError(SegmentationError, ValueError):
    """A payload meant for MLflow contains client identifiers."""


class TrackingError(SegmentationError, RuntimeError):
    """MLflow could not be set up or written as asked; the message says what and where."""


class Tracker:
    """One MLflow experiment at one tracking URI; `start_run` opens a tracked run.

    Parameters
    ----------
    tracking_uri : str
        The MLflow tracking URI (the model registry shares it), e.g.
        `sqlite:///<workdir>/mlflow.db`; a SQLite database's folder is created on first use.
    experiment : str
        The experiment's name; created (or restored when deleted) on first use.
    enabled : bool
        False gives a tracker whose runs accept every call and record nothing (`run_id` is
        None), so a pipeline can call it unconditionally.
    """

    def __init__(self, tracking_uri: str, experiment: str, enabled: bool = True) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.enabled = enabled
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None

    @classmethod
    def from_config(cls, config: EngineConfig) -> Tracker:
        """The tracker a config describes.

        Parameters
        ----------
        config : EngineConfig
            Its `tracking_uri` (with the MLFLOW_TRACKING_URI override applied) and its
            `mlflow` section (experiment, enabled).

        Returns
        -------
        Tracker
        """
        return cls(config.tracking_uri, config.mlflow.experiment, enabled=config.mlflow.enabled)

    @property
    def client(self) -> MlflowClient:
        """An MLflow client bound to this tracking URI (registry at the same URI)."""
        if self._client is None:
            self._client = make_client(self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        """The experiment's id, creating (or restoring) the experiment on first use."""
        if self._experiment_id is None:
            self._experiment_id = _ensure_experiment(
                self.client, self.experiment, default_artifact_location(self.tracking_uri)
            )
        return self._experiment_id

    @contextlib.contextmanager
    def start_run(
        self,
        run_name: str,
        tags: Mapping[str, object] | None = None,
        *,
        client_ids: Iterable[str] | None = None,
    ) -> Iterator[TrackedRun]:
        """Open a run; it ends FINISHED, or FAILED if the block raises (the error propagates).

        Parameters
        ----------
        run_name : str
            The run's name in MLflow.
        tags : mapping, optional
            Run tags (values as text, names cleaned for MLflow).
        client_ids : iterable of str, optional
            A sample of client ids: every name, value and artifact logged in the run is
            checked against it, and ClientIdLeakError is raised instead of logging one.

        Yields
        ------
        TrackedRun
            The open run: `log_params`, `log_metrics`, `set_tags`, `log_artifacts`, `run_id`.

        Raises
        ------
        TrackingError
            The experiment cannot be created or read (the message says which and why).
        """
        guard = frozenset(str(c) for c in client_ids) if client_ids is not None else None
        if not self.enabled:
            yield TrackedRun(None, None, guard)
            return
        clean_tags = _clean_tags(tags or {})
        if guard:
            assert_no_client_ids({"run_name": run_name, "tags": clean_tags}, guard)
        self.fail_orphaned_runs()
        clean_tags.update(_owner_tags())
        run_id = self.client.create_run(
            self.experiment_id, run_name=run_name, tags=clean_tags
        ).info.run_id
        try:
            yield TrackedRun(self.client, run_id, guard)
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def fail_orphaned_runs(self) -> list[str]:
        """Mark FAILED the experiment's RUNNING runs whose process is gone (killed): runs this
        engine tagged with the host and the process (pid and start time) that opened them.
        Returns their ids."""
        if not self.enabled:
            return []
        host = socket.gethostname()
        failed = []
        runs = self.client.search_runs(
            [self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=500
        )
        for run in runs:
            tags = run.data.tags
            if tags.get(OWNER_HOST_TAG) != host or OWNER_PROCESS_TAG not in tags:
                continue
            if _process_alive(tags[OWNER_PROCESS_TAG]):
                continue
            self.client.set_tag(run.info.run_id, "failure", "its process ended without closing it")
            self.client.set_terminated(run.info.run_id, status="FAILED")
            failed.append(run.info.run_id)
        if failed:
            log.info("marked %d orphaned MLflow run(s) FAILED: %s", len(failed), failed)
        return failed

    def get_run(self, run_id: str) -> Run:
        """The MLflow run (info and data) with this id.

        Parameters
        ----------
        run_id : str
            The MLflow run id (`TrackedRun.run_id`).

        Returns
        -------
        mlflow.entities.Run
        """
        return self.client.get_run(run_id)


class TrackedRun:
    """An open MLflow run; every method cleans and checks its input before logging."""

    def __init__(
        self, client: MlflowClient | None, run_id: str | None, client_ids: frozenset[str] | None
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.client_ids = client_ids

    def log_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Log parameters (nested mappings flattened with dots); returns what was logged.

        Values become strings (JSON for lists), cut to MLflow's 6,000 characters. A key
        logged twice in one run must keep its value (MLflow params are immutable).
        """
        clean = clean_params(params)
        self._check(clean)
        if self.client is not None and self.run_id is not None and clean:
            items = [Param(k, v) for k, v in clean.items()]
            for chunk in _chunks(items, 100):
                self.client.log_batch(self.run_id, params=chunk)
        return clean

    def log_metrics(self, metrics: Mapping[str, object], step: int = 0) -> dict[str, float]:
        """Log numeric metrics; None, NaN and infinite values are skipped. Returns what was logged."""
        clean = clean_metrics(metrics)
        self._check(list(clean))
        if self.client is not None and self.run_id is not None and clean:
            stamp = int(time.time() * 1000)
            items = [Metric(k, v, stamp, step) for k, v in clean.items()]
            for chunk in _chunks(items, 1000):
                self.client.log_batch(self.run_id, metrics=chunk)
        return clean

    def set_tags(self, tags: Mapping[str, object]) -> dict[str, str]:
        """Set run tags (values as strings); returns what was set."""
        clean = _clean_tags(tags)
        self._check(clean)
        if self.client is not None and self.run_id is not None and clean:
            items = [RunTag(k, v) for k, v in clean.items()]
            for chunk in _chunks(items, 100):
                self.client.log_batch(self.run_id, tags=chunk)
        return clean

    def log_artifacts(self, artifacts: Mapping[str, Any], folder: str | None = None) -> list[str]:
        """Log artifacts from a mapping of artifact file name -> content; returns the names.

        A `pathlib.Path`, or a string naming an existing file, is copied as is (an HTML report);
        any other string is written as text; everything else is written as JSON (dicts, lists,
        numbers, numpy scalars and arrays, pandas frames as a list of records, dates as ISO
        text). A JSON name without a suffix gets `.json`.
        """
        names = []
        with tempfile.TemporaryDirectory(prefix="tracking-") as tmp:
            for name, value in artifacts.items():
                target_name = _artifact_name(name, value)
                source = _as_file(value)
                if source is not None:
                    if not source.is_file():
                        raise TrackingError(f"artifact {name!r}: file {source} does not exist")
                    if self.client_ids:
                        _check_text(source.read_text(errors="replace"), self.client_ids, name)
                    local = Path(tmp) / target_name
                    local.write_bytes(source.read_bytes())
                else:
                    text = value if isinstance(value, str) else to_json(value)
                    if self.client_ids:
                        _check_text(text, self.client_ids, name)
                    local = Path(tmp) / target_name
                    local.write_text(text)
                if self.client is not None and self.run_id is not None:
                    self.client.log_artifact(self.run_id, str(local), artifact_path=folder)
                names.append(f"{folder}/{target_name}" if folder else target_name)
        return names

    def _check(self, payload: object) -> None:
        if self.client_ids:
            assert_no_client_ids(payload, self.client_ids)


def assert_no_client_ids(payload: object, client_ids: Iterable[str]) -> None:
    """Raise ClientIdLeakError when any client id appears in the payload.

    The payload is walked recursively (mapping keys and values, sequences, strings; a
    `pathlib.Path` is read as text); strings are split into tokens at whitespace and
    punctuation, and a token equal to a client id is a leak. Numbers are not checked.
    """
    ids = client_ids if isinstance(client_ids, frozenset) else frozenset(map(str, client_ids))
    if not ids:
        return
    for where, text in _strings(payload, "payload"):
        _check_text(text, ids, where)


def clean_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Flatten, stringify and truncate parameters so MLflow accepts them."""
    flat = _flatten(params)
    clean: dict[str, str] = {}
    for key, value in flat.items():
        name = sanitize_name(key)
        text = _param_text(value)
        clean[name] = truncate(text, MAX_PARAM_LENGTH)
    return clean


def clean_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """Finite float metrics with sanitized names; None/NaN/inf are dropped, text is an error."""
    clean: dict[str, float] = {}
    for key, value in _flatten(metrics).items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, Number) and not hasattr(value, "__float__"):
            raise TypeError(f"metric {key!r}: {value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metric {key!r}: {value!r} is not a number") from exc
        if math.isfinite(number):
            clean[sanitize_name(key)] = number
    return clean


_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def sanitize_name(name: object) -> str:
    """A param/metric/tag name MLflow accepts: other characters become `_`, max 250 chars."""
    text = _BAD_NAME_CHARS.sub("_", str(name)).strip()
    text = re.sub(r"/{2,}", "/", text).strip("/")
    text = "/".join("_" if part in (".", "..") else part for part in text.split("/"))
    if not text:
        raise ValueError(f"name {name!r} is empty once cleaned for MLflow")
    return text[:MAX_KEY_LENGTH]


def truncate(text: str, limit: int) -> str:
    """Cut text to at most `limit` characters, marking the cut."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK


def to_json(value: Any) -> str:
    """JSON text for artifacts: numpy, pandas, dates and paths converted; sorted keys."""
    return json.dumps(value, default=_json_default, indent=2, sort_keys=True, allow_nan=True)


_INITIALISED: set[str] = set()


def make_client(tracking_uri: str) -> MlflowClient:
    """An MlflowClient for the URI (registry at the same URI); SQLite folders are created.

    MLflow creates a SQLite database's tables on first use; two processes doing that at once
    collide (`table ... already exists`), so the first use in a process happens under a lock
    file beside the database."""
    from pipelines.locks import file_lock

    ensure_sqlite_parent(tracking_uri)
    path = sqlite_path(tracking_uri)
    if path is None or tracking_uri in _INITIALISED:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    path = path.expanduser()
    with file_lock(path.with_name(path.name + ".init.lock"), timeout=300):
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        client.search_experiments(max_results=1)  # the tracking tables exist now
        client.search_registered_models(max_results=1)  # and the registry's
    _INITIALISED.add(tracking_uri)
    return client


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


def ensure_sqlite_parent(uri: str) -> None:
    """Create the folder of a SQLite tracking database if it does not exist yet."""
    path = sqlite_path(uri)
    if path is not None:
        path.expanduser().parent.mkdir(parents=True, exist_ok=True)


def default_artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite database (`<folder>/mlartifacts`); None lets MLflow decide."""
    path = sqlite_path(uri)
    if path is None:
        return None
    return (path.expanduser().resolve().parent / "mlartifacts").as_uri()


_FLUENT_LOCK = threading.RLock()


@contextlib.contextmanager
def fluent_context(tracking_uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs (and experiment) here, then restore.

    Needed only by MLflow's fluent functions (model logging and loading); serialized by a lock
    so two threads using it never see each other's URI. Restoring uses MLflow's module
    globals (checked on mlflow 3.17) and the environment variables MLflow mirrors them into.
    """
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    ensure_sqlite_parent(tracking_uri)
    env_names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    with _FLUENT_LOCK:
        old_env = {name: os.environ.get(name) for name in env_names}
        old_tracking: str | None = tracking_utils._tracking_uri
        old_registry = registry_utils._registry_uri
        old_experiment: str | None = fluent._active_experiment_id
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        if experiment_id is not None:
            # MLflow declares these module globals as `= None` without a type.
            fluent._active_experiment_id = experiment_id  # type: ignore[assignment]
        try:
            yield
        finally:
            fluent._active_experiment_id = old_experiment  # type: ignore[assignment]
            # None unsets the URI: MLflow's own `_use_tracking_uri` restores it the same way.
            mlflow.set_tracking_uri(old_tracking)  # type: ignore[arg-type]
            registry_utils._registry_uri = old_registry
            for name, value in old_env.items():  # MLflow mirrors URIs into the environment
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


# --- private helpers -------------------------------------------------------------------------

OWNER_HOST_TAG = "segmentation.host"
OWNER_PROCESS_TAG = "segmentation.process"  # "<pid>:<start time in clock ticks>"


def _process_token(pid: int) -> str | None:
    """`pid:start-time` of a live process (Linux /proc), `pid:` elsewhere; None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"{pid}:"
    return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22: starttime


def _owner_tags() -> dict[str, str]:
    """Tags naming the host and process that open a run (to fail it if it is killed)."""
    return {
        OWNER_HOST_TAG: socket.gethostname(),
        OWNER_PROCESS_TAG: _process_token(os.getpid()) or f"{os.getpid()}:",
    }


def _process_alive(token: str) -> bool:
    """Whether the process a token names is still the one running (a reused pid is not)."""
    pid_text, _, start = token.partition(":")
    try:
        current = _process_token(int(pid_text))
    except ValueError:
        return True  # not ours to judge
    if current is None:
        return False
    return not start or current.partition(":")[2] in ("", start)


def _ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException:
                experiment = client.get_experiment_by_name(name)  # created concurrently
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    except MlflowException as exc:
        raise TrackingError(f"MLflow experiment {name!r}: {exc.message}") from exc


def _flatten(mapping: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"expected a mapping of names to values, got {type(mapping).__name__}")
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset | Mapping):
        seq = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return json.dumps(seq, default=_json_default, sort_keys=True)
    return str(value)


def _clean_tags(tags: Mapping[str, object]) -> dict[str, str]:
    return {sanitize_name(k): truncate(_param_text(v), MAX_TAG_LENGTH) for k, v in tags.items()}


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    module = type(value).__module__
    if module.startswith("pandas"):
        if hasattr(value, "to_dict") and hasattr(value, "columns"):
            return json.loads(value.to_json(orient="records", date_format="iso"))
        if hasattr(value, "to_dict"):
            return json.loads(value.to_json(date_format="iso"))
        if hasattr(value, "isoformat"):
            return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _as_file(value: object) -> Path | None:
    if isinstance(value, os.PathLike):
        return Path(value)
    if isinstance(value, str) and "\n" not in value and 0 < len(value) < 4096:
        with contextlib.suppress(OSError):
            if Path(value).is_file():
                return Path(value)
    return None


def _artifact_name(name: str, value: object) -> str:
    base = str(name).replace("\\", "/").strip("/")
    if not base or "/" in base or base in (".", ".."):
        raise TrackingError(f"artifact name {name!r}: give a plain file name (no folders)")
    if _as_file(value) is None and not isinstance(value, str) and not Path(base).suffix:
        base += ".json"
    return base


_TOKEN_SPLIT = re.compile(r"[\s\"'`<>,;:()\[\]{}=|&]+")


def _check_text(text: str, ids: frozenset[str], where: str) -> None:
    if text in ids:
        raise ClientIdLeakError(f"{where}: contains client id {text!r}")
    for token in _TOKEN_SPLIT.split(text):
        if token in ids or token.rstrip(".!?") in ids:
            raise ClientIdLeakError(f"{where}: contains client id {token!r}")


def _strings(payload: object, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(payload, str):
        yield where, payload
    elif isinstance(payload, Path):
        yield str(payload), payload.read_text(errors="replace")
    elif isinstance(payload, Mapping):
        for key, value in payload.items():
            yield f"{where} key", str(key)
            yield from _strings(value, f"{where}[{key!r}]")
    elif isinstance(payload, list | tuple | set | frozenset):
        for i, value in enumerate(payload):
            yield from _strings(value, f"{where}[{i}]")
    elif type(payload).__module__.startswith("pandas"):
        yield from _strings(json.loads(to_json(payload)), where)


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
