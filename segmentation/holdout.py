"""Holdout groups: members held out of a segment's campaigns, and the lift they measure.

Per segment, a configured share of the members is held out of campaigns (`holdout` in the
membership; destinations leave them out). Comparing what held-out and treated members do after
entering the segment measures what the campaigns add: because who is held out is decided by a
hash, not by anything the client did, the two groups differ only by the campaigns.

The draw. A client is held out of a segment when a hash of (salt, segment id, client id),
mapped to a number u in [0, 1), is below the segment's share (`holdout.segments` overrides
`holdout.share`). The hash is BLAKE2b (8-byte digest) of the UTF-8 bytes

    f"{len(salt_bytes)}:" + salt_bytes + f"{len(segment_bytes)}:" + segment_bytes + client_bytes

(lengths in bytes, so no two triples share a message), and u is the digest's first 53 bits
as a big-endian integer over 2**53 (exact in a float). It depends on nothing else: the same
client is held out of the same segment on every run, machine and Python version while the salt
stays (a new salt draws a new group); a client's draws in different segments are independent,
so the held-out members of one segment are not those of another; raising the share only adds
members to the group (u below the old share stays below the new one). Noise and unsegmented
rows (segment id null or NOISE_SEGMENT_ID) are never held out: no campaign targets them.

The comparison (`compare_holdout`): per segment, the mean purchases and spend per member after
entry, treated minus held out, with Welch's t interval on the difference of means (unequal
variances and group sizes, as a 5 % holdout has).

Pure: numpy, pandas and scipy; no database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

# combine.NOISE_SEGMENT_ID (combine imports this module, so the value is repeated here; a test
# checks that the two agree).
NOISE_SEGMENT_ID = "noise"
_DIGEST_BYTES = 8
_U_BITS = 53
TOO_FEW = "too few clients"

# The columns of `compare_holdout` (the store's `holdout_outcomes` table adds as_of and run_id).
HOLDOUT_OUTCOME_COLUMNS = [
    "segment_id",
    "segment_name",
    "treated_clients",
    "holdout_clients",
    "days_after_entry_mean",
    "treated_purchases_mean",
    "holdout_purchases_mean",
    "purchases_diff",
    "purchases_diff_low",
    "purchases_diff_high",
    "treated_spend_mean",
    "holdout_spend_mean",
    "spend_diff",
    "spend_diff_low",
    "spend_diff_high",
    "note",
]
OUTCOME_INPUT_COLUMNS = (
    "segment_id",
    "segment_name",
    "holdout",
    "days_since_entry",
    "purchases",
    "spend",
)
_METRICS = ("purchases", "spend")


def holdout_flags(
    client_ids: Sequence[Any] | pd.Series | np.ndarray,
    segment_ids: Sequence[Any] | pd.Series | np.ndarray,
    *,
    share: float,
    salt: str,
    segment_shares: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Whether each (client, segment) row is held out of the segment's campaigns.

    Parameters
    ----------
    client_ids, segment_ids : sequences of the same length
        One row per membership; ids are hashed as their text (``str(id)``). A null segment id
        or NOISE_SEGMENT_ID is never held out.
    share : float in [0, 1]
        The share of each segment's members held out.
    salt : str
        Part of the hash; a new salt draws a new group.
    segment_shares : mapping of segment id to share, optional
        Per-segment shares overriding `share`.

    Returns
    -------
    numpy.ndarray of bool
        Aligned with the inputs. Deterministic (see the module docstring for the exact hash).

    Raises
    ------
    ValueError
        The lengths differ, a client id is null, a share is outside [0, 1], or the salt is
        empty.
    """
    clients = _object_array(client_ids)
    segments = _object_array(segment_ids)
    if len(clients) != len(segments):
        raise ValueError(
            f"client_ids and segment_ids differ in length ({len(clients)} and {len(segments)})"
        )
    if not isinstance(salt, str) or not salt:
        raise ValueError("salt must be a non-empty string")
    if pd.isna(clients).any():
        raise ValueError(f"client_ids: {int(pd.isna(clients).sum())} are null")
    shares = {
        str(k): _share(v, f"segment_shares[{k!r}]") for k, v in (segment_shares or {}).items()
    }
    default = _share(share, "share")

    out = np.zeros(len(clients), dtype=bool)
    codes, uniques = pd.factorize(segments)  # null segment ids: code -1, never held out
    salt_part = _part(salt.encode("utf-8"))
    for code, value in enumerate(uniques):
        segment = str(value)
        cut = shares.get(segment, default)
        if segment == NOISE_SEGMENT_ID or cut <= 0.0:
            continue
        where = np.flatnonzero(codes == code)
        prefix = salt_part + _part(segment.encode("utf-8"))
        out[where] = _uniform(prefix, clients[where]) < cut
    return out


def holdout_uniform(salt: str, segment_id: str, client_id: str) -> float:
    """The draw u in [0, 1) of one (salt, segment, client): held out when u < the share."""
    prefix = _part(salt.encode("utf-8")) + _part(str(segment_id).encode("utf-8"))
    return float(_uniform(prefix, np.array([client_id], dtype=object))[0])


def compare_holdout(
    frame: pd.DataFrame, *, confidence: float = 0.95, min_clients: int = 30
) -> pd.DataFrame:
    """Per segment: treated against held-out members' purchases and spend after entry.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per current member: segment_id, segment_name, holdout (bool), days_since_entry,
        purchases and spend (after their entry into the segment, e.g. from
        `features.outcomes.outcomes_since`). Rows of the noise segment or with no segment id
        are left out: nobody is held out of them.
    confidence : float in (0, 1), default 0.95
        The confidence level of the intervals.
    min_clients : int, default 30
        Fewer members than this on either side: counts and means are shown, the difference and
        its interval are null and `note` says "too few clients".

    Returns
    -------
    pandas.DataFrame
        One row per segment, largest first (ties by segment id), with exactly
        HOLDOUT_OUTCOME_COLUMNS. ``*_diff`` = treated mean - holdout mean (the campaigns' lift
        per member); ``*_diff_low``/``*_diff_high`` the Welch t interval at `confidence`
        (degenerate at the difference when neither group varies). ``days_after_entry_mean`` is
        over all members; a mean of an empty group is null; `note` is null when nothing needs
        saying.

    Raises
    ------
    ValueError
        A column is missing, a value is null or not finite, or a parameter is out of range.
    """
    data = _outcome_input(frame, confidence, min_clients)
    rows = [
        _segment_row(segment_id, group, confidence, min_clients)
        for segment_id, group in data.groupby("segment_id", sort=False)
    ]
    out = pd.DataFrame(rows, columns=HOLDOUT_OUTCOME_COLUMNS)
    size = out["treated_clients"] + out["holdout_clients"]
    order = np.lexsort((out["segment_id"].astype(str).to_numpy(), -size.to_numpy()))
    out = out.iloc[order].reset_index(drop=True)
    counts = ["treated_clients", "holdout_clients"]
    floats = [c for c in HOLDOUT_OUTCOME_COLUMNS if c.endswith(("_mean", "_diff", "_low", "_high"))]
    return out.astype({**dict.fromkeys(counts, "int64"), **dict.fromkeys(floats, "float64")})


def welch_interval(
    treated: np.ndarray, holdout: np.ndarray, confidence: float
) -> tuple[float, float, float]:
    """mean(treated) - mean(holdout) and its Welch t interval at `confidence` (both groups
    need two values or more; a difference with no variance has a zero-width interval)."""
    from scipy import stats

    n1, n2 = len(treated), len(holdout)
    diff = float(np.mean(treated) - np.mean(holdout))
    a = float(np.var(treated, ddof=1)) / n1
    b = float(np.var(holdout, ddof=1)) / n2
    se2 = a + b
    if se2 <= 0.0:
        return diff, diff, diff
    df = se2**2 / (a**2 / (n1 - 1) + b**2 / (n2 - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se2**0.5
    return diff, diff - half, diff + half


def _segment_row(
    segment_id: object, group: pd.DataFrame, confidence: float, min_clients: int
) -> dict[str, object]:
    held = group["holdout"].to_numpy(dtype=bool)
    treated, holdout = group.loc[~held], group.loc[held]
    row: dict[str, object] = {
        "segment_id": segment_id,
        "segment_name": _first_name(group["segment_name"]),
        "treated_clients": len(treated),
        "holdout_clients": len(holdout),
        "days_after_entry_mean": _mean(group["days_since_entry"]),
        "note": None,
    }
    enough = min(len(treated), len(holdout)) >= min_clients
    for metric in _METRICS:
        row[f"treated_{metric}_mean"] = _mean(treated[metric])
        row[f"holdout_{metric}_mean"] = _mean(holdout[metric])
        diff = low = high = np.nan
        if enough:
            diff, low, high = welch_interval(
                treated[metric].to_numpy(dtype=float),
                holdout[metric].to_numpy(dtype=float),
                confidence,
            )
        row[f"{metric}_diff"], row[f"{metric}_diff_low"], row[f"{metric}_diff_high"] = (
            diff,
            low,
            high,
        )
    if not enough:
        row["note"] = TOO_FEW
    return row


def _outcome_input(frame: pd.DataFrame, confidence: float, min_clients: int) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in OUTCOME_INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"frame has no column(s) {missing}")
    if isinstance(confidence, bool) or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 2:
        raise ValueError(f"min_clients must be an integer >= 2, got {min_clients!r}")
    segment = frame["segment_id"]
    keep = segment.notna().to_numpy() & (segment.astype(object) != NOISE_SEGMENT_ID).to_numpy()
    data = frame.loc[keep, list(OUTCOME_INPUT_COLUMNS)]
    if data["holdout"].isna().any():
        raise ValueError("holdout has null values")
    data = data.assign(holdout=data["holdout"].astype(bool))
    for column in ("days_since_entry", *_METRICS):
        values = pd.to_numeric(data[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(f"{column}: {int(bad.sum())} values are null or not numbers")
        data[column] = values
    return data


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else np.nan


def _first_name(names: pd.Series) -> object:
    known = names.dropna()
    return known.iloc[0] if len(known) else None


def _share(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
    share = float(value)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value!r}")
    return share


def _object_array(values: Sequence[Any] | pd.Series | np.ndarray) -> np.ndarray:
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype=object)
    return np.asarray(values, dtype=object).reshape(-1)


def _part(data: bytes) -> bytes:
    """A self-delimiting field: its length in bytes, a colon, the bytes."""
    return str(len(data)).encode("ascii") + b":" + data


def _uniform(prefix: bytes, clients: np.ndarray) -> np.ndarray:
    """u in [0, 1) per client: the first 53 bits of BLAKE2b(prefix + client id) / 2**53."""
    # Hashing continues from a copy of the prefix's state: a third faster than hashing
    # prefix + id afresh (1M ids: about 0.6 s).
    copy = hashlib.blake2b(prefix, digest_size=_DIGEST_BYTES).copy

    def digest(client: object) -> bytes:
        state = copy()
        state.update(str(client).encode("utf-8"))
        return state.digest()

    words = np.frombuffer(b"".join(map(digest, clients.tolist())), dtype=">u8")
    return (words >> np.uint64(64 - _U_BITS)).astype(np.float64) / float(2**_U_BITS)
