"""Segment dynamics: who entered, left or moved between two membership states (pure functions).

A state is a DataFrame with one row per client: `client_id`, `segment_id`, `lifecycle_stage`
(and, for a published previous state, `valid_from`). A client's membership changes when its
segment or its lifecycle stage changes (a missing lifecycle equals a missing lifecycle). The
store uses `advance` to publish transitions and history; analyses can call
`compute_transitions` on any two states, e.g. two as-of dates read from `segment_history`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from configs import as_date

TRANSITION_COLUMNS = [
    "as_of",
    "client_id",
    "from_segment_id",
    "to_segment_id",
    "from_lifecycle",
    "to_lifecycle",
]
STATE_COLUMNS = ["client_id", "segment_id", "lifecycle_stage"]


@dataclass(frozen=True)
class StateChange:
    """The effect of moving from one state to the next.

    valid_from: for each row of the current state (same index), the start of its unchanged
    stretch; transitions: one row per changed, new or vanished client, sorted by client_id.
    """

    valid_from: pd.Series
    transitions: pd.DataFrame


def compute_transitions(previous: pd.DataFrame, current: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """Transitions from `previous` to `current` as of `as_of`.

    Columns: as_of, client_id, from_segment_id, to_segment_id, from_lifecycle, to_lifecycle.
    A new client enters from null, a vanished client exits to null, and a client whose segment
    or lifecycle stage changed has one row; unchanged clients have none. Sorted by client_id.
    """
    return advance(previous, current, as_of).transitions


def carry_valid_from(previous: pd.DataFrame, current: pd.DataFrame, as_of: date) -> pd.Series:
    """For each current client: its previous `valid_from` when unchanged, else `as_of`."""
    return advance(previous, current, as_of).valid_from


def advance(previous: pd.DataFrame, current: pd.DataFrame, as_of: date) -> StateChange:
    """Transitions and carried-over `valid_from` in one pass (hash joins in Arrow, so a
    million clients take well under a second)."""
    valid_from, table = advance_arrow(previous, current, as_of)
    valid_from = pd.Series(
        valid_from.to_numpy(zero_copy_only=False), index=current.index, name="valid_from"
    ).astype("datetime64[us]")
    transitions = table.to_pandas()
    transitions.insert(0, "as_of", as_date(as_of))
    return StateChange(valid_from=valid_from, transitions=transitions[TRANSITION_COLUMNS])


def advance_arrow(
    previous: pd.DataFrame,
    current: pd.DataFrame,
    as_of: date,
    *,
    check: bool = True,
    sort: bool = True,
) -> tuple[pa.Array, pa.Table]:
    """`advance` in Arrow form for bulk loading: valid_from (timestamp[us], aligned with
    `current`) and the transitions without the as_of column. `check=False` skips the
    duplicate-client checks (for callers that validated already); `sort=False` keeps
    changed clients in current order followed by vanished clients."""
    as_of = as_date(as_of)
    if check:
        _check_state(previous, "previous")
        _check_state(current, "current")
    p_ids, c_ids = _pair(previous["client_id"], current["client_id"])
    p_seg, c_seg = _pair(previous["segment_id"], current["segment_id"])
    p_life, c_life = _pair(previous["lifecycle_stage"], current["lifecycle_stage"])

    position = pc.index_in(c_ids, value_set=p_ids)  # null where the client is new
    before_seg = pc.take(p_seg, position)
    before_life = pc.take(p_life, position)
    unchanged = pc.and_(
        pc.is_valid(position),
        pc.and_(_same(before_seg, c_seg), _same(before_life, c_life)),
    )
    changed = pc.invert(unchanged)

    start = pa.scalar(pd.Timestamp(as_of).as_unit("us"), type=pa.timestamp("us"))
    if "valid_from" in previous.columns and len(previous):
        carried = pa.array(
            pd.to_datetime(previous["valid_from"]).astype("datetime64[us]"), from_pandas=True
        )
        valid_from = pc.if_else(unchanged, pc.take(carried, position), start)
    else:
        valid_from = pa.repeat(start, len(current))

    gone = pc.invert(pc.is_in(p_ids, value_set=c_ids))
    n_gone = pc.sum(gone).as_py() or 0
    table = pa.concat_tables(
        [
            _transition_table(
                c_ids.filter(changed),
                before_seg.filter(changed),
                c_seg.filter(changed),
                before_life.filter(changed),
                c_life.filter(changed),
            ),
            _transition_table(
                p_ids.filter(gone),
                p_seg.filter(gone),
                pa.nulls(n_gone, c_seg.type),
                p_life.filter(gone),
                pa.nulls(n_gone, c_life.type),
            ),
        ]
    ).combine_chunks()
    if sort:
        table = table.take(pc.sort_indices(table, sort_keys=[("client_id", "ascending")]))
    return valid_from, table


def transition_kind(transitions: pd.DataFrame) -> pd.Series:
    """Label each transition: entry (from null), exit (to null), move (segment changed) or
    lifecycle (same segment, lifecycle stage changed)."""
    frm, to = transitions["from_segment_id"], transitions["to_segment_id"]
    kind = np.select(
        [frm.isna(), to.isna(), frm != to],
        ["entry", "exit", "move"],
        default="lifecycle",
    )
    return pd.Series(kind, index=transitions.index, name="kind")


def entries_exits(transitions: pd.DataFrame) -> pd.DataFrame:
    """Per segment: clients who entered it and clients who left it (lifecycle-only changes
    count for neither). Columns segment_id, entries, exits; sorted by segment_id."""
    frm, to = transitions["from_segment_id"], transitions["to_segment_id"]
    same = _same(*_pair(frm, to)).to_numpy(zero_copy_only=False)
    changed = ~same
    entries = to[changed & to.notna().to_numpy()].value_counts()
    exits = frm[changed & frm.notna().to_numpy()].value_counts()
    out = pd.concat([entries.rename("entries"), exits.rename("exits")], axis=1).fillna(0)
    out = out.astype("int64").rename_axis("segment_id").reset_index()
    return out.sort_values("segment_id", ignore_index=True)


def _same(a: pa.Array, b: pa.Array) -> pa.Array:
    """Element-wise equality where null equals null (never null itself)."""
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    return pc.or_(both_null, pc.fill_null(pc.equal(a, b), False))


def _arrow(series: pd.Series) -> pa.Array:
    array = pa.array(series, from_pandas=True)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_large_string(array.type) or pa.types.is_null(array.type):
        array = array.cast(pa.string())
    return array


def _pair(before: pd.Series, after: pd.Series) -> tuple[pa.Array, pa.Array]:
    """The same column of two states as Arrow arrays of one type (text when they differ)."""
    a, b = _arrow(before), _arrow(after)
    if a.type != b.type:
        if len(a) == 0:
            a = a.cast(b.type)
        elif len(b) == 0:
            b = b.cast(a.type)
        else:
            a, b = a.cast(pa.string()), b.cast(pa.string())
    return a, b


def _transition_table(
    ids: pa.Array, from_seg: pa.Array, to_seg: pa.Array, from_life: pa.Array, to_life: pa.Array
) -> pa.Table:
    return pa.table(
        {
            "client_id": ids,
            "from_segment_id": from_seg,
            "to_segment_id": to_seg,
            "from_lifecycle": from_life,
            "to_lifecycle": to_life,
        }
    )


def _check_state(frame: pd.DataFrame, name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} state must be a DataFrame, got {type(frame).__name__}")
    missing = [c for c in STATE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} state is missing column(s): {', '.join(missing)}")
    ids = _arrow(frame["client_id"])
    if ids.null_count:
        raise ValueError(f"{name} state has a null client_id")
    if len(pc.unique(ids)) != len(ids):
        counts = pc.value_counts(ids)
        dup = counts.field("values").filter(pc.greater(counts.field("counts"), 1))[0]
        raise ValueError(f"{name} state has more than one row for client_id {dup.as_py()!r}")
