"""Holdout groups: the deterministic draw per (client, segment) and the lift comparison."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from segmentation import combine
from segmentation.holdout import (
    HOLDOUT_OUTCOME_COLUMNS,
    NOISE_SEGMENT_ID,
    compare_holdout,
    holdout_flags,
    holdout_uniform,
)

SALT = "holdout-v1"
IDS = [f"client-{i}" for i in range(12)]


def reference_u(salt: str, segment: str, client: str) -> float:
    """The draw computed directly with hashlib, as the module docstring specifies it."""
    s, g, c = salt.encode(), segment.encode(), client.encode()
    message = f"{len(s)}:".encode() + s + f"{len(g)}:".encode() + g + c
    digest = hashlib.blake2b(message, digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / 2**53


def many(n: int = 100_000) -> np.ndarray:
    return np.array([f"c{i:06d}" for i in range(n)], dtype=object)


def test_flags_are_the_specified_hash():
    # Computed once with reference_u and hard-coded: a change of the draw fails here (it would
    # move every client between the treated and the held out).
    expected = [False, True, False, False, False, False, True, True, False, False, True, False]
    got = holdout_flags(IDS, ["C1"] * 12, share=0.3, salt=SALT)
    assert got.dtype == bool
    assert got.tolist() == expected
    assert got.tolist() == [reference_u(SALT, "C1", c) < 0.3 for c in IDS]
    assert holdout_uniform(SALT, "C1", "client-0") == pytest.approx(0.5137892809325091, abs=0)
    assert holdout_uniform(SALT, "C1", "client-0") == reference_u(SALT, "C1", "client-0")
    vip = [False, False, False, False, False, False, False, False, True, False, False, True]
    assert holdout_flags(IDS, ["rule_vip"] * 12, share=0.3, salt=SALT).tolist() == vip


def test_flags_are_deterministic_and_order_free():
    ids = many(2000)
    segments = np.array(["A", "B", "C"], dtype=object)[np.arange(2000) % 3]
    first = holdout_flags(ids, segments, share=0.2, salt=SALT)
    np.testing.assert_array_equal(first, holdout_flags(ids, segments, share=0.2, salt=SALT))
    order = np.random.default_rng(0).permutation(2000)
    shuffled = holdout_flags(
        pd.Series(ids[order], dtype="str"), list(segments[order]), share=0.2, salt=SALT
    )
    np.testing.assert_array_equal(shuffled, first[order])
    # a new salt draws a new group
    other = holdout_flags(ids, segments, share=0.2, salt="holdout-v2")
    assert (other != first).mean() > 0.2


def test_share_is_respected():
    ids = many()
    for share in (0.05, 0.2, 0.5):
        flags = holdout_flags(ids, np.full(len(ids), "C1", dtype=object), share=share, salt=SALT)
        sd = (share * (1 - share) / len(ids)) ** 0.5
        assert abs(flags.mean() - share) < 4 * sd
    segments = np.full(len(ids), "C1", dtype=object)
    assert not holdout_flags(ids, segments, share=0.0, salt=SALT).any()
    assert holdout_flags(ids, segments, share=1.0, salt=SALT).all()


def test_raising_the_share_only_adds_members():
    ids = many(20_000)
    segments = np.full(len(ids), "C1", dtype=object)
    small = holdout_flags(ids, segments, share=0.05, salt=SALT)
    large = holdout_flags(ids, segments, share=0.10, salt=SALT)
    assert (large | ~small).all()  # small implies large
    assert large.sum() > small.sum()


def test_per_segment_share_overrides():
    ids = many()
    segments = np.array(["A", "B", "C"], dtype=object)[np.arange(len(ids)) % 3]
    flags = holdout_flags(ids, segments, share=0.05, salt=SALT, segment_shares={"B": 0.3, "C": 0.0})
    by = pd.Series(flags).groupby(segments).mean()
    assert abs(by["A"] - 0.05) < 0.006
    assert abs(by["B"] - 0.30) < 0.012
    assert by["C"] == 0.0


def test_segments_are_independent():
    ids = many()
    a = holdout_flags(ids, np.full(len(ids), "A", dtype=object), share=0.2, salt=SALT)
    b = holdout_flags(ids, np.full(len(ids), "B", dtype=object), share=0.2, salt=SALT)
    both = (a & b).mean()
    sd = (0.04 * 0.96 / len(ids)) ** 0.5
    assert abs(both - 0.2 * 0.2) < 4 * sd  # not 0.2: a different group per segment
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.015


def test_noise_and_unsegmented_are_never_held_out():
    assert NOISE_SEGMENT_ID == combine.NOISE_SEGMENT_ID
    ids = many(5000)
    segments = np.array([NOISE_SEGMENT_ID, None, np.nan, "A"], dtype=object)[np.arange(5000) % 4]
    flags = holdout_flags(ids, segments, share=1.0, salt=SALT)
    assert flags.tolist() == [s == "A" for s in segments]
    assert holdout_flags([], [], share=0.5, salt=SALT).shape == (0,)


def test_bad_arguments():
    with pytest.raises(ValueError, match="differ in length"):
        holdout_flags(["a", "b"], ["A"], share=0.1, salt=SALT)
    with pytest.raises(ValueError, match="share must be in"):
        holdout_flags(["a"], ["A"], share=1.5, salt=SALT)
    with pytest.raises(ValueError, match="segment_shares"):
        holdout_flags(["a"], ["A"], share=0.1, salt=SALT, segment_shares={"A": -0.1})
    with pytest.raises(ValueError, match="salt"):
        holdout_flags(["a"], ["A"], share=0.1, salt="")
    with pytest.raises(ValueError, match="null"):
        holdout_flags(["a", None], ["A", "A"], share=0.1, salt=SALT)


def test_fast_enough_for_a_million_members():
    import time

    ids = many(1_000_000)
    segments = np.array(["A", "B", "C", "noise"], dtype=object)[np.arange(len(ids)) % 4]
    start = time.perf_counter()
    flags = holdout_flags(ids, segments, share=0.05, salt=SALT)
    assert time.perf_counter() - start < 5.0  # about 0.6 s measured; generous for CI
    assert 0.03 < flags.mean() < 0.045


# --------------------------------------------------------------------------- compare_holdout


def outcome_frame(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for segment, name, n, held_n, lift in (("A", "loyal", 400, 60, 0.5), ("B", "new", 50, 10, 0)):
        k = n + held_n
        held = np.r_[np.zeros(n, dtype=bool), np.ones(held_n, dtype=bool)]
        purchases = rng.poisson(1.0 + lift * ~held).astype(float)
        parts.append(
            pd.DataFrame(
                {
                    "client_id": [f"{segment}{i}" for i in range(k)],
                    "segment_id": segment,
                    "segment_name": name,
                    "holdout": held,
                    "days_since_entry": rng.integers(0, 30, k),
                    "purchases": purchases,
                    "spend": purchases * rng.gamma(2.0, 20.0, k) - rng.binomial(1, 0.1, k) * 5,
                }
            )
        )
    noise = pd.DataFrame(
        {
            "segment_id": NOISE_SEGMENT_ID,
            "segment_name": "unclustered",
            "holdout": False,
            "days_since_entry": 3,
            "purchases": np.ones(40),
            "spend": np.ones(40),
        }
    )
    return pd.concat([*parts, noise], ignore_index=True)


def test_compare_holdout_matches_scipy_welch():
    frame = outcome_frame()
    out = compare_holdout(frame, confidence=0.9)
    assert list(out.columns) == HOLDOUT_OUTCOME_COLUMNS
    assert out["segment_id"].tolist() == ["A", "B"]  # largest first; noise left out
    row = out.iloc[0]
    a = frame[frame["segment_id"] == "A"]
    assert (row["treated_clients"], row["holdout_clients"]) == (400, 60)
    assert row["segment_name"] == "loyal"
    assert row["days_after_entry_mean"] == pytest.approx(a["days_since_entry"].mean())
    for metric in ("purchases", "spend"):
        treated = a.loc[~a["holdout"], metric].to_numpy()
        held = a.loc[a["holdout"], metric].to_numpy()
        result = stats.ttest_ind(treated, held, equal_var=False)
        ci = result.confidence_interval(confidence_level=0.9)
        assert row[f"treated_{metric}_mean"] == pytest.approx(treated.mean())
        assert row[f"holdout_{metric}_mean"] == pytest.approx(held.mean())
        assert row[f"{metric}_diff"] == pytest.approx(treated.mean() - held.mean())
        assert row[f"{metric}_diff_low"] == pytest.approx(ci.low, rel=1e-9)
        assert row[f"{metric}_diff_high"] == pytest.approx(ci.high, rel=1e-9)
    assert pd.isna(row["note"])
    # a higher confidence gives a wider interval around the same difference
    wide = compare_holdout(frame, confidence=0.99).iloc[0]
    assert wide["purchases_diff_low"] < row["purchases_diff_low"]
    assert wide["purchases_diff_high"] > row["purchases_diff_high"]


def test_hand_computed_interval():
    frame = pd.DataFrame(
        {
            "segment_id": "S",
            "segment_name": "s",
            "holdout": [False] * 4 + [True] * 3,
            "days_since_entry": 1,
            "purchases": [1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 2.0],
            "spend": [0.0] * 7,
        }
    )
    row = compare_holdout(frame, min_clients=3).iloc[0]
    # treated mean 2.5, var 5/3; holdout mean 1, var 1: se^2 = 5/12 + 1/3 = 0.75
    se2, a, b = 0.75, 5 / 12, 1 / 3
    df = se2**2 / (a**2 / 3 + b**2 / 2)
    half = stats.t.ppf(0.975, df) * se2**0.5
    assert row["purchases_diff"] == pytest.approx(1.5)
    assert row["purchases_diff_low"] == pytest.approx(1.5 - half)
    assert row["purchases_diff_high"] == pytest.approx(1.5 + half)
    # neither group varies: a zero-width interval at the difference
    assert (row["spend_diff"], row["spend_diff_low"], row["spend_diff_high"]) == (0.0, 0.0, 0.0)


def test_too_few_clients():
    out = compare_holdout(outcome_frame(), min_clients=30)
    row = out.set_index("segment_id").loc["B"]
    assert (row["treated_clients"], row["holdout_clients"]) == (50, 10)
    assert row["note"] == "too few clients"
    assert np.isfinite(row["treated_purchases_mean"]) and np.isfinite(row["holdout_spend_mean"])
    for column in ("purchases_diff", "purchases_diff_low", "spend_diff", "spend_diff_high"):
        assert pd.isna(row[column])
    # nobody held out: the holdout means are null
    none_held = outcome_frame().assign(holdout=False)
    row = compare_holdout(none_held).iloc[0]
    assert row["holdout_clients"] == 0 and pd.isna(row["holdout_purchases_mean"])
    assert row["note"] == "too few clients"


def test_compare_holdout_empty_and_bad_input():
    empty = compare_holdout(outcome_frame().iloc[:0])
    assert list(empty.columns) == HOLDOUT_OUTCOME_COLUMNS and len(empty) == 0
    with pytest.raises(ValueError, match="no column"):
        compare_holdout(outcome_frame().drop(columns="spend"))
    with pytest.raises(ValueError, match="confidence"):
        compare_holdout(outcome_frame(), confidence=95)
    with pytest.raises(ValueError, match="purchases"):
        compare_holdout(outcome_frame().assign(purchases=np.nan))
