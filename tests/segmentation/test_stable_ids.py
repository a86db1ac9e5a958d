"""Tests of stable segment identities: matching, new and retired ids, refits that keep ids."""

import copy

import numpy as np
import pandas as pd
import pytest

from segmentation.clustering import ClusterModel
from segmentation.profiles import check_name
from segmentation.stable_ids import fresh_ids, match_cluster_ids, stability
from tests.segmentation.behavioral_data import make_behavioral_frame


def _series(values, prefix="c"):
    return pd.Series(values, index=[f"{prefix}{i}" for i in range(len(values))])


def test_fresh_ids_by_size():
    match = fresh_ids(pd.Series({0: 10, 1: 30, 2: 20}), next_number=4)
    assert match.ids == {1: "C004", 2: "C005", 0: "C006"}
    assert match.next_number == 7 and match.new == ["C004", "C005", "C006"]


def test_overlap_matches_permuted_labels():
    prev = _series(["C001"] * 50 + ["C002"] * 30 + ["C003"] * 20)
    new = _series([2] * 50 + [0] * 30 + [1] * 20)
    match = match_cluster_ids(prev, new, None, None, next_number=4)
    assert match.ids == {2: "C001", 0: "C002", 1: "C003"}
    assert set(match.how.values()) == {"overlap"}
    assert match.new == [] and match.retired == [] and match.next_number == 4


def test_new_cluster_gets_new_id_and_vanished_is_retired():
    prev = _series(["C001"] * 50 + ["C002"] * 30 + ["C003"] * 20)
    # C003's clients now fall into C001's cluster; a new cluster 5 appears among new clients
    new = _series([0] * 50 + [1] * 30 + [0] * 20)
    extra = pd.Series([5] * 25, index=[f"n{i}" for i in range(25)])
    match = match_cluster_ids(prev, pd.concat([new, extra]), None, None, next_number=9)
    assert match.ids[0] == "C001" and match.ids[1] == "C002"
    assert match.ids[5] == "C009" and match.new == ["C009"]
    assert match.retired == ["C003"]
    assert match.next_number == 10


def test_noise_is_ignored_in_overlap():
    prev = _series(["C001"] * 40 + ["noise"] * 60)
    new = _series([0] * 40 + [-1] * 60)
    match = match_cluster_ids(prev, new, None, None, next_number=2)
    assert match.ids == {0: "C001"}
    assert "noise" not in match.retired


def test_profile_distance_matches_without_shared_clients():
    prev = _series(["C001"] * 10 + ["C002"] * 10, prefix="old")
    new = _series([0] * 10 + [1] * 10, prefix="new")
    prev_centers = pd.DataFrame([[0.0, 0.0], [5.0, 5.0]], index=["C001", "C002"])
    new_centers = pd.DataFrame([[5.1, 4.9], [20.0, 20.0]], index=[0, 1])
    match = match_cluster_ids(prev, new, prev_centers, new_centers, next_number=3)
    assert match.ids[0] == "C002" and match.how[0] == "profile"
    assert match.ids[1] == "C003" and match.how[1] == "new"
    assert match.retired == ["C001"]


def test_low_overlap_is_not_a_match():
    prev = _series(["C001"] * 100)
    new = _series([0] * 10 + [1] * 90)
    match = match_cluster_ids(prev, new, None, None, next_number=2, min_overlap=0.95)
    assert "C001" not in match.ids.values()
    assert match.retired == ["C001"]


def test_stability_metric():
    a = _series(["C001"] * 50 + ["C002"] * 50)
    b = _series(["C001"] * 45 + ["C003"] * 5 + ["C002"] * 50)
    s = stability(a, b)
    assert s["kept_share"] == pytest.approx(0.95)
    assert 0 < s["ari"] < 1 and s["shared_clients"] == 100
    assert stability(a, a)["ari"] == 1.0


# --- refits of the model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def base():
    return make_behavioral_frame(3000, seed=1)


@pytest.fixture(scope="module")
def first(base):
    return ClusterModel(min_cluster_size=40, validate_assigner=False).fit(base)


def _perturb(frame, seed):
    """Bootstrap resample (duplicates get fresh ids) and multiply features by 1 +- 3% noise."""
    rng = np.random.default_rng(seed)
    boot = frame.iloc[rng.choice(len(frame), len(frame))].reset_index(drop=True)
    boot["client_id"] = boot["client_id"] + "_" + boot.groupby("client_id").cumcount().astype(str)
    cols = [c for c in frame.columns if c not in ("client_id", "persona")]
    boot[cols] = boot[cols] * rng.normal(1, 0.03, size=(len(boot), len(cols)))
    return boot


def test_refit_on_perturbed_sample_keeps_ids_and_names(base, first):
    refit = ClusterModel(min_cluster_size=40, validate_assigner=False).fit(
        _perturb(base, 8), previous=first
    )
    old = set(first.segment_ids_.values())
    assert set(refit.segment_ids_.values()) == old
    assert refit.metrics_["segments_kept"] == sorted(old)
    assert refit.metrics_["segments_new"] == [] and refit.metrics_["segments_retired"] == []
    assert refit.segment_names_ == first.segment_names_
    assert refit.metrics_["stability"] >= 0.9
    assert refit.metrics_["stability_ari"] >= 0.8
    # the same clients mostly keep their segment
    a = first.predict(base).set_index("client_id")["segment_id"]
    b = refit.predict(base).set_index("client_id")["segment_id"]
    assert (a == b).mean() >= 0.9


def test_refit_with_previous_assignments_uses_them(base, first):
    membership = first.predict(base)[["client_id", "segment_id"]]
    sample = base.sample(frac=0.9, random_state=3)
    refit = ClusterModel(min_cluster_size=40, validate_assigner=False).fit(
        sample, previous=first, previous_assignments=membership
    )
    assert set(refit.segment_ids_.values()) == set(first.segment_ids_.values())
    assert refit.metrics_["stability_shared_clients"] == len(sample)


def test_vanished_persona_retires_its_segment_and_new_persona_gets_new_id(base, first):
    pred = first.predict(base)
    table = pd.crosstab(base["persona"], pred["segment_id"])
    gone_id = table.loc["cart_abandoner"].drop("noise", errors="ignore").idxmax()
    without = base[base["persona"] != "cart_abandoner"]
    second = ClusterModel(min_cluster_size=40, validate_assigner=False).fit(without, previous=first)
    assert second.metrics_["segments_retired"] == [gone_id]
    assert gone_id not in second.segment_ids_.values()
    # the persona comes back: a new id, never the retired one
    third = ClusterModel(min_cluster_size=40, validate_assigner=False).fit(base, previous=second)
    new = third.metrics_["segments_new"]
    assert len(new) == 1 and new[0] != gone_id
    assert int(new[0][1:]) >= second.next_segment_number_ - 1
    assert third.next_segment_number_ == second.next_segment_number_ + 1
    kept = set(second.segment_ids_.values())
    assert set(third.metrics_["segments_kept"]) == kept
    for sid in kept:
        assert third.segment_names_[sid] == second.segment_names_[sid]
    assert third.segment_names_[new[0]] not in set(second.segment_names_.values())


def test_a_kept_segment_whose_name_became_untrue_keeps_its_id_and_gets_a_true_name(base, first):
    # The previous model called its least store-going segment "store clients" (say, before its
    # members moved to the app): the refit keeps the id, and the name is made again.
    previous = copy.deepcopy(first)
    store = {
        sid: p["median"]["share_store_weighted"]
        for sid, p in first.profiles_.items()
        if sid != "noise"
    }
    least = min(store, key=store.get)
    previous.segment_names_[least] = "store clients"
    refit = ClusterModel(min_cluster_size=40, validate_assigner=False).fit(base, previous=previous)
    assert least in refit.segment_ids_.values()
    assert refit.metrics_["segments_renamed"] == [least]
    assert refit.segment_names_[least] != "store clients"
    prof = refit.profiles_[least]
    assert check_name(refit.segment_names_[least], prof, prof["population"]) == []
    # the other kept segments keep their names
    for sid in set(refit.metrics_["segments_kept"]) - {least}:
        assert refit.segment_names_[sid] == first.segment_names_[sid]
