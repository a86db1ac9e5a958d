"""Why each client is in their segment, in words, with the client's own values.

Rule reasons (`rule_reasons`, `lifecycle_reasons`) walk the rule's parsed condition and say
the client's values for the features it reads, in the order the condition names them, with
the catalog's labels and units (segmentation.wording): the rule
``carts_abandoned_90d >= 2 and purchases_90d == 0`` reads, for one client, "3 carts abandoned
in the last 90 days, no purchase since 2026-05-02". Of an ``or``, only the branches that hold
for the client are said. A member kept by the rule's `stay_when` (hysteresis) reads
"kept in the segment: ..." with the values of the stay condition.

Cluster reasons (`cluster_reasons`) pick, per client, the two or three features on which the
client is most like its segment's profile and far from the population: the segment's shift
on the feature (its robust z-score, segmentation.profiles) must be at least MIN_SHIFT, and the
client must be on the same side, at least half way to it and at least MIN_SHIFT scale units
from the population's median; among those, the features where the client shares most of a
large shift come first, one feature per topic (a plain and a recency-weighted mix are one):
"share of store activity: 82% (typical 12%); 1.4 repeat purchases per active month (typical 0.50)".
Measured on 1M synthetic clients: rule reasons 0.5-1.3 s, cluster reasons 2-3 s (a loaded
2-core machine).

No reason holds a column name or a z-score. Everything is vectorized over clients: the rules
are evaluated on whole columns and each distinct shown value is formatted once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from segmentation.expressions import Logical, Name, Node, evaluate
from segmentation.profiles import MIN_SHIFT, shift_stats
from segmentation.rules import Rule, RuleSet
from segmentation.wording import number, say, topic, words_for

KEPT_PREFIX = "kept in the segment: "
NO_TRAIT = (
    "close to this segment's overall profile, with no single trait far from the typical client"
)
MAX_CLUSTER_FEATURES = 3


# --------------------------------------------------------------------------------------------
# Rules


def rule_reasons(
    rules: RuleSet,
    frame: pd.DataFrame,
    segment_ids: Sequence[object] | np.ndarray,
    stayed: Sequence[bool] | np.ndarray | None = None,
    as_of: date | None = None,
) -> np.ndarray:
    """Per row of `frame`, why the segment rule with that segment id took the client.

    Parameters
    ----------
    rules : RuleSet
        The rules; `segment_ids` refer to its segment rules.
    frame : pandas.DataFrame
        The frame the rules were evaluated on (features, scores and `lifecycle_stage`), one
        row per client; absent columns read as null.
    segment_ids : array-like
        Per row, the segment id of the rule that took the client (`SegmentMatch.segment_id`),
        None where none did.
    stayed : array-like of bool, optional
        Per row, whether the client was kept by the rule's `stay_when` (`SegmentMatch.stayed`).
    as_of : date, optional
        The as-of date: days read as dates and empty windows as "no purchase since <date>".

    Returns
    -------
    numpy.ndarray
        Object array of texts, None where no rule took the client.
    """
    by_id = {rule.segment_id: rule for rule in rules.segment_rules}
    return _reasons(by_id, frame, segment_ids, stayed, as_of)


def lifecycle_reasons(
    rules: RuleSet,
    frame: pd.DataFrame,
    rule_names: Sequence[object] | np.ndarray,
    as_of: date | None = None,
) -> np.ndarray:
    """Per row, why the lifecycle rule named in `rule_names` (`RuleSet.assign_lifecycle`'s
    second array) gave the client its stage; the fallback ``true`` reads as its description."""
    by_name = {rule.name: rule for rule in rules.lifecycle_rules}
    return _reasons(by_name, frame, rule_names, None, as_of)


def condition_reasons(
    condition: Node, frame: pd.DataFrame, as_of: date | None = None, otherwise: str = ""
) -> np.ndarray:
    """Every row's values for the features `condition` reads, in words, joined by commas.

    Of an ``or``, the branches that hold for the row are said (all of them where none holds);
    a condition that reads no feature gives `otherwise`.
    """
    names = names_in_order(condition)
    if not names:
        return np.full(len(frame), otherwise, dtype=object)
    shown = _shown(condition, frame)
    out = np.full(len(frame), "", dtype=object)
    for name in names:
        values = frame[name] if name in frame.columns else np.full(len(frame), np.nan)
        text = say(name, values, as_of)
        mask = shown[name]
        joined = np.where(out == "", text, out + ", " + text)
        out = np.where(mask, joined, out)
    return out


def names_in_order(node: Node) -> list[str]:
    """The feature names a condition reads, each once, in the order the text names them."""
    found: dict[str, int] = {}
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Name):
            found[current.name] = min(found.get(current.name, current.pos), current.pos)
        stack.extend(current.children())
    return sorted(found, key=lambda name: found[name])


def _reasons(
    by_key: Mapping[Any, Rule],
    frame: pd.DataFrame,
    keys: Sequence[object] | np.ndarray,
    stayed: Sequence[bool] | np.ndarray | None,
    as_of: date | None,
) -> np.ndarray:
    keys = np.asarray(keys, dtype=object)
    if len(keys) != len(frame):
        raise ValueError(f"{len(keys)} rule keys for {len(frame)} rows")
    kept = np.zeros(len(keys), dtype=bool) if stayed is None else np.asarray(stayed, dtype=bool)
    out = np.full(len(keys), None, dtype=object)
    codes, uniques = pd.factorize(pd.Series(keys), use_na_sentinel=True)
    for code, key in enumerate(uniques):
        rule = by_key.get(key)
        if rule is None:
            continue
        rows = codes == code
        for keep in (False, True):
            part = np.flatnonzero(rows & (kept == keep))
            condition = rule.stay_expression if keep else rule.expression
            if not len(part) or condition is None:
                continue
            columns = [c for c in names_in_order(condition) if c in frame.columns]
            text = condition_reasons(
                condition,
                frame[columns].iloc[part].reset_index(drop=True),
                as_of,
                otherwise=rule.description or "no other rule applies",
            )
            out[part] = KEPT_PREFIX + text if keep else text
    return out


def _shown(node: Node, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per feature name of `node`, the rows whose reason should say it."""
    n = len(frame)
    if not isinstance(node, Logical):
        return {name: np.ones(n, dtype=bool) for name in names_in_order(node)}
    terms = _chain(node)
    shown: dict[str, np.ndarray] = {}
    if node.op == "and":
        for term in terms:
            _merge(shown, _shown(term, frame))
        return shown
    absent = [name for name in names_in_order(node) if name not in frame.columns]
    holds = [evaluate(term, frame, missing_as_null=absent) for term in terms]
    none_holds = ~np.logical_or.reduce(holds)
    for term, hold in zip(terms, holds, strict=True):
        _merge(shown, {k: v & (hold | none_holds) for k, v in _shown(term, frame).items()})
    return shown


def _chain(node: Logical) -> list[Node]:
    """The terms of a chain of one operator (``a and b and c``), left to right, no recursion."""
    terms: list[Node] = []
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Logical) and current.op == node.op:
            stack.extend((current.right, current.left))
        else:
            terms.append(current)
    return terms


def _merge(into: dict[str, np.ndarray], more: Mapping[str, np.ndarray]) -> None:
    for name, mask in more.items():
        into[name] = into[name] | mask if name in into else mask


# --------------------------------------------------------------------------------------------
# Clusters


def cluster_reasons(
    frame: pd.DataFrame,
    segment_ids: Sequence[object] | np.ndarray,
    profiles: Mapping[str, Mapping[str, Any]],
    top: int = MAX_CLUSTER_FEATURES,
) -> np.ndarray:
    """Per row, the features on which the client is most like its segment, in words.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per client with the profiled features (e.g. the feature table).
    segment_ids : array-like
        Per row, the client's cluster segment id; ids not in `profiles` (rules, noise) get None.
    profiles : mapping of str to dict
        Segment id -> profile from `segmentation.profiles.cluster_profiles` (as in
        `ClusterModel.profiles_`): per feature "z", and "population" with "median" and
        "scale". A profile without "population" (a model saved before it) is compared with
        the population of `frame`.
    top : int, default 3
        The most features said per client.

    Returns
    -------
    numpy.ndarray
        Object array: e.g. "share of store activity: 82% (typical 12%); 1.4 purchases per
        active month (typical 0.50)", or NO_TRAIT when no feature of the
        client stands out; None for rows outside `profiles`.
    """
    segment_ids = np.asarray(segment_ids, dtype=object)
    if len(segment_ids) != len(frame):
        raise ValueError(f"{len(segment_ids)} segment ids for {len(frame)} rows")
    ids = [sid for sid, p in profiles.items() if isinstance(p.get("z"), Mapping) and p["z"]]
    features = sorted({f for sid in ids for f in profiles[sid]["z"]} & set(frame.columns))
    out = np.full(len(frame), None, dtype=object)
    index = pd.Index(ids).get_indexer(pd.Index(segment_ids)) if ids else np.full(len(frame), -1)
    rows = np.flatnonzero(index >= 0)
    if not len(rows) or not features:
        out[rows] = NO_TRAIT
        return out
    values = frame[features].iloc[rows].apply(pd.to_numeric, errors="coerce")
    x = values.to_numpy(dtype=np.float64, na_value=np.nan)
    z = np.array([[_finite(profiles[sid]["z"].get(f)) for f in features] for sid in ids])
    median, scale = _population(profiles, ids, features, frame)
    score = _one_per_topic(features, _scores(x, z[index[rows]], median, scale))
    out[rows] = _texts(features, x, score, median, top)
    return out


def _scores(x: np.ndarray, z: np.ndarray, median: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """How far each client shares its segment's shift on each feature; -inf where it does not
    qualify (segment shift under MIN_SHIFT, client short of half of it or of MIN_SHIFT)."""
    shift = np.abs(z)
    with np.errstate(divide="ignore", invalid="ignore"):
        toward = np.sign(z) * (x - median) / np.where(scale > 0, scale, np.nan)
    score = 2 * np.minimum(toward, shift) - shift
    ok = (shift >= MIN_SHIFT) & (toward >= np.maximum(MIN_SHIFT, shift / 2))
    return np.where(ok & np.isfinite(score), score, -np.inf)


def _one_per_topic(features: list[str], score: np.ndarray) -> np.ndarray:
    """Of features of one topic (a plain and a recency-weighted mix, one count over two
    windows), keep the best-scoring one per row: a reason never says the same thing twice."""
    groups: dict[str, list[int]] = {}
    for j, feature in enumerate(features):
        groups.setdefault(topic(feature), []).append(j)
    for columns in groups.values():
        if len(columns) > 1:
            block = score[:, columns]
            best = np.argmax(block, axis=1)
            losers = np.ones_like(block, dtype=bool)
            losers[np.arange(len(block)), best] = False
            block[losers] = -np.inf
            score[:, columns] = block
    return score


def _texts(
    features: list[str], x: np.ndarray, score: np.ndarray, median: np.ndarray, top: int
) -> np.ndarray:
    """The chosen features of every row, said with the client's value and the typical one."""
    n = len(x)
    order = np.argsort(-score, axis=1, kind="stable")[:, :top]
    out = np.full(n, "", dtype=object)
    for slot in range(order.shape[1]):
        column = order[:, slot]
        chosen = score[np.arange(n), column] > -np.inf
        piece = np.full(n, "", dtype=object)
        for j, feature in enumerate(features):
            rows = np.flatnonzero(chosen & (column == j))
            if len(rows):
                typical = number(words_for(feature), _none(median[j]))
                piece[rows] = say(feature, x[rows, j]) + f" (typical {typical})"
        joined = np.where(out == "", piece, out + "; " + piece)
        out = np.where(chosen, joined, out)
    return np.where(out == "", NO_TRAIT, out)


def _population(
    profiles: Mapping[str, Mapping[str, Any]],
    ids: list[str],
    features: list[str],
    frame: pd.DataFrame,
) -> tuple[np.ndarray, np.ndarray]:
    """The population's median and scale per feature: from the profiles, else from `frame`."""
    for sid in ids:
        population = profiles[sid].get("population")
        if isinstance(population, Mapping) and "scale" in population:
            median = [_finite(population["median"].get(f)) for f in features]
            scale = [_finite(population["scale"].get(f)) for f in features]
            return np.array(median), np.array(scale)
    labels = np.full(len(frame), -1)
    stats = shift_stats(frame[features].apply(pd.to_numeric, errors="coerce"), labels, features)
    population = stats.population
    return population.loc["median"].to_numpy(float), population.loc["scale"].to_numpy(float)


def _finite(value: object) -> float:
    if value is None:
        return np.nan
    number_ = float(value)  # type: ignore[arg-type]
    return number_ if np.isfinite(number_) else np.nan


def _none(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)
