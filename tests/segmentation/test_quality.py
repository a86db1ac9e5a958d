"""End-to-end quality on generated journeys: persona recovery, response to the shift, stability."""

from datetime import date

import pytest

from features.generator import write_dataset
from segmentation.quality import QualityReport, measure_quality

END = date(2026, 6, 30)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> QualityReport:
    out = tmp_path_factory.mktemp("quality")
    write_dataset(out, clients=4000, days=365, end=END, seed=7)
    return measure_quality(out)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured (4000 and 20000 clients, seeds 7/11): same model shifted 0.40-0.45 vs "
    "unshifted 0.23-0.25 (1.7-1.8x); clusters alone 0.29 vs 0.15 (2.0x, 4000 seed 7): the rest "
    "is rule churn "
    "of unshifted clients (90-day windows of cart_abandoner, support_risk, vip recency)",
)
def test_shifted_clients_change_segment_far_more_often(report):
    for label, rates in (("same model", report.change_predict), ("refit", report.change_refit)):
        assert rates["shifted"] >= 2 * rates["unshifted"], (
            f"{label}: shifted {rates['shifted']:.3f} vs unshifted {rates['unshifted']:.3f}"
        )


@pytest.mark.slow
def test_refit_a_week_later_keeps_unshifted_clients_in_their_segment(report):
    assert report.refit_stability_unshifted >= 0.8, report.refit_stability_unshifted


@pytest.mark.slow
def test_segments_are_never_all_noise(report):
    assert report.n_clusters >= 2
    assert report.noise_share <= 0.5


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured segments ARI 0.51-0.52, clusters alone 0.59-0.60 (4000 and 20000 clients, "
    "seeds 7/11; k-means fallback, k=6 by the gap rule): rule segments take ~12% of clients "
    "across personas, and dropped-out clients of every persona look alike",
)
def test_segments_recover_personas_before_the_shift(report):
    assert report.ari_segments >= 0.6, (report.ari_segments, report.ari_clusters)
