"""ClusterModel and its parts on the scikit-learn estimator contract: get_params, set_params,
clone, NotFittedError before fit, fit returning self, one source for parameters and config."""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from configs import ClusteringConfig
from configs.schema import InvalidParameterError
from segmentation.assigner import CentroidAssigner, NeighborAssigner
from segmentation.clustering import (
    ClipTransformer,
    ClusterModel,
    FeatureEncoder,
    _ClusterModelParams,
)
from tests.segmentation.behavioral_data import make_behavioral_frame

# a valid value other than the default for every key of the clustering config
OTHER_VALUES = {
    "features": ("recency_days", "avg_order_value"),
    "sample_size": 500,
    "min_cluster_size": 7,
    "min_samples": 3,
    "cluster_selection_method": "leaf",
    "pca_components": 1,
    "max_noise_share": 0.5,
    "max_cluster_share": 0.6,
    "kmeans_max_k": 4,
    "kmeans_k_selection": "silhouette",
    "kmeans_min_gap_gain": 0.1,
    "kmeans_references": 2,
    "assigner_neighbors": 5,
    "min_confidence": 0.2,
    "stickiness": 0.0,
    "attach_outliers": False,
    "min_segment_share": 0.05,
}


@pytest.fixture(scope="module")
def frame():
    return make_behavioral_frame(800, seed=3)


@pytest.fixture(scope="module")
def fitted(frame):
    return ClusterModel(min_cluster_size=30, validate_assigner=False).fit(frame)


def test_every_parameter_is_validated_through_one_declaration():
    # the config keys (ClusteringConfig) and the parameters that are not config keys
    assert set(OTHER_VALUES) == set(ClusteringConfig.model_fields)
    assert ClusterModel().get_params() == _ClusterModelParams().model_dump()
    assert issubclass(_ClusterModelParams, ClusteringConfig)


def test_from_config_passes_every_key_by_name():
    config = ClusteringConfig(**OTHER_VALUES)
    model = ClusterModel.from_config(config, random_state=7, n_jobs=1)
    params = model.get_params()
    assert {k: params[k] for k in OTHER_VALUES} == OTHER_VALUES
    assert (model.random_state, model.n_jobs) == (7, 1)
    assert model._validate_params() == _ClusterModelParams(**OTHER_VALUES, random_state=7, n_jobs=1)
    with pytest.raises(ValueError, match="Invalid parameter 'n_neighbors'"):
        ClusterModel.from_config(config, n_neighbors=5)


def test_get_params_set_params_and_clone():
    model = ClusterModel(features=["a", "b"], min_cluster_size=25, stickiness=0.3)
    params = model.get_params()
    assert params["features"] == ["a", "b"] and params["stickiness"] == 0.3
    twin = clone(model)
    assert twin is not model and twin.get_params() == params
    assert twin.set_params(stickiness=0.0, clip=None) is twin
    assert (twin.stickiness, twin.clip, model.stickiness, model.clip) == (0.0, None, 0.3, 5.0)
    assert "stickiness=0.3" in repr(model)
    with pytest.raises(ValueError, match="Invalid parameter 'n_neighbors'"):
        model.set_params(n_neighbors=5)


def test_parameters_are_checked_at_fit_not_at_construction(frame):
    model = ClusterModel(sample_size=10, stickiness=-1)  # constructing never fails
    with pytest.raises(InvalidParameterError, match="'sample_size'.*'stickiness'"):
        model.fit(frame)
    with pytest.raises(InvalidParameterError, match="'sample_size': Input should be a valid int"):
        ClusterModel(sample_size=500.0).fit(frame)
    # numpy integers and any sequence of names are fine
    model = ClusterModel(
        sample_size=np.int64(400), features=pd.Index(["recency_days", "avg_order_value"])
    )
    assert model.fit(frame) is model and len(model.sample_ids_) == 400


def test_unfitted_use_raises_not_fitted_error(frame):
    Z = np.zeros((2, 3))
    for call in (
        lambda: ClusterModel().predict(frame),
        lambda: ClusterModel().segment_centers(),
        lambda: FeatureEncoder().transform(frame),
        lambda: ClipTransformer().transform(Z),
        lambda: NeighborAssigner().assign(Z),
        lambda: CentroidAssigner().predict(Z),
    ):
        with pytest.raises(NotFittedError, match="is not fitted yet"):
            call()


def test_clone_of_a_fitted_model_is_unfitted_and_refits_identically(frame, fitted):
    twin = clone(fitted)
    assert not hasattr(twin, "assigner_")
    with pytest.raises(NotFittedError):
        twin.predict(frame)
    assert twin.fit(frame) is twin
    pd.testing.assert_frame_equal(twin.predict(frame), fitted.predict(frame))
    # the fitted parts are estimators too
    for part in (fitted.pipeline_, fitted.assigner_):
        assert repr(clone(part)) == repr(part)


def test_a_pickled_model_keeps_its_parameters_and_predictions(frame, fitted):
    restored = pickle.loads(pickle.dumps(fitted))
    assert restored.get_params() == fitted.get_params()
    pd.testing.assert_frame_equal(restored.predict(frame), fitted.predict(frame))
