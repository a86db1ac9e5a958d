"""Delivery: the nightly flows, the store, MLflow tracking and registry, the report, the CLI.

Layer: delivery, the top. May import every package below (`segmentation`, `models`,
`features`, `configs`) and the database, tracking and orchestration libraries; no package of
the engine imports it (import-linter contracts in pyproject.toml; docs/architecture.md).

Modules: `cli` (the `segmentation` console script), `nightly` and `steps` (the Prefect flows
and their steps), `policy` (refit, quality gates, champion and promotion: pure decisions),
`flow_params` (flow parameters without secrets), `scratch` (the run's scratch folders),
`store` (atomic publishing and readers), `tracking` and `registry` (MLflow), `report`,
`schedule`, `demo`, `quality`, `prefect_utils`, `locks` (file locks between processes). The
names below are their public entry points, imported lazily (PEP 562): `import pipelines` (and
`import pipelines.cli`) imports neither Prefect, MLflow, hdbscan, plotly nor scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from configs import lazy_exports

if TYPE_CHECKING:
    from pipelines.cli import CommandLineError, main
    from pipelines.demo import run_demo
    from pipelines.nightly import run_backfill, run_nightly
    from pipelines.operate import manage_models
    from pipelines.registry import ModelRegistry, RegistryError
    from pipelines.report import write_report
    from pipelines.schedule import ScheduleError
    from pipelines.store import (
        PublishInputError,
        PublishRequest,
        PublishResult,
        Store,
        StoreArgumentError,
        StoreError,
        open_store,
    )
    from pipelines.tracking import Tracker, TrackingError

__all__ = [
    "CommandLineError",
    "ModelRegistry",
    "PublishInputError",
    "PublishRequest",
    "PublishResult",
    "RegistryError",
    "ScheduleError",
    "Store",
    "StoreArgumentError",
    "StoreError",
    "Tracker",
    "TrackingError",
    "main",
    "manage_models",
    "open_store",
    "run_backfill",
    "run_demo",
    "run_nightly",
    "write_report",
]

# Where each public name lives; `__getattr__` imports it from there on first use.
_EXPORTS: dict[str, str] = {
    "CommandLineError": "pipelines.cli",
    "main": "pipelines.cli",
    "run_demo": "pipelines.demo",
    "manage_models": "pipelines.operate",
    "run_backfill": "pipelines.nightly",
    "run_nightly": "pipelines.nightly",
    "ModelRegistry": "pipelines.registry",
    "RegistryError": "pipelines.registry",
    "write_report": "pipelines.report",
    "ScheduleError": "pipelines.schedule",
    "PublishInputError": "pipelines.store",
    "PublishRequest": "pipelines.store",
    "PublishResult": "pipelines.store",
    "Store": "pipelines.store",
    "StoreArgumentError": "pipelines.store",
    "StoreError": "pipelines.store",
    "open_store": "pipelines.store",
    "Tracker": "pipelines.tracking",
    "TrackingError": "pipelines.tracking",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
