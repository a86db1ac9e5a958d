"""Feature drift against a model's training sample: the population stability index (PSI).

The refit policy compares today's feature distributions with those the champion clustering
was fitted on. A reference is a small table of quantile bin edges and shares per feature, so
it travels with the model and holds no client identifiers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

_EPS = 1e-4


@dataclass(frozen=True)
class DriftReference:
    """Bin edges and expected shares per feature, from the training sample."""

    edges: dict[str, np.ndarray]
    shares: dict[str, np.ndarray]


def fit_reference(frame: pd.DataFrame, columns: Sequence[str], bins: int = 10) -> DriftReference:
    """Quantile bins of each numeric column (nulls are a bin of their own)."""
    edges: dict[str, np.ndarray] = {}
    shares: dict[str, np.ndarray] = {}
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            cut = np.array([], dtype=float)
        else:
            cut = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
        edges[column] = cut
        shares[column] = _shares(values, cut)
    return DriftReference(edges=edges, shares=shares)


def psi(reference: DriftReference, frame: pd.DataFrame) -> dict[str, float]:
    """PSI of every reference feature present in `frame`: sum((a - e) * ln(a / e)) over bins."""
    return psi_from_counts(reference, bin_counts(reference, frame), len(frame))


def bin_counts(reference: DriftReference, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per reference feature present in `frame`, its rows per bin of the reference (the null
    bin last): counts add up over parts of the clients, so shards can send these instead of
    their rows."""
    counts: dict[str, np.ndarray] = {}
    for column, cut in reference.edges.items():
        if column not in frame.columns:
            continue
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        counts[column] = _counts(values, cut)
    return counts


def sum_counts(parts: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The `bin_counts` of several parts of the clients (batches, shards), added up."""
    total: dict[str, np.ndarray] = {}
    for part in parts:
        for column, found in part.items():
            total[column] = total[column] + found if column in total else found
    return total


def psi_from_counts(
    reference: DriftReference, counts: dict[str, np.ndarray], rows: int
) -> dict[str, float]:
    """PSI of each feature from its bin counts over `rows` clients (`bin_counts`, summed)."""
    result: dict[str, float] = {}
    for column, found in counts.items():
        shares = found / rows if rows else np.zeros(len(found))
        actual = np.clip(shares, _EPS, None)
        expected = np.clip(reference.shares[column], _EPS, None)
        result[column] = float(np.sum((actual - expected) * np.log(actual / expected)))
    return result


def _shares(values: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Shares of values per bin: len(cut)+1 value bins, then one bin for nulls."""
    n = len(values)
    if n == 0:
        return np.zeros(len(cut) + 2)
    return _counts(values, cut) / n


def _counts(values: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Values per bin: len(cut)+1 value bins, then one bin for nulls (as floats)."""
    finite = np.isfinite(values)
    index = np.searchsorted(cut, values[finite], side="right")
    counts = np.bincount(index, minlength=len(cut) + 1).astype(float)
    return np.append(counts, float((~finite).sum()))
