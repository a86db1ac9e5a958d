"""PSI: zero for the same distribution, large for a shifted one, hand-checked on a small case."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from segmentation.drift import fit_reference, psi


def test_same_distribution_has_near_zero_psi_and_a_shift_has_a_large_one():
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"x": rng.lognormal(size=20_000), "y": rng.normal(size=20_000)})
    same = pd.DataFrame({"x": rng.lognormal(size=20_000), "y": rng.normal(size=20_000)})
    shifted = pd.DataFrame(
        {"x": rng.lognormal(mean=1.0, size=20_000), "y": rng.normal(size=20_000)}
    )
    ref = fit_reference(reference, ["x", "y"])
    assert max(psi(ref, same).values()) < 0.01
    drift = psi(ref, shifted)
    assert drift["x"] > 0.25
    assert drift["y"] < 0.01


def test_hand_checked_two_bin_case():
    # reference: half below 1, half above -> one cut at 1 (median of [0, 0, 2, 2] is 1)
    ref = fit_reference(pd.DataFrame({"x": [0.0, 0.0, 2.0, 2.0]}), ["x"], bins=2)
    assert ref.edges["x"].tolist() == [1.0]
    current = pd.DataFrame({"x": [0.0, 2.0, 2.0, 2.0]})
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi(ref, current)["x"] == pytest.approx(expected)


def test_nulls_count_as_their_own_bin():
    ref = fit_reference(pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]}), ["x"])
    all_null = pd.DataFrame({"x": [np.nan] * 4})
    assert psi(ref, all_null)["x"] > 1.0


def test_psi_from_bin_counts_added_over_parts_equals_psi_of_the_whole():
    from segmentation.drift import bin_counts, fit_reference, psi, psi_from_counts, sum_counts

    rng = np.random.default_rng(3)
    train = pd.DataFrame({"a": rng.normal(size=500), "b": rng.poisson(2.0, 500).astype(float)})
    today = pd.DataFrame({"a": rng.normal(0.3, 1.2, 900), "b": rng.poisson(2.5, 900)})
    today.loc[::7, "a"] = np.nan
    reference = fit_reference(train, ["a", "b"])
    parts = [today.iloc[:100], today.iloc[100:650], today.iloc[650:]]
    counts = [bin_counts(reference, part) for part in parts]
    summed = sum_counts(counts)
    assert summed.keys() == {"a", "b"}
    assert all((summed[c] == bin_counts(reference, today)[c]).all() for c in summed)
    assert psi_from_counts(reference, summed, len(today)) == psi(reference, today)
    assert psi(reference, today)["a"] > 0.01  # a real shift, not a trivial equality
