"""Input frames to Arrow tables in the columns and types of a published table, with errors
that name the table and column (shared by the publish request and the delivery rows)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.store._common import PublishInputError
from pipelines.store._schema import Table

__all__ = ["ARROW", "flags", "select_columns", "to_arrow"]

# Logical column types (TYPES in _schema) as Arrow types.
ARROW = {
    "text": pa.string(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "double": pa.float64(),
    "bigint": pa.int64(),
    "integer": pa.int32(),
    "boolean": pa.bool_(),
}


def select_columns(
    frame: object, name: str, required: list[str], keep: list[str] | None = None
) -> pd.DataFrame:
    """A copy of `frame`'s `keep` columns (default: `required`) with a fresh index; raise
    PublishInputError when `frame` is no DataFrame or lacks a required column."""
    if not isinstance(frame, pd.DataFrame):
        raise PublishInputError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise PublishInputError(f"{name} is missing column(s): {', '.join(missing)}")
    columns = [c for c in (keep or required) if c in frame.columns]
    return frame[columns].reset_index(drop=True).copy()


def flags(series: pd.Series, label: str, null: bool | None = None) -> pd.Series:
    """True/False values (booleans, or the integers 0 and 1) as a Series of bools; nulls
    become `null`. Anything else (`'yes'`, 2) raises PublishInputError naming `label`."""
    if series.dtype == bool:  # numpy booleans: no nulls, nothing to check
        return series
    if isinstance(series.dtype, pd.BooleanDtype):
        return series.astype(object).where(series.notna(), null)

    def flag(value: object) -> bool | None:
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
            return null
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, int | np.integer) and value in (0, 1):
            return bool(value)
        raise PublishInputError(f"{label} has value {value!r}; allowed: true, false")

    return series.astype(object).map(flag)


def to_arrow(
    frame: pd.DataFrame | pa.Table, table: Table, constants: Mapping[str, object] | None = None
) -> pa.Table:
    """Build an Arrow table with exactly `table`'s columns and types (constants fill columns)."""
    constants = constants or {}
    n = len(frame)
    arrays = []
    for name, kind in table.columns:
        if name in constants:
            value = constants[name]
            if isinstance(value, pd.Series | np.ndarray | pa.Array | pa.ChunkedArray):
                arrays.append(_arrow_column(value, kind, f"{table.name}.{name}"))
            else:
                arrays.append(pa.repeat(pa.scalar(value, type=ARROW[kind]), n))
        else:
            arrays.append(_arrow_column(frame[name], kind, f"{table.name}.{name}"))
    return pa.Table.from_arrays(arrays, names=table.column_names)


def _arrow_column(
    series: pd.Series | np.ndarray | pa.Array | pa.ChunkedArray, kind: str, label: str
) -> pa.Array:
    target = ARROW[kind]
    if (
        kind == "text"
        and isinstance(series, pa.Array | pa.ChunkedArray)
        and pa.types.is_floating(series.type)
    ):
        raise PublishInputError(f"{label} is float: give ids as text or integers")
    if kind == "boolean" and not isinstance(series, pa.Array | pa.ChunkedArray):
        return pa.array(flags(pd.Series(series), label), type=target, from_pandas=True)
    try:
        if isinstance(series, pa.Array | pa.ChunkedArray):
            return series.cast(target)
        series = pd.Series(series) if isinstance(series, np.ndarray) else series
        if kind == "text":
            if not (pd.api.types.is_string_dtype(series) and series.dtype != object):
                series = series.astype(object).where(series.notna(), None)
                series = series.map(lambda v: v if v is None or isinstance(v, str) else str(v))
            return pa.array(series, type=target, from_pandas=True)
        if kind == "date":
            if pd.api.types.is_datetime64_any_dtype(series):
                return pa.array(series.astype("datetime64[us]"), from_pandas=True).cast(target)
            return pa.array(series, type=target, from_pandas=True)
        if kind in ("double",):
            return pa.array(pd.to_numeric(series).astype("float64"), type=target, from_pandas=True)
        if kind in ("bigint", "integer"):
            values = pd.to_numeric(series)
            return pa.array(values, from_pandas=True).cast(target)
        return pa.array(series, type=target, from_pandas=True)
    except (ValueError, TypeError, pa.ArrowException) as exc:
        raise PublishInputError(f"{label}: values cannot be stored as {kind}: {exc}") from None
