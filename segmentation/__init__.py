"""Who is in which segment and why: clusters, stable ids, profiles, rules, combining, dynamics.

Layer: pure domain, above `features`. May import `features` and `configs`; never `models`
(its sibling) or `pipelines`, nor DuckDB, SQLAlchemy, psycopg, MLflow, Prefect or plotly
(import-linter contracts in pyproject.toml; docs/architecture.md). It takes and returns
pandas frames.

Modules: `clustering` (ClusterModel), `assigner`, `stable_ids`, `profiles`, `expressions` and
`rules` (the rule language and rule sets), `combine` (one membership row per client),
`dynamics` (history and transitions), `drift`. The names below are their public entry
points, imported lazily (PEP 562): `import segmentation` imports neither scikit-learn nor
hdbscan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from configs import lazy_exports

if TYPE_CHECKING:
    from segmentation.clustering import ClusterModel
    from segmentation.combine import (
        MEMBERSHIP_COLUMNS,
        SEGMENT_COLUMNS,
        assign_segments,
        segment_definitions,
    )
    from segmentation.drift import DriftReference, fit_reference, psi
    from segmentation.dynamics import compute_transitions, entries_exits
    from segmentation.expressions import RuleError
    from segmentation.profiles import check_name, cluster_profiles, name_profiles
    from segmentation.reasons import cluster_reasons, lifecycle_reasons, rule_reasons
    from segmentation.rules import Rule, RuleSet, RuleSetError, load_rules, rules_from_mapping
    from segmentation.stable_ids import IdMatch, match_cluster_ids, stability

__all__ = [
    "MEMBERSHIP_COLUMNS",
    "SEGMENT_COLUMNS",
    "ClusterModel",
    "DriftReference",
    "IdMatch",
    "Rule",
    "RuleError",
    "RuleSet",
    "RuleSetError",
    "assign_segments",
    "check_name",
    "cluster_profiles",
    "cluster_reasons",
    "compute_transitions",
    "entries_exits",
    "fit_reference",
    "lifecycle_reasons",
    "load_rules",
    "match_cluster_ids",
    "name_profiles",
    "psi",
    "rule_reasons",
    "rules_from_mapping",
    "segment_definitions",
    "stability",
]

# Where each public name lives; `__getattr__` imports it from there on first use.
_EXPORTS: dict[str, str] = {
    "ClusterModel": "segmentation.clustering",
    "MEMBERSHIP_COLUMNS": "segmentation.combine",
    "SEGMENT_COLUMNS": "segmentation.combine",
    "assign_segments": "segmentation.combine",
    "segment_definitions": "segmentation.combine",
    "DriftReference": "segmentation.drift",
    "fit_reference": "segmentation.drift",
    "psi": "segmentation.drift",
    "compute_transitions": "segmentation.dynamics",
    "entries_exits": "segmentation.dynamics",
    "RuleError": "segmentation.expressions",
    "cluster_profiles": "segmentation.profiles",
    "name_profiles": "segmentation.profiles",
    "check_name": "segmentation.profiles",
    "cluster_reasons": "segmentation.reasons",
    "lifecycle_reasons": "segmentation.reasons",
    "rule_reasons": "segmentation.reasons",
    "Rule": "segmentation.rules",
    "RuleSet": "segmentation.rules",
    "RuleSetError": "segmentation.rules",
    "load_rules": "segmentation.rules",
    "rules_from_mapping": "segmentation.rules",
    "IdMatch": "segmentation.stable_ids",
    "match_cluster_ids": "segmentation.stable_ids",
    "stability": "segmentation.stable_ids",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
