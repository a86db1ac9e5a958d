"""The rule layer: lifecycle stages and business segments from YAML, checked at load, evaluated on whole columns.

A rules file (configs/rules.yaml) has two sections. ``lifecycle`` gives every client exactly one
stage: rules are tried from the highest priority down, the first that matches wins, and the
lowest-priority rule must be the fallback ``when: true``. ``segments`` are business overrides of
the behavioral clusters: the highest-priority matching rule wins, no match leaves the client
to the clusters (see segmentation.combine). A segment rule may also give ``stay_when``, a
looser condition that keeps a client already in its segment (in the last published membership)
until it no longer holds: hysteresis, so that clients near a threshold do not enter and leave a
segment night after night, each time triggering the campaigns bound to it. Conditions use the language of
segmentation.expressions; every name is checked at load against the known features (the
feature catalog plus the CLTV score columns, and, for segments, ``lifecycle_stage``), so a
typo fails before any data is read, naming the file, the section, the rule and the position.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from configs import ConfigError
from configs.paths import CONFIG_DIR
from segmentation.expressions import (
    NUMBER,
    TEXT,
    Compare,
    InList,
    Literal,
    Name,
    Node,
    RuleError,
    RuleEvaluationError,
    RuleSyntaxError,
    RuleTypeError,
    UnknownFeatureError,
    check_characters,
    compile_expression,
    evaluate,
    known_kinds,
    parse,
)

__all__ = [
    "DEFAULT_RULES_PATH",
    "LIFECYCLE_COLUMN",
    "SCORE_COLUMNS",
    "Rule",
    "RuleError",
    "RuleEvaluationError",
    "RuleSet",
    "RuleSetError",
    "RuleSyntaxError",
    "RuleTypeError",
    "SegmentMatch",
    "UnknownFeatureError",
    "evaluate",
    "load_rules",
    "parse",
    "rules_from_mapping",
]

DEFAULT_RULES_PATH = CONFIG_DIR / "rules.yaml"
# CLTV scores joined onto the features before the rules run; absent columns read as null.
# cltv_percentile: share of tonight's clients with a predicted CLTV at most the client's (0..1).
SCORE_COLUMNS = (
    "p_alive",
    "expected_purchases",
    "expected_avg_value",
    "predicted_cltv",
    "cltv_percentile",
)
# Segment rules may test the stage the lifecycle rules gave the client.
LIFECYCLE_COLUMN = "lifecycle_stage"
RULE_ID_PREFIX = "rule_"
RESERVED_SEGMENT_IDS = frozenset({"noise"})
_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"


class RuleSetError(RuleError, ConfigError):
    """A rules file that cannot be read or does not validate; the message names file, key and rule."""


@dataclass(frozen=True)
class Rule:
    """One checked rule: `expression` is the parsed `when`; `segment_id` for segment rules only."""

    name: str
    kind: str  # "lifecycle" | "segment"
    priority: int
    when: str
    expression: Node
    description: str = ""
    segment_id: str | None = None
    stage: str | None = None  # lifecycle rules: the stage given (defaults to the name)
    stay_when: str | None = None  # segment rules: keeps members while true (hysteresis)
    stay_expression: Node | None = None

    @property
    def features(self) -> frozenset[str]:
        if self.stay_expression is None:
            return self.expression.features
        return self.expression.features | self.stay_expression.features

    @property
    def reason(self) -> str:
        """The rule and its condition as text (the same for every member); the per-client
        reason in words, with the client's own values, is `segmentation.reasons.rule_reasons`."""
        return f"rule {self.name}: {' '.join(self.when.split())}"

    @property
    def stay_reason(self) -> str:
        """The text reason of a member kept by `stay_when` though `when` no longer holds (in
        words, per client: `segmentation.reasons.rule_reasons` with `stayed`)."""
        return f"rule {self.name} (kept while {' '.join((self.stay_when or '').split())})"

    def matches(self, frame: pd.DataFrame, missing_as_null: Iterable[str] = ()) -> np.ndarray:
        """Bool array: where this rule's condition is true (null never matches)."""
        return evaluate(
            self.expression, frame, missing_as_null=tuple(missing_as_null), rule=self.name
        )

    def stays(self, frame: pd.DataFrame, missing_as_null: Iterable[str] = ()) -> np.ndarray:
        """Bool array: where `stay_when` is true (all false for a rule without one)."""
        if self.stay_expression is None:
            return np.zeros(len(frame), dtype=bool)
        return evaluate(
            self.stay_expression, frame, missing_as_null=tuple(missing_as_null), rule=self.name
        )


class SegmentMatch(NamedTuple):
    """Per row, the segment rule that takes the client (None/NaN where none does)."""

    segment_id: np.ndarray
    rule: np.ndarray
    priority: np.ndarray
    stayed: np.ndarray  # bool: taken by `stay_when` only (a member kept), not by `when`


@dataclass(frozen=True)
class RuleSet:
    """Lifecycle and segment rules, each tuple sorted by priority (highest first).

    Made by `load_rules` (or `rules_from_mapping`), which checks every rule; evaluated on
    whole frames by `assign_lifecycle` and `match_segments`.

    Parameters
    ----------
    lifecycle_rules : tuple of Rule
        The lifecycle rules, highest priority first; the last one is the ``when: true``
        fallback, so every client gets a stage.
    segment_rules : tuple of Rule
        The segment rules (business overrides of the clusters), highest priority first.
    optional_names : frozenset of str, default frozenset(SCORE_COLUMNS)
        Names that may be absent from a frame and then read as null (the CLTV scores).
    source : str, optional
        Where the rules came from (the file), for messages.
    """

    lifecycle_rules: tuple[Rule, ...]
    segment_rules: tuple[Rule, ...]
    optional_names: frozenset[str] = frozenset(SCORE_COLUMNS)
    source: str | None = None

    @property
    def stages(self) -> tuple[str, ...]:
        """The lifecycle stages, in priority order, each once."""
        return tuple(dict.fromkeys(rule.stage or rule.name for rule in self.lifecycle_rules))

    @property
    def features(self) -> frozenset[str]:
        """Every name the rules read (features, scores and possibly lifecycle_stage)."""
        rules = self.lifecycle_rules + self.segment_rules
        return frozenset().union(*(rule.features for rule in rules))

    def segment_rule(self, segment_id: str) -> Rule:
        for rule in self.segment_rules:
            if rule.segment_id == segment_id:
                return rule
        raise KeyError(f"no segment rule with id {segment_id!r}")

    def assign_lifecycle(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Per row: (lifecycle stage, name of the rule that gave it), first match by priority."""
        stage, rule_name, _ = _first_match(
            self.lifecycle_rules, frame, self.optional_names, lambda rule: rule.stage or rule.name
        )
        missing = pd.isna(stage)
        if missing.any():
            raise RuleEvaluationError(
                f"the lifecycle rules left {int(missing.sum())} clients without a stage "
                "(the lowest-priority lifecycle rule must be 'when: true')"
            )
        return stage, rule_name

    def match_segments(
        self, frame: pd.DataFrame, previous: np.ndarray | pd.Series | None = None
    ) -> SegmentMatch:
        """Per row: the highest-priority segment rule that takes the client.

        A rule takes a client when its `when` holds, or when the client's `previous` segment id
        (aligned with the rows; null for none) is the rule's and its `stay_when` holds. Rows no
        rule takes get None, None, NaN. When a rule reads `lifecycle_stage` and the frame has
        no such column, the lifecycle rules are evaluated first.
        """
        if LIFECYCLE_COLUMN in self.features and LIFECYCLE_COLUMN not in frame.columns:
            frame = frame.assign(**{LIFECYCLE_COLUMN: self.assign_lifecycle(frame)[0]})
        n = len(frame)
        if previous is None:
            was = np.full(n, None, dtype=object)
        else:
            was = np.asarray(previous, dtype=object)
            if len(was) != n:
                raise ValueError(f"previous has {len(was)} rows, the frame {n}")
        kept_by: dict[str, np.ndarray] = {}

        def hits(rule: Rule) -> np.ndarray:
            now = rule.matches(frame, self.optional_names)
            member = was == rule.segment_id
            if rule.stay_expression is None or rule.segment_id is None or not member.any():
                return now
            kept_by[rule.segment_id] = member & ~now & rule.stays(frame, self.optional_names)
            return now | kept_by[rule.segment_id]

        ids, names, priorities = _first_match(
            self.segment_rules, frame, self.optional_names, lambda r: r.segment_id, hits
        )
        stayed = np.zeros(n, dtype=bool)
        for segment_id, kept in kept_by.items():
            stayed |= kept & (ids == segment_id)
        return SegmentMatch(ids, names, priorities, stayed)


def load_rules(
    path: str | os.PathLike[str] | None = None,
    known_features: Mapping[str, object] | Iterable[str] | None = None,
    extra_names: Iterable[str] = SCORE_COLUMNS,
) -> RuleSet:
    """Load and check a rules file (default: the shipped configs/rules.yaml).

    Every condition is parsed and every name it reads is checked here, before any data is
    read.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The rules YAML file; default `DEFAULT_RULES_PATH` (configs/rules.yaml).
    known_features : mapping or iterable of str, optional
        The names rules may read: a collection of names, or a mapping name -> dtype (a
        numpy/pandas dtype or a name such as ``"float64"``), which enables type checks.
        Default: the feature catalog (`features.catalog.FEATURES`) with its dtypes.
    extra_names : iterable of str, default SCORE_COLUMNS
        Numeric columns joined in before the rules run (the CLTV scores); they may be absent
        from a frame and then read as null.

    Returns
    -------
    RuleSet
        The lifecycle and segment rules, each sorted by priority (highest first).

    Raises
    ------
    RuleSetError
        The file is missing, not YAML, or does not validate (unknown key, missing field,
        duplicate name, id or priority, unreachable rule, no ``when: true`` lifecycle
        fallback); the message names the file, the key and the rule.
    RuleSyntaxError, UnknownFeatureError, RuleTypeError
        A condition does not parse, reads an unknown name or mixes types; the message names
        the file, the section, the rule and the position in the condition.
    """
    file = Path(path) if path is not None else DEFAULT_RULES_PATH
    file = file.expanduser()
    if not file.exists():
        raise RuleSetError("rules file not found", source=str(file))
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise RuleSetError(f"not valid YAML: {exc}", source=str(file)) from None
    return rules_from_mapping(raw, known_features, extra_names, source=str(file))


def rules_from_mapping(
    raw: object,
    known_features: Mapping[str, object] | Iterable[str] | None = None,
    extra_names: Iterable[str] = SCORE_COLUMNS,
    source: str = "<mapping>",
) -> RuleSet:
    """Validate a parsed rules document (see `load_rules`); errors name source, key and rule."""
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else type(raw).__name__
        raise RuleSetError(f"the top level must be a mapping, got {kind}", source=source)
    try:
        spec = _RulesFile.model_validate(raw)
    except ValidationError as exc:
        raise RuleSetError(_describe_rule_errors(exc, raw), source=source) from None

    extras = tuple(extra_names)
    kinds = known_kinds(_catalog_kinds() if known_features is None else known_features)
    for name in extras:
        kinds.setdefault(name, NUMBER)

    lifecycle = tuple(
        _build(item, "lifecycle", kinds, source, stage=item.stage or item.name)
        for item in spec.lifecycle
    )
    stages = tuple(dict.fromkeys(rule.stage or rule.name for rule in lifecycle))
    segment_kinds = {**kinds, LIFECYCLE_COLUMN: TEXT}
    segments = tuple(
        _build(
            item,
            "segments",
            segment_kinds,
            source,
            segment_id=item.id or RULE_ID_PREFIX + item.name,
        )
        for item in spec.segments
    )
    for rule in segments:
        _check_stage_literals(rule, stages, source)

    lifecycle = _ordered(lifecycle, "lifecycle", source)
    segments = _ordered(segments, "segments", source)
    _check_fallback(lifecycle, source)
    _check_unique([r.segment_id or "" for r in segments], "segment id", "segments", source)
    for rule in segments:
        if rule.segment_id in RESERVED_SEGMENT_IDS:
            raise RuleSetError(
                f"segment id {rule.segment_id!r} is reserved", rule=rule.name, source=source
            )
    return RuleSet(lifecycle, segments, frozenset(extras), source)


# --------------------------------------------------------------------------------------------
# File schema


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME_PATTERN)
    priority: int = Field(strict=True)
    when: str = Field(min_length=1)
    description: str = ""

    @field_validator("when", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: object) -> object:
        # `when: true` in YAML arrives as a bool: accept it as the expression `true`.
        if isinstance(value, bool):
            return "true" if value else "false"
        return value


class _LifecycleSpec(_Spec):
    stage: str | None = Field(None, pattern=_NAME_PATTERN)


class _SegmentSpec(_Spec):
    id: str | None = Field(None, pattern=_NAME_PATTERN)
    stay_when: str | None = Field(None, min_length=1)


class _RulesFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    lifecycle: list[_LifecycleSpec] = Field(min_length=1)
    segments: list[_SegmentSpec] = Field(default_factory=list)


def _describe_rule_errors(exc: ValidationError, raw: Mapping[object, object]) -> str:
    lines = []
    for error in exc.errors():
        loc = error["loc"]
        key = ".".join(str(part) for part in loc) or "<top level>"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        rule = _rule_name_at(raw, loc)
        where = f" (rule {rule!r})" if rule else ""
        lines.append(f"key '{key}'{where}: {message}")
    return "; ".join(lines)


def _rule_name_at(raw: Mapping[object, object], loc: tuple[int | str, ...]) -> str | None:
    if len(loc) < 2 or not isinstance(loc[1], int):
        return None
    items = raw.get(loc[0])
    if isinstance(items, list) and loc[1] < len(items) and isinstance(items[loc[1]], dict):
        name = items[loc[1]].get("name")
        return str(name) if name is not None else None
    return None


# --------------------------------------------------------------------------------------------
# Checks


def _catalog_kinds() -> dict[str, object]:
    try:
        from features.catalog import FEATURES
    except ImportError as exc:
        raise RuleSetError(
            f"no known_features given and the feature catalog cannot be imported: {exc}"
        ) from None
    return {feature.name: getattr(feature, "dtype", None) for feature in FEATURES}


def _build(
    item: _Spec,
    section: str,
    kinds: dict[str, str],
    source: str,
    *,
    stage: str | None = None,
    segment_id: str | None = None,
) -> Rule:
    stay_when = getattr(item, "stay_when", None)
    try:
        expression = compile_expression(item.when, kinds, rule=item.name)
        stay = None if stay_when is None else compile_expression(stay_when, kinds, rule=item.name)
    except RuleError as exc:
        raise exc.located(rule=item.name, source=f"{source}: {section}") from None
    try:
        check_characters(item.description, rule=item.name)
    except RuleSyntaxError as exc:  # published with the segment definitions
        raise RuleSetError(
            f"description: {exc.detail}",
            rule=item.name,
            position=exc.position,
            source=f"{source}: {section}",
        ) from None
    return Rule(
        name=item.name,
        kind="lifecycle" if section == "lifecycle" else "segment",
        priority=item.priority,
        when=item.when,
        expression=expression,
        description=item.description,
        segment_id=segment_id,
        stage=stage,
        stay_when=stay_when,
        stay_expression=stay,
    )


def _ordered(rules: tuple[Rule, ...], section: str, source: str) -> tuple[Rule, ...]:
    _check_unique([rule.name for rule in rules], "rule name", section, source)
    by_priority: dict[int, str] = {}
    for rule in rules:
        if rule.priority in by_priority:
            raise RuleSetError(
                f"{section}: rules {by_priority[rule.priority]!r} and {rule.name!r} share "
                f"priority {rule.priority}; priorities must differ so the order is clear",
                source=source,
            )
        by_priority[rule.priority] = rule.name
    ordered = tuple(sorted(rules, key=lambda rule: -rule.priority))
    for above, below in itertools.pairwise(ordered):
        if _always_true(above.expression):
            raise RuleSetError(
                f"{section}: rule {below.name!r} can never match: rule {above.name!r} "
                f"(priority {above.priority}) matches everyone",
                source=source,
            )
    return ordered


def _check_fallback(lifecycle: tuple[Rule, ...], source: str) -> None:
    last = lifecycle[-1]
    if not _always_true(last.expression):
        raise RuleSetError(
            f"lifecycle: the lowest-priority rule ({last.name!r}) must be the fallback "
            "'when: true' so every client gets a stage",
            source=source,
        )


def _check_unique(values: list[str], what: str, section: str, source: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise RuleSetError(f"{section}: {what} {value!r} appears more than once", source=source)
        seen.add(value)


def _check_stage_literals(rule: Rule, stages: tuple[str, ...], source: str) -> None:
    """`lifecycle_stage == 'lapsd'` can never match: fail at load, naming the known stages."""
    stack: list[Node] = [rule.expression]
    if rule.stay_expression is not None:
        stack.append(rule.stay_expression)
    while stack:
        node = stack.pop()
        stack.extend(node.children())
        literals: list[Literal] = []
        if isinstance(node, Compare):
            sides = (node.left, node.right)
            if any(isinstance(side, Name) and side.name == LIFECYCLE_COLUMN for side in sides):
                literals = [side for side in sides if isinstance(side, Literal)]
        elif (
            isinstance(node, InList)
            and isinstance(node.operand, Name)
            and node.operand.name == LIFECYCLE_COLUMN
        ):
            literals = list(node.items)
        for literal in literals:
            if literal.value not in stages:
                raise RuleTypeError(
                    f"{literal.value!r} is not a lifecycle stage (stages: {', '.join(stages)})",
                    rule=rule.name,
                    position=literal.pos,
                    source=f"{source}: segments",
                )


def _always_true(node: Node) -> bool:
    return isinstance(node, Literal) and node.value is True


def _first_match(
    rules: tuple[Rule, ...],
    frame: pd.DataFrame,
    optional: frozenset[str],
    label: Callable[[Rule], str | None],
    hits: Callable[[Rule], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(frame)
    labels = np.full(n, None, dtype=object)
    names = np.full(n, None, dtype=object)
    priorities = np.full(n, np.nan)
    open_rows = np.ones(n, dtype=bool)
    for rule in rules:  # sorted by priority, highest first
        if not open_rows.any():
            break
        hit = (rule.matches(frame, optional) if hits is None else hits(rule)) & open_rows
        labels[hit] = label(rule)
        names[hit] = rule.name
        priorities[hit] = rule.priority
        open_rows &= ~hit
    return labels, names, priorities
