"""What every layer shares: the exception root, the journey stages and the as-of date type."""

from __future__ import annotations

from datetime import date, datetime

__all__ = ["STAGES", "SegmentationError", "as_date"]

STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")
"""The customer-journey stages, in funnel order (DESIGN.md)."""


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
