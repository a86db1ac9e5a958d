"""From raw journey events to one row of behavioral features per client.

Layer: data, above `configs`. May import `configs` (and DuckDB, the event engine); never
`segmentation`, `models` or `pipelines`, nor SQLAlchemy, psycopg, MLflow, Prefect or plotly
(import-linter contracts in pyproject.toml; docs/architecture.md).

Modules: `events` (the event contract: reading, validation, quarantine, taxonomy), `build`
(the point-in-time feature build in DuckDB), `catalog` (the declared features), `generator`
(synthetic journeys with planted personas and a behavior shift). The names below are their
public entry points, imported lazily (PEP 562): `import features` imports none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from configs import lazy_exports

if TYPE_CHECKING:
    from features.build import FeatureBuildError, build_features
    from features.catalog import FEATURES, Feature, feature_catalog, feature_names, feature_schema
    from features.events import (
        CONTRACT_COLUMNS,
        BadInputError,
        EventContractError,
        ValidationReport,
        check_bad_share,
        connect_for_events,
        load_configured_events,
        load_events,
    )
    from features.generator import generate, write_dataset

__all__ = [
    "CONTRACT_COLUMNS",
    "FEATURES",
    "BadInputError",
    "EventContractError",
    "Feature",
    "FeatureBuildError",
    "ValidationReport",
    "build_features",
    "check_bad_share",
    "connect_for_events",
    "feature_catalog",
    "feature_names",
    "feature_schema",
    "generate",
    "load_configured_events",
    "load_events",
    "write_dataset",
]

# Where each public name lives; `__getattr__` imports it from there on first use.
_EXPORTS: dict[str, str] = {
    "FeatureBuildError": "features.build",
    "build_features": "features.build",
    "FEATURES": "features.catalog",
    "Feature": "features.catalog",
    "feature_catalog": "features.catalog",
    "feature_names": "features.catalog",
    "feature_schema": "features.catalog",
    "CONTRACT_COLUMNS": "features.events",
    "BadInputError": "features.events",
    "EventContractError": "features.events",
    "ValidationReport": "features.events",
    "check_bad_share": "features.events",
    "connect_for_events": "features.events",
    "load_configured_events": "features.events",
    "load_events": "features.events",
    "generate": "features.generator",
    "write_dataset": "features.generator",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
