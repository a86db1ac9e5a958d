"""The engine's configuration: the shipped YAML files, the schema that validates them, and
what every layer shares (the exception root `SegmentationError`, the journey `STAGES`).

Layer: base, the lowest. Every other package may import it; it imports none of them, nor
SQLAlchemy, psycopg, MLflow, Prefect or plotly (import-linter contracts in pyproject.toml;
docs/architecture.md). Importing it is cheap (pydantic and PyYAML), so its names are
imported eagerly.
"""

from configs.base import (
    CONTRACT_COLUMNS,
    ID_TYPES,
    IDENTIFIER_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    STAGES,
    SegmentationError,
    as_date,
    lazy_exports,
)
from configs.paths import CONFIG_DIR
from configs.schema import (
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG,
    ENV_MLFLOW_URI,
    ENV_STORE_URL,
    AlertsConfig,
    CltvConfig,
    ClusteringConfig,
    ConfigError,
    EngineConfig,
    EventsConfig,
    ExtraEventType,
    FeaturesConfig,
    FileDestination,
    HoldoutConfig,
    IdentityConfig,
    InvalidParameterError,
    JourneyConfig,
    MlflowConfig,
    RefitConfig,
    RulesConfig,
    ScheduleConfig,
    StoreConfig,
    WebhookDestination,
    config_from_mapping,
    load_config,
    validate_parameters,
)

__all__ = [
    "CONFIG_DIR",
    "CONTRACT_COLUMNS",
    "DEFAULT_CONFIG_PATH",
    "ENV_CONFIG",
    "ENV_MLFLOW_URI",
    "ENV_STORE_URL",
    "IDENTIFIER_COLUMNS",
    "ID_TYPES",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "STAGES",
    "AlertsConfig",
    "CltvConfig",
    "ClusteringConfig",
    "ConfigError",
    "EngineConfig",
    "EventsConfig",
    "ExtraEventType",
    "FeaturesConfig",
    "FileDestination",
    "HoldoutConfig",
    "IdentityConfig",
    "InvalidParameterError",
    "JourneyConfig",
    "MlflowConfig",
    "RefitConfig",
    "RulesConfig",
    "ScheduleConfig",
    "SegmentationError",
    "StoreConfig",
    "WebhookDestination",
    "as_date",
    "config_from_mapping",
    "lazy_exports",
    "load_config",
    "validate_parameters",
]
