"""CLTV model for the engine: BG/NBD purchases x Gamma-Gamma spend, discounted over a horizon."""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.btyd import BetaGeoModel, ConvergenceError, GammaGammaModel

__all__ = ["BTYD_COLUMNS", "PREDICTION_COLUMNS", "SCORE_COLUMNS", "CltvModel", "ConvergenceError"]

BTYD_COLUMNS = ("frequency", "recency", "T", "monetary_value")
PREDICTION_COLUMNS = ("p_alive", "expected_purchases", "expected_avg_value", "predicted_cltv")
# The client_scores columns a scoring step produces (the store adds as_of and run_id).
SCORE_COLUMNS = ("client_id", *PREDICTION_COLUMNS, "horizon_days", "model_version")
DAYS_PER_MONTH = 365.25 / 12


class CltvModel:
    """Per-client CLTV over `horizon_days`, discounted monthly at `annual_discount_rate`.

    Input frame (time in days, as the feature builder gives it): frequency (repeat purchase
    days), recency (first -> last purchase), T (first purchase -> as-of end), monetary_value
    (mean spend per repeat purchase day). BG/NBD is fit on all rows, Gamma-Gamma on
    frequency > 0 and monetary_value > 0. Clients who never purchased (frequency 0, T 0 or
    missing) get the model's values for a client just acquired, and the population mean spend.
    Parameters are reported in days (alpha) and in the money unit of the input (v).
    """

    def __init__(
        self,
        horizon_days: int = 365,
        annual_discount_rate: float = 0.10,
        penalizer: float = 0.0,
    ):
        self.horizon_days = horizon_days
        self.annual_discount_rate = annual_discount_rate
        self.penalizer = penalizer

    def fit(self, df: pd.DataFrame) -> CltvModel:
        """Fit BG/NBD and Gamma-Gamma; raises ConvergenceError if either fails."""
        self._check_settings()
        x, tx, T, mv = _btyd_arrays(df)
        self.bgnbd_ = BetaGeoModel(penalizer=self.penalizer).fit(x, tx, T)
        self.gamma_gamma_ = GammaGammaModel(penalizer=self.penalizer).fit(x, mv)
        self.n_clients_ = len(df)
        self.params_ = {**self.bgnbd_.params_, **self.gamma_gamma_.params_}
        return self

    def predict(self, df: pd.DataFrame) -> pd.DataFrame:
        """p_alive, expected_purchases (horizon), expected_avg_value, predicted_cltv per row."""
        self._check_fitted()
        x, tx, T, mv = _btyd_arrays(df)
        steps = self._step_days()
        cum = self.bgnbd_.conditional_expected_purchases(steps, x, tx, T)
        p_alive = self.bgnbd_.p_alive(x, tx, T)
        value = self.gamma_gamma_.conditional_expected_average_value(x, mv)
        incr = np.diff(cum, axis=1, prepend=0.0)
        disc = (1.0 + self.annual_discount_rate) ** (-steps / 365.25)
        cltv = value * (incr @ disc)
        return pd.DataFrame(
            {
                "p_alive": p_alive,
                "expected_purchases": cum[:, -1],
                "expected_avg_value": value,
                "predicted_cltv": cltv,
            },
            index=df.index,
        )

    def expected_purchases(self, df: pd.DataFrame, days: float) -> np.ndarray:
        """Expected purchases in the next `days` (undiscounted), e.g. a backtest holdout."""
        self._check_fitted()
        x, tx, T, _ = _btyd_arrays(df)
        return self.bgnbd_.conditional_expected_purchases(float(days), x, tx, T)

    def expected_avg_value(self, df: pd.DataFrame) -> np.ndarray:
        """Expected spend per purchase (Gamma-Gamma)."""
        self._check_fitted()
        x, _, _, mv = _btyd_arrays(df)
        return self.gamma_gamma_.conditional_expected_average_value(x, mv)

    def summary(self) -> pd.DataFrame:
        """Fitted parameters and log-likelihoods, one row per parameter."""
        self._check_fitted()
        rows = [("bgnbd", k, v) for k, v in self.bgnbd_.params_.items()]
        rows.append(("bgnbd", "log_likelihood", self.bgnbd_.log_likelihood_))
        rows += [("gamma_gamma", k, v) for k, v in self.gamma_gamma_.params_.items()]
        rows.append(("gamma_gamma", "log_likelihood", self.gamma_gamma_.log_likelihood_))
        rows.append(("gamma_gamma", "population_mean", self.gamma_gamma_.population_mean_))
        return pd.DataFrame(rows, columns=["model", "parameter", "value"])

    def _step_days(self) -> np.ndarray:
        n = max(1, round(self.horizon_days / DAYS_PER_MONTH))
        return self.horizon_days * np.arange(1, n + 1) / n

    def _check_settings(self) -> None:
        if not (np.isfinite(self.horizon_days) and self.horizon_days > 0):
            raise ValueError(f"horizon_days must be > 0, got {self.horizon_days}")
        if not (0 <= self.annual_discount_rate < 1):
            raise ValueError(
                f"annual_discount_rate must be in [0, 1), got {self.annual_discount_rate}"
            )
        if not (self.penalizer >= 0):
            raise ValueError(f"penalizer must be >= 0, got {self.penalizer}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "bgnbd_"):
            raise RuntimeError("CltvModel is not fitted: call fit() first")
        self._check_settings()


def _btyd_arrays(df: pd.DataFrame):
    """Validated float arrays; NaN recency/T/monetary of never-repeat clients become 0."""
    missing = [c for c in BTYD_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"CLTV input lacks columns {missing}")
    x = pd.to_numeric(df["frequency"], errors="raise").to_numpy(dtype=float)
    if np.any(~np.isfinite(x)) or np.any(x < 0):
        raise ValueError("frequency must be finite and >= 0")
    out = [x]
    for c in ("recency", "T", "monetary_value"):
        v = pd.to_numeric(df[c], errors="raise").to_numpy(dtype=float)
        bad = ~np.isfinite(v)
        if np.any(bad & (x > 0)):
            raise ValueError(f"{c} is missing or infinite for clients with frequency > 0")
        v = np.where(bad, 0.0, v)
        if np.any(v < 0):
            raise ValueError(f"{c} has negative values")
        out.append(v)
    return tuple(out)
