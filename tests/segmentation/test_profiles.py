"""Tests of cluster profiles: robust z-scores, distinguishing features, names, descriptions."""

import numpy as np
import pandas as pd
import pytest

from segmentation.profiles import (
    cluster_profiles,
    describe,
    name_profiles,
    noise_profile,
    robust_shifts,
)


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    n = 300
    data = pd.DataFrame(
        {
            "total_spend": rng.lognormal(4, 0.3, n),
            "share_app": rng.uniform(0, 0.2, n),
            "recency_days": rng.uniform(1, 30, n),
            "referrals": np.zeros(n),
            "sentiment_mean": rng.normal(0.2, 0.1, n),
        }
    )
    labels = np.repeat([0, 1, 2], 100)
    # cluster 0: high spend app users; cluster 1: dormant and unhappy; cluster 2: advocates
    data.loc[:99, "total_spend"] *= 20
    data.loc[:99, "share_app"] += 0.7
    data.loc[100:199, "recency_days"] += 300
    data.loc[100:199, "sentiment_mean"] -= 0.8
    data.loc[200:229, "referrals"] = 3  # only 30% of the cluster: the medians are all 0
    labels[-10:] = -1
    return data, labels


def test_robust_z_points_to_the_distinguishing_features(frame):
    data, labels = frame
    z, medians, population = robust_shifts(data, labels, list(data.columns))
    assert list(z.index) == [0, 1, 2]  # noise has no row
    assert z.loc[0].abs().idxmax() in ("total_spend", "share_app")
    assert z.loc[0, "total_spend"] > 2 and z.loc[0, "share_app"] > 2
    assert z.loc[1, "recency_days"] > 2 and z.loc[1, "sentiment_mean"] < -2
    assert medians.loc[1, "recency_days"] > population["recency_days"]


def test_sparse_feature_uses_the_mean_when_medians_tie(frame):
    data, labels = frame
    z, _, _ = robust_shifts(data, labels, list(data.columns))
    assert z.loc[2, "referrals"] > 0.5
    assert z.loc[0, "referrals"] < 0


def test_constant_feature_gives_zero_shift(frame):
    data, labels = frame
    data = data.assign(constant=1.0)
    z, _, _ = robust_shifts(data, labels, list(data.columns))
    assert (z["constant"] == 0).all()


def test_profiles_and_names(frame):
    data, labels = frame
    profiles = cluster_profiles(data, labels, list(data.columns))
    assert profiles[0]["size"] == 100 and profiles[2]["size"] == 90
    top0 = [t["feature"] for t in profiles[0]["top_features"]]
    assert {"total_spend", "share_app"} <= set(top0[:2])
    names = name_profiles(profiles)
    assert names[0] == "high-value app clients"
    assert "dormant" in names[1] and "unhappy" in names[1]
    assert names[2].endswith("advocates")
    assert len(set(names.values())) == 3


def test_names_are_unique_and_avoid_taken_names(frame):
    data, labels = frame
    profiles = cluster_profiles(data, labels, list(data.columns))
    twin = {0: profiles[0], 5: {**profiles[0], "size": 50}}
    names = name_profiles(twin, taken=["High-value app clients"])
    assert len({n.lower() for n in names.values()}) == 2
    assert "high-value app clients" not in {n.lower() for n in names.values()}


def test_description_mentions_features_and_values(frame):
    data, labels = frame
    profiles = cluster_profiles(data, labels, list(data.columns))
    text = describe(profiles[1])
    assert text.startswith("33% of clients. Days since last activity: ")
    assert "average sentiment (-1 to 1): " in text
    assert "overall" in text and text.endswith(".")
    assert "_" not in text and "z=" not in text
    assert describe({"top_features": []}).startswith("Clients close to the population")


def test_noise_profile(frame):
    data, labels = frame
    noise = noise_profile(data, labels)
    assert noise["size"] == 10 and noise["name"] == "unclustered (noise)"
