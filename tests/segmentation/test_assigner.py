"""Tests of the fast assigner: agreement with HDBSCAN's labels, noise semantics, determinism."""

import hdbscan
import numpy as np
import pytest
from sklearn.datasets import make_blobs

from segmentation.assigner import (
    NOISE_CONFIDENCE_MAX,
    CentroidAssigner,
    ClusterGeometry,
    NeighborAssigner,
    hdbscan_geometry,
)
from segmentation.clustering import DEFAULT_FEATURES, build_pipeline
from tests.segmentation.behavioral_data import make_behavioral_frame


def _fit(Z, min_cluster_size=30, min_samples=None, method="eom"):
    fitted = hdbscan.HDBSCAN(
        min_cluster_size=min_cluster_size,
        min_samples=min_samples,
        cluster_selection_method=method,
        prediction_data=True,
    ).fit(Z)
    ms = min_samples or min_cluster_size
    geometry = hdbscan_geometry(Z, fitted.labels_, fitted.condensed_tree_.to_numpy(), ms)
    return fitted, geometry


def _holdout_agreement(Z, labels, geometry, seed=0):
    """Index 80% of the fitted points, predict the other 20%, compare to the fitted labels."""
    perm = np.random.default_rng(seed).permutation(len(Z))
    cut = int(0.8 * len(Z))
    train, test = perm[:cut], perm[cut:]
    sub = ClusterGeometry(
        geometry.core_distances[train],
        geometry.birth_distances,
        geometry.densest_distances,
        geometry.min_samples,
    )
    assigner = NeighborAssigner().fit(Z[train], labels[train], sub, count_scale=cut / len(Z))
    return float(np.mean(assigner.predict(Z[test]) == labels[test]))


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(
        n_samples=3000,
        centers=5,
        n_features=6,
        cluster_std=[0.6, 1.0, 1.4, 0.8, 1.2],
        random_state=3,
    )
    noise = np.random.default_rng(3).uniform(X.min(0), X.max(0), size=(300, 6))
    Z = np.vstack([X, noise])
    fitted, geometry = _fit(Z)
    return Z, fitted, geometry


@pytest.fixture(scope="module")
def behavioral():
    # the production shape: the default behavioral features through the production transform
    frame = make_behavioral_frame(3000, seed=5)
    Z = build_pipeline(DEFAULT_FEATURES).fit_transform(frame)
    fitted, geometry = _fit(Z, min_cluster_size=40)
    return Z, fitted, geometry


def test_geometry_matches_hdbscan_prediction_data(blobs):
    _, fitted, geometry = blobs
    assert np.allclose(geometry.core_distances, fitted.prediction_data_.core_distances)
    assert len(geometry.birth_distances) == fitted.labels_.max() + 1
    assert np.all(geometry.birth_distances > geometry.densest_distances)


def test_holdout_agreement_on_blobs(blobs):
    Z, fitted, geometry = blobs
    assert fitted.labels_.max() + 1 >= 4
    assert (fitted.labels_ == -1).mean() > 0.02  # noise present, so noise semantics are tested
    assert _holdout_agreement(Z, fitted.labels_, geometry) >= 0.97


def test_holdout_agreement_on_behavioral_shape(behavioral):
    Z, fitted, geometry = behavioral
    assert fitted.labels_.max() + 1 >= 4
    assert _holdout_agreement(Z, fitted.labels_, geometry) >= 0.97


def test_agrees_with_approximate_predict_on_new_points(blobs):
    Z, fitted, geometry = blobs
    rng = np.random.default_rng(11)
    new = Z[rng.choice(len(Z), 1000)] + rng.normal(0, 0.3, size=(1000, Z.shape[1]))
    expected, _ = hdbscan.approximate_predict(fitted, new)
    got = NeighborAssigner().fit(Z, fitted.labels_, geometry).predict(new)
    assert np.mean(got == expected) >= 0.97


def test_far_points_are_noise_with_low_confidence(blobs):
    Z, fitted, geometry = blobs
    assigner = NeighborAssigner().fit(Z, fitted.labels_, geometry)
    far = Z.max(0) + 50 + np.arange(10)[:, None]
    result = assigner.assign(far)
    assert np.all(result.labels == -1)
    assert np.all(result.confidence <= 0.01)
    members = assigner.assign(Z[fitted.labels_ >= 0][:200])
    assert np.median(members.confidence) > 0.5
    assert members.confidence[members.labels >= 0].min() >= NOISE_CONFIDENCE_MAX


def test_confidence_bounds(behavioral):
    Z, fitted, geometry = behavioral
    result = NeighborAssigner().fit(Z, fitted.labels_, geometry).assign(Z)
    assert np.all((result.confidence >= 0) & (result.confidence <= 1))
    assert np.all(result.confidence[result.labels == -1] <= NOISE_CONFIDENCE_MAX)


def test_same_result_for_any_threads_and_batches(behavioral):
    Z, fitted, geometry = behavioral
    a = NeighborAssigner(n_jobs=1, batch_size=7).fit(Z, fitted.labels_, geometry).assign(Z)
    b = NeighborAssigner(n_jobs=2, batch_size=512).fit(Z, fitted.labels_, geometry).assign(Z)
    assert np.array_equal(a.labels, b.labels)
    assert np.allclose(a.confidence, b.confidence)


def test_bad_input_is_named(blobs):
    Z, fitted, geometry = blobs
    assigner = NeighborAssigner().fit(Z, fitted.labels_, geometry)
    with pytest.raises(ValueError, match="expected 6 columns"):
        assigner.predict(Z[:, :3])
    bad = Z[:2].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        assigner.predict(bad)
    with pytest.raises(ValueError, match="same length"):
        NeighborAssigner().fit(Z[:10], fitted.labels_, geometry)


def test_empty_input_gives_empty_output(blobs):
    Z, fitted, geometry = blobs
    result = NeighborAssigner().fit(Z, fitted.labels_, geometry).assign(np.zeros((0, 6)))
    assert result.labels.shape == (0,) and result.confidence.shape == (0,)


def test_centroid_assigner_nearest_centre_and_far_noise():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0]])
    Z = np.vstack([rng.normal(c, 1.0, size=(200, 2)) for c in centers])
    labels = np.repeat([0, 1], 200)
    assigner = CentroidAssigner().fit(Z, labels, centers)
    result = assigner.assign(np.array([[0.5, 0.2], [9.0, -0.5], [100.0, 100.0]]))
    assert result.labels.tolist() == [0, 1, -1]
    assert result.confidence[2] <= NOISE_CONFIDENCE_MAX < result.confidence[0]
