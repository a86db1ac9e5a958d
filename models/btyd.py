"""BG/NBD and Gamma-Gamma customer-base models fit by maximum likelihood (numpy/scipy).

Time may be in any unit: parameters (alpha) are reported in the unit of the input; the fit
rescales time internally so the optimizer works on O(1) numbers. Money likewise (v).
Identical input rows are compressed to weighted unique rows, so millions of clients fit fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import optimize, special
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from configs import SegmentationError

__all__ = [
    "BetaGeoModel",
    "ConvergenceError",
    "GammaGammaModel",
    "bgnbd_expectation_factor",
]

_LOG_BOUND = 18.0  # |log parameter| bound in scaled units; hitting it means no interior MLE
_CHUNK_CELLS = 4_000_000  # rows x nodes per quadrature chunk (memory bound)


class ConvergenceError(SegmentationError, RuntimeError):
    """The maximum-likelihood fit did not converge to a valid interior optimum.

    The caller should keep its previous model (never use the numbers of a failed fit).
    """


def bgnbd_expectation_factor(
    t: np.ndarray, x: np.ndarray, T: np.ndarray, r: float, alpha: float, a: float, b: float
) -> np.ndarray:
    """E[purchases in (T, T+t] | alive at T, x] for the BG/NBD posterior (x, T).

    Rows are clients, columns are the horizons in `t` (1-D). The closed form needs a Gauss
    hypergeometric 2F1 that scipy evaluates badly for large x or a+b<1, so we integrate its
    Euler representation E_p[(1 - (1 + p u)^-(r+x)) / p], p ~ Beta(a, b+x), u = t/(alpha+T),
    with a sinh-mapped trapezoidal rule in logit(p) (exponentially convergent, no cancellation).
    """
    x = np.asarray(x, dtype=float).ravel()
    T = np.asarray(T, dtype=float).ravel()
    t = np.atleast_1d(np.asarray(t, dtype=float))
    m = r + x
    beta = b + x
    A = alpha + T
    out = np.empty((x.size, t.size))
    if x.size == 0:
        return out
    u_ref = np.max(t) / A  # one set of nodes per row, shared by all horizons
    nodes, n_max = _node_plan(a, beta, m, u_ref)
    step = max(1, _CHUNK_CELLS // (n_max * max(t.size, 1)))
    for lo in range(0, x.size, step):
        sl = slice(lo, lo + step)
        part = _Nodes(nodes.center[sl], nodes.scale[sl], nodes.tau_lo[sl])
        out[sl] = _integrate_rows(a, beta[sl], m[sl], A[sl], t, part, n_max)
    return out


@dataclass(frozen=True)
class _Nodes:
    center: np.ndarray
    scale: np.ndarray
    tau_lo: np.ndarray


def _node_plan(a: float, beta: np.ndarray, m: np.ndarray, u: np.ndarray) -> tuple[_Nodes, int]:
    """Center, scale and left end of the tau grid per row; the common grid length."""
    h = _TAU_STEP
    c = np.log(a) - np.log(beta)
    with np.errstate(divide="ignore"):
        yf = -np.log(np.maximum(u, 1e-300) * np.maximum(m, 1.0))
    if a < 1.0:
        c = np.where(yf < c, yf, c)
    s = np.minimum(1.0, np.sqrt((a + beta) / (a * beta)))
    left = 25.0 / a + np.abs(c) + np.log1p(u * m) + 5.0
    right = 25.0 / beta + np.abs(c) + 5.0
    t_lo = -np.ceil(np.arcsinh(left / s) / h) * h
    t_hi = np.ceil(np.arcsinh(right / s) / h) * h
    n = np.round((t_hi - t_lo) / h).astype(int) + 1
    return _Nodes(c, s, t_lo), int(n.max())


_TAU_STEP = 0.1


def _integrate_rows(
    a: float,
    beta: np.ndarray,
    m: np.ndarray,
    A: np.ndarray,
    t: np.ndarray,
    nodes: _Nodes,
    n_max: int,
) -> np.ndarray:
    k = np.arange(n_max) * _TAU_STEP
    tau = nodes.tau_lo[:, None] + k[None, :]
    sh = np.sinh(tau)
    y = nodes.center[:, None] + nodes.scale[:, None] * sh
    dy = nodes.scale[:, None] * np.cosh(tau) * _TAU_STEP
    logp = -np.logaddexp(0.0, -y)
    log1mp = logp - y
    lw = a * logp + beta[:, None] * log1mp - special.betaln(a, beta)[:, None] + np.log(dy)
    w = np.exp(lw)  # beta weight (without the 1/p of the integrand)
    p = np.exp(logp)
    res = np.empty((beta.size, t.size))
    for j, tj in enumerate(t):
        u = tj / A
        z = p * u[:, None]
        res[:, j] = u * m * np.sum(w * _phi(z, m[:, None]), axis=1)
    return res


def _phi(z: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(1 - (1+z)^-m) / (m z), in (0, 1], stable at z -> 0."""
    small = z < 1e-8
    zs = np.where(small, 1.0, z)
    val = -np.expm1(-m * np.log1p(zs)) / (m * zs)
    return np.where(small, 1.0 - 0.5 * (m + 1.0) * z, val)


# --------------------------------------------------------------------------------------------
# BG/NBD


class BetaGeoModel(BaseEstimator):
    """BG/NBD (Fader, Hardie & Lee 2005): repeat purchases and alive-ness.

    Inputs per client: frequency x (repeat purchases), recency t_x (first -> last purchase),
    T (first purchase -> end of observation), all time in one unit.

    Parameters
    ----------
    penalizer : float, default=0.0
        Adds penalizer * sum(log(param)^2) (parameters in scaled time) to the mean negative
        log-likelihood, shrinking toward 1 and keeping degenerate data fit-able; >= 0
        (checked by `CltvModel`, whose parameter it is).
    max_iter : int, default=2000
        L-BFGS-B iterations per start.

    Attributes
    ----------
    r_, alpha_, a_, b_ : float
        The fitted parameters; alpha in the time unit of the input.
    params_ : dict of str to float
        The same as r, alpha, a, b.
    log_likelihood_ : float
        Log-likelihood of the fit, in the time unit of the input.
    time_scale_ : float
        The rescaling of time the optimizer worked with.
    n_clients_ : float
        Total weight (clients) fit on.
    n_unique_rows_ : int
        Distinct (frequency, recency, T) rows after compression.
    """

    def __init__(self, penalizer: float = 0.0, max_iter: int = 2000):
        self.penalizer = penalizer
        self.max_iter = max_iter

    def fit(
        self,
        frequency: ArrayLike,
        recency: ArrayLike,
        T: ArrayLike,
        weights: ArrayLike | None = None,
    ) -> BetaGeoModel:
        """Maximum-likelihood fit.

        Parameters
        ----------
        frequency, recency, T : array-like of float
            Per client: repeat purchases (whole numbers), first -> last purchase, first
            purchase -> end of observation (recency <= T).
        weights : array-like of float or None, default=None
            Per client weight (a count of identical clients); None: 1 each.

        Returns
        -------
        BetaGeoModel
            self, fitted.

        Raises
        ------
        ConvergenceError
            There is no valid interior optimum (e.g. no repeat buyer, no visible dropout).
        """
        x, tx, TT, w = _check_btyd(frequency, recency, T, weights)
        if w.sum() <= 0 or not np.any(x > 0):
            raise ConvergenceError("BG/NBD needs at least one client with a repeat purchase")
        tx = np.where(x > 0, tx, 0.0)  # recency is irrelevant without a repeat purchase
        x, tx, TT, w = _compress(w, x, tx, TT)
        scale = float(np.average(TT, weights=w)) if np.any(TT > 0) else 1.0
        scale = scale if scale > 0 else 1.0
        data = _bgnbd_data(x, tx / scale, TT / scale, w / w.sum())
        starts = [np.zeros(4), np.log([0.5, 0.5, 0.5, 2.0]), np.log([2.0, 2.0, 2.0, 5.0])]
        theta = _minimize(_bgnbd_objective, starts, data, self.penalizer, self.max_iter, "BG/NBD")
        r, alpha_s, a, b = np.exp(theta)
        self.r_, self.alpha_, self.a_, self.b_ = (
            float(r),
            float(alpha_s * scale),
            float(a),
            float(b),
        )
        ll_scaled = -_bgnbd_objective(theta, data, 0.0)[0] * w.sum()
        # back to the input time unit: each repeat purchase carries one density in time
        self.log_likelihood_ = float(ll_scaled - np.sum(w * x) * np.log(scale))
        self.time_scale_ = scale
        self.n_clients_ = float(w.sum())
        self.n_unique_rows_ = int(x.size)
        return self

    @property
    def params_(self) -> dict[str, float]:
        """r, alpha, a, b."""
        check_is_fitted(self, "r_")
        return {"r": self.r_, "alpha": self.alpha_, "a": self.a_, "b": self.b_}

    def p_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """P(alive at T | x, t_x, T) per client; 1 for clients without a repeat purchase.

        Returns
        -------
        ndarray of float
            One probability per client.
        """
        check_is_fitted(self, "r_")
        x, tx, TT, _ = _check_btyd(frequency, recency, T, None)
        return _p_alive(x, tx, TT, self.r_, self.alpha_, self.a_, self.b_)

    def conditional_expected_purchases(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> np.ndarray:
        """E[purchases in (T, T+t] | x, t_x, T] per client.

        Parameters
        ----------
        t : float or array-like of float
            Horizon(s) after T, >= 0.
        frequency, recency, T : array-like of float
            As for `fit`.

        Returns
        -------
        ndarray of float
            Shape (n_clients,) for a scalar t, (n_clients, len(t)) for an array.
        """
        check_is_fitted(self, "r_")
        x, tx, TT, _ = _check_btyd(frequency, recency, T, None)
        ts = np.atleast_1d(np.asarray(t, dtype=float))
        if np.any(~np.isfinite(ts)) or np.any(ts < 0):
            raise ValueError("horizon t must be finite and >= 0")
        pa = _p_alive(x, tx, TT, self.r_, self.alpha_, self.a_, self.b_)
        ex = _expectation_unique(ts, x, TT, self.r_, self.alpha_, self.a_, self.b_)
        out = pa[:, None] * ex
        return out[:, 0] if np.ndim(t) == 0 else out

    def expected_purchases(self, t: ArrayLike) -> np.ndarray:
        """E[X(t)] for a client just acquired (unconditional).

        Returns
        -------
        ndarray of float
            A 0-d value for a scalar t, one value per horizon for an array.
        """
        check_is_fitted(self, "r_")
        ts = np.atleast_1d(np.asarray(t, dtype=float))
        out = bgnbd_expectation_factor(ts, np.zeros(1), np.zeros(1), *self.params_.values())[0]
        return out[0] if np.ndim(t) == 0 else out


def _check_btyd(
    frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, weights: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrs = []
    for name, v in (("frequency", frequency), ("recency", recency), ("T", T)):
        a = np.asarray(v, dtype=float).ravel()
        if np.any(~np.isfinite(a)):
            raise ValueError(f"{name} has missing or infinite values")
        if np.any(a < 0):
            raise ValueError(f"{name} has negative values")
        arrs.append(a)
    x, tx, TT = arrs
    if np.any(x != np.round(x)):
        raise ValueError("frequency must be whole numbers (repeat purchase count)")
    if not (x.size == tx.size == TT.size):
        raise ValueError("frequency, recency and T must have the same length")
    if np.any(tx > TT * (1 + 1e-9) + 1e-9):
        raise ValueError("recency must not exceed T")
    if np.any((x > 0) & (TT <= 0)):
        raise ValueError("clients with frequency > 0 must have T > 0")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float).ravel()
    if w.size != x.size or np.any(~np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite, >= 0 and one per client")
    return x, tx, TT, w


def _compress(w: np.ndarray, *cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """Unique rows of `cols` with summed weights."""
    codes, first = _row_codes(*cols)
    wsum = np.bincount(codes, weights=w, minlength=first.size)
    return (*(np.asarray(c, dtype=float)[first] for c in cols), wsum)


def _row_codes(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group code per row of identical `cols` values, and the first row of each group."""
    key = np.zeros(len(cols[0]), dtype=np.int64)
    for c in cols:
        codes, uniq = pd.factorize(np.asarray(c, dtype=float))
        key = pd.factorize(key * np.int64(len(uniq)) + codes)[0]  # stays < rows**2
    codes, uniq = key, np.unique(key) if key.size == 0 else np.arange(key.max() + 1)
    first = np.full(len(uniq), -1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)  # last write wins: first occurrence
    return codes, first


def _bgnbd_data(
    x: np.ndarray, tx: np.ndarray, T: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Rows sorted by frequency, with the per-frequency index and weight totals."""
    order = np.argsort(x, kind="stable")
    x, tx, T, w = x[order], tx[order], T[order], w[order]
    xs, xi = np.unique(x, return_inverse=True)
    return xs, xi, x, tx, T, w, np.bincount(xi, weights=w, minlength=xs.size)


def _bgnbd_objective(
    theta: np.ndarray, data: tuple[np.ndarray, ...], penalizer: float
) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood and its gradient in log-parameters.

    Terms that depend on the frequency only are computed per unique frequency and combined
    with per-frequency weight sums, so each row costs a few logs and products.
    """
    xs, xi, x, tx, T, w, wx = data
    r, alpha, a, b = np.exp(theta)
    g1 = special.gammaln(r + xs) - special.gammaln(r) + r * np.log(alpha)
    lb0 = special.betaln(a, b)
    b2 = special.betaln(a, b + xs) - lb0
    with np.errstate(divide="ignore", invalid="ignore"):
        b3 = np.where(xs > 0, special.betaln(a + 1, b + np.maximum(xs - 1, 0)) - lb0, -np.inf)
    psi_rx = special.digamma(r + xs)
    psi_abx = special.digamma(a + b + xs)
    psi_bx = special.digamma(b + xs)
    psi_ab, psi_a, psi_b, psi_a1 = special.digamma([a + b, a, b, a + 1])
    psi_bx1 = np.where(xs > 0, psi_bx - 1.0 / np.maximum(b + xs - 1, 1e-300), 0.0)

    la_T = np.log(alpha + T)
    la_tx = np.log(alpha + tx)
    rx = r + x
    B = np.stack([b2, b3])[:, xi]
    A2 = B[0] - rx * la_T
    A3 = B[1] - rx * la_tx
    lse = np.logaddexp(A2, A3)
    w2 = np.exp(A2 - lse)
    ww2 = w * w2
    ww3 = w - ww2
    s2 = np.bincount(xi, weights=ww2, minlength=xs.size)  # per-frequency weight of term 2
    s3 = wx - s2
    ll = g1 @ wx + w @ lse
    d_r = (psi_rx - special.digamma(r) + np.log(alpha)) @ wx - ww2 @ la_T - ww3 @ la_tx
    d_alpha = (
        r / alpha * wx.sum() - (ww2 * rx) @ (1.0 / (alpha + T)) - (ww3 * rx) @ (1.0 / (alpha + tx))
    )
    d_a = (psi_ab - psi_abx) @ wx + (psi_a1 - psi_a) * s3.sum()
    d_b = (psi_bx - psi_abx - psi_b + psi_ab) @ s2 + (psi_bx1 - psi_abx - psi_b + psi_ab) @ s3
    grad = -np.array([d_r * r, d_alpha * alpha, d_a * a, d_b * b])
    f = -ll + penalizer * np.sum(theta**2)
    return f, grad + 2.0 * penalizer * theta


def _p_alive(
    x: np.ndarray, tx: np.ndarray, T: np.ndarray, r: float, alpha: float, a: float, b: float
) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = (
            np.log(a)
            - np.log(np.maximum(b + x - 1.0, 1e-300))
            + (r + x) * (np.log(alpha + T) - np.log(alpha + tx))
        )
    lr = np.where(x > 0, lr, -np.inf)
    return special.expit(-lr)


def _expectation_unique(
    ts: np.ndarray, x: np.ndarray, T: np.ndarray, r: float, alpha: float, a: float, b: float
) -> np.ndarray:
    """bgnbd_expectation_factor on unique (x, T) pairs, scattered back to rows."""
    if x.size == 0:
        return np.empty((0, ts.size))
    codes, first = _row_codes(x, T)
    vals = bgnbd_expectation_factor(ts, x[first], T[first], r, alpha, a, b)
    return vals[codes]


# --------------------------------------------------------------------------------------------
# Gamma-Gamma

# Per-row arrays of the Gamma-Gamma likelihood and its parameter-free sums (`_gg_data`).
_GgData = tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]
]


class GammaGammaModel(BaseEstimator):
    """Gamma-Gamma spend model (Fader & Hardie 2013) on repeat buyers.

    Fit on clients with frequency > 0 and monetary_value > 0 (mean spend per repeat
    purchase). q > 1 is required for a finite population mean spend (used for clients
    without repeat purchases); a fit with q <= 1 raises ConvergenceError.

    Parameters
    ----------
    penalizer : float, default=0.0
        Adds penalizer * sum(log(param)^2) (money in scaled units) to the mean negative
        log-likelihood; >= 0 (checked by `CltvModel`, whose parameter it is).
    max_iter : int, default=2000
        L-BFGS-B iterations per start.

    Attributes
    ----------
    p_, q_, v_ : float
        The fitted parameters; v in the money unit of the input.
    params_ : dict of str to float
        The same as p, q, v.
    population_mean_ : float
        Mean spend per purchase of the population, p v / (q - 1).
    log_likelihood_ : float
        Log-likelihood of the fit, in the money unit of the input.
    money_scale_ : float
        The rescaling of money the optimizer worked with.
    n_clients_ : float
        Total weight (repeat buyers with spend) fit on.
    """

    def __init__(self, penalizer: float = 0.0, max_iter: int = 2000):
        self.penalizer = penalizer
        self.max_iter = max_iter

    def fit(
        self,
        frequency: ArrayLike,
        monetary_value: ArrayLike,
        weights: ArrayLike | None = None,
    ) -> GammaGammaModel:
        """Maximum-likelihood fit on the rows with frequency > 0 and monetary_value > 0.

        Parameters
        ----------
        frequency, monetary_value : array-like of float
            Per client: repeat purchases, mean spend per repeat purchase (>= 0).
        weights : array-like of float or None, default=None
            Per client weight; None: 1 each.

        Returns
        -------
        GammaGammaModel
            self, fitted.

        Raises
        ------
        ConvergenceError
            Fewer than 2 repeat buyers with spend, no valid optimum, or q <= 1.
        """
        x = np.asarray(frequency, dtype=float).ravel()
        mv = np.asarray(monetary_value, dtype=float).ravel()
        w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float).ravel()
        if not (x.size == mv.size == w.size):
            raise ValueError("frequency, monetary_value and weights must have the same length")
        if np.any(~np.isfinite(x)) or np.any(~np.isfinite(mv)):
            raise ValueError("frequency or monetary_value has missing or infinite values")
        if np.any(mv < 0) or np.any(x < 0):
            raise ValueError("frequency and monetary_value must be >= 0")
        keep = (x > 0) & (mv > 0) & (w > 0)
        if keep.sum() < 2:
            raise ConvergenceError("Gamma-Gamma needs at least 2 repeat buyers with spend > 0")
        x, mv, w = x[keep], mv[keep], w[keep]
        x, mv, w = _compress(w, x, mv)
        scale = float(np.average(mv, weights=w))
        data = _gg_data(x, mv / scale, w / w.sum())
        starts = [np.zeros(3), np.log([2.0, 3.0, 2.0]), np.log([0.5, 2.0, 1.0])]
        theta = _minimize(_gg_objective, starts, data, self.penalizer, self.max_iter, "Gamma-Gamma")
        p, q, v = np.exp(theta)
        ll_scaled = -_gg_objective(theta, data, 0.0)[0] * w.sum()
        self.log_likelihood_ = float(ll_scaled - w.sum() * np.log(scale))
        self.p_, self.q_, self.v_ = float(p), float(q), float(v * scale)
        self.money_scale_ = scale
        self.n_clients_ = float(w.sum())
        if self.q_ <= 1.0:
            raise ConvergenceError(
                f"Gamma-Gamma fit gives q={self.q_:.3g} <= 1: mean spend is not finite; "
                "use a penalizer or more data"
            )
        return self

    @property
    def params_(self) -> dict[str, float]:
        """p, q, v."""
        check_is_fitted(self, "p_")
        return {"p": self.p_, "q": self.q_, "v": self.v_}

    @property
    def population_mean_(self) -> float:
        """Mean spend per purchase of the population: p v / (q - 1)."""
        check_is_fitted(self, "p_")
        return self.p_ * self.v_ / (self.q_ - 1.0)

    def conditional_expected_average_value(
        self, frequency: ArrayLike, monetary_value: ArrayLike
    ) -> np.ndarray:
        """E[spend per purchase | x, mean spend] per client; the population mean for x = 0.

        Returns
        -------
        ndarray of float
            One value per client.
        """
        check_is_fitted(self, "p_")
        x = np.asarray(frequency, dtype=float).ravel()
        mv = np.asarray(monetary_value, dtype=float).ravel()
        if np.any(~np.isfinite(mv)) or np.any(mv < 0):
            raise ValueError("monetary_value must be finite and >= 0")
        mv = np.where(x > 0, mv, 0.0)
        p, q = self.p_, self.q_
        den = p * x + q - 1.0
        wgt = (q - 1.0) / den  # weight of the population mean, in (0, 1]
        return wgt * self.population_mean_ + (1.0 - wgt) * mv


class MeanSpendModel(BaseEstimator):
    """The spend model when Gamma-Gamma cannot be fitted: every client is expected to spend
    the population's mean spend per repeat purchase (NaN when no client has any spend, e.g.
    events without amounts: the value is then unknown, not zero).

    What `CltvModel` falls back to, so that alive-ness and expected purchases (BG/NBD) are
    still scored when spend cannot be modelled: fewer than 2 repeat buyers with spend, or a
    fit whose mean spend is not finite. Same interface as `GammaGammaModel`.

    Attributes
    ----------
    population_mean_ : float
        Mean spend per repeat purchase over the repeat buyers with spend (weighted), or NaN.
    params_ : dict of str to float
        {"mean_spend": population_mean_}.
    log_likelihood_ : float
        NaN (no likelihood).
    n_clients_ : float
        Total weight of the repeat buyers with spend.
    reason_ : str
        Why Gamma-Gamma was not used.
    """

    def __init__(self, reason: str = ""):
        self.reason = reason

    def fit(
        self,
        frequency: ArrayLike,
        monetary_value: ArrayLike,
        weights: ArrayLike | None = None,
    ) -> MeanSpendModel:
        """The weighted mean of monetary_value over the rows with frequency > 0 and
        monetary_value > 0."""
        x = np.asarray(frequency, dtype=float).ravel()
        mv = np.asarray(monetary_value, dtype=float).ravel()
        w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float).ravel()
        keep = (x > 0) & (mv > 0) & (w > 0) & np.isfinite(mv)
        self.n_clients_ = float(w[keep].sum())
        self.population_mean_ = (
            float(np.average(mv[keep], weights=w[keep])) if keep.any() else float("nan")
        )
        self.log_likelihood_ = float("nan")
        self.reason_ = self.reason
        return self

    @property
    def params_(self) -> dict[str, float]:
        check_is_fitted(self, "population_mean_")
        return {"mean_spend": self.population_mean_}

    def conditional_expected_average_value(
        self, frequency: ArrayLike, monetary_value: ArrayLike
    ) -> np.ndarray:
        """The population mean for every client."""
        check_is_fitted(self, "population_mean_")
        return np.full(np.asarray(frequency, dtype=float).size, self.population_mean_)


def _gg_data(x: np.ndarray, m: np.ndarray, w: np.ndarray) -> _GgData:
    """Per-row arrays and the parameter-free sums of the Gamma-Gamma likelihood."""
    xs, xi = np.unique(x, return_inverse=True)
    logm, logx = np.log(m), np.log(x)
    wx = np.bincount(xi, weights=w, minlength=xs.size)
    const = {"wxlogmx": (w * x) @ (logm + logx), "wlogm": w @ logm, "W": w.sum()}
    return xs, x, m, w, w * x, wx, const


def _gg_objective(theta: np.ndarray, data: _GgData, penalizer: float) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood and gradient in log-parameters (sums precomputed)."""
    xs, x, m, w, wxr, wx, c = data
    p, q, v = np.exp(theta)
    vxm = v + x * m
    lvx = np.log(vxm)
    s_lvx_x = wxr @ lvx
    s_lvx = w @ lvx
    g = special.gammaln(p * xs + q) - special.gammaln(p * xs)
    ll = (
        g @ wx
        - c["W"] * (special.gammaln(q) - q * np.log(v))
        + p * c["wxlogmx"]
        - c["wlogm"]
        - p * s_lvx_x
        - q * s_lvx
    )
    psi_pxq = special.digamma(p * xs + q)
    d_p = (xs * (psi_pxq - special.digamma(p * xs))) @ wx + c["wxlogmx"] - s_lvx_x
    d_q = psi_pxq @ wx - c["W"] * (special.digamma(q) - np.log(v)) - s_lvx
    inv = 1.0 / vxm
    d_v = c["W"] * q / v - p * (wxr @ inv) - q * (w @ inv)
    grad = -np.array([d_p * p, d_q * q, d_v * v])
    f = -ll + penalizer * np.sum(theta**2)
    return f, grad + 2.0 * penalizer * theta


# --------------------------------------------------------------------------------------------
# optimizer


_Data = TypeVar("_Data")


def _minimize(
    fun: Callable[[np.ndarray, _Data, float], tuple[float, np.ndarray]],
    starts: list[np.ndarray],
    data: _Data,
    penalizer: float,
    max_iter: int,
    name: str,
) -> np.ndarray:
    """L-BFGS-B on log-parameters from several starts; best converged interior optimum."""
    best = None
    reasons = []
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * len(starts[0])
    for x0 in starts:
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            res = optimize.minimize(
                fun,
                x0,
                args=(data, penalizer),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-9, "maxcor": 20},
            )
        ok_vals = np.all(np.isfinite(res.x)) and np.isfinite(res.fun)
        gnorm = float(np.max(np.abs(res.jac))) if ok_vals else np.inf
        at_bound = bool(np.any(np.abs(res.x) >= _LOG_BOUND - 1e-3))
        if not ok_vals or gnorm > 1e-5 or at_bound:
            reasons.append(
                f"start {np.round(np.exp(x0), 3).tolist()}: {res.message!s}, "
                f"gradient {gnorm:.2g}{', parameter at bound' if at_bound else ''}"
            )
            continue
        if best is None or res.fun < best.fun:
            best = res
        if len(reasons) == 0:
            break  # first start converged cleanly
    if best is None:
        raise ConvergenceError(
            f"{name} maximum likelihood did not converge ({'; '.join(reasons)}). "
            "The data may have no interior optimum (e.g. no visible dropout): "
            "try a penalizer > 0."
        )
    return best.x
