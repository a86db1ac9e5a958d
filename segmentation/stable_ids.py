"""Stable segment identities across refits: match new clusters to the previous model's segments.

Matching runs in two stages, each an optimal one-to-one (Hungarian) assignment:
1. membership overlap: Jaccard index of the client sets on the clients both models assign
   (noise excluded); pairs at or above `min_overlap` are matched;
2. profile distance: the clusters left on either side are matched by the distance between
   their centres in the new model's scaled feature space (root mean square per feature);
   pairs at or below `max_profile_distance` are matched.
A matched cluster keeps the previous segment id (and name); an unmatched new cluster gets the
next unused id ("C007"); an unmatched previous segment is retired. Ids are never reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

ID_PREFIX = "C"
NOISE_ID = "noise"


@dataclass(frozen=True)
class IdMatch:
    """The outcome of matching: id per new cluster label, how it was found, new and retired ids."""

    ids: dict[int, str]
    how: dict[int, str]  # "overlap" | "profile" | "new"
    score: dict[int, float]  # Jaccard for overlap matches, distance for profile matches
    new: list[str]
    retired: list[str]
    next_number: int
    kept: list[str] = field(default_factory=list)


def format_segment_id(number: int) -> str:
    """The stable id of the number-th cluster segment ever created: 1 -> "C001"."""
    return f"{ID_PREFIX}{number:03d}"


def fresh_ids(sizes: pd.Series, next_number: int = 1) -> IdMatch:
    """Ids for a first fit: by decreasing cluster size (ties by label), from `next_number`."""
    labels = _by_size(sizes)
    ids = {label: format_segment_id(next_number + i) for i, label in enumerate(labels)}
    return IdMatch(
        ids=ids,
        how=dict.fromkeys(ids, "new"),
        score=dict.fromkeys(ids, float("nan")),
        new=list(ids.values()),
        retired=[],
        next_number=next_number + len(ids),
    )


def match_cluster_ids(
    previous_assignments: pd.Series,
    new_assignments: pd.Series,
    previous_centers: pd.DataFrame | None,
    new_centers: pd.DataFrame | None,
    next_number: int,
    previous_segments: list[str] | None = None,
    min_overlap: float = 0.3,
    max_profile_distance: float = 1.0,
) -> IdMatch:
    """Match the new clusters to the previous segments (see module docstring).

    previous_assignments: segment id per client (index client_id; noise/None ignored).
    new_assignments: cluster label per client (index client_id; -1 = noise), every client of
    the new fit (its sizes order the new ids). previous_centers / new_centers: one row per
    previous segment id / new label, same columns, in one common space. previous_segments:
    every segment id of the previous model (defaults to those seen in the inputs).
    next_number: the next unused id number.
    """
    prev = previous_assignments.dropna()
    prev = prev[prev.astype(str) != NOISE_ID].astype(str)
    new = new_assignments[new_assignments >= 0].astype(int)
    sizes = new.value_counts()
    new_labels = _by_size(sizes)
    known = set(previous_segments or [])
    known |= set(prev.unique())
    if previous_centers is not None:
        known |= {str(s) for s in previous_centers.index}
    prev_ids = sorted(known)

    ids: dict[int, str] = {}
    how: dict[int, str] = {}
    score: dict[int, float] = {}

    # 1. overlap on shared clients
    shared = prev.index.intersection(new.index)
    if len(shared) and prev_ids and new_labels:
        jac = _jaccard(prev.loc[shared], new.loc[shared], prev_ids, new_labels)
        # pairs below the bound weigh nothing, so they never displace an acceptable pair
        rows, cols = linear_sum_assignment(-np.where(jac >= min_overlap, jac, 0.0))
        for r, c in zip(rows, cols, strict=True):
            if jac[r, c] >= min_overlap:
                ids[new_labels[c]] = prev_ids[r]
                how[new_labels[c]] = "overlap"
                score[new_labels[c]] = round(float(jac[r, c]), 4)

    # 2. profile distance among the rest
    rest_new = [c for c in new_labels if c not in ids]
    used = set(ids.values())
    rest_prev = [s for s in prev_ids if s not in used]
    if rest_new and rest_prev and previous_centers is not None and new_centers is not None:
        pc = previous_centers.rename(index=str)
        rest_prev = [s for s in rest_prev if s in pc.index]
        rest_new_c = [c for c in rest_new if c in new_centers.index]
        if rest_prev and rest_new_c:
            cols_ = [c for c in new_centers.columns if c in pc.columns]
            a = pc.loc[rest_prev, cols_].to_numpy(dtype=float)
            b = new_centers.loc[rest_new_c, cols_].to_numpy(dtype=float)
            dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).mean(axis=2))
            big = 1e6 + dist.max(initial=0.0)
            rows, cols = linear_sum_assignment(np.where(dist <= max_profile_distance, dist, big))
            for r, c in zip(rows, cols, strict=True):
                if dist[r, c] <= max_profile_distance:
                    ids[rest_new_c[c]] = rest_prev[r]
                    how[rest_new_c[c]] = "profile"
                    score[rest_new_c[c]] = round(float(dist[r, c]), 4)

    # 3. new ids for the rest, by size
    issued: list[str] = []
    for label in new_labels:
        if label not in ids:
            ids[label] = format_segment_id(next_number)
            how[label] = "new"
            score[label] = float("nan")
            issued.append(ids[label])
            next_number += 1
    kept = sorted(set(ids.values()) - set(issued))
    retired = [s for s in prev_ids if s not in kept]
    return IdMatch(ids, how, score, issued, retired, next_number, kept)


def stability(previous_ids: pd.Series, new_ids: pd.Series) -> dict[str, float]:
    """Agreement of two segment-id assignments on their shared clients.

    ari: adjusted Rand index (noise counts as one label); kept_share: share of the shared
    clients in a previous cluster segment that keep the same segment id.
    """
    shared = previous_ids.index.intersection(new_ids.index)
    if len(shared) == 0:
        return {"ari": float("nan"), "kept_share": float("nan"), "shared_clients": 0}
    a = previous_ids.loc[shared].fillna(NOISE_ID).astype(str)
    b = new_ids.loc[shared].fillna(NOISE_ID).astype(str)
    in_segment = a != NOISE_ID
    kept = float((a[in_segment] == b[in_segment]).mean()) if in_segment.any() else float("nan")
    return {
        "ari": round(float(adjusted_rand_score(a, b)), 4),
        "kept_share": round(kept, 4),
        "shared_clients": len(shared),
    }


def _jaccard(
    prev: pd.Series, new: pd.Series, prev_ids: list[str], new_labels: list[int]
) -> np.ndarray:
    table = pd.crosstab(prev, new).reindex(index=prev_ids, columns=new_labels, fill_value=0)
    inter = table.to_numpy(dtype=float)
    a = prev.value_counts().reindex(prev_ids, fill_value=0).to_numpy(dtype=float)
    b = new.value_counts().reindex(new_labels, fill_value=0).to_numpy(dtype=float)
    union = a[:, None] + b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _by_size(sizes: pd.Series) -> list[int]:
    pairs = zip(sizes.index.to_numpy(), sizes.to_numpy(), strict=True)
    items = [(int(label), int(n)) for label, n in pairs if int(label) >= 0]
    return [label for label, _ in sorted(items, key=lambda t: (-t[1], t[0]))]
