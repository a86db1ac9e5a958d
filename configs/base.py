"""What every layer shares: the exception root, the journey stages and the as-of date type."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from datetime import date, datetime
from importlib import import_module

__all__ = [
    "CONTRACT_COLUMNS",
    "IDENTIFIER_COLUMNS",
    "ID_TYPES",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "STAGES",
    "SegmentationError",
    "as_date",
    "lazy_exports",
]

STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")
"""The customer-journey stages, in funnel order (DESIGN.md)."""

# The event contract's columns (DESIGN.md): the reader validates them, the config maps source
# columns onto them, the store keeps them raw for rejected rows.
REQUIRED_COLUMNS = ("client_id", "event_time", "event_type")
OPTIONAL_COLUMNS = ("channel", "amount", "category", "sentiment", "event_id")
# Other identifiers of the same person (identity stitching): a row needs client_id or one of
# them once the input carries any. Their source names are mapped like any contract column.
IDENTIFIER_COLUMNS = ("anonymous_id", "device_id", "email_hash", "phone_hash")
ID_TYPES = ("client_id", *IDENTIFIER_COLUMNS)
"""The identifier types of the identity graph (`identity_map.id_type`, links-file `id_type`)."""
CONTRACT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS + IDENTIFIER_COLUMNS


class SegmentationError(Exception):
    """Root of every error the engine raises on purpose: bad input, bad config, a store or
    model problem with a message meant for the user. Anything else is a bug."""


def as_date(value: object, what: str = "as_of") -> date:
    """A calendar date from a date, a datetime or a pandas Timestamp (its date part)."""
    if isinstance(value, datetime):  # pandas.Timestamp is a datetime
        return value.date()
    if isinstance(value, date):
        return value
    raise TypeError(f"{what} must be a date, got {type(value).__name__}: {value!r}")


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """PEP 562 `__getattr__` and `__dir__` for a package whose public names load on first use.

    `exports` maps each public name to the module that defines it. Importing the package then
    costs nothing; a name is imported from its module when first asked for and kept in the
    package's namespace. This keeps `import pipelines.cli` free of Prefect, MLflow and hdbscan.
    """

    def getattr_(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def dir_() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return getattr_, dir_
