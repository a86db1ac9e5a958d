"""The refit policy and the quality gates, on hand-made champions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from configs import config_from_mapping
from pipelines.steps import (
    ClusterBundle,
    btyd_inputs,
    decide_refit,
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

    def predict(self, X, previous=None):
        noise = np.arange(len(X)) < round(self.noise * len(X))
        return pd.DataFrame({"client_id": X["client_id"].to_numpy(), "is_noise": noise})


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
    scores = score_clients(CltvBundle(model, {}, date(1997, 9, 30)), btyd, CONFIG, "7")
    assert scores["client_id"].tolist() == btyd.index.tolist()
    assert scores["cltv_percentile"].between(0, 1).all()
    assert scores["cltv_percentile"].max() == 1.0
    ranked = scores.sort_values("predicted_cltv")
    assert ranked["cltv_percentile"].is_monotonic_increasing
    assert (scores["model_version"] == "7").all()
    assert score_clients(None, btyd, CONFIG, "none").empty
