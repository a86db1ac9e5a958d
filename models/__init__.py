"""What a client is worth: BG/NBD and Gamma-Gamma, discounted CLTV, backtests.

Layer: pure domain, above `features`. May import `features` and `configs`; never
`segmentation` (its sibling) or `pipelines`, nor DuckDB, SQLAlchemy, psycopg, MLflow, Prefect
or plotly (import-linter contracts in pyproject.toml; docs/architecture.md).

Modules: `btyd` (the estimators, checked against the published CDNOW fits), `cltv`
(CltvModel; it owns the `client_scores` columns), `backtest` (calibration/holdout split and
errors: `models.backtest.backtest`, not re-exported because it shares the module's name).
The names below are imported lazily (PEP 562): `import models` imports neither SciPy nor
scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from configs import lazy_exports

if TYPE_CHECKING:
    from models.backtest import split_btyd
    from models.btyd import BetaGeoModel, ConvergenceError, GammaGammaModel
    from models.cltv import BTYD_COLUMNS, PREDICTION_COLUMNS, SCORE_COLUMNS, CltvModel

__all__ = [
    "BTYD_COLUMNS",
    "PREDICTION_COLUMNS",
    "SCORE_COLUMNS",
    "BetaGeoModel",
    "CltvModel",
    "ConvergenceError",
    "GammaGammaModel",
    "split_btyd",
]

# Where each public name lives; `__getattr__` imports it from there on first use.
_EXPORTS: dict[str, str] = {
    "split_btyd": "models.backtest",
    "BetaGeoModel": "models.btyd",
    "ConvergenceError": "models.btyd",
    "GammaGammaModel": "models.btyd",
    "BTYD_COLUMNS": "models.cltv",
    "PREDICTION_COLUMNS": "models.cltv",
    "SCORE_COLUMNS": "models.cltv",
    "CltvModel": "models.cltv",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
