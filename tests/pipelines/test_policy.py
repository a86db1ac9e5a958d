"""The nightly run's decisions (pipelines.policy) on hand-made dataclasses: no Prefect, MLflow,
database or data frames, so each test runs in milliseconds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pytest

from configs import RefitConfig
from pipelines.policy import (
    Candidate,
    ChampionFit,
    ClusterQuality,
    ModelChoice,
    Promotion,
    RefitDecision,
    choose_cltv,
    choose_clusters,
    cltv_refit_needed,
    cluster_refit_needed,
    gate_failures,
    needs_champion_fit,
    noise_allowance,
    promotions,
    refit_decision,
)

RULES = RefitConfig(
    every_days=7,
    max_psi=0.25,
    max_noise_share=0.4,
    min_clusters=2,
    min_quality=0.1,
    min_stability=0.5,
)
TONIGHT = date(2025, 1, 12)
CHAMPION_FITTED = date(2025, 1, 10)
CALM = ChampionFit(psi={"total_spend": 0.01, "events_90d": 0.02}, noise_share=0.1)


@dataclass(frozen=True)
class FakeBundle:
    """Stands in for a ClusterBundle or CltvBundle: a name and the as-of date it was fit on."""

    name: str
    fitted_as_of: date = CHAMPION_FITTED


def _champion(fitted: date = CHAMPION_FITTED, **metrics: float) -> Candidate[FakeBundle]:
    return Candidate(FakeBundle("champion", fitted), 3, metrics)


def _refit(version: int | None = 4, **metrics: float) -> Candidate[FakeBundle]:
    return Candidate(FakeBundle("refit", TONIGHT), version, metrics)


# -- the refit decision -----------------------------------------------------------------------


def test_forced_refit_needs_no_measurement_of_the_champion():
    assert not needs_champion_fit(TONIGHT, CHAMPION_FITTED, force=True)
    decision = refit_decision(TONIGHT, CHAMPION_FITTED, None, RULES, force=True)
    assert decision == RefitDecision(True, "forced")
    assert decision.metrics() == {"refit": 1.0}


def test_no_champion_means_a_refit():
    assert not needs_champion_fit(TONIGHT, None)
    assert refit_decision(TONIGHT, None, None, RULES) == RefitDecision(True, "no champion model")


def test_a_champion_fitted_after_the_as_of_date_is_never_reused():
    fitted_later = date(2025, 1, 20)
    assert not needs_champion_fit(TONIGHT, fitted_later)
    decision = refit_decision(TONIGHT, fitted_later, CALM, RULES)
    assert decision.refit
    assert decision.reason == "champion was fitted after this as-of date"
    assert decision.age_days == -8


def test_a_reusable_champion_is_judged_on_its_fit_and_needs_one():
    assert needs_champion_fit(TONIGHT, CHAMPION_FITTED)
    assert needs_champion_fit(TONIGHT, TONIGHT)  # fitted on tonight's data: may be reused
    with pytest.raises(ValueError, match="needs its fit"):
        refit_decision(TONIGHT, CHAMPION_FITTED, None, RULES)


def test_a_fresh_champion_that_fits_is_kept_with_its_figures():
    decision = refit_decision(TONIGHT, CHAMPION_FITTED, CALM, RULES)
    assert not decision.refit
    assert decision.reason == "champion is fresh and fits"
    assert decision.metrics() == {
        "refit": 0.0,
        "champion_age_days": 2.0,
        "max_psi": 0.02,
        "champion_noise_share": 0.1,
    }


def test_scheduled_refit_at_the_configured_age():
    six_days = refit_decision(date(2025, 1, 16), CHAMPION_FITTED, CALM, RULES)
    seven_days = refit_decision(date(2025, 1, 17), CHAMPION_FITTED, CALM, RULES)
    assert not six_days.refit
    assert seven_days.refit
    assert seven_days.reason == "scheduled: champion is 7 days old"
    assert seven_days.age_days == 7


def test_drift_triggers_a_refit_naming_the_drifted_features_in_order():
    fit = ChampionFit(psi={"total_spend": 0.9123456, "events_90d": 0.3, "a": 0.1}, noise_share=0.1)
    decision = refit_decision(TONIGHT, CHAMPION_FITTED, fit, RULES)
    assert decision.refit
    assert decision.reason == "feature drift: PSI > 0.25 on events_90d, total_spend"
    assert decision.drifted_features == ("events_90d", "total_spend")
    assert decision.max_psi == 0.9123


def test_the_schedule_wins_over_drift():
    fit = ChampionFit(psi={"total_spend": 0.9}, noise_share=0.9)
    decision = refit_decision(date(2025, 1, 20), CHAMPION_FITTED, fit, RULES)
    assert decision.reason.startswith("scheduled")
    assert decision.drifted_features == ()


def test_a_high_noise_share_triggers_a_refit():
    fit = ChampionFit(psi={"total_spend": 0.01}, noise_share=0.6)
    decision = refit_decision(TONIGHT, CHAMPION_FITTED, fit, RULES)
    assert decision.refit
    assert decision.reason == "noise share 0.60 above 0.4"
    assert decision.champion_noise_share == 0.6


# -- the quality gates ------------------------------------------------------------------------

GOOD = ClusterQuality(n_clusters=5, noise_share=0.2, quality=0.3, stability=0.8)


def test_a_good_fit_passes_every_gate():
    assert gate_failures(GOOD, RULES) == []


def test_too_few_clusters_fail():
    assert gate_failures(ClusterQuality(1, 0.2, 0.3, 0.8), RULES) == ["n_clusters 1 < 2"]
    assert gate_failures(ClusterQuality(None, 0.2), RULES) == ["n_clusters None < 2"]


def test_too_much_noise_fails():
    assert gate_failures(ClusterQuality(5, 0.7, 0.3, 0.8), RULES) == ["noise_share 0.7 > 0.4"]
    assert gate_failures(ClusterQuality(5, None), RULES) == ["noise_share None > 0.4"]


def test_low_quality_fails_and_an_unmeasured_quality_passes():
    assert gate_failures(ClusterQuality(5, 0.2, 0.05, 0.8), RULES) == ["quality 0.050 < 0.1"]
    assert gate_failures(ClusterQuality(5, 0.2, math.nan, 0.8), RULES) == []
    assert gate_failures(ClusterQuality(5, 0.2, None, 0.8), RULES) == []


def test_low_stability_fails_and_a_first_fit_passes():
    assert gate_failures(ClusterQuality(5, 0.2, 0.3, 0.25), RULES) == ["stability 0.250 < 0.5"]
    assert gate_failures(ClusterQuality(5, 0.2, 0.3, None), RULES) == []


def test_every_failing_gate_is_named():
    failures = gate_failures(ClusterQuality(1, 0.9, 0.0, 0.1), RULES)
    assert [f.split()[0] for f in failures] == ["n_clusters", "noise_share", "quality", "stability"]


def test_published_noise_and_tiny_segments_fail_their_gates():
    attached = ClusterQuality(4, 0.2, published_noise_share=0.0, smallest_segment_share=0.03)
    assert gate_failures(attached, RULES, min_segment_share=0.01) == []
    unattached = ClusterQuality(4, 0.2, published_noise_share=0.2, smallest_segment_share=0.03)
    assert gate_failures(unattached, RULES, 0.01) == ["published noise share 0.2 > 0.05"]
    tiny = ClusterQuality(4, 0.2, published_noise_share=0.0, smallest_segment_share=0.004)
    assert gate_failures(tiny, RULES, 0.01) == ["smallest segment share 0.0040 < 0.01"]
    # a looser configuration passes what it allows
    loose = RULES.model_copy(update={"max_published_noise_share": 0.25})
    assert gate_failures(unattached, loose, 0.01) == []


def test_gate_figures_come_from_the_model_metrics():
    metrics = {
        "n_clusters": np.int64(4),
        "noise_share": np.float32(0.25),
        "quality": None,
        "degenerate": False,
        "algorithm": "hdbscan",
        "sizes": {"C001": 10},
    }
    quality = ClusterQuality.from_metrics(metrics)
    assert quality == ClusterQuality(n_clusters=4, noise_share=0.25, quality=None, stability=None)
    metrics |= {"published_noise_share": 0.0, "smallest_segment_share": np.float64(0.02)}
    quality = ClusterQuality.from_metrics(metrics)
    assert (quality.published_noise_share, quality.smallest_segment_share) == (0.0, 0.02)
    assert ClusterQuality.from_metrics({}) == ClusterQuality(None, None)


# -- the CLTV model: champion or refit --------------------------------------------------------


def test_a_usable_champion_serves_without_a_refit():
    champion = _champion(**{"backtest.spend_mae": 12.0})
    assert not cltv_refit_needed(champion, TONIGHT, refit_clusters=False)
    choice = choose_cltv(champion, None, as_of=TONIGHT, refit_clusters=False, model_name="cltv")
    assert choice == ModelChoice(champion.bundle, "3", {"backtest.spend_mae": 12.0})


def test_the_cltv_model_is_refit_with_the_clustering_or_without_a_usable_champion():
    assert cltv_refit_needed(_champion(), TONIGHT, refit_clusters=True)
    assert cltv_refit_needed(None, TONIGHT, refit_clusters=False)
    assert cltv_refit_needed(_champion(date(2025, 2, 1)), TONIGHT, refit_clusters=False)


def test_a_registered_refit_serves_and_is_promoted():
    refit = _refit(4, **{"cltv.r": 0.24})
    choice = choose_cltv(_champion(), refit, as_of=TONIGHT, refit_clusters=True, model_name="cltv")
    assert choice.bundle is refit.bundle
    assert choice.version == "4"
    assert choice.metrics == {"cltv.r": 0.24}
    assert choice.promotion == Promotion("cltv", 4)


def test_an_unregistered_refit_serves_without_a_promotion():
    choice = choose_cltv(None, _refit(None), as_of=TONIGHT, refit_clusters=False, model_name="c")
    assert (choice.version, choice.promotion) == ("unregistered", None)


def test_a_refit_that_does_not_converge_keeps_the_champion():
    champion = _champion(**{"backtest.spend_mae": 12.0})
    choice = choose_cltv(champion, None, as_of=TONIGHT, refit_clusters=True, model_name="cltv")
    assert choice == ModelChoice(champion.bundle, "3", {"cltv_refit_failed": 1.0})


def test_a_refit_that_does_not_converge_without_a_champion_leaves_no_model():
    for champion in (None, _champion(date(2025, 2, 1))):  # none, or one from the future
        choice = choose_cltv(champion, None, as_of=TONIGHT, refit_clusters=False, model_name="c")
        assert choice == ModelChoice(None, "none", {"cltv_refit_failed": 1.0})


# -- the clustering: champion, refit, gates ---------------------------------------------------


def test_the_clustering_is_refit_when_decided_or_without_a_champion():
    keep, refit = RefitDecision(False, "fresh"), RefitDecision(True, "forced")
    assert not cluster_refit_needed(keep, _champion())
    assert cluster_refit_needed(refit, _champion())
    assert cluster_refit_needed(keep, None)


def test_without_a_refit_the_champion_serves():
    champion = _champion()
    choice = choose_clusters(champion, None, [], as_of=TONIGHT, model_name="clusters")
    assert choice == ModelChoice(champion.bundle, "3", {"cluster_refit": 0.0})


def test_without_a_refit_or_a_champion_there_is_nothing_to_serve():
    with pytest.raises(ValueError, match="neither a champion nor a refit"):
        choose_clusters(None, None, [], as_of=TONIGHT, model_name="clusters")


def test_a_refit_passing_the_gates_serves_and_is_promoted():
    refit = _refit(5, **{"cluster.quality": 0.3})
    choice = choose_clusters(_champion(), refit, [], as_of=TONIGHT, model_name="clusters")
    assert choice.bundle is refit.bundle
    assert choice.version == "5"
    assert choice.promotion == Promotion("clusters", 5)
    assert choice.metrics == {
        "cluster.quality": 0.3,
        "cluster_gates_failed": 0.0,
        "cluster_refit": 1.0,
    }


def test_a_refit_failing_the_gates_keeps_the_champion_and_logs_the_refit():
    champion = _champion()
    failures = ["n_clusters 1 < 2", "noise_share 0.7 > 0.4"]
    choice = choose_clusters(
        champion, _refit(5, noise_share=0.7), failures, as_of=TONIGHT, model_name="c"
    )
    assert choice.bundle is champion.bundle
    assert choice.version == "3"
    assert choice.promotion is None
    assert choice.metrics == {"noise_share": 0.7, "cluster_gates_failed": 2.0, "cluster_refit": 1.0}


def test_a_refit_failing_the_gates_serves_when_the_champion_is_from_the_future():
    champion = _champion(fitted=TONIGHT + timedelta(days=3))
    refit = _refit(5)
    choice = choose_clusters(
        champion, refit, ["noise_share 0.7 > 0.4"], as_of=TONIGHT, model_name="c"
    )
    assert choice.bundle is refit.bundle
    assert choice.version == "5"


def test_a_refit_failing_the_gates_serves_when_there_is_no_champion():
    refit = _refit(1)
    choice = choose_clusters(
        None, refit, ["noise_share 0.7 > 0.4"], as_of=TONIGHT, model_name="clusters"
    )
    assert choice.bundle is refit.bundle
    assert choice.promotion == Promotion("clusters", 1)
    assert choice.metrics["cluster_gates_failed"] == 1.0


def test_an_unregistered_refit_serves_without_a_promotion_of_the_clustering():
    choice = choose_clusters(None, _refit(None), [], as_of=TONIGHT, model_name="clusters")
    assert (choice.version, choice.promotion) == ("unregistered", None)


# -- promotions -------------------------------------------------------------------------------


def test_champions_change_only_after_a_publish_in_order():
    clusters = ModelChoice(FakeBundle("c"), "5", {}, Promotion("clusters", 5))
    kept = ModelChoice(FakeBundle("k"), "3", {})
    cltv = ModelChoice(FakeBundle("v"), "4", {}, Promotion("cltv", 4))
    assert promotions([clusters, kept, cltv], published=False) == []
    assert promotions([clusters, kept, cltv], published=True) == [
        Promotion("clusters", 5),
        Promotion("cltv", 4),
    ]
    assert promotions([kept], published=True) == []


def test_a_config_allowing_more_than_5_percent_noise_is_named():
    from configs import ClusteringConfig

    assert noise_allowance(ClusteringConfig(), RULES) is None
    said = noise_allowance(ClusteringConfig(attach_outliers=False), RULES)
    assert said is not None and "clustering.attach_outliers is false" in said
    loose = RULES.model_copy(update={"max_published_noise_share": 0.2})
    said = noise_allowance(ClusteringConfig(min_confidence=0.3), loose)
    assert said is not None
    assert "min_confidence 0.3" in said and "max_published_noise_share 0.2" in said
