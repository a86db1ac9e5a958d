"""MLflow model registry for the engine: register, promote, roll back and load the champion.

`ModelRegistry` is the whole interface. Any picklable `Predictor` (an object with
`predict(DataFrame) -> DataFrame`: the pipeline's ClusterBundle and CltvBundle) is wrapped in
`PickledModel`, logged as an MLflow pyfunc model under a run and registered as a new version
of a registered model. The alias `champion`
marks the version the nightly run loads; `promote` moves it and records on the new champion
the version it replaced (tag `previous_champion`), so `rollback` can walk back one step at a
time. Metrics given at registration are kept as version tags `metric.<name>` and come back as
columns of `list_versions`.

Logging is kept fast: no pip requirement inference (`pip_requirements=[]`), no input example,
no signature. The object is pickled with cloudpickle inside the model, so loading it needs the
same code (the installed package) and compatible library versions; only load models from this
engine's own registry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import logging
import math
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from configs import SegmentationError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import RegisteredModel

# MLflow (and `pipelines.tracking`, which imports it) is imported where it is used: importing
# it costs over a second, and `models list` on a SQLite registry needs none of it
# (`list_versions_fast`).

__all__ = [
    "ARTIFACT_NAME",
    "CHAMPION",
    "METRIC_PREFIX",
    "PREVIOUS_TAG",
    "ModelRegistry",
    "PickledModel",  # noqa: F822 (made on first use: the module __getattr__)
    "Predictor",
    "RegistryError",
    "list_versions_fast",
]

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """What the registry stores: a picklable object with `predict(DataFrame) -> DataFrame`
    (the pipeline's ClusterBundle and CltvBundle)."""

    def predict(self, X: pd.DataFrame, /) -> pd.DataFrame:
        """One row of predictions per row of `X`."""
        ...


def __getattr__(name: str) -> Any:
    """`PickledModel` is made on first use (it subclasses MLflow's PythonModel); pickles of
    registered models find it here by name."""
    if name == "PickledModel":
        return _pickled_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _pickled_model_class() -> type:
    from mlflow.pyfunc.model import PythonModel

    class PickledModel(PythonModel):
        """An MLflow pyfunc model holding any picklable object with `predict(DataFrame)`."""

        # The wrapped objects take and return DataFrames of their own shape: skip MLflow 3's
        # type-hint validation of `predict` (and its warning asking for hints). `predict`
        # keeps MLflow's untyped signature for the same reason: MLflow reads hints there as a
        # schema.
        _skip_type_hint_validation = True

        def __init__(self, obj: Predictor) -> None:
            self.obj = obj

        def predict(self, context, model_input, params=None):
            """Delegate to the wrapped object's `predict`."""
            return self.obj.predict(model_input)

    PickledModel.__module__ = __name__
    PickledModel.__qualname__ = "PickledModel"
    return PickledModel


CHAMPION = "champion"
PREVIOUS_TAG = "previous_champion"
METRIC_PREFIX = "metric."
ARTIFACT_NAME = "model"


class RegistryError(SegmentationError, LookupError):
    """A registered model, version or champion that does not exist; the message names it."""


class ModelRegistry:
    """The MLflow model registry at one tracking URI (registry and tracking share it).

    Parameters
    ----------
    tracking_uri : str
        The MLflow tracking URI (`EngineConfig.tracking_uri`, the `Tracker`'s URI).
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        """An MLflow client for this URI, made on first use."""
        if self._client is None:
            from pipelines.tracking import make_client

            self._client = make_client(self.tracking_uri)
        return self._client

    def register(
        self,
        name: str,
        obj: Predictor,
        run_id: str,
        *,
        metrics: Mapping[str, object] | None = None,
        tags: Mapping[str, object] | None = None,
    ) -> int:
        """Log `obj` as a pyfunc model under a run and register it as a new version of `name`.

        Parameters
        ----------
        name : str
            The registered model's name (created on its first version).
        obj : Predictor
            A picklable object with `predict(DataFrame) -> DataFrame`.
        run_id : str
            An existing MLflow run (open or finished); its experiment holds the artifacts.
        metrics : mapping, optional
            Numbers kept as version tags `metric.<name>` (columns of `list_versions`).
        tags : mapping, optional
            Version tags (values as text); `previous_champion` is reserved.

        Returns
        -------
        int
            The new version number.

        Raises
        ------
        RegistryError
            The run does not exist.
        """
        if not hasattr(obj, "predict"):
            raise TypeError(f"model {name!r}: {type(obj).__name__} has no predict method")
        if not run_id:
            raise ValueError(f"model {name!r}: a run_id is needed to register a model")
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            raise RegistryError(f"model {name!r}: MLflow run {run_id!r} not found") from exc
        version_tags = _version_tags(metrics, tags)
        version = self._log_model(name, obj, run.info.run_id, run.info.experiment_id)
        for key, value in version_tags.items():
            self.client.set_model_version_tag(name, str(version), key, value)
        return version

    def champion_version(self, name: str) -> int | None:
        """The version carrying the champion alias.

        Parameters
        ----------
        name : str
            The registered model.

        Returns
        -------
        int or None
            The champion's version, or None when no version is champion.

        Raises
        ------
        RegistryError
            No registered model has this name.
        """
        aliases = self._model(name).aliases or {}
        version = aliases.get(CHAMPION)
        return int(version) if version is not None else None

    def promote(self, name: str, version: int) -> int | None:
        """Make `version` the champion.

        The new champion's tag `previous_champion` records the version it replaced, which is
        what `rollback` returns to. Promoting the current champion changes nothing.

        Parameters
        ----------
        name : str
            The registered model.
        version : int
            An existing version of it.

        Returns
        -------
        int or None
            The previous champion (None if there was none).

        Raises
        ------
        RegistryError
            The model or the version does not exist.
        """
        version = self._existing_version(name, version)
        previous = self.champion_version(name)
        if previous == version:
            return previous
        if previous is None:
            if _has_tag(self.client, name, version, PREVIOUS_TAG):
                self.client.delete_model_version_tag(name, str(version), PREVIOUS_TAG)
        else:
            self.client.set_model_version_tag(name, str(version), PREVIOUS_TAG, str(previous))
        self.client.set_registered_model_alias(name, CHAMPION, str(version))
        return previous

    def rollback(self, name: str) -> int:
        """Move the champion alias back to the version the current champion replaced.

        Parameters
        ----------
        name : str
            The registered model.

        Returns
        -------
        int
            The version that is champion again.

        Raises
        ------
        RegistryError
            The model does not exist, has no champion, or its champion replaced none.
        """
        current = self.champion_version(name)
        if current is None:
            raise RegistryError(f"model {name!r}: no champion to roll back")
        tags = self.client.get_model_version(name, str(current)).tags or {}
        previous = tags.get(PREVIOUS_TAG)
        if not previous:
            raise RegistryError(
                f"model {name!r}: champion version {current} has no previous champion to roll "
                "back to"
            )
        target = self._existing_version(name, int(previous))
        self.client.set_registered_model_alias(name, CHAMPION, str(target))
        self.client.set_registered_model_tag(
            name, "last_rollback", f"{current}->{target} at {_now_iso()}"
        )
        return target

    def load_version(self, name: str, version: int) -> Predictor:
        """The object registered as one version.

        Parameters
        ----------
        name : str
            The registered model.
        version : int
            An existing version of it.

        Returns
        -------
        Predictor
            The unpickled object (loading needs the same code and compatible libraries).

        Raises
        ------
        RegistryError
            The model or the version does not exist, or the version was not registered by
            `register`.
        """
        import mlflow.pyfunc

        from pipelines.tracking import fluent_context

        version = self._existing_version(name, version)
        with fluent_context(self.tracking_uri):
            loaded = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        model = loaded.unwrap_python_model()
        if not isinstance(model, _pickled_model_class()):
            raise RegistryError(
                f"model {name!r} version {version} is a {type(model).__name__}, not a model"
                " registered by this engine"
            )
        return model.obj  # type: ignore[attr-defined]

    def load_champion(self, name: str) -> tuple[Predictor, int] | None:
        """The champion object and its version.

        Parameters
        ----------
        name : str
            The registered model.

        Returns
        -------
        tuple of (Predictor, int) or None
            None when the model does not exist or has no champion.
        """
        try:
            version = self.champion_version(name)
        except RegistryError:
            return None
        if version is None:
            return None
        return self.load_version(name, version), version

    def list_versions(self, name: str) -> pd.DataFrame:
        """Every version of a registered model, oldest first.

        Parameters
        ----------
        name : str
            The registered model.

        Returns
        -------
        pandas.DataFrame
            One row per version: version, created (UTC), aliases, run_id, status,
            previous_champion, then `metric.*` columns (float) and other tags (text).

        Raises
        ------
        RegistryError
            No registered model has this name.
        """
        aliases: dict[int, list[str]] = {}
        for alias, version in (self._model(name).aliases or {}).items():
            aliases.setdefault(int(version), []).append(alias)
        rows = []
        for mv in self.client.search_model_versions(f"name = '{_quote(name)}'"):
            row: dict[str, object] = {
                "version": int(mv.version),
                "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC"),
                "aliases": ",".join(sorted(aliases.get(int(mv.version), []))),
                "run_id": mv.run_id,
                "status": mv.status,
            }
            for key, value in sorted((mv.tags or {}).items()):
                row[key] = _float(value) if key.startswith(METRIC_PREFIX) else value
            rows.append(row)
        return _versions_frame(rows)

    def _log_model(self, name: str, obj: Predictor, run_id: str, experiment_id: str) -> int:
        """Log `obj` under the run and register it; the new version number."""
        import mlflow.pyfunc
        from mlflow.models import Model

        from pipelines.tracking import fluent_context

        pyfunc_logger = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_logger.level
        pyfunc_logger.setLevel(logging.ERROR)  # the cloudpickle caution is expected here
        try:
            # MLflow prints "Registered model ... already exists" to stderr; keep it in the log.
            chatter = io.StringIO()
            with (
                fluent_context(self.tracking_uri, experiment_id),
                contextlib.redirect_stderr(chatter),
            ):
                # `mlflow.pyfunc.log_model` is `Model.log(flavor=mlflow.pyfunc)` without the
                # run_id argument; passing it links the model to the run without resuming it.
                info = Model.log(
                    artifact_path=None,
                    name=ARTIFACT_NAME,
                    flavor=mlflow.pyfunc,
                    python_model=_pickled_model_class()(obj),
                    pip_requirements=[],
                    registered_model_name=name,
                    await_registration_for=0,
                    run_id=run_id,
                )
        finally:
            pyfunc_logger.setLevel(level)
        log.info("%s", " ".join(chatter.getvalue().split()))
        return int(info.registered_model_version)

    def _model(self, name: str) -> RegisteredModel:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as exc:
            raise RegistryError(f"registered model {name!r} not found") from exc

    def _existing_version(self, name: str, version: int) -> int:
        from mlflow.exceptions import MlflowException

        self._model(name)
        try:
            number = int(version)
            self.client.get_model_version(name, str(number))
        except (ValueError, TypeError, MlflowException) as exc:
            raise RegistryError(f"model {name!r} has no version {version!r}") from exc
        return number


def list_versions_fast(tracking_uri: str, name: str) -> pd.DataFrame:
    """`ModelRegistry(tracking_uri).list_versions(name)`, read straight from a SQLite registry.

    For a `sqlite:///` URI the registry's tables are read with `sqlite3` (read-only: nothing
    is created or migrated), which answers in milliseconds where importing MLflow and opening
    its store takes seconds. Any other URI, or a database whose tables are not as expected,
    goes through MLflow's client. A missing database file has no versions.

    Raises
    ------
    RegistryError
        No registered model has this name (in an existing registry).
    """
    path = _sqlite_file(tracking_uri)
    if path is None:
        return ModelRegistry(tracking_uri).list_versions(name)
    if not path.exists():
        raise RegistryError(f"registered model {name!r} not found (no registry at {path})")
    try:
        rows = _sqlite_versions(path, name)
    except sqlite3.Error as exc:  # not the schema we know: MLflow's client reads it
        log.info("reading %s directly failed (%s); using MLflow's client", path, exc)
        return ModelRegistry(tracking_uri).list_versions(name)
    return _versions_frame(rows)


def _sqlite_versions(path: Path, name: str) -> list[dict[str, object]]:
    """The versions of `name` in an MLflow SQLite registry as `list_versions` rows."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        columns = {r[1] for r in con.execute("PRAGMA table_info(model_versions)")}
        if not columns:
            raise sqlite3.OperationalError("no model_versions table")
        where = "name = ?" + (" AND workspace = 'default'" if "workspace" in columns else "")
        if not con.execute(f"SELECT 1 FROM registered_models WHERE {where}", [name]).fetchall():
            raise RegistryError(f"registered model {name!r} not found")
        versions = con.execute(
            f"SELECT version, creation_time, run_id, status FROM model_versions WHERE {where}"
            " AND (current_stage IS NULL OR current_stage <> 'Deleted_Internal')",
            [name],
        ).fetchall()
        aliases: dict[int, list[str]] = {}
        for alias, version in con.execute(
            f"SELECT alias, version FROM registered_model_aliases WHERE {where}", [name]
        ):
            aliases.setdefault(int(version), []).append(alias)
        tags: dict[int, dict[str, str]] = {}
        for version, key, value in con.execute(
            f"SELECT version, key, value FROM model_version_tags WHERE {where}", [name]
        ):
            tags.setdefault(int(version), {})[key] = value
    finally:
        con.close()
    rows = []
    for version, created, run_id, status in versions:
        row: dict[str, object] = {
            "version": int(version),
            "created": pd.Timestamp(created, unit="ms", tz="UTC"),
            "aliases": ",".join(sorted(aliases.get(int(version), []))),
            "run_id": run_id,
            "status": status,
        }
        for key, value in sorted(tags.get(int(version), {}).items()):
            row[key] = _float(value) if key.startswith(METRIC_PREFIX) else value
        rows.append(row)
    return rows


# --- private helpers -------------------------------------------------------------------------


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (as `tracking.sqlite_path`, without MLflow)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if not rest or rest == ":memory:" else Path(rest).expanduser()


def _versions_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """`list_versions`' table: the base columns, then tags and metrics sorted by name."""
    base = ["version", "created", "aliases", "run_id", "status", PREVIOUS_TAG]
    frame = pd.DataFrame(rows)
    for column in base:
        if column not in frame.columns:
            frame[column] = None
    extra = sorted(c for c in frame.columns if c not in base)
    return frame[base + extra].sort_values("version", ignore_index=True)


def _version_tags(
    metrics: Mapping[str, object] | None, tags: Mapping[str, object] | None
) -> dict[str, str]:
    from pipelines.tracking import clean_metrics, sanitize_name, truncate

    out = {sanitize_name(k): truncate(str(v), 5000) for k, v in (tags or {}).items()}
    reserved = {PREVIOUS_TAG} & set(out)
    if reserved:
        raise ValueError(f"tag {sorted(reserved)[0]!r} is managed by promote/rollback")
    for key, value in clean_metrics(metrics or {}).items():
        out[f"{METRIC_PREFIX}{key}"] = repr(value)
    return out


def _has_tag(client: MlflowClient, name: str, version: int, key: str) -> bool:
    return key in (client.get_model_version(name, str(version)).tags or {})


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _quote(name: str) -> str:
    from pipelines.tracking import TrackingError

    if "'" in name:
        raise TrackingError(f"model name {name!r}: quotes are not allowed")
    return name


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
