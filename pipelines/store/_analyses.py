"""The analyses a run publishes with its segments (schema version 5): the journey map (stage
flow, touchpoints, drop-offs) and the holdout outcomes. Their input columns, the checks a
request's frames must pass, and their rows ready to load.

Each table is one set of rows per as_of: the request gives tonight's rows without as_of and
run_id (the store adds them); a re-run replaces them, the rows of other dates are history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from configs import STAGES
from pipelines.store._common import PublishInputError
from pipelines.store._frames import select_columns, to_arrow
from pipelines.store._schema import (
    HOLDOUT_OUTCOMES,
    JOURNEY_DROPOFFS,
    JOURNEY_STAGES,
    JOURNEY_TOUCHPOINTS,
    Table,
)

__all__ = [
    "ALL_STAGES",
    "CONTRACTS",
    "DROPOFF_KINDS",
    "HOLDOUT_OUTCOMES_INPUT",
    "JOURNEY_DROPOFFS_INPUT",
    "JOURNEY_STAGES_INPUT",
    "JOURNEY_STAGE_VALUES",
    "JOURNEY_TOUCHPOINTS_INPUT",
    "Contract",
    "check_contract",
    "validate_analyses",
]

_ADDED = ("as_of", "run_id")  # filled by the store
JOURNEY_STAGES_INPUT = [c for c in JOURNEY_STAGES.column_names if c not in _ADDED]
JOURNEY_TOUCHPOINTS_INPUT = [c for c in JOURNEY_TOUCHPOINTS.column_names if c not in _ADDED]
JOURNEY_DROPOFFS_INPUT = [c for c in JOURNEY_DROPOFFS.column_names if c not in _ADDED]
HOLDOUT_OUTCOMES_INPUT = [c for c in HOLDOUT_OUTCOMES.column_names if c not in _ADDED]

# journey_stages.stage: a journey stage, ALL_STAGES for the row about every stage, or
# OTHER_STAGE for the event types the taxonomy does not know (counted apart, no flow).
ALL_STAGES = "*"
OTHER_STAGE = "other"
JOURNEY_STAGE_VALUES = (ALL_STAGES, *STAGES, OTHER_STAGE)
# journey_dropoffs.kind: a drop-off point, a likely cause of one, a moment of truth.
DROPOFF_KINDS = ("dropoff", "cause", "moment")

_COUNT = (0.0, None)  # a count, a number of days or a mean of amounts: >= 0
_SHARE = (0.0, 1.0)  # a rate or a share
_SENTIMENT = (-1.0, 1.0)  # the event contract's sentiment range
_RANK = (1.0, None)  # 1 = first


@dataclass(frozen=True)
class Contract:
    """What the rows of one analysis table must satisfy besides their column types: columns
    without nulls, allowed values, inclusive ranges (None: unbounded), a unique key (nulls
    compare equal) and ordered pairs (`a <= b` where both are set). Errors about a row name
    its `row_key` column."""

    table: Table
    not_null: tuple[str, ...]
    allowed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float | None]] = field(default_factory=dict)
    unique: tuple[str, ...] = ()
    ordered: tuple[tuple[str, str], ...] = ()
    row_key: str = "segment_id"

    @property
    def input_columns(self) -> list[str]:
        """The columns a request's frame must carry (the table's, without as_of and run_id)."""
        return [c for c in self.table.column_names if c not in _ADDED]


# Keyed by the PublishRequest field, which is also the table's name.
CONTRACTS: dict[str, Contract] = {
    JOURNEY_STAGES.name: Contract(
        JOURNEY_STAGES,
        not_null=("segment_id", "stage", "clients"),
        allowed={"stage": JOURNEY_STAGE_VALUES, "to_stage": STAGES},
        ranges={
            **dict.fromkeys(("clients", "moved", "stalled", "in_progress"), _COUNT),
            **dict.fromkeys(("events", "sentiment_events", "median_days", "p90_days"), _COUNT),
            **dict.fromkeys(("conversion_rate", "stall_share"), _SHARE),
            "sentiment_mean": _SENTIMENT,
        },
        unique=("segment_id", "stage", "to_stage"),
        ordered=(("median_days", "p90_days"),),
    ),
    JOURNEY_TOUCHPOINTS.name: Contract(
        JOURNEY_TOUCHPOINTS,
        not_null=("segment_id", "stage", "event_type"),
        allowed={"initiated_by": ("client", "brand")},
        ranges={
            **dict.fromkeys(("events", "clients", "sentiment_events", "negative_events"), _COUNT),
            "rank": _RANK,
            "reach": _SHARE,
            "sentiment_mean": _SENTIMENT,
        },
    ),
    JOURNEY_DROPOFFS.name: Contract(
        JOURNEY_DROPOFFS,
        not_null=("segment_id", "kind", "stage"),
        allowed={"kind": DROPOFF_KINDS},
        ranges={
            **dict.fromkeys(
                ("clients", "group_clients", "group_with", "other_clients", "other_with"), _COUNT
            ),
            "rank": _RANK,
        },
        ordered=(
            ("group_with", "group_clients"),
            ("other_with", "other_clients"),
            ("effect_low", "effect_high"),
        ),
    ),
    HOLDOUT_OUTCOMES.name: Contract(
        HOLDOUT_OUTCOMES,
        not_null=("segment_id",),
        ranges=dict.fromkeys(
            (
                "treated_clients",
                "holdout_clients",
                "days_after_entry_mean",
                "treated_purchases_mean",
                "holdout_purchases_mean",
            ),
            _COUNT,
        ),  # spend is net of refunds: it may be negative
        unique=("segment_id",),
        ordered=(
            ("purchases_diff_low", "purchases_diff_high"),
            ("spend_diff_low", "spend_diff_high"),
        ),
    ),
}


def validate_analyses(
    frames: Mapping[str, object], constants: Mapping[str, object]
) -> dict[str, pa.Table]:
    """The analysis frames of a request (by table name; None: not published tonight) checked
    against their contracts and converted to their tables' rows, as_of and run_id from
    `constants`. Raises PublishInputError naming the table and column."""
    tables = {}
    for name, frame in frames.items():
        if frame is None:
            continue
        contract = CONTRACTS[name]
        selected = select_columns(frame, name, contract.input_columns)
        table = to_arrow(selected, contract.table, constants)
        check_contract(contract, table)
        if name == JOURNEY_STAGES.name:
            _check_flow(table)
        tables[name] = table
    return tables


def check_contract(contract: Contract, table: pa.Table) -> None:
    """Raise PublishInputError, naming the table and column, at the first row of `table`
    that breaks `contract`."""
    name = contract.table.name
    for col in contract.not_null:
        if table[col].null_count:
            raise PublishInputError(f"{name}.{col} has null values")
    for col, allowed in contract.allowed.items():
        values = table[col]
        bad = pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, pa.array(allowed))))
        if pc.any(bad).as_py():
            value = values.filter(bad)[0].as_py()
            raise PublishInputError(
                f"{name}.{col} has value {value!r}; allowed: {', '.join(allowed)}"
            )
    for col, (low, high) in contract.ranges.items():
        values = table[col]
        bad = pc.less(values, low)
        if high is not None:
            bad = pc.or_(bad, pc.greater(values, high))
        bad = pc.fill_null(bad, False)
        if pc.any(bad).as_py():
            value = values.filter(bad)[0].as_py()
            bounds = f"[{low:g}, {high:g}]" if high is not None else f"[{low:g}, inf)"
            raise PublishInputError(f"{name}.{col} has value {value:g} outside {bounds}")
    for low_col, high_col in contract.ordered:
        bad = pc.fill_null(pc.greater(table[low_col], table[high_col]), False)
        if pc.any(bad).as_py():
            row = table.filter(bad).slice(0, 1).to_pylist()[0]
            key = contract.row_key
            raise PublishInputError(
                f"{name}.{low_col} {_show(row[low_col])} is greater than {high_col}"
                f" {_show(row[high_col])} ({key} {row[key]!r})"
            )
    if contract.unique:
        _check_unique(name, table, contract.unique)


def _show(value: object) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _check_unique(name: str, table: pa.Table, key: tuple[str, ...]) -> None:
    """One row per `key` (a null key value equals another null)."""
    counts = table.select(list(key)).group_by(list(key)).aggregate([([], "count_all")])
    if counts.num_rows != table.num_rows:
        dup = counts.filter(pc.greater(counts["count_all"], 1)).slice(0, 1).to_pylist()[0]
        values = ", ".join(repr(dup[c]) for c in key)
        raise PublishInputError(
            f"{name} has more than one row for ({', '.join(key)}) = ({values}): give one row"
            " per key"
        )


def _check_flow(table: pa.Table) -> None:
    """A journey_stages row with a to_stage is the flow from a journey stage to a later one."""
    frame = table.select(["segment_id", "stage", "to_stage"]).to_pandas()
    rank = {stage: i for i, stage in enumerate(STAGES)}
    flows = frame[frame["to_stage"].notna()]
    backwards = ~(flows["stage"].map(rank) < flows["to_stage"].map(rank))
    if backwards.any():
        row = flows[backwards].iloc[0]
        raise PublishInputError(
            f"journey_stages.to_stage {row.to_stage!r} is not after stage {row.stage!r}"
            f" (segment_id {row.segment_id!r}): a flow row goes from a journey stage to a"
            f" later one ({' > '.join(STAGES)})"
        )
