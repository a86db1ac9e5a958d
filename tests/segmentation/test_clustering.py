"""Tests of ClusterModel: clusters found, assignment, guard rails and fallback, determinism, errors."""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score

from configs import ClusteringConfig
from segmentation.assigner import Assignment
from segmentation.clustering import (
    DEFAULT_FEATURES,
    ClusterModel,
    FeatureEncoder,
    fill_value_rule,
    is_log_feature,
)
from tests.segmentation.behavioral_data import make_behavioral_frame

PREDICT_COLUMNS = ["client_id", "cluster_id", "segment_id", "confidence", "is_noise", "is_outlier"]


@pytest.fixture(scope="module")
def frame():
    return make_behavioral_frame(3000, seed=1)


@pytest.fixture(scope="module")
def model(frame):
    return ClusterModel(min_cluster_size=40).fit(frame)


def test_finds_the_personas(frame, model):
    pred = model.predict(frame)
    assert model.metrics_["n_clusters"] >= 5
    assert not model.metrics_["degenerate"] and model.metrics_["fallback"] is None
    clustered = ~pred["is_noise"]
    assert clustered.mean() > 0.8
    ari = adjusted_rand_score(frame["persona"][clustered], pred["segment_id"][clustered])
    assert ari >= 0.75


def test_metrics(model):
    m = model.metrics_
    assert m["algorithm"] == "hdbscan" and m["quality_metric"] == "dbcv"
    assert -1 <= m["quality"] <= 1
    assert 0 <= m["noise_share"] <= model.max_noise_share
    assert m["assigner_agreement"] >= 0.97
    assert sum(m["sizes"].values()) == m["sample_size"] == 3000
    assert set(m["sizes"]) == set(model.segment_ids_.values()) | {"noise"}


def test_predict_output(frame, model):
    pred = model.predict(frame)
    assert list(pred.columns) == PREDICT_COLUMNS
    assert pred["client_id"].tolist() == frame["client_id"].tolist()
    assert pred["confidence"].between(0, 1).all()
    # outside every dense cluster: attached to the nearest, flagged, less sure; nobody is noise
    outlier = pred["is_outlier"]
    assert outlier.any() and not pred["is_noise"].any()
    assert (pred.loc[outlier, "cluster_id"] >= 0).all()
    assert pred.loc[outlier, "confidence"].max() <= 0.15
    assert pred.loc[~outlier, "confidence"].median() > 0.5
    for label, sid in model.segment_ids_.items():
        assert (pred.loc[pred["cluster_id"] == label, "segment_id"] == sid).all()
    # the assigner reproduces the fitted labels of the sample clients themselves (their noise
    # as outliers)
    sample = pd.Series(model.sample_labels_, index=model.sample_ids_)
    got = pred.set_index("client_id").loc[sample.index]
    dense = got["cluster_id"].where(~got["is_outlier"], -1)
    assert (dense == sample).mean() >= 0.97


def test_stable_ids_and_names(model):
    ids = list(model.segment_ids_.values())
    assert ids == sorted(ids) or set(ids) == {f"C{i:03d}" for i in range(1, len(ids) + 1)}
    assert set(ids) == {f"C{i:03d}" for i in range(1, len(ids) + 1)}
    assert model.next_segment_number_ == len(ids) + 1
    names = [model.segment_names_[s] for s in ids]
    assert len(set(names)) == len(names)
    assert model.profiles_["noise"]["name"] == "unclustered (noise)"


def test_far_away_clients_are_noise(frame, model):
    odd = frame.head(3).copy()
    odd["client_id"] = ["x1", "x2", "x3"]
    extreme = ["purchases_per_active_month", "avg_order_value", "tickets_per_purchase"]
    odd[[*extreme, "advocacy_per_purchase"]] = 1e9
    odd["share_store_weighted"] = 1.0
    odd[["share_web_weighted", "share_app_weighted", "share_call_center_weighted"]] = 0.0
    pred = model.predict(odd)
    # attached to the nearest segment, flagged, and less sure than any dense member
    assert pred["is_outlier"].all() and not pred["is_noise"].any()
    assert (pred["cluster_id"] >= 0).all()
    assert (pred["confidence"] <= 0.15).all()
    members = model.predict(frame.head(300))
    core = members.loc[~members["is_outlier"], "confidence"]
    assert pred["confidence"].max() < core.min()
    loose = pickle.loads(pickle.dumps(model)).set_params(attach_outliers=False)
    kept = loose.predict(odd)
    assert kept["is_noise"].all() and not kept["is_outlier"].any()
    assert (kept["confidence"] <= 0.2).all()


def test_sample_size_is_respected_and_all_clients_assigned(frame):
    m = ClusterModel(sample_size=1500, min_cluster_size=30).fit(frame)
    assert len(m.sample_ids_) == 1500 and m.metrics_["sample_size"] == 1500
    pred = m.predict(frame)
    assert len(pred) == len(frame)
    outside = ~frame["client_id"].isin(m.sample_ids_)
    assert outside.sum() == 1500
    assert (~pred.loc[outside.to_numpy(), "is_noise"]).mean() > 0.8


def test_fitting_on_the_sample_rows_alone_gives_the_model_fitted_on_all(frame):
    from segmentation.clustering import sample_client_ids

    full = ClusterModel(sample_size=1500, min_cluster_size=30, random_state=5).fit(frame)
    ids = sample_client_ids(frame["client_id"].sample(frac=1.0, random_state=2), 1500, 5)
    assert ids == sorted(full.sample_ids_.tolist())
    rows = frame.set_index("client_id").loc[ids].reset_index()
    alone = ClusterModel(sample_size=1500, min_cluster_size=30, random_state=5).fit(rows)
    assert np.array_equal(alone.sample_labels_, full.sample_labels_)
    pd.testing.assert_frame_equal(alone.predict(frame), full.predict(frame))


def test_deterministic_and_independent_of_row_order(frame, model):
    again = ClusterModel(min_cluster_size=40).fit(frame.sample(frac=1.0, random_state=9))
    assert np.array_equal(again.sample_ids_, model.sample_ids_)
    assert np.array_equal(again.sample_labels_, model.sample_labels_)
    assert again.segment_names_ == model.segment_names_
    pd.testing.assert_frame_equal(again.predict(frame), model.predict(frame))


def test_pickle_round_trip(frame, model):
    restored = pickle.loads(pickle.dumps(model))
    pd.testing.assert_frame_equal(restored.predict(frame.head(500)), model.predict(frame.head(500)))


def test_degenerate_single_blob_is_flagged_and_falls_back():
    rng = np.random.default_rng(4)
    blob = pd.DataFrame(rng.normal(0, 1, size=(1500, 4)), columns=list("abcd"))
    blob.insert(0, "client_id", [f"k{i}" for i in range(1500)])
    m = ClusterModel(features=list("abcd"), min_cluster_size=40, max_noise_share=0.1).fit(blob)
    assert m.metrics_["degenerate"] is True
    assert m.metrics_["degenerate_reason"]
    assert m.metrics_["fallback"] in ("retry_leaf", "kmeans")
    assert m.metrics_["n_clusters"] >= 2
    pred = m.predict(blob)
    assert pred["is_noise"].mean() <= 0.1


def test_uniform_noise_falls_back_to_kmeans():
    rng = np.random.default_rng(5)
    uniform = pd.DataFrame(rng.uniform(0, 1, size=(1200, 3)), columns=list("abc"))
    uniform.insert(0, "client_id", [f"u{i}" for i in range(1200)])
    m = ClusterModel(features=list("abc"), min_cluster_size=30, max_noise_share=0.02).fit(uniform)
    assert m.metrics_["degenerate"] is True
    assert m.metrics_["fallback"] == "kmeans"
    assert m.metrics_["algorithm"] == "kmeans" and m.metrics_["quality_metric"] == "silhouette"
    assert m.hdbscan_ is None and m.kmeans_ is not None
    assert 2 <= m.metrics_["n_clusters"] <= 8
    pred = m.predict(uniform)
    assert pred["is_noise"].mean() < 0.05  # never "everything is noise"
    assert m.metrics_["assigner_agreement"] >= 0.97


def test_identical_clients_get_a_single_segment():
    same = pd.DataFrame({"client_id": [f"s{i}" for i in range(100)], "a": 1.0, "b": 2.0})
    m = ClusterModel(features=["a", "b"], min_cluster_size=10).fit(same)
    assert m.metrics_["fallback"] == "single" and m.metrics_["n_clusters"] == 1
    assert not m.predict(same)["is_noise"].any()


def test_nulls_are_imputed(frame):
    holes = frame.copy()
    holes.loc[holes.index[::3], "sentiment_mean"] = np.nan
    holes.loc[holes.index[::5], "purchases_per_active_month"] = np.nan
    holes.loc[holes.index[::7], "avg_order_value"] = np.nan
    m = ClusterModel(min_cluster_size=40, validate_assigner=False).fit(holes)
    pred = m.predict(holes)
    assert pred["confidence"].notna().all()
    encoder = m.pipeline_.named_steps["encode"]
    fills = dict(zip(encoder.feature_names_in_, encoder.fill_values_, strict=True))
    assert fills["sentiment_mean"] == 0 and fills["purchases_per_active_month"] == 0
    # a value per order is unknown without an order: the median, not zero
    assert fills["avg_order_value"] == pytest.approx(holes["avg_order_value"].median())


def test_feature_rules():
    assert is_log_feature("total_spend") and is_log_feature("events_90d")
    assert is_log_feature("recency_days") and is_log_feature("shares")
    assert not is_log_feature("share_app") and not is_log_feature("spend_momentum")
    assert not is_log_feature("cart_abandon_rate_90d") and not is_log_feature("sentiment_mean")
    assert fill_value_rule("support_tickets_90d") == "zero"
    assert fill_value_rule("sentiment_mean") == "zero"
    assert fill_value_rule("channel_entropy") == "median"
    enc = FeatureEncoder(["n_purchases", "share_app"]).fit(
        pd.DataFrame({"n_purchases": [0.0, 3.0, -1.0], "share_app": [0.1, 0.5, 0.9]})
    )
    out = enc.transform(pd.DataFrame({"n_purchases": [np.nan, 3.0, -1.0], "share_app": [0.2] * 3}))
    assert out[:, 0].tolist() == [0.0, np.log1p(3.0), 0.0]
    assert out[:, 1].tolist() == [0.2] * 3


def test_pca_option(frame):
    m = ClusterModel(min_cluster_size=40, pca_components=6, validate_assigner=False).fit(frame)
    assert m.assigner_.n_features_in_ == 6
    assert len(m.predict(frame.head(10))) == 10


def test_from_config():
    cfg = ClusteringConfig(sample_size=5000, min_cluster_size=25, assigner_neighbors=7)
    m = ClusterModel.from_config(cfg, random_state=3)
    assert (m.sample_size, m.min_cluster_size, m.random_state) == (5000, 25, 3)
    assert m.assigner_neighbors == 7
    cfg = ClusteringConfig(kmeans_max_k=9, kmeans_k_selection="silhouette", kmeans_min_gap_gain=0.1)
    m = ClusterModel.from_config(cfg)
    assert (m.kmeans_max_k, m.kmeans_k_selection, m.kmeans_min_gap_gain) == (9, "silhouette", 0.1)
    assert ClusterModel.from_config(ClusteringConfig()).kmeans_k_selection == "gap"
    assert m.features is None


def test_default_features_are_the_documented_subset():
    assert len(DEFAULT_FEATURES) == len(set(DEFAULT_FEATURES)) == 15
    assert {"purchases_per_active_month", "share_app_weighted", "tickets_per_purchase"} <= set(
        DEFAULT_FEATURES
    )
    # state features belong to the lifecycle rules, not to the clusters
    assert not {"activity_momentum", "tenure_days", "total_spend"} & set(DEFAULT_FEATURES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["client_id"]), "no 'client_id' column"),
        (
            lambda f: f.drop(columns=["avg_order_value", "tickets_per_purchase"]),
            "avg_order_value, tickets_per_purchase",
        ),
        (lambda f: f.assign(client_id="same"), "not unique"),
        (lambda f: f.assign(share_app_weighted="high"), "not numeric: share_app_weighted"),
        (lambda f: f.iloc[:0], "no rows"),
    ],
)
def test_bad_input_is_named(frame, change, message):
    with pytest.raises(ValueError, match=message):
        ClusterModel(min_cluster_size=40).fit(change(frame.head(300)))


def test_bad_params_and_unfitted_use():
    small = make_behavioral_frame(200, seed=2)
    with pytest.raises(ValueError, match="cluster_selection_method"):
        ClusterModel(cluster_selection_method="best").fit(small)
    with pytest.raises(ValueError, match="max_noise_share"):
        ClusterModel(max_noise_share=0).fit(small)
    with pytest.raises(ValueError, match="max_cluster_share"):
        ClusterModel(max_cluster_share=1.5).fit(small)
    with pytest.raises(ValueError, match="kmeans_k_selection"):
        ClusterModel(kmeans_k_selection="elbow").fit(small)
    with pytest.raises(ValueError, match="kmeans_max_k"):
        ClusterModel(kmeans_max_k=1).fit(small)
    with pytest.raises(NotFittedError, match="not fitted"):
        ClusterModel().predict(small)
    with pytest.raises(ValueError, match="lacks feature column"):
        ClusterModel(min_cluster_size=10, validate_assigner=False).fit(small).predict(
            small.drop(columns=["tickets_per_purchase"])
        )


def _nested_blobs(seed=0, centre_seed=0, n_per=300, d=12):
    """Six blobs in three well-apart pairs in 12 dimensions: silhouette prefers a coarser split
    (pairs merged), the truth is 6 clusters."""
    centres_rng, rng = np.random.default_rng(centre_seed), np.random.default_rng(seed)
    centres = []
    for _ in range(3):
        base = centres_rng.normal(0, 6.0, d)
        centres += [base + centres_rng.normal(0, 2.0, d) for _ in range(2)]
    X = np.vstack([rng.normal(c, 1.0, size=(n_per, d)) for c in centres])
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(d)])
    frame.insert(0, "client_id", [f"p{seed}_{i}" for i in range(len(frame))])
    return frame, np.repeat(np.arange(6), n_per)


def _kmeans_model(**params):
    # HDBSCAN's fit is degenerate by the guard rails (any noise, any cluster above 5%) -> k-means
    return ClusterModel(
        features=[f"x{i}" for i in range(12)],
        min_cluster_size=30,
        max_noise_share=1e-4,
        max_cluster_share=0.05,
        **params,
    )


def test_gap_selection_finds_the_finer_real_structure():
    frame, truth = _nested_blobs()
    gap = _kmeans_model().fit(frame)
    assert gap.metrics_["fallback"] == "kmeans"
    assert gap.metrics_["kmeans_k_selection"] == "gap" and gap.metrics_["kmeans_k"] == 6
    assert set(gap.metrics_["kmeans_k_scores"]) == {str(k) for k in range(2, 13)}
    assert adjusted_rand_score(truth, gap.predict(frame)["cluster_id"]) >= 0.95
    silhouette = _kmeans_model(kmeans_k_selection="silhouette").fit(frame)
    assert silhouette.metrics_["kmeans_k"] < 6  # a coarser split, what gap corrects


def test_gap_selection_keeps_structureless_data_coarse():
    rng = np.random.default_rng(5)
    uniform = pd.DataFrame(rng.uniform(0, 1, size=(1200, 12)), columns=[f"x{i}" for i in range(12)])
    uniform.insert(0, "client_id", [f"u{i}" for i in range(1200)])
    m = _kmeans_model(kmeans_max_k=6).fit(uniform)
    assert m.metrics_["fallback"] == "kmeans"
    assert m.metrics_["kmeans_k"] <= 3
    assert set(m.metrics_["kmeans_k_scores"]) == {str(k) for k in range(2, 7)}


def test_kmeans_refit_starts_from_the_previous_centres():
    frame, _ = _nested_blobs(seed=0)
    first = _kmeans_model().fit(frame)
    assert first.metrics_["kmeans_init"] == "k-means++"
    later, _ = _nested_blobs(seed=1)  # other clients, the same behaviours
    refit = _kmeans_model(random_state=7).fit(later, previous=first)
    assert refit.metrics_["kmeans_init"] == "previous"
    # the same partition under the same ids
    assert (first.predict(later)["segment_id"] == refit.predict(later)["segment_id"]).mean() > 0.99
    assert refit.metrics_["segments_kept"] == sorted(first.segment_ids_.values())


def test_gap_rule_and_refit_hysteresis(monkeypatch):
    import segmentation.clustering as clustering

    gains = {3: 0.2, 4: 0.1, 5: 0.04, 6: 0.025, 7: 0.01, 8: 0.05}
    gaps = {2: 1.0}
    for k, gain in gains.items():
        gaps[k] = gaps[k - 1] + gain
    monkeypatch.setattr(clustering, "gap_statistic", lambda *a, **k: dict(gaps))
    model = ClusterModel(kmeans_min_gap_gain=0.03)
    ks, rng = list(range(2, 9)), np.random.default_rng(0)
    # adds clusters while each gains >= 0.03: stops before 6 (and ignores the later jump at 8)
    assert model._select_k(np.zeros((10, 2)), ks, rng)[0] == 5
    # a refit keeps the previous k=6, whose gain 0.025 is within a third of the threshold
    assert model._select_k(np.zeros((10, 2)), ks, rng, previous_k=6)[0] == 6
    # but not a previous k the criterion clearly rejects
    assert model._select_k(np.zeros((10, 2)), ks, rng, previous_k=8)[0] == 5
    assert model._select_k(np.zeros((10, 2)), ks, rng, previous_k=3)[0] == 5


def test_stickiness_keeps_border_clients_and_lets_real_moves_through():
    frame, _ = _nested_blobs(seed=0)
    model = _kmeans_model(stickiness=0.2).fit(frame)
    centers = model.centers_
    gaps = np.linalg.norm(centers - centers[0], axis=1)
    a, b = 0, int(np.argsort(gaps)[1])  # the nearest other centre: its midpoint lies between them
    # Points on the line from centre a to centre b, taken back to the feature space through
    # the scaler (these values are far from the clip bound).
    scale = model.pipeline_.named_steps["scale"]

    def client(t, name):
        z = (1 - t) * centers[a] + t * centers[b]
        row = pd.DataFrame([scale.inverse_transform(z[None, :])[0]], columns=frame.columns[1:])
        return row.assign(client_id=name)[frame.columns]

    ids = model.segment_ids_
    # 52% of the way: b is nearer, a within 1.08x of it; 95%: a is 19x farther than b.
    clients = pd.concat([client(0.52, "border"), client(0.95, "moved")], ignore_index=True)
    plain = model.predict(clients).set_index("client_id")
    assert (
        plain.loc["border", "segment_id"] == ids[b] and plain.loc["moved", "segment_id"] == ids[b]
    )
    previous = pd.DataFrame({"client_id": ["border", "moved"], "segment_id": [ids[a], ids[a]]})
    sticky = model.predict(clients, previous=previous).set_index("client_id")
    assert sticky.loc["border", "segment_id"] == ids[a]
    assert sticky.loc["moved", "segment_id"] == ids[b]
    assert sticky.loc["border", "confidence"] < plain.loc["border", "confidence"]
    # Without stickiness, or without a previous state, predict is unchanged.
    off = _kmeans_model(stickiness=0.0).fit(frame)
    assert off.predict(clients, previous=previous)["segment_id"].tolist() == [ids[b], ids[b]]
    pd.testing.assert_frame_equal(model.predict(clients), plain.reset_index())


def test_a_model_saved_before_sticky_assignment_still_predicts(frame):
    model = ClusterModel(min_cluster_size=40, stickiness=0.2, attach_outliers=False)
    model.fit(frame.head(600))
    plain = model.predict(frame.head(600))
    # the pickled state of an older champion: no stickiness, no outliers attached, no
    # centers_, n_neighbors
    state = dict(model.__getstate__())
    del state["stickiness"], state["centers_"], state["attach_outliers"]
    state["n_neighbors"] = state.pop("assigner_neighbors")
    old = ClusterModel.__new__(ClusterModel)
    old.__setstate__(state)
    again = old.predict(frame.head(600), previous=plain[["client_id", "segment_id"]])
    pd.testing.assert_frame_equal(again, plain)
    # its parameters are readable again (repr, get_params, clone): stickiness 0, as it behaved
    assert old.get_params()["stickiness"] == 0.0
    assert old.get_params()["attach_outliers"] is False
    assert old.get_params()["assigner_neighbors"] == model.assigner_neighbors
    assert "n_neighbors" not in old.__dict__


def _planted(seed: int = 0) -> pd.DataFrame:
    """Three dense blobs of 600, a tiny dense blob of 12 (0.6%) and 60 scattered points."""
    rng = np.random.default_rng(seed)
    blobs = [rng.normal(center, 0.3, (600, 2)) for center in ((0, 0), (6, 0), (0, 6))]
    tiny = rng.normal((6, 6), 0.05, (12, 2))
    scattered = rng.uniform(-12, 18, (60, 2))
    xy = np.vstack([*blobs, tiny, scattered])
    return pd.DataFrame(
        {"client_id": [f"p{i:04d}" for i in range(len(xy))], "x": xy[:, 0], "y": xy[:, 1]}
    )


def test_small_clusters_are_merged_and_outliers_attached():
    frame = _planted()
    model = ClusterModel(features=("x", "y"), min_cluster_size=10, random_state=1).fit(frame)
    metrics = model.metrics_
    # the 12-client blob is a cluster of its own for HDBSCAN, but under 1% of the sample
    assert metrics["merged_clusters"] >= 1
    assert metrics["smallest_segment_share"] >= 0.01
    assert len(model.segment_ids_) == 3
    assert metrics["published_noise_share"] == 0.0 and metrics["noise_share"] > 0
    pred = model.predict(frame)
    assert not pred["is_noise"].any()  # everyone has a segment
    scattered = pred.iloc[-60:]
    core = pred.iloc[:1800]
    assert scattered["is_outlier"].mean() > 0.5
    assert core["is_outlier"].mean() < 0.05
    assert pred.loc[pred["is_outlier"], "confidence"].max() < core["confidence"].median()
    # the merged blob went to its nearest neighbour as a whole
    assert pred.iloc[1800:1812]["segment_id"].nunique() == 1


def test_outliers_stay_noise_when_not_attached():
    frame = _planted()
    model = ClusterModel(
        features=("x", "y"), min_cluster_size=10, random_state=1, attach_outliers=False
    ).fit(frame)
    assert model.metrics_["published_noise_share"] == model.metrics_["noise_share"] > 0
    pred = model.predict(frame)
    assert pred["is_noise"].iloc[-60:].mean() > 0.5 and not pred["is_outlier"].any()


def test_an_outlier_joins_the_cluster_of_its_nearest_fitted_point(monkeypatch):
    # The density decides (the cluster of the nearest fitted point follows the cluster's
    # shape); the nearest centre only when that point is noise too.
    frame = _planted()
    model = ClusterModel(features=("x", "y"), min_cluster_size=10, random_state=1).fit(frame)
    far = pd.DataFrame({"client_id": ["a", "b"], "x": [-10.0, -10.0], "y": [-10.0, -10.0]})
    by_centre = model.predict(far)["cluster_id"].iloc[0]
    other = (by_centre + 1) % len(model.segment_ids_)

    def density(Z):
        return Assignment(
            np.full(len(Z), -1), np.full(len(Z), 0.1), np.array([other, -1])[: len(Z)]
        )

    monkeypatch.setattr(model.assigner_, "assign", density)
    got = model.predict(far)
    assert list(got["cluster_id"]) == [other, by_centre]
    assert got["is_outlier"].all() and (got["confidence"] <= 0.15).all()
