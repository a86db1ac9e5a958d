"""The nightly steps on hand-made champions and fits: the refit decision measured on features,
the quality gates, the model choices wired to registration, and the small data steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from configs import config_from_mapping
from models.btyd import ConvergenceError
from pipelines import steps
from pipelines.policy import Candidate, Promotion, RefitDecision
from pipelines.steps import (
    Champions,
    CltvBundle,
    ClusterBundle,
    Registration,
    btyd_inputs,
    choose_cltv_model,
    choose_cluster_model,
    decide_refit,
    load_champions,
    quality_gate_failures,
    stability_against,
)
from segmentation.drift import fit_reference

CONFIG = config_from_mapping({"refit": {"every_days": 7, "max_psi": 0.25, "max_noise_share": 0.4}})


@dataclass
class FakeModel:
    """Stands in for a fitted ClusterModel: a fixed noise share and metrics."""

    noise: float
    metrics_: dict
    sample_ids_: np.ndarray | None = field(default_factory=lambda: np.array(["c0", "c1"]))
    profiles_: dict = field(default_factory=dict)

    def predict(self, X, previous=None):
        noise = np.arange(len(X)) < round(self.noise * len(X))
        return pd.DataFrame({"client_id": X["client_id"].to_numpy(), "is_noise": noise})


class UnmeasurableModel(FakeModel):
    """A champion that must not be measured: predicting fails the test."""

    def predict(self, X, previous=None):
        raise AssertionError("the champion was measured although the decision did not need it")


@dataclass
class FakeCltvModel:
    params_: dict = field(default_factory=lambda: {"r": 0.24, "alpha": 4.4})


class FakeRegistry:
    """Records what is registered and hands out increasing version numbers."""

    def __init__(self, champions=None):
        self.registered: list[tuple] = []
        self.champions = champions or {}

    def register(self, name, obj, run_id, *, metrics=None, tags=None):
        self.registered.append((name, obj, run_id, dict(metrics or {}), dict(tags or {})))
        return len(self.registered) + 10

    def load_champion(self, name):
        return self.champions.get(name)


def _features(n=2000, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "client_id": [f"c{i}" for i in range(n)],
            "total_spend": rng.lognormal(3 + shift, 1, n),
            "events_90d": rng.poisson(10, n).astype(float),
        }
    )


def _champion(noise=0.1, fitted=date(2025, 1, 10), metrics=None):
    reference = fit_reference(_features(), ["total_spend", "events_90d"])
    return ClusterBundle(FakeModel(noise, metrics or {}), reference, fitted, "digest")


def test_no_champion_and_forced_refit():
    assert decide_refit(None, _features(), date(2025, 1, 11), CONFIG).reason == "no champion model"
    assert decide_refit(_champion(), _features(), date(2025, 1, 11), CONFIG, force=True).refit


def test_fresh_champion_is_kept_and_figures_are_reported():
    decision = decide_refit(_champion(), _features(seed=1), date(2025, 1, 12), CONFIG)
    assert not decision.refit
    assert decision.age_days == 2
    assert decision.max_psi < 0.05
    assert decision.metrics()["refit"] == 0.0


def test_weekly_refit_by_age():
    decision = decide_refit(_champion(), _features(seed=1), date(2025, 1, 17), CONFIG)
    assert decision.refit and decision.reason.startswith("scheduled")


def test_drift_triggers_refit_naming_the_feature():
    decision = decide_refit(_champion(), _features(shift=1.5, seed=1), date(2025, 1, 12), CONFIG)
    assert decision.refit
    assert decision.drifted_features == ("total_spend",)


def test_high_noise_share_triggers_refit():
    decision = decide_refit(_champion(noise=0.6), _features(seed=1), date(2025, 1, 12), CONFIG)
    assert decision.refit and "noise share" in decision.reason


def test_champion_fitted_after_the_as_of_date_is_not_used():
    decision = decide_refit(_champion(), _features(), date(2025, 1, 5), CONFIG)
    assert decision.refit and "after this as-of" in decision.reason


def test_quality_gates_name_what_fails():
    good = _champion(metrics={"n_clusters": 5, "noise_share": 0.2, "quality": 0.3})
    assert quality_gate_failures(good, CONFIG) == []
    bad = _champion(metrics={"n_clusters": 1, "noise_share": 0.7, "quality": 0.3})
    failures = quality_gate_failures(bad, CONFIG)
    assert any("n_clusters" in f for f in failures)
    assert any("noise_share" in f for f in failures)


def test_a_champion_is_not_measured_when_the_decision_does_not_need_it():
    champion = ClusterBundle(
        UnmeasurableModel(0.1, {}), _champion().reference, date(2025, 1, 10), "digest"
    )
    forced = decide_refit(champion, _features(), date(2025, 1, 11), CONFIG, force=True)
    future = decide_refit(champion, _features(), date(2025, 1, 5), CONFIG)
    assert (forced.reason, future.age_days) == ("forced", -5)


def _registration():
    return Registration(FakeRegistry(), "mlflow-run-1")


def _refit_with(monkeypatch, metrics):
    """Make `fit_clusters` return a refit with these metrics; returns the list of its calls."""
    calls = []

    def fit(features, as_of, config, previous, previous_membership=None):
        calls.append(previous)
        return _champion(fitted=as_of, metrics=metrics)

    monkeypatch.setattr(steps, "fit_clusters", fit)
    return calls


def test_a_fresh_champion_clustering_is_not_refit(monkeypatch):
    calls = _refit_with(monkeypatch, {})
    champion = Candidate(_champion(), 3)
    registration = _registration()
    choice = choose_cluster_model(
        _features(),
        date(2025, 1, 12),
        CONFIG,
        champion,
        RefitDecision(False, "fresh"),
        None,
        registration,
    )
    assert (choice.bundle, choice.version, choice.promotion) == (champion.bundle, "3", None)
    assert calls == [] and registration.registry.registered == []


def test_a_refit_failing_the_gates_is_registered_with_them_and_the_champion_kept(monkeypatch):
    _refit_with(monkeypatch, {"n_clusters": 1, "noise_share": 0.7, "algorithm": "hdbscan"})
    champion = Candidate(_champion(), 3)
    registration = _registration()
    choice = choose_cluster_model(
        _features(),
        date(2025, 1, 12),
        CONFIG,
        champion,
        RefitDecision(True, "forced"),
        None,
        registration,
    )
    assert (choice.bundle, choice.version, choice.promotion) == (champion.bundle, "3", None)
    [(name, registered, run_id, metrics, tags)] = registration.registry.registered
    assert (name, run_id) == (CONFIG.mlflow.cluster_model_name, "mlflow-run-1")
    assert metrics == {"n_clusters": 1.0, "noise_share": 0.7}
    assert tags == {
        "as_of": "2025-01-12",
        "gates": "n_clusters 1 < 2; noise_share 0.7 > 0.4",
        "refit_reason": "forced",
    }
    assert registered.model.sample_ids_ is None  # no client ids in MLflow
    assert choice.metrics["cluster_gates_failed"] == 2.0


def test_a_refit_passing_the_gates_serves_and_awaits_promotion(monkeypatch):
    calls = _refit_with(monkeypatch, {"n_clusters": 4, "noise_share": 0.1, "quality": 0.3})
    champion = Candidate(_champion(), 3)
    choice = choose_cluster_model(
        _features(),
        date(2025, 1, 12),
        CONFIG,
        champion,
        RefitDecision(True, "forced"),
        None,
        _registration(),
    )
    assert calls == [champion.bundle]  # the champion's segment ids are carried over
    assert choice.bundle.fitted_as_of == date(2025, 1, 12)
    assert choice.bundle.model.sample_ids_ is not None  # only the registered copy is cleaned
    assert choice.version == "11"
    assert choice.promotion == Promotion(CONFIG.mlflow.cluster_model_name, 11)
    assert choice.metrics["cluster_quality"] == 0.3


def _cltv_bundle(fitted=date(2025, 1, 10)):
    return CltvBundle(FakeCltvModel(), {"spend_mae": 3.0}, fitted)


def test_a_cltv_refit_is_registered_with_its_backtest(monkeypatch):
    monkeypatch.setattr(steps, "fit_cltv", lambda con, as_of, btyd, config: _cltv_bundle(as_of))
    registration = _registration()
    choice = choose_cltv_model(None, date(2025, 1, 12), None, CONFIG, None, False, registration)
    [(name, _, _, metrics, tags)] = registration.registry.registered
    assert (name, metrics, tags) == (
        CONFIG.mlflow.cltv_model_name,
        {"spend_mae": 3.0},
        {"as_of": "2025-01-12"},
    )
    assert choice.metrics == {"backtest.spend_mae": 3.0, "cltv.r": 0.24, "cltv.alpha": 4.4}
    assert choice.promotion == Promotion(CONFIG.mlflow.cltv_model_name, 11)


def test_a_cltv_refit_that_does_not_converge_keeps_the_champion(monkeypatch):
    def fail(con, as_of, btyd, config):
        raise ConvergenceError("no interior optimum")

    monkeypatch.setattr(steps, "fit_cltv", fail)
    champion = Candidate(_cltv_bundle(), 3, {"backtest.spend_mae": 3.0})
    registration = _registration()
    choice = choose_cltv_model(None, date(2025, 1, 12), None, CONFIG, champion, True, registration)
    assert (choice.bundle, choice.version) == (champion.bundle, "3")
    assert choice.metrics == {"cltv_refit_failed": 1.0}
    assert registration.registry.registered == []


def test_champions_come_from_the_registry_with_the_cltv_backtest():
    clusters, cltv = _champion(), _cltv_bundle()
    registry = FakeRegistry(
        {
            CONFIG.mlflow.cluster_model_name: (clusters, 2),
            CONFIG.mlflow.cltv_model_name: (cltv, 5),
        }
    )
    champions = load_champions(registry, CONFIG)
    assert champions.clusters == Candidate(clusters, 2)
    assert champions.cltv == Candidate(cltv, 5, {"backtest.spend_mae": 3.0})
    assert load_champions(FakeRegistry(), CONFIG) == Champions()
    assert load_champions(None, CONFIG) == Champions()


def test_btyd_inputs_are_whole_days_and_zero_for_non_buyers():
    features = pd.DataFrame(
        {
            "client_id": ["a", "b"],
            "frequency": [2.0, 0.0],
            "recency": [10.7, np.nan],
            "T": [30.2, np.nan],
            "monetary_value": [12.5, np.nan],
        }
    )
    btyd = btyd_inputs(features)
    assert btyd.loc["a"].tolist() == [2.0, 10.0, 30.0, 12.5]
    assert btyd.loc["b"].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_stability_is_the_share_keeping_their_segment():
    prev = pd.DataFrame({"client_id": ["a", "b", "c"], "segment_id": ["x", "y", "y"]})
    cur = pd.DataFrame({"client_id": ["a", "b", "d"], "segment_id": ["x", "x", "y"]})
    assert stability_against(prev, cur) == 0.5
    assert stability_against(None, cur) is None


def test_scores_carry_a_cltv_percentile_that_ranks_predicted_cltv():
    from pathlib import Path

    from models.cltv import CltvModel
    from pipelines.steps import CltvBundle, score_clients

    cdnow = pd.read_csv(
        Path(__file__).parents[1] / "data" / "cdnow_customers_summary_with_transactions.csv"
    )
    btyd = pd.DataFrame(
        {
            "frequency": cdnow["x"].to_numpy(dtype=float),
            "recency": np.floor(cdnow["t_x"].to_numpy() * 7),
            "T": np.floor(cdnow["T"].to_numpy() * 7),
            "monetary_value": cdnow["zbar"].to_numpy(dtype=float),
        },
        index=cdnow["ID"].astype(str).rename("client_id"),
    )
    model = CltvModel(horizon_days=365).fit(btyd)
    features = btyd.reset_index().assign(has_purchased=1)
    scores = score_clients(CltvBundle(model, {}, date(1997, 9, 30)), features, CONFIG, "7")
    assert scores["client_id"].tolist() == btyd.index.tolist()
    assert (scores["cltv_model"] == "btyd").all()  # a bundle without learned models
    assert scores["cltv_percentile"].between(0, 1).all()
    assert scores["cltv_percentile"].max() == 1.0
    ranked = scores.sort_values("predicted_cltv")
    assert ranked["cltv_percentile"].is_monotonic_increasing
    assert (scores["model_version"] == "7").all()
    assert score_clients(None, features, CONFIG, "none").empty
