"""Typed engine configuration: pydantic models loaded from YAML, with errors naming file and key.

Every section is frozen and forbids unknown keys, so a typo in a config file fails at load
instead of being silently ignored. Secrets never live here: the store URL and the MLflow
tracking URI can be overridden by `SEGMENTATION_STORE_URL` and `MLFLOW_TRACKING_URI`.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from configs.base import CONTRACT_COLUMNS, ID_TYPES, STAGES, SegmentationError
from configs.paths import CONFIG_DIR

DEFAULT_CONFIG_PATH = CONFIG_DIR / "default.yaml"
ENV_CONFIG = "SEGMENTATION_CONFIG"
ENV_STORE_URL = "SEGMENTATION_STORE_URL"
ENV_MLFLOW_URI = "MLFLOW_TRACKING_URI"


class ConfigError(SegmentationError, ValueError):
    """A config file that cannot be read or does not validate; the message names file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StoreConfig(_Section):
    url: str = "duckdb:///{workdir}/store.duckdb"
    schema_name: str = Field("segmentation", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    lock_timeout_seconds: float = Field(30.0, gt=0)
    reader_retry_seconds: float = Field(30.0, ge=0)


class MlflowConfig(_Section):
    tracking_uri: str = "sqlite:///{workdir}/mlflow.db"
    experiment: str = "segmentation"
    cluster_model_name: str = "segmentation-clusters"
    cltv_model_name: str = "segmentation-cltv"
    enabled: bool = True


class ExtraEventType(_Section):
    """An event type added to the taxonomy: its journey stage and who starts it."""

    stage: str
    initiated_by: Literal["client", "brand"] | None = Field(
        None,
        description="client or brand; without it the type counts as client-initiated, with a"
        " warning",
    )


# The directives DuckDB's strptime reads (its documentation, "Format Specifiers").
_STRPTIME_DIRECTIVES = "aAwdbBmyYHIpMSfnzZjUWcxXgGVu"


class EventsConfig(_Section):
    path: str = "{workdir}/events"
    future_tolerance_hours: float = Field(24.0, ge=0)
    max_bad_share: float = Field(0.05, ge=0, le=1)
    taxonomy_file: str = "taxonomy.yaml"
    extra_event_types: dict[str, str | ExtraEventType] = Field(
        default_factory=dict,
        description="event type -> stage, or {stage, initiated_by: client | brand}",
    )
    earliest_event_time: date = Field(
        date(2000, 1, 1),
        description="events before this day (UTC) are quarantined as implausible_event_time",
    )
    max_amount: float = Field(
        1e9,
        gt=0,
        le=1e12,
        description="amounts above this are quarantined as amount_out_of_range (the feature"
        " build sums money in integer micro-units, which overflow from about 9.22e12)",
    )
    preset: Literal["segment", "ga4"] | None = Field(
        None,
        description="column mappings and type aliases of an exporter (configs/presets/*.yaml);"
        " `columns` and `type_aliases` override it",
    )
    columns: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="contract column -> source column, or a path into a JSON object or Parquet"
        " struct (amount: properties.revenue; items[0].item_category;"
        " event_params[key=currency].value.string_value), or a list of them: the first"
        " non-empty value of a row wins (client_id: [userId, anonymousId])",
    )
    type_aliases: dict[str, str] = Field(
        default_factory=dict,
        description="source event name -> taxonomy event type (Order Completed: purchase)",
    )

    epoch_unit: Literal["s", "ms", "us", "ns"] | None = Field(
        None,
        description="unit of integer event times (GA4: us); null: integer times are unparseable",
    )
    time_zone: str = Field(
        "UTC", description="the zone of naive event times (no offset), converted to UTC"
    )
    encoding: Literal["utf-8", "latin-1", "utf-16"] = Field(
        "utf-8",
        description="the text encoding of CSV event files (a UTF-8 BOM is ignored); latin-1"
        " for exports from older tools and Excel in Western Europe. A line that does not"
        " decode is quarantined as malformed_line. JSON lines are always UTF-8",
    )
    time_formats: tuple[str, ...] = Field(
        (),
        description="strptime formats of text or integer event times the ISO reader does not"
        " know, tried in order (CDNOW: ['%Y%m%d']; Online Retail: ['%m/%d/%Y %H:%M']);"
        " %z reads an offset, other times are naive in time_zone",
    )

    @field_validator("time_formats")
    @classmethod
    def _readable_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for fmt in value:
            directives = re.findall(r"%-?(.)", fmt.replace("%%", ""))
            if not directives:
                raise ValueError(f"{fmt!r} has no strptime directive such as %Y or %d")
            unknown = sorted(set(directives) - set(_STRPTIME_DIRECTIVES))
            if unknown:
                raise ValueError(
                    f"{fmt!r}: unknown directive(s) {', '.join('%' + d for d in unknown)}"
                )
        return value

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("columns")
    @classmethod
    def _contract_columns(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for column, source in value.items():
            if column not in CONTRACT_COLUMNS:
                raise ValueError(f"{column!r} is not a contract column {CONTRACT_COLUMNS}")
            options = [source] if isinstance(source, str) else source
            if not options:
                raise ValueError(f"{column!r}: the list of source columns is empty")
            if any(not str(option).strip() for option in options):
                raise ValueError(f"{column!r}: a source column is empty")
        return value

    @field_validator("extra_event_types")
    @classmethod
    def _known_stages(
        cls, value: dict[str, str | ExtraEventType]
    ) -> dict[str, str | ExtraEventType]:
        for event_type, spec in value.items():
            stage = spec if isinstance(spec, str) else spec.stage
            if stage not in STAGES:
                raise ValueError(
                    f"event type {event_type!r}: stage {stage!r} is not one of {STAGES}"
                )
        return value


class FeaturesConfig(_Section):
    windows_days: tuple[int, ...] = (7, 30, 90, 365)
    abandonment_days: int = Field(3, ge=1)
    momentum_days: int = Field(30, ge=1)
    intent_days: int = Field(30, ge=1)
    shards: int = Field(1, ge=1)
    memory_limit: str = Field(
        "2GB",
        pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="DuckDB working memory for events and features; beyond it DuckDB spills",
    )
    event_storage: Literal["disk", "memory"] = Field(
        "disk",
        description="disk: events in a compressed DuckDB file in the run's scratch folder"
        " (about a third of the memory); memory: an in-memory table (loads twice as fast)",
    )

    @field_validator("windows_days")
    @classmethod
    def _sorted_positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(w <= 0 for w in value) or list(value) != sorted(set(value)):
            raise ValueError("must be a non-empty, strictly increasing list of positive days")
        return value


class InvalidParameterError(ConfigError, TypeError):
    """An estimator parameter that breaks the constraint of its config key; the message names
    the estimator and the parameter (as scikit-learn's InvalidParameterError, a ValueError
    and a TypeError)."""


SectionT = TypeVar("SectionT", bound=BaseModel)


def validate_parameters(
    section: type[SectionT], params: Mapping[str, object], owner: str
) -> SectionT:
    """An estimator's parameters (`get_params()`) checked against the fields of `section`.

    The one place where an estimator's constraints are enforced: `section` is the config
    section the estimator is built from (or a subclass adding the parameters that are not
    config keys). Types are checked strictly, so that no value is silently converted (10.0 is
    not an int, "0.5" not a float); numpy scalars count as Python scalars and any non-string
    iterable (list, array, pandas Index) as a tuple. Section fields absent from `params` take
    their defaults (config keys that are not parameters of the estimator).

    Raises InvalidParameterError naming `owner` and each offending parameter.
    """
    try:
        return section.model_validate({k: _plain(v) for k, v in params.items()}, strict=True)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "<parameters>"
            if error["type"] == "extra_forbidden":
                problems.append(f"{owner} has no parameter {name!r} in {section.__name__}")
            else:
                got = params.get(name, error.get("input"))
                problems.append(f"{owner} parameter {name!r}: {error['msg']}, got {got!r}")
        raise InvalidParameterError("; ".join(dict.fromkeys(problems))) from None


def _plain(value: object) -> object:
    """numpy scalars and other registered numbers as Python scalars, non-string iterables as
    tuples: what a strict check of a bool, int, float, str or tuple field accepts."""
    item = getattr(value, "item", None)
    if getattr(value, "shape", None) == () and callable(item):
        value = item()  # a numpy scalar (np.int64, np.bool_, np.str_ ...) or a 0-d array
    if isinstance(value, bool | str | bytes | Mapping):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Iterable):
        return tuple(value)
    return value


class ClusteringConfig(_Section):
    """The `clustering` section: the parameters of `segmentation.clustering.ClusterModel`.

    Every key is the `ClusterModel` parameter of the same name, with the same default, and
    its constraints are declared here only: the model validates its parameters through this
    class when it is fit (`validate_parameters`), and `ClusterModel.from_config` passes each
    key as the keyword argument of that name. What each parameter does: `ClusterModel`.
    """

    features: tuple[str, ...] | None = Field(None, min_length=1)
    sample_size: int = Field(20_000, ge=100)
    min_cluster_size: int = Field(50, ge=2)
    min_samples: int | None = Field(None, ge=1)
    cluster_selection_method: Literal["eom", "leaf"] = "eom"
    pca_components: int | None = Field(None, ge=1)
    max_noise_share: float = Field(0.3, gt=0, le=1)
    max_cluster_share: float = Field(0.8, gt=0, le=1)
    kmeans_max_k: int = Field(12, ge=2)
    kmeans_k_selection: Literal["gap", "silhouette"] = "gap"
    kmeans_min_gap_gain: float = Field(0.03, ge=0)
    kmeans_references: int = Field(3, ge=1)
    assigner_neighbors: int = Field(10, ge=1)
    min_confidence: float = Field(0.0, ge=0, le=1)
    stickiness: float = Field(0.15, ge=0, le=1)
    attach_outliers: bool = True
    min_segment_share: float = Field(0.01, ge=0, lt=0.5)


class RulesConfig(_Section):
    file: str = "rules.yaml"


class CltvConfig(_Section):
    """The `cltv` section: the parameters of `models.cltv.CltvModel`, and the backtest window.

    `horizon_days`, `annual_discount_rate` and `penalizer` are the `CltvModel` parameters of
    the same names and defaults; their constraints are declared here only (the model validates
    through this class, `CltvModel.from_config` passes them by name). `holdout_days` is not a
    model parameter: it is the calibration/holdout split of the backtest that qualifies a fit
    (`models.backtest.split_btyd` and `backtest`, called by the pipeline), and the window of
    the learned models: they learn from features as of as_of - holdout_days what happens in
    the holdout_days after, and `p_purchase` is over that window. The learned buyer model is
    fit on the window before the latest and judged on the latest against BG/NBD
    (`models.selection`). `learned_model: false` keeps BG/NBD for buyers (prospects still get
    the conversion model); with fewer than `min_training_purchasers` training clients buying in
    the window, BG/NBD serves and the run logs why. A fit samples at most
    `max_training_clients` rows; with more than `window_clients` clients, the training windows
    are built for a hash partition of about that many clients.
    """

    horizon_days: int = Field(365, ge=1)
    annual_discount_rate: float = Field(0.10, ge=0, lt=1)
    penalizer: float = Field(0.0, ge=0)
    holdout_days: int = Field(90, ge=7)
    # The learned models (models.learned, models.selection).
    learned_model: bool = True
    min_training_purchasers: int = Field(50, ge=1)
    max_training_clients: int = Field(40_000, ge=100)
    window_clients: int = Field(60_000, ge=1_000)


class RefitConfig(_Section):
    every_days: int = Field(7, ge=1)
    max_psi: float = Field(0.25, gt=0)
    max_noise_share: float = Field(0.3, gt=0, le=1)
    min_clusters: int = Field(2, ge=1)
    min_quality: float = Field(-1.0, ge=-1, le=1)
    min_stability: float = Field(0.0, ge=0, le=1)
    max_published_noise_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="a fit that would publish more of its sample as unclustered fails its gate",
    )


# How many distinct identifiers of each type one identifier may be linked to before it counts as
# over-linked (a shared family tablet, a call-center default email, a test account) and is
# quarantined instead of merging persons. client_id 1: an anonymous identifier seen with two
# known clients belongs to neither.
DEFAULT_MAX_LINKS = {
    "client_id": 1,
    "anonymous_id": 1000,
    "device_id": 20,
    "email_hash": 10,
    "phone_hash": 10,
}
# Values that mean "no identifier" (compared trimmed and case-insensitively); a value made of
# one repeated character (`0000-0000`, `xxxxxxxx`, separators ignored) is ignored too.
DEFAULT_PLACEHOLDERS = (
    "null",
    "none",
    "nil",
    "nan",
    "na",
    "n/a",
    "unknown",
    "undefined",
    "anonymous",
    "guest",
    "test",
    "default",
    "[]",
    "{}",
)


class IdentityConfig(_Section):
    """Identity stitching: links file, over-linking limits, what counts as no identifier."""

    links_file: str | None = Field(
        None,
        description="Parquet or CSV of CRM/loyalty links: id_type, id_value, client_id and an"
        " optional linked_at (UTC); a link without linked_at counts from the start",
    )
    max_links: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_MAX_LINKS),
        description="identifier type -> the most distinct identifiers of that type one"
        " identifier may be linked to; beyond it the identifier is quarantined as"
        " identifier_over_linked (keys not given keep their default). A known client_id is"
        " not limited by its anonymous ids (sessions and cookies grow with activity)",
    )
    merge_known_clients: bool = Field(
        False,
        description="merge two known client_ids linked only through other identifiers, and"
        " lift the client_id limit of max_links (off: only a links-file row of id_type"
        " client_id merges two known clients)",
    )
    max_identifier_length: int = Field(256, ge=8, le=4096)
    placeholders: tuple[str, ...] = DEFAULT_PLACEHOLDERS

    @field_validator("max_links")
    @classmethod
    def _known_types(cls, value: dict[str, int]) -> dict[str, int]:
        for id_type, limit in value.items():
            if id_type not in ID_TYPES:
                raise ValueError(f"{id_type!r} is not an identifier type {ID_TYPES}")
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"{id_type!r}: the limit must be an integer >= 1, got {limit!r}")
        return {**DEFAULT_MAX_LINKS, **value}


class JourneyConfig(_Section):
    """The customer journey map: analysis window, stall rule, and when a statistic is shown."""

    enabled: bool = True
    window_days: int = Field(
        180, ge=7, description="the map reads the events of the last window_days up to the as-of"
    )
    stall_days: int = Field(
        30,
        ge=1,
        description="a client with no client-initiated event for this many days has stalled at"
        " the furthest stage reached (fewer days: still in progress)",
    )
    min_clients: int = Field(
        30,
        ge=1,
        description="a rate, lift or uplift needs at least this many clients on each side;"
        " fewer: the counts are shown with 'too few clients'",
    )
    top_touchpoints: int = Field(10, ge=1, description="touchpoints kept per stage and segment")
    max_dropoff_points: int = Field(5, ge=1, description="drop-off points kept per segment")
    max_causes: int = Field(5, ge=1, description="causes kept per drop-off point")
    max_moments: int = Field(5, ge=1, description="moments of truth kept per stage")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="level of every interval")
    negative_sentiment: float = Field(
        -0.3, ge=-1, le=0, description="an event with sentiment below this is a negative one"
    )
    pain_event_types: tuple[str, ...] = Field(
        ("support_ticket", "return", "refund"),
        description="event types that are pains wherever they occur",
    )
    funnel_steps: tuple[str, ...] = Field(
        ("add_to_cart", "checkout_start"),
        description="event types that are steps of the funnel itself (a cart comes before a"
        " checkout by construction): never listed as moments of truth",
    )


class HoldoutConfig(_Section):
    """Members held out of campaigns, per segment, to measure the campaigns' lift."""

    share: float = Field(
        0.05, ge=0, le=0.5, description="share of each segment's members held out (0: none)"
    )
    salt: str = Field(
        "holdout-v1",
        min_length=1,
        description="part of the hash: changing it draws a new holdout group",
    )
    segments: dict[str, float] = Field(
        default_factory=dict, description="segment id -> its own share, overriding share"
    )

    @field_validator("segments")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        for segment_id, share in value.items():
            if (
                isinstance(share, bool)
                or not isinstance(share, int | float)
                or not 0 <= share <= 0.5
            ):
                raise ValueError(
                    f"{segment_id!r}: the share must be a number in [0, 0.5], got {share!r}"
                )
        return value


class WebhookDestination(_Section):
    """Entries and exits POSTed as JSON batches to an HTTP endpoint."""

    kind: Literal["webhook"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str = Field(description="http(s) URL; ${ENV_VAR} is replaced from the environment")
    segments: tuple[str, ...] | None = Field(None, description="segment ids; null: every segment")
    include_holdout: bool = Field(False, description="send held-out members too (flagged)")
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra headers; ${ENV_VAR} is replaced (no secrets here)"
    )
    batch_size: int = Field(500, ge=1, le=100_000)
    timeout_seconds: float = Field(10.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    backoff_seconds: float = Field(1.0, ge=0)


class FileDestination(_Section):
    """Entries and exits written as one file per segment, kind and day into a folder."""

    kind: Literal["file"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    path: str = Field(description="folder; {workdir} is filled in")
    format: Literal["parquet", "csv"] = "parquet"
    segments: tuple[str, ...] | None = Field(None, description="segment ids; null: every segment")
    include_holdout: bool = Field(False, description="write held-out members too (flagged)")


class AlertsConfig(_Section):
    """Who is told when a run fails."""

    failure_webhook: str | None = Field(
        None, description="URL POSTed a JSON message when a run fails; ${ENV_VAR} is replaced"
    )
    timeout_seconds: float = Field(10.0, gt=0)


class ExecutionConfig(_Section):
    """Where the per-client work runs: in this process (local) or shard by shard on Dask.

    With `mode: dask`, the nightly run hash-partitions the clients into `shards`, and each
    shard is read, validated and built on a worker (`pipelines.distributed`), which leaves its
    valid events in `shared_dir` for the steps after the features. `scheduler_address` points at an
    existing cluster (``tcp://scheduler:8786``); null starts a `distributed.LocalCluster` of
    `workers` processes with `threads_per_worker` threads and `memory_limit_per_worker` each.
    """

    mode: Literal["local", "dask"] = "local"
    scheduler_address: str | None = Field(
        None, description="an existing Dask scheduler (tcp://host:8786); null: a LocalCluster"
    )
    workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(1, ge=1)
    shards: int = Field(4, ge=1, description="hash partitions of the clients (tasks)")
    memory_limit_per_worker: str = Field(
        "4GB",
        pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="LocalCluster: the memory Dask allows each worker",
    )
    connect_timeout_seconds: float = Field(
        10.0, gt=0, description="how long to wait for the scheduler before failing"
    )
    shared_dir: str | None = Field(
        None,
        description="a folder every worker and the driver can read and write, where the"
        " shards leave their valid events for the run's later steps; null: the run's scratch"
        " folder in the workdir (right for a LocalCluster on this machine)",
    )

    @field_validator("scheduler_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be an address such as tcp://host:8786, or null")
        return value


class ScheduleConfig(_Section):
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    deployment_name: str = "nightly"
    retries: int = Field(2, ge=0)
    retry_delay_seconds: float = Field(10.0, ge=0)


_NOT_DIGESTED = {"source", "workdir", "store", "execution", "schedule", "destinations", "alerts"}


class EngineConfig(_Section):
    """The whole engine configuration, as loaded from one YAML file."""

    workdir: str = "./segmentation-work"
    seed: int = 42
    store: StoreConfig = StoreConfig()
    mlflow: MlflowConfig = MlflowConfig()
    events: EventsConfig = EventsConfig()
    identity: IdentityConfig = IdentityConfig()
    features: FeaturesConfig = FeaturesConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    rules: RulesConfig = RulesConfig()
    cltv: CltvConfig = CltvConfig()
    refit: RefitConfig = RefitConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    journey: JourneyConfig = JourneyConfig()
    holdout: HoldoutConfig = HoldoutConfig()
    destinations: tuple[
        Annotated[WebhookDestination | FileDestination, Field(discriminator="kind")], ...
    ] = ()
    alerts: AlertsConfig = AlertsConfig()
    execution: ExecutionConfig = ExecutionConfig()
    source: str | None = Field(None, description="file this config was loaded from")

    # Resolved locations: placeholders and environment overrides applied.
    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir).expanduser().resolve()

    def resolve(self, template: str) -> str:
        """Fill `{workdir}` in a path or URL template."""
        return template.replace("{workdir}", str(self.workdir_path))

    @property
    def store_url(self) -> str:
        return os.environ.get(ENV_STORE_URL) or self.resolve(self.store.url)

    @property
    def tracking_uri(self) -> str:
        return os.environ.get(ENV_MLFLOW_URI) or self.resolve(self.mlflow.tracking_uri)

    @property
    def events_path(self) -> str:
        return self.resolve(self.events.path)

    @property
    def links_path(self) -> str | None:
        """The identity-links file, `{workdir}` filled in; None when not configured."""
        return self.resolve(self.identity.links_file) if self.identity.links_file else None

    def config_file(self, name: str) -> Path:
        """A referenced file (taxonomy, rules): relative to the config's own folder."""
        path = Path(self.resolve(name)).expanduser()
        if path.is_absolute():
            return path
        base = Path(self.source).parent if self.source else CONFIG_DIR
        candidate = base / path
        return candidate if candidate.exists() else CONFIG_DIR / path

    def digest(self) -> str:
        """A short, stable hash of the settings that decide the tables (the rules version and
        the tracked config): not of where the config came from, nor of where the work runs
        and lands (`workdir`, `store`, `execution`, `schedule`, `destinations`, `alerts`), so
        the same config in another folder or on Dask gives the same versions."""
        payload = self.model_dump(mode="json", exclude=_NOT_DIGESTED)
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_config(path: str | os.PathLike[str] | None = None) -> EngineConfig:
    """Load a config file (or `$SEGMENTATION_CONFIG`, or the shipped default) and validate it."""
    chosen = path or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG_PATH
    file = Path(chosen).expanduser()
    try:
        raw = yaml.safe_load(file.read_text()) if file.exists() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if not file.exists():
        raise ConfigError(f"{file}: config file not found")
    return config_from_mapping(raw or {}, source=str(file.resolve()))


def config_from_mapping(raw: Any, source: str = "<mapping>") -> EngineConfig:
    """Validate a mapping as an engine config; errors name the source and the dotted key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return EngineConfig.model_validate({**raw, "source": source})
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, source)) from None


def _describe_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<top level>"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"{source}: key '{key}': {message}")
    return "; ".join(lines)
