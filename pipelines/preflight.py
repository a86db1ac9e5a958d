"""Cheap checks before a run: a wrong path, rule, store or date fails in seconds, not minutes.

Why: a nightly run starts Prefect's server and reads every event before it would notice a
missing events folder, a bad rules file or an as-of date out of order. These checks read no
event and start no server; `segmentation run` and `backfill` call them first.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from configs import EngineConfig, SegmentationError

__all__ = ["FutureAsOfError", "preflight"]


class FutureAsOfError(SegmentationError, ValueError):
    """The as-of date is after today: every client would look churned."""


def preflight(
    config: EngineConfig,
    *,
    as_of: date,
    events: str | None = None,
    store_url: str | None = None,
    rebuild: bool = False,
    allow_future: bool = False,
    today: date | None = None,
) -> None:
    """Fail at once, naming what is wrong, when a run as of `as_of` cannot succeed.

    Checks, in order: the as-of date is not after today (UTC) unless `allow_future` (a run
    far ahead of the data makes every client churned and a clustering fitted on that state
    champion, and every later normal run then fails as out of order); the events path
    resolves to files of one format; the identity-links file exists when configured; the
    rules file loads; the store opens and `as_of` is not older than its latest published
    date unless `rebuild`.

    Raises
    ------
    FutureAsOfError, EventContractError, RuleError, StoreError, OutOfOrderError
    """
    today = today or datetime.now(UTC).date()
    if as_of > today and not allow_future:
        raise FutureAsOfError(
            f"as_of {as_of} is after today ({today}): a run as of a future date sees every"
            " client as gone quiet; pass --allow-future if that is what you want"
        )
    from features.events import EventContractError, resolve_sources

    resolve_sources(events or config.events_path)
    links = config.links_path
    if links and not any(c in links for c in "*?[") and not Path(links).exists():
        raise EventContractError(f"identity.links_file {links}: not found")
    from pipelines import steps

    steps.load_ruleset(config)
    _check_store(config, store_url or config.store_url, as_of, rebuild)


def _check_store(config: EngineConfig, url: str, as_of: date, rebuild: bool) -> None:
    """The store opens, and `as_of` is in order with what it published."""
    from pipelines.nightly import _check_order, _latest_as_of, _open_store

    store = _open_store(config, url)
    try:
        _check_order(_latest_as_of(store), as_of, rebuild)
    finally:
        store.close()
