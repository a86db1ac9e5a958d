"""Successful runs on unusual but valid data print no numpy RuntimeWarning.

Events of one type only (page views: no purchase, so every money feature is null) made the
clustering's fill values and the profiles' robust statistics take medians and means of
all-null columns, and numpy printed 'All-NaN slice encountered', 'Mean of empty slice' and
'Degrees of freedom <= 0' on stderr of a run that succeeded. Unicode client ids must not
warn either.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from segmentation.clustering import ClusterModel, FeatureEncoder
from segmentation.profiles import cluster_profiles, nan_columns, robust_shifts
from tests.segmentation.behavioral_data import make_behavioral_frame

# null for a client without a purchase (or without a rated interaction)
NULL_WITHOUT_PURCHASES = ("avg_order_value", "sentiment_mean")


@pytest.fixture(scope="module")
def no_purchases():
    frame = make_behavioral_frame(1500, seed=4)
    for column in NULL_WITHOUT_PURCHASES:
        frame[column] = np.nan
    return frame


def test_nan_columns_matches_numpy_and_is_silent():
    values = np.array([[1.0, np.nan, 4.0], [3.0, np.nan, np.nan], [np.nan, np.nan, 8.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        median = nan_columns(np.nanmedian, values)
        q75 = nan_columns(np.nanpercentile, values, 75)
        std = nan_columns(np.nanstd, values)
        empty = nan_columns(np.nanmean, values[:0])
    np.testing.assert_array_equal(median, [2.0, np.nan, 6.0])
    np.testing.assert_array_equal(q75, [2.5, np.nan, 7.0])
    np.testing.assert_array_equal(std, [1.0, np.nan, 2.0])
    assert np.isnan(empty).all() and empty.shape == (3,)


def test_profiles_of_all_null_features_warn_nothing():
    frame = pd.DataFrame(
        {
            "a": [1.0, 2.0, 3.0, 10.0, 11.0, 12.0],
            "never": [np.nan] * 6,  # null for everyone
            "half": [np.nan, np.nan, np.nan, 5.0, 6.0, 7.0],  # null in cluster 0 only
        }
    )
    labels = np.array([0, 0, 0, 1, 1, -1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        z, medians, population = robust_shifts(frame, labels, ["a", "never", "half"])
        profiles = cluster_profiles(frame, labels, ["a", "never", "half"])
    assert (z["never"] == 0).all() and np.isnan(population["never"])
    assert np.isnan(medians.loc[0, "half"]) and medians.loc[1, "half"] == 5.5
    assert set(profiles) == {0, 1}


def test_encoder_fill_value_of_an_all_null_column_is_zero_without_warning():
    frame = pd.DataFrame({"avg_order_value": [np.nan] * 4, "n_events": [1.0, 2.0, 3.0, 4.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        encoder = FeatureEncoder(features=["avg_order_value", "n_events"]).fit(frame)
    assert encoder.fill_values_[0] == 0.0


def test_clustering_clients_without_purchases_warns_nothing(no_purchases):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model = ClusterModel(min_cluster_size=40, validate_assigner=False).fit(no_purchases)
        predicted = model.predict(no_purchases)
    assert len(predicted) == len(no_purchases)
    assert model.profiles_


def test_unicode_client_ids_warn_nothing():
    frame = make_behavioral_frame(1200, seed=5)
    frame["client_id"] = [f"клиент-{i}-客户-🎉" for i in range(len(frame))]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model = ClusterModel(min_cluster_size=40, validate_assigner=False).fit(frame)
        predicted = model.predict(frame)
    assert predicted["client_id"].tolist() == frame["client_id"].tolist()
