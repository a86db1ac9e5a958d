"""CLTV model for the engine: BG/NBD purchases x Gamma-Gamma spend, discounted over a horizon."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from configs import CltvConfig
from configs.schema import validate_parameters
from models.btyd import BetaGeoModel, ConvergenceError, GammaGammaModel, MeanSpendModel

__all__ = ["BTYD_COLUMNS", "PREDICTION_COLUMNS", "SCORE_COLUMNS", "CltvModel", "ConvergenceError"]

BTYD_COLUMNS = ("frequency", "recency", "T", "monetary_value")
PREDICTION_COLUMNS = ("p_alive", "expected_purchases", "expected_avg_value", "predicted_cltv")
# The client_scores columns a scoring step produces (the store adds as_of and run_id).
SCORE_COLUMNS = (
    "client_id",
    *PREDICTION_COLUMNS,
    "p_purchase",
    "cltv_model",
    "horizon_days",
    "model_version",
)
DAYS_PER_MONTH = 365.25 / 12
log = logging.getLogger(__name__)


class CltvModel(BaseEstimator):
    """Per-client CLTV over `horizon_days`, discounted monthly at `annual_discount_rate`.

    BG/NBD (purchases and alive-ness) is fit on all rows, Gamma-Gamma (spend per purchase) on
    the rows with frequency > 0 and monetary_value > 0. Clients who never purchased
    (frequency 0, T 0 or missing) get the model's values for a client just acquired, and the
    population mean spend. The parameters are the `cltv` config keys of the same names
    (`configs.CltvConfig`), with the same defaults; their constraints are declared there once
    and checked at fit and predict (`InvalidParameterError` names the parameter). The config's
    `holdout_days` is the backtest's (`models.backtest`), not a parameter of the model.

    Parameters
    ----------
    horizon_days : int, default=365
        The CLTV horizon, split into whole months; >= 1.
    annual_discount_rate : float in [0, 1), default=0.10
        Yearly discount rate applied to each month's expected spend.
    penalizer : float, default=0.0
        L2 penalty on the log-parameters of both fits (shrinks toward 1; makes degenerate
        data fit-able); >= 0.

    Attributes
    ----------
    bgnbd_ : BetaGeoModel
        The BG/NBD fit; alpha in days.
    gamma_gamma_ : GammaGammaModel or MeanSpendModel
        The Gamma-Gamma fit (v in the money unit of the input); when it cannot be fitted
        (fewer than 2 repeat buyers with spend, or q <= 1), the population's mean spend
        per repeat purchase (`models.btyd.MeanSpendModel`; NaN without any spend, so CLTV
        is unknown while p_alive and expected purchases are still scored).
    params_ : dict of str to float
        r, alpha, a, b (BG/NBD) and p, q, v (Gamma-Gamma).
    n_clients_ : int
        Rows fit on.

    See Also
    --------
    configs.CltvConfig : the config section, where the constraints live.
    models.backtest.backtest : calibration/holdout quality of a fit.

    Notes
    -----
    Input frames (time in days, as the feature builder gives it) have the columns
    `BTYD_COLUMNS`: frequency (repeat purchase days), recency (first -> last purchase), T
    (first purchase -> as-of end), monetary_value (mean spend per repeat purchase day).
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

    @classmethod
    def from_config(cls, config: CltvConfig) -> CltvModel:
        """A model with the keys of `config` that are its parameters (all but holdout_days).

        Parameters
        ----------
        config : configs.CltvConfig
            The `cltv` section of the engine config.

        Returns
        -------
        CltvModel
            Unfitted.
        """
        model = cls()
        model.set_params(**{name: getattr(config, name) for name in model.get_params(deep=False)})
        return model

    def fit(self, X: pd.DataFrame, y: None = None) -> CltvModel:
        """Fit BG/NBD and Gamma-Gamma.

        Parameters
        ----------
        X : pandas.DataFrame
            One row per client with the columns `BTYD_COLUMNS` (days).
        y : None
            Ignored (scikit-learn convention).

        Returns
        -------
        CltvModel
            self, fitted.

        Raises
        ------
        InvalidParameterError
            A parameter breaks its constraint (`configs.CltvConfig`).
        ConvergenceError
            BG/NBD has no valid optimum; a model fitted before keeps its previous fit.
        """
        self._validate_params()
        x, tx, T, mv = _btyd_arrays(X)
        bgnbd = BetaGeoModel(penalizer=self.penalizer).fit(x, tx, T)
        gamma_gamma: GammaGammaModel | MeanSpendModel
        try:
            gamma_gamma = GammaGammaModel(penalizer=self.penalizer).fit(x, mv)
        except ConvergenceError as exc:
            # alive-ness and purchases are still worth scoring: spend falls back to the mean
            # (unknown, NaN, without any spend: events without amounts)
            log.warning("CLTV: Gamma-Gamma not used (%s); spend is the population mean", exc)
            gamma_gamma = MeanSpendModel(reason=str(exc)).fit(x, mv)
        self.bgnbd_, self.gamma_gamma_ = bgnbd, gamma_gamma
        self.n_clients_ = len(X)
        self.params_ = {**bgnbd.params_, **gamma_gamma.params_}
        return self

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        """Alive-ness, expected purchases and spend, and the discounted CLTV of each client.

        Parameters
        ----------
        X : pandas.DataFrame
            One row per client with the columns `BTYD_COLUMNS` (days).

        Returns
        -------
        pandas.DataFrame
            Index of `X`; columns `PREDICTION_COLUMNS`: p_alive, expected_purchases (over the
            horizon, undiscounted), expected_avg_value, predicted_cltv (discounted).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            The model is not fitted.
        """
        self._check_fitted()
        x, tx, T, mv = _btyd_arrays(X)
        steps = self._step_days()
        cum = self.bgnbd_.conditional_expected_purchases(steps, x, tx, T)
        p_alive = self.bgnbd_.p_alive(x, tx, T)
        value = self.gamma_gamma_.conditional_expected_average_value(x, mv)
        incr = np.diff(cum, axis=1, prepend=0.0)
        disc = (1.0 + self.annual_discount_rate) ** (-steps / 365.25)
        # a row-wise sum, not `incr @ disc`: BLAS's matrix-vector product blocks by the
        # number of rows, so a client's value would change in its last bits with the batch
        # (one shard or all clients); each row's sum here depends on that row alone
        cltv = value * np.ascontiguousarray(incr * disc).sum(axis=1)
        return pd.DataFrame(
            {
                "p_alive": p_alive,
                "expected_purchases": cum[:, -1],
                "expected_avg_value": value,
                "predicted_cltv": cltv,
            },
            index=X.index,
        )

    def expected_purchases(self, X: pd.DataFrame, days: float) -> np.ndarray:
        """Expected purchases of each client in the next `days` (undiscounted).

        Parameters
        ----------
        X : pandas.DataFrame
            One row per client with the columns `BTYD_COLUMNS` (days).
        days : float
            The window, e.g. a backtest holdout.

        Returns
        -------
        ndarray of float
            One value per row of `X`.
        """
        self._check_fitted()
        x, tx, T, _ = _btyd_arrays(X)
        return self.bgnbd_.conditional_expected_purchases(float(days), x, tx, T)

    def expected_avg_value(self, X: pd.DataFrame) -> np.ndarray:
        """Expected spend per purchase of each client (Gamma-Gamma).

        Parameters
        ----------
        X : pandas.DataFrame
            One row per client with the columns `BTYD_COLUMNS`.

        Returns
        -------
        ndarray of float
            One value per row of `X`.
        """
        self._check_fitted()
        x, _, _, mv = _btyd_arrays(X)
        return self.gamma_gamma_.conditional_expected_average_value(x, mv)

    def p_purchase(self, X: pd.DataFrame, days: float) -> np.ndarray:
        """P(at least one purchase in the next `days`) of each client, from BG/NBD.

        A client is dead at T with probability 1 - p_alive; alive, their purchase rate has the
        posterior Gamma(r + x, alpha + T), and (BG/NBD drops out only after a purchase) no
        purchase in the window has probability ((alpha + T) / (alpha + T + days))^(r + x).

        Parameters
        ----------
        X : pandas.DataFrame
            One row per client with the columns `BTYD_COLUMNS` (days).
        days : float
            The window, >= 0.

        Returns
        -------
        ndarray of float
            One probability per row of `X`.
        """
        self._check_fitted()
        if not np.isfinite(days) or days < 0:
            raise ValueError(f"days must be finite and >= 0, got {days}")
        x, tx, T, _ = _btyd_arrays(X)
        p = self.bgnbd_.params_
        alive = self.bgnbd_.p_alive(x, tx, T)
        none_if_alive = ((p["alpha"] + T) / (p["alpha"] + T + days)) ** (p["r"] + x)
        return 1.0 - ((1.0 - alive) + alive * none_if_alive)

    def new_client_outlook(self, converts_after_days: float) -> tuple[float, float, float]:
        """What a client who makes a first purchase `converts_after_days` from now is worth
        over the horizon: (expected purchases, discounted expected purchases, expected spend
        per purchase), counting the first purchase and the repeat purchases BG/NBD expects of
        a just-acquired client after it, discounted like every other client's.
        """
        self._check_fitted()
        start = float(min(max(converts_after_days, 0.0), self.horizon_days))
        rest = self.horizon_days - start
        n = max(1, round(rest / DAYS_PER_MONTH))
        steps = rest * np.arange(1, n + 1) / n
        repeats = np.atleast_1d(self.bgnbd_.expected_purchases(steps)) if rest > 0 else np.zeros(1)
        incr = np.diff(repeats, prepend=0.0)
        rate = 1.0 + self.annual_discount_rate
        discounted = rate ** (-start / 365.25) + float(incr @ rate ** (-(start + steps) / 365.25))
        value = float(self.gamma_gamma_.population_mean_)
        return 1.0 + float(repeats[-1]), discounted, value

    def summary(self) -> pd.DataFrame:
        """Fitted parameters and log-likelihoods.

        Returns
        -------
        pandas.DataFrame
            Columns model, parameter, value; one row per parameter.
        """
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

    def _validate_params(self) -> CltvConfig:
        """The parameters, checked against their constraints (`configs.CltvConfig`)."""
        return validate_parameters(CltvConfig, self.get_params(deep=False), type(self).__name__)

    def _check_fitted(self) -> None:
        """Fitted, and the parameters predictions use (horizon, discount) are valid."""
        check_is_fitted(self, ("bgnbd_", "gamma_gamma_"))
        self._validate_params()


def _btyd_arrays(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated float arrays; NaN recency/T/monetary of never-repeat clients become 0."""
    missing = [c for c in BTYD_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"CLTV input lacks columns {missing}")
    x = pd.to_numeric(df["frequency"], errors="raise").to_numpy(dtype=float)
    if np.any(~np.isfinite(x)) or np.any(x < 0):
        raise ValueError("frequency must be finite and >= 0")
    out = []
    for c in ("recency", "T", "monetary_value"):
        v = pd.to_numeric(df[c], errors="raise").to_numpy(dtype=float)
        bad = ~np.isfinite(v)
        if np.any(bad & (x > 0)):
            raise ValueError(f"{c} is missing or infinite for clients with frequency > 0")
        v = np.where(bad, 0.0, v)
        if np.any(v < 0):
            raise ValueError(f"{c} has negative values")
        out.append(v)
    recency, T, monetary_value = out
    return x, recency, T, monetary_value
