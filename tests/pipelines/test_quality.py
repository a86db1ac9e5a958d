"""End-to-end quality on generated journeys: persona recovery, response to the shift, stability."""

from datetime import date

import pytest

from features.generator import write_dataset
from pipelines.quality import QualityReport, measure_quality

END = date(2026, 6, 30)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> QualityReport:
    out = tmp_path_factory.mktemp("quality")
    write_dataset(out, clients=4000, days=365, end=END, seed=7)
    return measure_quality(out)


@pytest.mark.slow
def test_shifted_clients_change_segment_far_more_often(report):
    # Measured here (4000 clients, seed 7): same model 0.631 vs 0.233 (2.71x), refit 0.630 vs
    # 0.235 (2.68x); 20000 clients, seeds 7 and 11: 2.94-3.00x (README, "Segment quality").
    # Before client-initiated recency and the gone_quiet rule: 0.372 vs 0.174 (2.13x).
    for label, rates in (("same model", report.change_predict), ("refit", report.change_refit)):
        assert rates["shifted"] >= 2.4 * rates["unshifted"], (
            f"{label}: shifted {rates['shifted']:.3f} vs unshifted {rates['unshifted']:.3f}"
        )


@pytest.mark.slow
def test_a_lapse_moves_clients_out_of_their_segment(report):
    # Clients active at the shift whose own actions stop then (the brand keeps writing): the
    # share out of their segment 60 days later. Measured 0.80-0.83 (seeds 3, 7; 4000 and 6000
    # clients); 0.12 when ads and emails counted as activity.
    for label, moved in report.lapse_moved.items():
        assert moved >= 0.7, f"{label}: {moved:.3f}"


@pytest.mark.slow
def test_refit_a_week_later_keeps_unshifted_clients_in_their_segment(report):
    # measured 0.947 here, 0.954-0.955 at 20000 clients (0.90-0.92 without sticky assignment)
    assert report.refit_stability_unshifted >= 0.92, report.refit_stability_unshifted


@pytest.mark.slow
def test_segments_are_never_all_noise(report):
    assert report.n_clusters >= 2
    assert report.noise_share <= 0.3  # clustering.max_noise_share


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured segments ARI 0.38-0.39, clusters alone 0.54-0.55 (4000-20000 clients, seeds "
    "7/11): the default business rules split personas on purpose (gone_quiet alone takes about "
    "a quarter of the clients), and dropped-out clients of every persona look alike; persona "
    "recovery is judged on cluster_id",
)
def test_segments_recover_personas_before_the_shift(report):
    assert report.ari_segments >= 0.6, (report.ari_segments, report.ari_clusters)


@pytest.mark.slow
def test_the_persona_ceiling_with_the_rules_is_reported(report):
    # The true personas in place of the clusters, under the same rule overrides: what any
    # clustering could reach at best on this measure.
    assert report.ari_segments < report.extra["ari_personas_with_rules"] <= 1.0
