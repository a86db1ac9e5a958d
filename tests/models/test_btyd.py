"""Tests of the BG/NBD and Gamma-Gamma fits, their numerics and the CDNOW published figures."""

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special

from models.btyd import BetaGeoModel, ConvergenceError, GammaGammaModel, bgnbd_expectation_factor

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def cdnow():
    return pd.read_csv(DATA / "cdnow_customers_summary.csv")


@pytest.fixture(scope="module")
def cdnow_spend():
    return pd.read_csv(DATA / "cdnow_customers_summary_with_transactions.csv")


@pytest.fixture(scope="module")
def bg(cdnow):
    return BetaGeoModel().fit(cdnow["frequency"], cdnow["recency"], cdnow["T"])


def test_bgnbd_reproduces_published_cdnow_estimates(bg, cdnow):
    assert len(cdnow) == 2357
    assert bg.r_ == pytest.approx(0.243, abs=6e-4)
    assert bg.alpha_ == pytest.approx(4.414, abs=6e-4)
    assert bg.a_ == pytest.approx(0.793, abs=6e-4)
    assert bg.b_ == pytest.approx(2.426, abs=6e-4)
    assert bg.log_likelihood_ == pytest.approx(-9582.4, abs=0.05)
    assert bg.n_unique_rows_ < len(cdnow)  # identical rows were compressed


def test_bgnbd_conditional_expectation_published_example(bg):
    e = bg.conditional_expected_purchases(39, [2], [30.43], [38.86])
    assert e[0] == pytest.approx(1.226, abs=5e-4)


def test_gamma_gamma_reproduces_published_cdnow_estimates(cdnow_spend):
    gg = GammaGammaModel().fit(cdnow_spend["x"], cdnow_spend["zbar"])
    assert gg.p_ == pytest.approx(6.25, abs=5e-3)
    assert gg.q_ == pytest.approx(3.74, abs=5e-3)
    assert gg.v_ == pytest.approx(15.44, abs=1e-2)
    assert gg.n_clients_ == int((cdnow_spend["x"] > 0).sum())
    # shrinkage between the client's mean and the population mean
    ev = gg.conditional_expected_average_value([0, 1, 50], [0.0, 100.0, 100.0])
    assert ev[0] == pytest.approx(gg.p_ * gg.v_ / (gg.q_ - 1))
    assert ev[0] < ev[1] < ev[2] < 100.0


def test_time_unit_only_rescales_alpha(bg, cdnow):
    days = BetaGeoModel().fit(cdnow["frequency"], 7 * cdnow["recency"], 7 * cdnow["T"])
    assert days.alpha_ == pytest.approx(7 * bg.alpha_, rel=1e-5)
    for k in ("r", "a", "b"):
        assert days.params_[k] == pytest.approx(bg.params_[k], rel=1e-5)
    ll_shift = cdnow["frequency"].sum() * np.log(7)
    assert days.log_likelihood_ == pytest.approx(bg.log_likelihood_ - ll_shift, abs=1e-4)


def test_weights_equal_duplicated_rows(cdnow):
    sub = cdnow.iloc[:400]
    dup = pd.concat([sub, sub.iloc[:100]])
    w = np.ones(len(sub))
    w[:100] = 2
    a = BetaGeoModel().fit(dup["frequency"], dup["recency"], dup["T"])
    b = BetaGeoModel().fit(sub["frequency"], sub["recency"], sub["T"], weights=w)
    for k in a.params_:
        assert a.params_[k] == pytest.approx(b.params_[k], rel=1e-5)


def test_no_dropout_signal_raises_convergence_error_and_penalizer_fixes_it():
    rng = np.random.default_rng(0)
    T = rng.integers(100, 400, 500).astype(float)
    x = np.floor(T / 10)
    tx = T - rng.uniform(0, 1, 500)  # everyone buys steadily up to the end: no dropout seen
    with pytest.raises(ConvergenceError, match="penalizer"):
        BetaGeoModel().fit(x, tx, T)
    m = BetaGeoModel(penalizer=0.01).fit(x, tx, T)
    assert all(np.isfinite(v) and v > 0 for v in m.params_.values())


def test_fit_without_repeat_buyers_raises():
    with pytest.raises(ConvergenceError):
        BetaGeoModel().fit([0, 0], [0, 0], [5, 6])
    with pytest.raises(ConvergenceError):
        GammaGammaModel().fit([0, 3], [0, 10.0])


@pytest.mark.parametrize(
    ("x", "tx", "T", "msg"),
    [
        ([1, -1], [1, 0], [2, 2], "frequency"),
        ([1, 1], [3, 0], [2, 2], "recency must not exceed T"),
        ([1, 1], [np.nan, 0], [2, 2], "recency"),
        ([1.5, 1], [1, 0], [2, 2], "whole numbers"),
    ],
)
def test_bad_input_is_named(x, tx, T, msg):
    with pytest.raises(ValueError, match=msg):
        BetaGeoModel().fit(x, tx, T)


def _reference(m, a, beta, u):
    """E_p[(1-(1+pu)^-m)/p], p ~ Beta(a, beta), by adaptive QAWS quadrature (algebraic weights)."""
    lb = special.betaln(a, beta)

    def f(p):
        return -np.expm1(-m * np.log1p(p * u)) / p if p > 0 else m * u

    edges = [0.0]
    e = min(0.5, 1e-3 / (1.0 + u * m))
    while e < 0.5:
        edges.append(e)
        e *= 10
    edges.append(0.5)
    kw = {"epsabs": 0, "epsrel": 1e-13, "limit": 200}
    g1 = lambda p: np.exp((beta - 1) * np.log1p(-p) - lb) * f(p)  # noqa: E731
    tot = integrate.quad(g1, edges[0], edges[1], weight="alg", wvar=(a - 1, 0), **kw)[0]
    for lo, hi in itertools.pairwise(edges[1:]):
        tot += integrate.quad(lambda p: p ** (a - 1) * g1(p), lo, hi, **kw)[0]
    g2 = lambda p: np.exp((a - 1) * np.log(p) - lb) * f(p)  # noqa: E731
    if beta < 20:
        tot += integrate.quad(g2, 0.5, 1.0, weight="alg", wvar=(0, beta - 1), **kw)[0]
    else:  # the weight (1-p)^(beta-1) is tiny and smooth here: integrate it directly
        g3 = lambda p: g2(p) * np.exp((beta - 1) * np.log1p(-p))  # noqa: E731
        tot += integrate.quad(g3, 0.5, 1.0, **kw)[0]
    return tot


@pytest.mark.parametrize(
    ("r", "alpha", "a", "b", "x", "T", "t"),
    [
        (0.243, 4.414, 0.793, 2.426, 2, 38.86, 39.0),  # CDNOW
        (0.5, 10.0, 0.3, 0.2, 0, 0.0, 365.0),  # a + b < 1, x = 0: 2F1 with c < 0
        (0.5, 10.0, 1.0, 3.0, 0, 5.0, 1e4),  # a = 1: 0/0 in the closed form
        (2.0, 3.0, 0.05, 50.0, 800, 700.0, 365.0),  # large frequency, small a
        (0.02, 0.5, 40.0, 0.03, 5, 10.0, 3650.0),  # tiny r, b; large a
        (1.5, 30.0, 1.7, 2.5, 3000, 730.0, 5000.0),  # very large frequency
        (0.8, 1e-3, 0.5, 1.5, 0, 0.0, 1e5),  # u = t / alpha huge
    ],
)
def test_expectation_matches_high_precision_reference(r, alpha, a, b, x, T, t):
    got = bgnbd_expectation_factor(np.array([t]), np.array([x]), np.array([T]), r, alpha, a, b)
    ref = _reference(r + x, a, b + x, t / (alpha + T))
    assert got[0, 0] == pytest.approx(ref, rel=2e-6)


def test_expectation_closed_form_for_a_above_one():
    # scipy's 2F1 is accurate for these moderate values: the closed form of FHL (2005) eq. 10
    r, alpha, a, b, x, T, t = 0.7, 5.0, 2.5, 4.0, 3, 20.0, 30.0
    z = t / (alpha + T + t)
    c = a + b + x - 1
    closed = c / (a - 1) * (1 - (1 - z) ** (r + x) * special.hyp2f1(r + x, b + x, c, z))
    got = bgnbd_expectation_factor(np.array([t]), np.array([x]), np.array([T]), r, alpha, a, b)
    assert got[0, 0] == pytest.approx(closed, rel=1e-8)


def _model(r, alpha, a, b):
    m = BetaGeoModel()
    m.r_, m.alpha_, m.a_, m.b_ = r, alpha, a, b
    return m


pos = st.floats(min_value=1e-3, max_value=1e3)


@settings(max_examples=60, deadline=None)
@given(
    r=pos,
    alpha=st.floats(min_value=1e-3, max_value=1e5),
    a=pos,
    b=pos,
    x=st.integers(min_value=0, max_value=10_000),
    T=st.floats(min_value=0.0, max_value=1e5),
    frac=st.floats(min_value=0.0, max_value=1.0),
    t=st.floats(min_value=0.0, max_value=1e5),
)
def test_predictions_finite_and_sane_for_extreme_inputs(r, alpha, a, b, x, T, frac, t):
    T = max(T, 1e-3) if x > 0 else T
    tx = frac * T if x > 0 else 0.0
    m = _model(r, alpha, a, b)
    pa = m.p_alive([x], [tx], [T])
    e = m.conditional_expected_purchases(np.array([t / 2, t]), [x], [tx], [T])
    assert np.all(np.isfinite(pa)) and 0.0 <= pa[0] <= 1.0
    assert np.all(np.isfinite(e)) and np.all(e >= 0)
    assert e[0, 0] <= e[0, 1] * (1 + 1e-9) + 1e-12  # non-decreasing in t
    # never more than the no-dropout expectation (r+x) t / (alpha+T) per unit of P(alive)
    assert e[0, 1] <= pa[0] * (r + x) * t / (alpha + T) * (1 + 1e-6) + 1e-12
