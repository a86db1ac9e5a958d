"""The engine's configuration: the shipped YAML files and the schema that validates them.

The lowest layer: every other package may import it, and it imports none of them.
"""

from configs.base import STAGES, SegmentationError, as_date
from configs.paths import CONFIG_DIR
from configs.schema import (
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG,
    ENV_MLFLOW_URI,
    ENV_STORE_URL,
    CltvConfig,
    ClusteringConfig,
    ConfigError,
    EngineConfig,
    EventsConfig,
    FeaturesConfig,
    MlflowConfig,
    RefitConfig,
    RulesConfig,
    ScheduleConfig,
    StoreConfig,
    config_from_mapping,
    load_config,
)

__all__ = [
    "CONFIG_DIR",
    "DEFAULT_CONFIG_PATH",
    "ENV_CONFIG",
    "ENV_MLFLOW_URI",
    "ENV_STORE_URL",
    "STAGES",
    "CltvConfig",
    "ClusteringConfig",
    "ConfigError",
    "EngineConfig",
    "EventsConfig",
    "FeaturesConfig",
    "MlflowConfig",
    "RefitConfig",
    "RulesConfig",
    "ScheduleConfig",
    "SegmentationError",
    "StoreConfig",
    "as_date",
    "config_from_mapping",
    "load_config",
]
