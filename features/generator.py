"""Synthetic multi-channel customer journeys with known personas and a planned behavior shift.

Why: the engine needs data whose truth is known (who is which persona, who changed and when) to
test that segments move when behavior moves and that CLTV models see BTYD-like purchases.

Model, per client (all draws vectorized with numpy, no per-event Python loop):
- a persona (loyal_advocate, bargain_browser, support_strained, store_regular, new_explorer,
  lapsed, high_value_vip) sets the mean rates, event mix, channel mix, category taste,
  follow-up habits (returns, reviews, referrals) and sentiment;
- individual variation: gamma multipliers on the activity and purchase rates, a Gamma-Gamma
  spend (per-client nu ~ Gamma(q), per-order amount ~ Gamma(p, nu)), a dominant category;
- BTYD purchases: Poisson purchases while alive, an exponential lifetime (Pareto/NBD dropout);
  after dropout the client is dormant: the brand keeps sending emails and pushes and showing
  ads (brand-initiated events, about two a month), the client almost never acts and never buys;
- each online purchase comes with its funnel (product_view, add_to_cart, checkout_start minutes
  before) and possible follow-ups (return, refund, support_ticket, review, referral, share,
  survey_response) days after;
- a planned shift: a `shift_share` of the clients change persona (SHIFT_TARGET) and dominant
  category at the start of `shift_date`;
- purchase intent episodes (`intent=True`, the default; INTENT_SHARE): on top of the steady
  purchases, an alive client has buying episodes at a rate that follows their purchase rate:
  one to three weeks of research (product views, searches, carts) before a burst of purchases,
  as in real shops, so recent browsing predicts near-term purchases beyond the purchase log.
  Drawn from a stream of their own (`SeedSequence(seed, spawn_key=(k, 3))`) before the journey
  plants (whose drop-off cause also precedes the episodes' checkouts).

Journey plants (`journeys=True`, the default), so a journey map can be tested for finding them:
- a drop-off cause: a page_view of the page category CAUSE_CATEGORY ("delivery_costs"), on the
  checkout's channel (web or app), CAUSE_MINUTES before DROPOFF_EXPOSURE (25%) of the
  checkout_starts of every persona. For DROPOFF_PERSONA (bargain_browser) only, an exposed
  checkout is abandoned with probability DROPOFF_LEAVE (0.4) and the client leaves there: the
  purchase of that checkout and the rest of the alive stretch are dropped, the client turns
  dormant (the brand keeps writing), so they stall with last touchpoint checkout_start;
- a moment of truth: MOMENT_PERSONA (new_explorer) calls the call center, a consultation on
  channel call_center, MOMENT_CALLS_PER_YEAR times a year while alive; after any such
  consultation of that persona a purchase (with its funnel and follow-ups) follows within
  MOMENT_DAYS with probability MOMENT_BUY (0.6), which takes consideration to purchase. Other
  personas have the touchpoint from their own habits (support_strained, high_value_vip), with
  no effect.
The plants draw from a stream of their own (`SeedSequence(seed, spawn_key=(k, 2))` for chunk
k) after the rest of the chunk, so with `journeys=False` the events are exactly those of the
generator before the plants. Their truth: per client, the truth columns `dropoff_cause_date`
(the day the client left after the cause) and `moment_purchases` (purchases the moment added);
per data set, `journey_truth()` (persona, stage, touchpoints, effect sizes, exposure), which
`write_dataset` writes to `out/journey_truth.json` with the counts of this data set.

Chunking and determinism: clients are generated in fixed chunks of CHUNK_CLIENTS clients; chunk k
draws from `numpy.random.SeedSequence(seed, spawn_key=(k,))`. Chunk boundaries depend only on the
client count, never on `rows_per_file` (which only splits a chunk's rows over files), so the same
seed gives the same events however the output is split. Client ids are `c` + 8-digit index;
event ids are `<client_id>-<ordinal of the event within the client>`, unique by construction.

Identity mode (`write_dataset(..., identities=True)`, issue 17): `features.generator_identity`
adds the identifiers a person leaves (cookies, devices, hashed emails and phones; a client_id
only when logged in), a CRM links file and planted traps, chunk by chunk.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from configs import SegmentationError
from features.catalog import CHANNELS

EVENT_TYPES = (
    "ad_impression", "ad_click", "page_view", "social_engagement",
    "product_view", "search", "add_to_cart", "wishlist_add", "consultation", "email_open",
    "email_click", "trial_start",
    "checkout_start", "purchase",
    "login", "support_ticket", "survey_response", "return", "refund", "subscription_renewal",
    "review", "referral", "share",
    "email_sent", "push_sent",
)  # fmt: skip
# How browsing activity follows a client's purchase-rate multiplier (0: independent).
ACTIVITY_BUY_ELASTICITY = 0.7
CATEGORIES = ("electronics", "fashion", "home", "beauty", "sports", "grocery", "books", "toys")
PERSONAS = (
    "loyal_advocate",
    "bargain_browser",
    "support_strained",
    "store_regular",
    "new_explorer",
    "lapsed",
    "high_value_vip",
)
# Who a shifted client becomes. new_explorer is not shifted (it is new by definition).
SHIFT_TARGET = {
    "loyal_advocate": "lapsed",
    "bargain_browser": "loyal_advocate",
    "support_strained": "lapsed",
    "store_regular": "support_strained",
    "lapsed": "bargain_browser",  # a win-back: the lapsed client returns hunting deals
    "high_value_vip": "support_strained",
}
CHUNK_CLIENTS = 25_000
DEFAULT_ROWS_PER_FILE = 2_000_000
IDENTITY_FILES = ("identity_links.parquet", "identity_truth.parquet")
JOURNEY_TRUTH_FILE = "journey_truth.json"

# Journey plants (see the module docstring and `journey_truth`).
# (a) A drop-off cause: a page_view of the delivery costs minutes before a checkout_start.
CAUSE_CATEGORY = "delivery_costs"  # a page category, not a product category
EVENT_CATEGORIES = (*CATEGORIES, CAUSE_CATEGORY)  # every category an event can carry
DROPOFF_PERSONA = "bargain_browser"
DROPOFF_EXPOSURE = 0.25  # share of the checkout_starts of every persona preceded by the cause
DROPOFF_LEAVE = 0.4  # DROPOFF_PERSONA: an exposed checkout is abandoned and the client leaves
CAUSE_MINUTES = (1.0, 10.0)  # the cause page this many minutes before the checkout_start
# (b) A moment of truth: a consultation on the call_center turns consideration into a purchase.
MOMENT_PERSONA = "new_explorer"
MOMENT_CALLS_PER_YEAR = 3.0  # planted calls of MOMENT_PERSONA while alive (Poisson)
MOMENT_BUY = 0.6  # MOMENT_PERSONA: a purchase follows such a consultation with this probability
MOMENT_DAYS = (0.05, 3.0)  # days from the consultation to that purchase

# Purchase intent episodes (`intent=True`, the default): besides the steady Poisson purchases,
# a client who is alive has buying episodes (Poisson, INTENT_SHARE of their own purchase rate,
# divided by the mean purchases of an episode): INTENT_RESEARCH_DAYS before an episode the client
# researches (product views, searches, carts, wishlist: INTENT_RESEARCH_EVENTS on average), then
# buys 1 + Poisson(INTENT_PURCHASES - 1) times within INTENT_BUY_DAYS. The purchase rate thus
# varies over time, and recent browsing tells near-term purchases that the purchase log does not.
INTENT_SHARE = 0.5  # episode purchases per steady purchase (mean)
INTENT_PURCHASES = 2.0  # mean purchases of an episode
INTENT_RESEARCH_DAYS = (7.0, 21.0)  # research starts this many days before the first purchase
INTENT_RESEARCH_EVENTS = 6.0  # mean research events of an episode (Poisson)
INTENT_BUY_DAYS = 14.0  # an episode's purchases fall within this many days of its start
_RESEARCH_MIX = {"product_view": 5.0, "search": 2.0, "add_to_cart": 2.0, "wishlist_add": 1.0}

EVENT_SCHEMA = pa.schema(
    [
        ("client_id", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("event_type", pa.string()),
        ("channel", pa.string()),
        ("amount", pa.float64()),
        ("category", pa.string()),
        ("sentiment", pa.float64()),
        ("event_id", pa.string()),
    ]
)
TRUTH_SCHEMA = pa.schema(
    [
        ("client_id", pa.string()),
        ("persona_before", pa.string()),
        ("persona_after", pa.string()),
        ("shifted", pa.bool_()),
        ("shift_date", pa.date32()),
        ("dominant_category_before", pa.string()),
        ("dominant_category_after", pa.string()),
        ("first_active", pa.date32()),
        ("dropout_date", pa.date32()),
        ("alive_at_end", pa.bool_()),
        ("activity_rate_before", pa.float64()),
        ("activity_rate_after", pa.float64()),
        ("purchase_rate_before", pa.float64()),
        ("purchase_rate_after", pa.float64()),
        ("mean_spend_before", pa.float64()),
        ("mean_spend_after", pa.float64()),
        ("dropoff_cause_date", pa.date32()),
        ("moment_purchases", pa.int32()),
    ]
)


class GeneratorError(SegmentationError, ValueError):
    """An argument of the generator is out of range (the message names it)."""


class OutputExistsError(SegmentationError, FileExistsError):
    """The output folder already holds part files of an earlier data set."""


class DatasetSummary(TypedDict):
    """The summary `write_dataset` returns (and `segmentation generate` prints as JSON)."""

    out: str
    events_dir: str
    truth: str
    files: int
    events: int
    clients: int
    days: int
    start: str
    end: str
    seed: int
    shift_date: str
    shifted: int
    personas: dict[str, int]
    journey_truth: str  # path of journey_truth.json
    identity_links: NotRequired[str]  # with identities=True
    identity_truth: NotRequired[str]


def generate(
    clients: int,
    days: int,
    end: date,
    seed: int,
    shift_share: float = 0.2,
    shift_date: date | None = None,
    *,
    journeys: bool = True,
    intent: bool = True,
) -> tuple[pa.Table, pd.DataFrame]:
    """All events (event contract, Arrow) and the truth per client (pandas), in memory.

    Events cover `days` (>= 2) days ending at `end` (inclusive). `shift_share` of the clients
    (taken among those eligible: a shiftable persona active well before the shift) change persona
    and dominant category at the start of `shift_date` (default `end - days // 4`).
    Use `write_dataset` for large sizes: this holds everything in memory.

    Parameters
    ----------
    clients : int
        Number of clients (>= 1).
    days : int
        Number of days of events (>= 2), ending at `end`.
    end : datetime.date
        The last day of events (inclusive).
    seed : int
        Seed (>= 0) of the random draws: the same seed gives the same events.
    shift_share : float, default 0.2
        Share of the clients, in [0, 1], that change persona at the shift.
    shift_date : datetime.date, optional
        The first day of the shift; default ``end - days // 4``.
    journeys : bool, default True
        Plant the drop-off cause and the moment of truth (`journey_truth` describes them);
        without it (and without `intent`), the events are those of the generator before the
        plants.
    intent : bool, default True
        Purchase intent episodes (research, then a burst of purchases; see INTENT_SHARE),
        drawn from a stream of their own before the journey plants.

    Returns
    -------
    events : pyarrow.Table
        The events, in the event contract (`EVENT_SCHEMA`), sorted by client and time.
    truth : pandas.DataFrame
        One row per client (`TRUTH_SCHEMA`): personas before and after, shift, categories,
        dropout, the latent rates and what the journey plants did to the client.

    Raises
    ------
    ValueError
        An argument is out of range (the message names it).
    """
    events, truths = [], []
    chunks = _chunks(clients, days, end, seed, shift_share, shift_date, journeys, intent)
    for chunk_events, chunk_truth in chunks:
        events.append(chunk_events)
        truths.append(chunk_truth)
    table = pa.concat_tables(events) if events else EVENT_SCHEMA.empty_table()
    return table, pa.concat_tables(truths).to_pandas()


def write_dataset(
    out: str | os.PathLike[str],
    clients: int,
    days: int,
    end: date,
    seed: int,
    shift_share: float = 0.2,
    shift_date: date | None = None,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
    *,
    identities: bool = False,
    journeys: bool = True,
    intent: bool = True,
) -> DatasetSummary:
    """Write `out/events/part-NNNNN.parquet`, `out/truth.parquet` and `out/journey_truth.json`.

    Memory stays bounded by one chunk of clients. A chunk's rows go to one file, or to several
    when it has more than `rows_per_file` rows (the events do not depend on this split).
    The same `seed` gives the same events whatever `rows_per_file`.

    With `identities`, chunk k gets `features.generator_identity.add_identities(events,
    chunk_seed(seed, k))` (identifiers, client_id only when logged in; traps per chunk) and the
    CRM links and identifier truth go to `out/identity_links.parquet`, `identity_truth.parquet`.

    `out/journey_truth.json` is `journey_truth(journeys)` (what was planted: persona, stage,
    touchpoints, effect sizes, exposure; see that function for the keys) with what it did in
    this data set: ``dropoff.clients_left`` (clients whose `dropoff_cause_date` is set) and
    ``moment.purchases_added`` (the sum of `moment_purchases`); without `journeys`, only
    ``{"enabled": false}``.

    Parameters
    ----------
    out : str or os.PathLike
        The output folder (created if needed).
    clients : int
        Number of clients (>= 1); client ids are ``c`` + an 8-digit index.
    days : int
        Number of days of events (>= 2), ending at `end`.
    end : datetime.date
        The last day of events (inclusive).
    seed : int
        Seed (>= 0) of the random draws.
    shift_share : float, default 0.2
        Share of the clients, in [0, 1], that change persona at the shift.
    shift_date : datetime.date, optional
        The first day of the shift; default ``end - days // 4``.
    rows_per_file : int, default DEFAULT_ROWS_PER_FILE
        The most rows in one part file.
    overwrite : bool, default False
        Remove existing part files (and identity files) first; without it they make this fail.
    identities : bool, default False
        Add identifiers to the events and write the identity links and truth.
    journeys : bool, default True
        Plant the drop-off cause and the moment of truth (see `journey_truth`).
    intent : bool, default True
        Purchase intent episodes (see INTENT_SHARE).

    Returns
    -------
    DatasetSummary
        What was written (the JSON that `segmentation generate` prints): paths, number of
        files, events and clients, the window, the seed, the shift date, the number of shifted
        clients, the clients per persona, the path `journey_truth` of the journey plants'
        truth; with `identities`, the paths `identity_links` and `identity_truth`.

    Raises
    ------
    ValueError
        An argument is out of range (the message names it).
    FileExistsError
        `out/events` already holds part files and `overwrite` is false.
    """
    if isinstance(rows_per_file, bool) or not isinstance(rows_per_file, int) or rows_per_file < 1:
        raise GeneratorError(f"rows_per_file must be a positive integer, got {rows_per_file!r}")
    _check(clients, days, end, seed, shift_share)  # before any file is touched
    window = _window(days, end, shift_date)
    events_dir = _empty_events_dir(Path(out) / "events", overwrite)
    chunks = _chunks(clients, days, end, seed, shift_share, shift_date, journeys, intent)
    identity_paths = [Path(out) / name for name in IDENTITY_FILES]
    journey_path = Path(out) / JOURNEY_TRUTH_FILE
    if overwrite:
        for path in [*identity_paths, journey_path]:
            path.unlink(missing_ok=True)
    if identities:
        parts = _write_identity_parts(events_dir, chunks, rows_per_file, seed, identity_paths)
    else:
        parts = _write_parts(events_dir, chunks, rows_per_file)
    files, rows, truth_table = parts
    pq.write_table(truth_table, Path(out) / "truth.parquet", compression="zstd")
    _write_journey_truth(journey_path, truth_table, journeys)
    personas = pc.value_counts(truth_table["persona_before"]).to_pylist()
    summary: DatasetSummary = {
        "out": str(Path(out)),
        "events_dir": str(events_dir),
        "truth": str(Path(out) / "truth.parquet"),
        "files": files,
        "events": rows,
        "clients": clients,
        "days": days,
        "start": window.start.isoformat(),
        "end": end.isoformat(),
        "seed": seed,
        "shift_date": window.shift_date.isoformat(),
        "shifted": int(pc.sum(truth_table["shifted"]).as_py() or 0),
        "personas": {p["values"]: p["counts"] for p in sorted(personas, key=lambda p: p["values"])},
        "journey_truth": str(journey_path),
    }
    if identities:
        summary["identity_links"], summary["identity_truth"] = map(str, identity_paths)
    return summary


def journey_truth(journeys: bool = True) -> dict[str, Any]:
    """What the journey plants put in the data (JSON-ready), as written to journey_truth.json.

    Keys: ``enabled``; with `journeys`, ``dropoff`` (the drop-off cause) and ``moment`` (the
    moment of truth):

    - ``dropoff``: ``persona``; ``stage`` ("purchase"), ``event_type`` ("checkout_start") and
      ``channels`` (["web", "app"]): the drop-off point; ``cause``: {``event_type``
      ("page_view"), ``channels`` (the checkout's own), ``category`` ("delivery_costs"),
      ``initiator`` ("client"), ``minutes_before`` ([lo, hi])}; ``exposure``: the share of the
      checkout_starts of every persona the cause precedes; ``exposed_personas``: all personas;
      ``p_leave``: for `persona` only, the probability that an exposed checkout is abandoned
      (no purchase) and the client leaves (dormant: no own event, only the brand's);
      ``expected``: {``stall_ratio_at_least``}: the stall share of the persona's clients
      whose last checkout_start the cause preceded, over that of the others, at least this.
    - ``moment``: ``persona``; ``stage`` ("consideration"), ``next_stage`` ("purchase", reached
      by checkout_start or purchase); ``touchpoint``: {``event_type`` ("consultation"),
      ``channel`` ("call_center"), ``initiator``}; ``calls_per_year``: the planted rate of the
      touchpoint for `persona` while alive (others have it from their own habits only);
      ``p_buy``: for `persona` only, the probability that a purchase follows the touchpoint
      within ``days_to_buy`` ([lo, hi]); ``expected``: {``uplift_at_least``}: the share
      reaching the next stage with the touchpoint minus without, at least this.
    """
    if not journeys:
        return {"enabled": False}
    online = ["web", "app"]
    return {
        "enabled": True,
        "dropoff": {
            "persona": DROPOFF_PERSONA,
            "stage": "purchase",
            "event_type": "checkout_start",
            "channels": online,
            "cause": {
                "event_type": "page_view",
                "channels": online,
                "category": CAUSE_CATEGORY,
                "initiator": "client",
                "minutes_before": list(CAUSE_MINUTES),
            },
            "exposure": DROPOFF_EXPOSURE,
            "exposed_personas": list(PERSONAS),
            "p_leave": DROPOFF_LEAVE,
            "expected": {"stall_ratio_at_least": 3.0},
        },
        "moment": {
            "persona": MOMENT_PERSONA,
            "stage": "consideration",
            "next_stage": "purchase",
            "touchpoint": {
                "event_type": "consultation",
                "channel": "call_center",
                "initiator": "client",
            },
            "calls_per_year": MOMENT_CALLS_PER_YEAR,
            "p_buy": MOMENT_BUY,
            "days_to_buy": list(MOMENT_DAYS),
            "expected": {"uplift_at_least": 0.25},
        },
    }


def _write_journey_truth(path: Path, truth: pa.Table, journeys: bool) -> None:
    """`journey_truth(journeys)` with what the plants did in this data set, as JSON."""
    data = journey_truth(journeys)
    if journeys:
        data["dropoff"]["clients_left"] = len(truth) - truth["dropoff_cause_date"].null_count
        data["moment"]["purchases_added"] = int(pc.sum(truth["moment_purchases"]).as_py() or 0)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_identity_parts(
    events_dir: Path,
    chunks: Iterator[tuple[pa.Table, pa.Table]],
    rows_per_file: int,
    seed: int,
    paths: list[Path],
) -> tuple[int, int, pa.Table]:
    """`_write_parts` of the chunks with identifiers; the links and identity truth go to
    `paths` as the chunks pass (`features.generator_identity.identity_chunks`)."""
    # Imported here: generator_identity imports this module.
    from features.generator_identity import identity_chunks

    links, truth = paths
    with closing(identity_chunks(chunks, seed, links, truth)) as parts:
        return _write_parts(events_dir, parts, rows_per_file)


def _empty_events_dir(events_dir: Path, overwrite: bool) -> Path:
    """Create the folder; refuse (or, with `overwrite`, remove) part files already in it."""
    events_dir.mkdir(parents=True, exist_ok=True)
    stale = sorted(events_dir.glob("part-*.parquet"))
    if stale and not overwrite:
        raise OutputExistsError(
            f"{events_dir} already holds {len(stale)} part file(s); use an empty directory"
            " or overwrite=True"
        )
    for file in stale:
        file.unlink()
    return events_dir


def _write_parts(
    events_dir: Path, chunks: Iterator[tuple[pa.Table, pa.Table]], rows_per_file: int
) -> tuple[int, int, pa.Table]:
    """Write each chunk's events as numbered part files of at most `rows_per_file` rows (one,
    possibly empty, file for an empty chunk); return (files, rows, the truth of all chunks)."""
    files, rows, truths = 0, 0, []
    for table, truth in chunks:
        truths.append(truth)
        for offset in range(0, max(table.num_rows, 1), rows_per_file):
            part = table.slice(offset, rows_per_file)
            pq.write_table(part, events_dir / f"part-{files:05d}.parquet", compression="zstd")
            files += 1
            rows += part.num_rows
    return files, rows, pa.concat_tables(truths)


# --------------------------------------------------------------------------- persona parameters


@dataclass(frozen=True)
class _Persona:
    browse_per_year: float  # non-purchase events per year while alive (mean)
    purchases_per_year: float  # Poisson purchase rate while alive (mean)
    purchase_shape: float  # gamma shape of the per-client purchase rate (heterogeneity)
    lifetime_days: float  # mean exponential lifetime (dropout)
    mean_spend: float  # population mean amount per purchase
    sentiment: float  # mean sentiment
    p_dominant: float  # share of category-bearing events in the dominant category
    events: dict[str, float]  # browse event mix
    channels: dict[str, float]  # channel affinity
    categories: dict[str, float]  # category taste
    follow: dict[str, float]  # per-purchase follow-up probabilities


_PERSONA_SHARE = (0.16, 0.20, 0.12, 0.16, 0.12, 0.16, 0.08)
_SPEND_P, _SPEND_Q = 6.0, 4.0  # Gamma-Gamma shapes (per order, per client)

# fmt: off
_P = {
    "loyal_advocate": _Persona(
        30, 10, 3.0, 2500, 70, 0.65, 0.7,
        {"ad_impression": 2, "ad_click": 1, "page_view": 6, "social_engagement": 6,
         "product_view": 10, "search": 4, "add_to_cart": 2, "wishlist_add": 4, "consultation": 1,
         "email_open": 12, "email_click": 6, "trial_start": 1, "login": 12, "support_ticket": 1,
         "survey_response": 3, "subscription_renewal": 3, "review": 3, "referral": 3,
         "share": 6},
        {"web": 2, "app": 6, "email": 3, "messenger": 1, "social": 2, "store": 1,
         "call_center": 0.2},
        {"beauty": 4, "fashion": 4, "home": 3, "books": 2, "electronics": 1, "sports": 1,
         "grocery": 1, "toys": 1},
        {"return": 0.04, "refund": 0.5, "ticket": 0.1, "review": 0.35, "referral": 0.12,
         "share": 0.2, "survey": 0.1},
    ),
    "bargain_browser": _Persona(
        45, 1.5, 2.0, 900, 25, 0.1, 0.7,
        {"ad_impression": 10, "ad_click": 8, "page_view": 10, "social_engagement": 2,
         "product_view": 25, "search": 15, "add_to_cart": 12, "wishlist_add": 6,
         "consultation": 0.5, "email_open": 4, "email_click": 3, "trial_start": 1,
         "checkout_start": 7, "login": 3, "support_ticket": 0.5, "survey_response": 0.5},
        {"web": 6, "app": 2, "email": 1, "messenger": 0.5, "social": 2, "store": 0.5,
         "call_center": 0.2},
        {"electronics": 5, "fashion": 4, "toys": 3, "sports": 2, "home": 1, "beauty": 1,
         "grocery": 1, "books": 1},
        {"return": 0.06, "refund": 0.6, "ticket": 0.1, "review": 0.04, "referral": 0.01,
         "share": 0.03, "survey": 0.03},
    ),
    "support_strained": _Persona(
        22, 6, 2.0, 700, 55, -0.45, 0.7,
        {"ad_impression": 3, "page_view": 5, "product_view": 8, "search": 4, "add_to_cart": 2,
         "checkout_start": 1, "consultation": 3, "email_open": 4, "login": 8,
         "support_ticket": 20, "survey_response": 6, "subscription_renewal": 1},
        {"web": 3, "app": 2, "email": 2, "messenger": 2, "social": 0.5, "store": 1,
         "call_center": 6},
        {"electronics": 6, "home": 4, "fashion": 1, "beauty": 1, "sports": 1, "grocery": 1,
         "books": 1, "toys": 1},
        {"return": 0.35, "refund": 0.7, "ticket": 0.6, "review": 0.2, "referral": 0.0,
         "share": 0.0, "survey": 0.25},
    ),
    "store_regular": _Persona(
        10, 14, 4.0, 2000, 45, 0.3, 0.7,
        {"ad_impression": 4, "page_view": 3, "product_view": 4, "email_open": 8,
         "email_click": 2, "login": 3, "consultation": 4, "survey_response": 2,
         "support_ticket": 1, "social_engagement": 1, "wishlist_add": 1},
        {"web": 1, "app": 1, "email": 2, "messenger": 0.5, "social": 0.5, "store": 12,
         "call_center": 0.5},
        {"grocery": 6, "home": 3, "fashion": 2, "electronics": 1, "beauty": 1, "sports": 1,
         "books": 1, "toys": 1},
        {"return": 0.04, "refund": 0.5, "ticket": 0.1, "review": 0.05, "referral": 0.02,
         "share": 0.02, "survey": 0.08},
    ),
    "new_explorer": _Persona(
        70, 1.5, 2.0, 500, 35, 0.25, 0.45,
        {"ad_impression": 15, "ad_click": 10, "page_view": 15, "social_engagement": 6,
         "product_view": 15, "search": 10, "add_to_cart": 3, "wishlist_add": 3,
         "trial_start": 3, "consultation": 2, "email_open": 3, "email_click": 1, "login": 1,
         "checkout_start": 1},
        {"web": 5, "app": 2, "email": 1, "messenger": 0.5, "social": 5, "store": 0.5,
         "call_center": 0.1},
        dict.fromkeys(CATEGORIES, 1.0),
        {"return": 0.05, "refund": 0.5, "ticket": 0.1, "review": 0.08, "referral": 0.02,
         "share": 0.08, "survey": 0.05},
    ),
    "lapsed": _Persona(
        25, 5, 2.0, 1.0e9, 40, -0.05, 0.7,  # lifetime: lapses early by construction
        {"ad_impression": 5, "page_view": 6, "product_view": 8, "search": 4, "add_to_cart": 3,
         "email_open": 8, "email_click": 2, "login": 4, "support_ticket": 1,
         "survey_response": 1, "social_engagement": 1, "checkout_start": 1},
        {"web": 4, "app": 2, "email": 3, "messenger": 0.5, "social": 1, "store": 1,
         "call_center": 0.3},
        {"books": 3, "sports": 3, "electronics": 1, "fashion": 1, "home": 1, "beauty": 1,
         "grocery": 1, "toys": 1},
        {"return": 0.08, "refund": 0.5, "ticket": 0.2, "review": 0.05, "referral": 0.01,
         "share": 0.02, "survey": 0.05},
    ),
    "high_value_vip": _Persona(
        15, 3, 3.0, 1500, 450, 0.45, 0.7,
        {"ad_impression": 2, "page_view": 4, "product_view": 8, "search": 2, "add_to_cart": 1,
         "wishlist_add": 3, "consultation": 6, "email_open": 6, "email_click": 3, "login": 5,
         "survey_response": 2, "support_ticket": 1, "subscription_renewal": 2, "review": 1},
        {"web": 2, "app": 3, "email": 2, "messenger": 2, "social": 0.5, "store": 3,
         "call_center": 2},
        {"electronics": 4, "fashion": 4, "home": 3, "beauty": 2, "sports": 0.5, "grocery": 0.5,
         "books": 0.5, "toys": 0.5},
        {"return": 0.06, "refund": 0.6, "ticket": 0.2, "review": 0.15, "referral": 0.05,
         "share": 0.05, "survey": 0.1},
    ),
}
# A dropped-out client: the brand keeps writing and showing ads (some emails opened by the mail
# client on its own), the client almost never acts and never buys.
_DORMANT = _Persona(
    24, 0, 1.0, 1.0, 1.0, 0.0, 0.7,
    {"email_sent": 10, "ad_impression": 8, "email_open": 3, "push_sent": 2, "page_view": 0.5},
    {"web": 2, "app": 1, "email": 4, "messenger": 0.2, "social": 3, "store": 0.2,
     "call_center": 0.1},
    dict.fromkeys(CATEGORIES, 1.0),
    {},
)
# fmt: on
DORMANT = len(PERSONAS)  # profile index of a dormant stretch
_PROFILES = [*(_P[p] for p in PERSONAS), _DORMANT]
_LAPSED = PERSONAS.index("lapsed")
_NEW = PERSONAS.index("new_explorer")

# Which channels an event type can happen on.
_CHANNELS_OF = {
    "ad_impression": "web app social",
    "ad_click": "web app social",
    "page_view": "web app",
    "social_engagement": "social",
    "product_view": "web app store",
    "search": "web app",
    "add_to_cart": "web app",
    "wishlist_add": "web app",
    "consultation": "store call_center messenger",
    "email_open": "email",
    "email_click": "email",
    "trial_start": "web app store",
    "checkout_start": "web app",
    "purchase": "web app store call_center",
    "login": "web app",
    "support_ticket": "call_center messenger email web app store",
    "survey_response": "email web app messenger",
    "return": "store web app",
    "refund": "web app store call_center",
    "subscription_renewal": "web app email",
    "review": "web app",
    "referral": "web app social messenger email",
    "share": "social messenger app",
    "email_sent": "email",
    "push_sent": "app",
}
_FOLLOW_UPS = ("return", "refund", "ticket", "review", "referral", "share", "survey")
_NO_CATEGORY = {
    "email_open", "login", "survey_response", "subscription_renewal", "referral", "email_sent",
    "push_sent",
}  # fmt: skip
_SENTIMENT_OFFSET = {"survey_response": 0.0, "review": 0.1, "support_ticket": -0.35}

_T = {name: i for i, name in enumerate(EVENT_TYPES)}
_C = {name: i for i, name in enumerate(CHANNELS)}


def _cum(weights: np.ndarray) -> np.ndarray:
    """Row-wise cumulative probabilities, the last column exactly 1."""
    cum = np.cumsum(weights / weights.sum(axis=-1, keepdims=True), axis=-1)
    cum[..., -1] = 1.0
    return cum


def _tables() -> dict[str, np.ndarray]:
    n_prof, n_t, n_c, n_k = len(_PROFILES), len(EVENT_TYPES), len(CHANNELS), len(CATEGORIES)
    type_w = np.zeros((n_prof, n_t))
    chan_w = np.zeros((n_prof, n_t, n_c))
    cat_w = np.zeros((n_prof, n_k))
    for i, prof in enumerate(_PROFILES):
        for name, w in prof.events.items():
            type_w[i, _T[name]] = w
        affinity = np.array([prof.channels.get(c, 0.0) for c in CHANNELS])
        for name, allowed in _CHANNELS_OF.items():
            mask = np.array([c in allowed.split() for c in CHANNELS], dtype=float)
            chan_w[i, _T[name]] = affinity * mask
        cat_w[i] = [prof.categories.get(k, 0.0) for k in CATEGORIES]
    chan = chan_w.reshape(n_prof * n_t, n_c)
    return {
        "type": _cum(type_w),
        "type_last": _last_positive(type_w),
        "chan": _cum(chan),
        "chan_last": _last_positive(chan),
        "cat": _cum(cat_w),
        "cat_last": _last_positive(cat_w),
        "share": _cum(np.array(_PERSONA_SHARE)[None, :]),
        "share_last": _last_positive(np.array(_PERSONA_SHARE)[None, :]),
        "browse": np.array([p.browse_per_year / 365.0 for p in _PROFILES]),
        "buy": np.array([p.purchases_per_year / 365.0 for p in _PROFILES]),
        "buy_shape": np.array([p.purchase_shape for p in _PROFILES]),
        "life": np.array([p.lifetime_days for p in _PROFILES]),
        # Gamma-Gamma scale so that the population mean order value is mean_spend.
        "gg_gamma": np.array([p.mean_spend * (_SPEND_Q - 1) / _SPEND_P for p in _PROFILES]),
        "sent": np.array([p.sentiment for p in _PROFILES]),
        "p_dom": np.array([p.p_dominant for p in _PROFILES]),
        "follow": np.array([[p.follow.get(f, 0.0) for f in _FOLLOW_UPS] for p in _PROFILES]),
        "has_cat": np.array([t not in _NO_CATEGORY for t in EVENT_TYPES]),
        "sent_type": np.array([t in _SENTIMENT_OFFSET for t in EVENT_TYPES]),
        "sent_offset": np.array([_SENTIMENT_OFFSET.get(t, 0.0) for t in EVENT_TYPES]),
        "target": np.array(
            [PERSONAS.index(SHIFT_TARGET.get(p, p)) for p in PERSONAS], dtype=np.int64
        ),
        "can_shift": np.array([p in SHIFT_TARGET for p in PERSONAS]),
    }


def _last_positive(weights: np.ndarray) -> np.ndarray:
    """Index of the last positive weight of every row (guards float round-off in draws)."""
    w = weights.reshape(-1, weights.shape[-1])
    return (w.shape[1] - 1 - np.argmax(w[:, ::-1] > 0, axis=1)).astype(np.int64)


_TAB = _tables()
_FOLLOW = {name: i for i, name in enumerate(_FOLLOW_UPS)}


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class _Window:
    start: date
    days: int
    shift_date: date
    shift_day: int  # days from the window start to the shift (start of shift_date)


def _window(days: int, end: date, shift_date: date | None) -> _Window:
    start = end - timedelta(days=days - 1)
    shift = shift_date if shift_date is not None else end - timedelta(days=days // 4)
    if not start < shift <= end:
        raise GeneratorError(
            f"shift_date {shift.isoformat()} must be after the first day {start.isoformat()}"
            f" and not after end {end.isoformat()}"
        )
    return _Window(start, days, shift, (shift - start).days)


def _check(clients: object, days: object, end: object, seed: object, shift_share: object) -> None:
    """The arguments as callers may pass them (any object): fail naming the first bad one."""
    for name, value, low in (("clients", clients, 1), ("days", days, 2), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise GeneratorError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(end, date) or isinstance(end, datetime):
        raise GeneratorError(f"end must be a datetime.date, got {end!r}")
    if (
        isinstance(shift_share, bool)
        or not isinstance(shift_share, int | float)
        or not 0.0 <= shift_share <= 1.0
    ):
        raise GeneratorError(f"shift_share must be a number in [0, 1], got {shift_share!r}")


def _chunks(
    clients: int,
    days: int,
    end: date,
    seed: int,
    shift_share: float,
    shift_date: date | None,
    journeys: bool = True,
    intent: bool = True,
) -> Iterator[tuple[pa.Table, pa.Table]]:
    _check(clients, days, end, seed, shift_share)
    window = _window(days, end, shift_date)
    for k, first in enumerate(range(0, clients, CHUNK_CLIENTS)):
        n = min(CHUNK_CLIENTS, clients - first)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k,)))
        # The plants draw from a stream of their own ((k, 1) is the identities' stream), so
        # without them the events are exactly those of the generator before the plants.
        plant_rng = (
            np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k, 2)))
            if journeys
            else None
        )
        intent_rng = (
            np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k, 3)))
            if intent
            else None
        )
        yield _chunk(rng, first, n, window, float(shift_share), plant_rng, intent_rng)


def _draw(
    rng: np.random.Generator, cum: np.ndarray, last: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """One categorical draw per element of `rows` from the row `rows[i]` of a cumulative table.

    Rows are laid end to end on [0, R) so a single searchsorted serves every row at once.
    """
    n_cols = cum.shape[1]
    flat = (np.arange(cum.shape[0])[:, None] + cum).ravel()
    u = rng.random(rows.shape[0])
    pos = np.searchsorted(flat, rows + u, side="right") - rows * n_cols
    return np.minimum(pos, last[rows]).astype(np.int8)


# The draws of a chunk happen in one fixed order (clients, rates, lifetimes, browse stream,
# purchase stream, funnel, follow-ups, missing channels/categories/sentiment): the helpers
# below are called in that order by `_chunk`, and each keeps the order of its own draws, so the
# same seed gives the same events.


@dataclass(frozen=True)
class _Clients:
    """Per client of a chunk: persona before/after the shift, first activity, categories."""

    persona: np.ndarray  # profile index before the shift
    after: np.ndarray  # profile index after the shift (= persona when not shifted)
    shifted: np.ndarray  # bool
    start: np.ndarray  # first active day (days from the window start)
    cat_before: np.ndarray  # dominant category index before the shift
    cat_after: np.ndarray


@dataclass(frozen=True)
class _Rates:
    """Per client individual variation: multipliers of activity, purchases and spend; mood."""

    activity: np.ndarray
    buy_factor: np.ndarray
    spend_factor: np.ndarray
    mood: np.ndarray


@dataclass(frozen=True)
class _Stretches:
    """Four stretches per client (before alive, before dormant, after alive, after dormant).

    Flattened arrays have 4 * n entries: entry 4 * i + s is stretch s of local client i.
    """

    alive_before_end: np.ndarray  # per client: end of the alive stretch before the shift
    alive_after_end: np.ndarray  # per client: end of the alive stretch after the shift
    lo: np.ndarray  # flattened: start day of the stretch
    length: np.ndarray  # flattened: length in days
    prof: np.ndarray  # flattened: profile index (DORMANT for a dormant stretch)
    cat_dom: np.ndarray  # flattened: dominant category
    activity: np.ndarray  # flattened: the client's activity multiplier
    nu: np.ndarray  # flattened: Gamma-Gamma per-order rate
    buy_factor: np.ndarray  # flattened: the client's purchase-rate multiplier


@dataclass(frozen=True)
class _Purchases:
    """The purchase stream of a chunk, one entry per purchase."""

    stretch: np.ndarray  # 4 * local client index + stretch number
    time: np.ndarray  # days from the window start
    prof: np.ndarray  # int64 profile index
    amount: np.ndarray
    chan: np.ndarray
    cat: np.ndarray


def _chunk(
    rng: np.random.Generator,
    first: int,
    n: int,
    w: _Window,
    shift_share: float,
    plant_rng: np.random.Generator | None = None,
    intent_rng: np.random.Generator | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Events and truth of the clients `first` .. `first + n - 1`, drawn from `rng`; with
    `plant_rng`, the journey plants are drawn from it afterwards (`_plant_journeys`)."""
    clients = _draw_clients(rng, n, w, shift_share)
    rates = _draw_rates(rng, n, clients.persona)
    stretches = _draw_stretches(rng, n, w, clients, rates)
    browse = _browse_part(rng, stretches)
    purchases = _draw_purchases(rng, stretches)
    parts = [
        _part(
            purchases.stretch,
            purchases.time,
            _T["purchase"],
            purchases.prof,
            purchases.chan,
            purchases.cat,
            purchases.amount,
        ),
        *_funnel_parts(rng, purchases),
        *_follow_up_parts(rng, purchases),
        browse,
    ]
    ev = _inside_window(parts, float(w.days))
    ev["sent"] = _fill_missing(rng, ev, stretches.cat_dom, rates.mood)
    if intent_rng is not None:
        ev = _concat([ev, _intent_events(intent_rng, stretches, rates, float(w.days))])
    plants = _Plants(np.full(n, np.inf), np.zeros(n, np.int32))
    if plant_rng is not None:
        ev, stretches, plants = _plant_journeys(plant_rng, ev, stretches, rates, float(w.days))
    table = _to_arrow(first, n, w, ev, ev["sent"])
    return table, _truth(first, n, w, clients, rates, stretches, plants)


def _draw_clients(rng: np.random.Generator, n: int, w: _Window, shift_share: float) -> _Clients:
    """Persona, first activity, who shifts (among the eligible) and dominant categories."""
    D = float(w.days)
    persona = _draw(rng, _TAB["share"], _TAB["share_last"], np.zeros(n, dtype=np.int64))
    persona = persona.astype(np.int64)
    pre_existing = rng.random(n) < 0.6
    u_start = rng.random(n)
    start = np.where(pre_existing, 0.0, u_start * 0.8 * D)
    start = np.where(persona == _LAPSED, np.where(pre_existing, 0.0, u_start * 0.3 * D), start)
    start = np.where(persona == _NEW, (0.75 + 0.25 * u_start) * D, start)

    eligible = np.flatnonzero(_TAB["can_shift"][persona] & (start < 0.5 * float(w.shift_day)))
    n_shift = min(round(shift_share * n), eligible.size)
    shifted = np.zeros(n, dtype=bool)
    shifted[rng.choice(eligible, size=n_shift, replace=False)] = True
    after = np.where(shifted, _TAB["target"][persona], persona)

    cat_before = _draw(rng, _TAB["cat"], _TAB["cat_last"], persona).astype(np.int64)
    cat_after = _draw(rng, _TAB["cat"], _TAB["cat_last"], after).astype(np.int64)
    other = (cat_before + 1 + rng.integers(0, len(CATEGORIES) - 1, n)) % len(CATEGORIES)
    cat_after = np.where(shifted & (cat_after == cat_before), other, cat_after)
    cat_after = np.where(shifted, cat_after, cat_before)
    return _Clients(persona, after, shifted, start, cat_before, cat_after)


def _draw_rates(rng: np.random.Generator, n: int, persona: np.ndarray) -> _Rates:
    """Gamma multipliers of purchase rate (persona shape), activity and spend; a mood offset.

    Activity follows the purchase rate (engaged clients browse and buy more: elasticity
    ACTIVITY_BUY_ELASTICITY, times its own Gamma noise), so behavior carries information on
    future purchases that the purchase log alone does not (what a learned CLTV model can use).
    """
    shape = _TAB["buy_shape"][persona]
    buy_factor = rng.gamma(shape, 1.0 / shape)
    activity = rng.gamma(4.0, 0.25, n) * _power(buy_factor, ACTIVITY_BUY_ELASTICITY)
    spend_factor = rng.gamma(_SPEND_Q, 1.0 / _SPEND_Q, n)
    mood = rng.normal(0.0, 0.15, n)
    return _Rates(activity, buy_factor, spend_factor, mood)


def _power(x: np.ndarray, exponent: float) -> np.ndarray:
    """`x ** exponent` by the C library's pow, element by element. numpy's own pow takes an
    AVX-512 code path on CPUs that have it and differs there in the last bit, so the same seed
    gave other data on another machine (the pinned fingerprint test caught it)."""
    return np.fromiter((math.pow(v, exponent) for v in x.tolist()), np.float64, x.size)


def _draw_stretches(
    rng: np.random.Generator, n: int, w: _Window, clients: _Clients, rates: _Rates
) -> _Stretches:
    """Lifetimes (dropout before and after the shift) and the four stretches they bound."""
    D = float(w.days)
    persona, after, start = clients.persona, clients.after, clients.start
    death_before = start + rng.exponential(_TAB["life"][persona])
    lapse = start + rng.uniform(0.1, 0.5, n) * (D - start)
    death_before = np.where(persona == _LAPSED, lapse, death_before)
    shift_at = np.where(clients.shifted, float(w.shift_day), D)
    death_after = shift_at + np.where(
        after == _LAPSED, rng.exponential(7.0, n), rng.exponential(_TAB["life"][after])
    )

    b = np.clip(death_before, start, shift_at)
    e = np.clip(death_after, shift_at, D)
    bounds = np.stack([start, b, shift_at, e, np.full(n, D)], axis=1)
    prof = np.stack([persona, np.full(n, DORMANT), after, np.full(n, DORMANT)], axis=1).ravel()
    cat_before, cat_after = clients.cat_before, clients.cat_after
    return _Stretches(
        alive_before_end=b,
        alive_after_end=e,
        lo=bounds[:, :4].ravel(),
        length=np.diff(bounds, axis=1).ravel(),
        prof=prof,
        cat_dom=np.stack([cat_before, cat_before, cat_after, cat_after], axis=1).ravel(),
        activity=np.repeat(rates.activity, 4),
        nu=np.repeat(rates.spend_factor * _SPEND_Q, 4) / _TAB["gg_gamma"][prof],
        buy_factor=np.repeat(rates.buy_factor, 4),
    )


def _browse_part(rng: np.random.Generator, st: _Stretches) -> dict[str, np.ndarray]:
    """Browse stream: Poisson events in each stretch, their type drawn from the profile's mix."""
    counts = rng.poisson(_TAB["browse"][st.prof] * st.activity * st.length)
    rep = np.repeat(np.arange(st.prof.size), counts)
    b_time = st.lo[rep] + rng.random(rep.size) * st.length[rep]
    b_prof = st.prof[rep]
    b_type = _draw(rng, _TAB["type"], _TAB["type_last"], b_prof.astype(np.int64))
    return _part(rep, b_time, b_type, b_prof, None, None)


def _draw_purchases(rng: np.random.Generator, st: _Stretches) -> _Purchases:
    """Purchase stream: Poisson while alive (rate 0 when dormant), Gamma-Gamma amounts."""
    buy_rate = _TAB["buy"][st.prof] * st.buy_factor
    counts = rng.poisson(buy_rate * st.length)
    rep_p = np.repeat(np.arange(st.prof.size), counts)
    p_time = st.lo[rep_p] + rng.random(rep_p.size) * st.length[rep_p]
    p_prof = st.prof[rep_p].astype(np.int64)
    p_amount = np.maximum(np.round(rng.gamma(_SPEND_P, 1.0 / st.nu[rep_p]), 2), 0.01)
    p_chan = _draw(rng, _TAB["chan"], _TAB["chan_last"], p_prof * len(EVENT_TYPES) + _T["purchase"])
    p_cat = _pick_category(rng, p_prof, st.cat_dom[rep_p])
    return _Purchases(rep_p, p_time, p_prof, p_amount, p_chan, p_cat)


def _funnel_parts(rng: np.random.Generator, p: _Purchases) -> list[dict[str, np.ndarray]]:
    """The funnel minutes before an online purchase: checkout_start, add_to_cart, product_view."""
    parts = []
    online = np.flatnonzero(p.chan <= _C["app"])
    minute = 1.0 / 1440.0
    for etype, prob, lo_min, hi_min in (
        ("checkout_start", 1.0, 2, 30),
        ("add_to_cart", 0.8, 10, 120),
        ("product_view", 0.9, 15, 240),
    ):
        keep = online[rng.random(online.size) < prob]
        t = p.time[keep] - rng.uniform(lo_min, hi_min, keep.size) * minute
        parts.append(_part(p.stretch[keep], t, _T[etype], p.prof[keep], p.chan[keep], p.cat[keep]))
    return parts


def _follow_up_parts(rng: np.random.Generator, p: _Purchases) -> list[dict[str, np.ndarray]]:
    """Follow-ups days after a purchase: a return (then maybe a refund and a ticket), a review,
    a referral, a share, a survey response, each with the profile's probability."""
    follow = _TAB["follow"][p.prof]
    returned = np.flatnonzero(rng.random(p.prof.size) < follow[:, _FOLLOW["return"]])
    r_time = p.time[returned] + rng.uniform(2, 30, returned.size)
    r_amount = np.maximum(
        np.round(p.amount[returned] * rng.uniform(0.3, 1.0, returned.size), 2), 0.01
    )
    parts = [
        _part(
            p.stretch[returned],
            r_time,
            _T["return"],
            p.prof[returned],
            None,
            p.cat[returned],
            r_amount,
        )
    ]
    for etype, key, lo_d, hi_d in (("refund", "refund", 1, 10), ("support_ticket", "ticket", 0, 2)):
        keep = rng.random(returned.size) < follow[returned, _FOLLOW[key]]
        idx = returned[keep]
        t = r_time[keep] + rng.uniform(lo_d, hi_d, idx.size)
        amount = r_amount[keep] if etype == "refund" else None
        parts.append(_part(p.stretch[idx], t, _T[etype], p.prof[idx], None, p.cat[idx], amount))
    for etype, key, lo_d, hi_d in (
        ("review", "review", 3, 21),
        ("referral", "referral", 1, 60),
        ("share", "share", 0, 3),
        ("survey_response", "survey", 1, 14),
    ):
        idx = np.flatnonzero(rng.random(p.prof.size) < follow[:, _FOLLOW[key]])
        t = p.time[idx] + rng.uniform(lo_d, hi_d, idx.size)
        parts.append(_part(p.stretch[idx], t, _T[etype], p.prof[idx], None, p.cat[idx]))
    return parts


# --------------------------------------------------------------------------- intent episodes


def _intent_events(
    rng: np.random.Generator, st: _Stretches, rates: _Rates, days: float
) -> dict[str, np.ndarray]:
    """Purchase intent episodes in the alive stretches (see INTENT_SHARE): research events
    before each episode, then its purchases (with their funnel and follow-ups) while the client
    is alive. Returns the events, channel, category and sentiment set."""
    alive = st.prof != DORMANT
    rate = INTENT_SHARE / INTENT_PURCHASES * _TAB["buy"][st.prof] * st.buy_factor * alive
    rep = np.repeat(np.arange(st.prof.size), rng.poisson(rate * st.length))
    start = st.lo[rep] + rng.random(rep.size) * st.length[rep]
    lead = rng.uniform(INTENT_RESEARCH_DAYS[0], INTENT_RESEARCH_DAYS[1], rep.size)
    research = np.maximum(start - lead, st.lo[rep])
    n_research = rng.poisson(INTENT_RESEARCH_EVENTS, rep.size)
    r_ep = np.repeat(np.arange(rep.size), n_research)
    r_time = research[r_ep] + rng.random(r_ep.size) * (start - research)[r_ep]
    mix = np.zeros((1, len(EVENT_TYPES)))
    for name, weight in _RESEARCH_MIX.items():
        mix[0, _T[name]] = weight
    r_type = _draw(rng, _cum(mix), _last_positive(mix), np.zeros(r_ep.size, np.int64))
    looks = _part(rep[r_ep], r_time, r_type, st.prof[rep[r_ep]].astype(np.int64), None, None)

    n_buy = 1 + rng.poisson(INTENT_PURCHASES - 1.0, rep.size)
    b_ep = np.repeat(np.arange(rep.size), n_buy)
    b_time = start[b_ep] + rng.random(b_ep.size) * INTENT_BUY_DAYS
    new, _ = _purchases_after(rng, st, rates, days, looks, rep[b_ep], b_time)
    return new


def _purchases_after(
    rng: np.random.Generator,
    st: _Stretches,
    rates: _Rates,
    days: float,
    lead: dict[str, np.ndarray],
    stretch: np.ndarray,
    time: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The `lead` events and the purchases they bring about in `stretch` at `time` (those
    while the client is alive), with their funnels and follow-ups, channel, category and
    sentiment set. Returns the events and the stretch of every purchase kept."""
    alive = time < np.minimum(st.lo[stretch] + st.length[stretch], days)
    stretch, time = stretch[alive], time[alive]
    prof = st.prof[stretch].astype(np.int64)
    p = _Purchases(
        stretch,
        time,
        prof,
        np.maximum(np.round(rng.gamma(_SPEND_P, 1.0 / st.nu[stretch]), 2), 0.01),
        _draw(rng, _TAB["chan"], _TAB["chan_last"], prof * len(EVENT_TYPES) + _T["purchase"]),
        _pick_category(rng, prof, st.cat_dom[stretch]),
    )
    parts = [
        lead,
        _part(p.stretch, p.time, _T["purchase"], p.prof, p.chan, p.cat, p.amount),
        *_funnel_parts(rng, p),
        *_follow_up_parts(rng, p),
    ]
    new = _inside_window(parts, days)
    new["sent"] = _fill_missing(rng, new, st.cat_dom, rates.mood)
    return new, stretch


# --------------------------------------------------------------------------- journey plants


@dataclass(frozen=True)
class _Plants:
    """Per client of a chunk: what the journey plants did."""

    left_at: np.ndarray  # day the client left after the drop-off cause (inf: did not)
    moment_purchases: np.ndarray  # int32: purchases the moment of truth added


def _plant_journeys(
    rng: np.random.Generator,
    ev: dict[str, np.ndarray],
    st: _Stretches,
    rates: _Rates,
    days: float,
) -> tuple[dict[str, np.ndarray], _Stretches, _Plants]:
    """The moment of truth, then the drop-off cause, on a chunk's finished events (channel,
    category and sentiment, key "sent", all set), drawn from `rng` in that order."""
    moment, buyer = _moment_events(rng, ev, st, rates, days)
    ev, st, left_at = _dropoff_events(rng, [ev, moment], st, rates)
    bought = np.bincount(buyer, minlength=left_at.size).astype(np.int32)
    return ev, st, _Plants(left_at, bought)


def _moment_events(
    rng: np.random.Generator,
    ev: dict[str, np.ndarray],
    st: _Stretches,
    rates: _Rates,
    days: float,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Consultations on the call_center planted in MOMENT_PERSONA's alive stretches (Poisson,
    MOMENT_CALLS_PER_YEAR, whatever the activity) and, after each such consultation of that
    persona (planted or of the browse stream), a purchase with probability MOMENT_BUY within
    MOMENT_DAYS while the client is alive, with its funnel and follow-ups. Returns the new
    events and the local client index of every added purchase."""
    persona = PERSONAS.index(MOMENT_PERSONA)
    counts = rng.poisson(MOMENT_CALLS_PER_YEAR / 365.0 * st.length * (st.prof == persona))
    rep = np.repeat(np.arange(st.prof.size), counts)
    time = st.lo[rep] + rng.random(rep.size) * st.length[rep]
    prof = st.prof[rep].astype(np.int64)
    cat = _pick_category(rng, prof, st.cat_dom[rep])
    calls = _part(rep, time, _T["consultation"], prof, np.full(rep.size, _C["call_center"]), cat)
    old = np.flatnonzero(
        (ev["type"] == _T["consultation"])
        & (ev["chan"] == _C["call_center"])
        & (ev["prof"] == persona)
    )
    stretch = np.concatenate([ev["stretch"][old], rep])
    t_buy = np.concatenate([ev["time"][old], time])
    buy = np.flatnonzero(rng.random(stretch.size) < MOMENT_BUY)
    stretch = stretch[buy]
    t_buy = t_buy[buy] + rng.uniform(MOMENT_DAYS[0], MOMENT_DAYS[1], buy.size)
    new, bought = _purchases_after(rng, st, rates, days, calls, stretch, t_buy)
    return new, bought // 4


def _dropoff_events(
    rng: np.random.Generator, parts: list[dict[str, np.ndarray]], st: _Stretches, rates: _Rates
) -> tuple[dict[str, np.ndarray], _Stretches, np.ndarray]:
    """A page_view of CAUSE_CATEGORY on the checkout's channel CAUSE_MINUTES before
    DROPOFF_EXPOSURE of all checkout_starts (every persona); after DROPOFF_LEAVE of the exposed
    checkouts of DROPOFF_PERSONA the client leaves: the rest of that alive stretch (the purchase
    of the checkout, later events, follow-ups) is dropped and turns dormant (the brand keeps
    writing). Returns the events of `parts` (in order) and of the plant, the stretches with
    their new ends and, per local client, the day they left (inf: they did not)."""
    # Only the checkouts' columns are gathered; the parts are copied once, at the end.
    checkouts = [p["type"] == _T["checkout_start"] for p in parts]
    ev = {
        key: np.concatenate([p[key][c] for p, c in zip(parts, checkouts, strict=True)])
        for key in ("stretch", "time", "prof", "chan")
    }
    exposed = np.flatnonzero(rng.random(ev["time"].size) < DROPOFF_EXPOSURE)
    leaves = rng.random(exposed.size) < DROPOFF_LEAVE
    minutes = rng.uniform(CAUSE_MINUTES[0], CAUSE_MINUTES[1], exposed.size)
    page = _part(
        ev["stretch"][exposed],
        ev["time"][exposed] - minutes / 1440.0,
        _T["page_view"],
        ev["prof"][exposed],
        ev["chan"][exposed],
        np.full(exposed.size, EVENT_CATEGORIES.index(CAUSE_CATEGORY)),
    )
    page["sent"] = np.full(exposed.size, np.nan)
    left = exposed[leaves & (ev["prof"][exposed] == PERSONAS.index(DROPOFF_PERSONA))]
    cut = np.full(st.prof.size, np.inf)
    np.minimum.at(cut, ev["stretch"][left], ev["time"][left])
    kept = []
    for part in [*parts, page]:
        keep = (part["time"] <= cut[part["stretch"]]) & (part["time"] >= 0.0)
        kept.append(part if keep.all() else {key: value[keep] for key, value in part.items()})

    # The rest of the alive stretch is dormant: the brand's events, as in the next stretch.
    cs = np.flatnonzero(np.isfinite(cut))
    gap = st.lo[cs] + st.length[cs] - cut[cs]
    counts = rng.poisson(_TAB["browse"][DORMANT] * st.activity[cs] * gap)
    idx = np.repeat(np.arange(cs.size), counts)
    prof = np.full(idx.size, DORMANT, np.int64)
    filler = _part(
        cs[idx] + 1,
        cut[cs][idx] + rng.random(idx.size) * gap[idx],
        _draw(rng, _TAB["type"], _TAB["type_last"], prof),
        prof,
        None,
        None,
    )
    filler["sent"] = _fill_missing(rng, filler, st.cat_dom, rates.mood)

    lo, length = st.lo.copy(), st.length.copy()
    length[cs] = cut[cs] - lo[cs]
    lo[cs + 1], length[cs + 1] = cut[cs], length[cs + 1] + gap
    before, after = st.alive_before_end.copy(), st.alive_after_end.copy()
    first = cs % 4 == 0
    before[cs[first] // 4] = cut[cs[first]]
    after[cs[~first] // 4] = cut[cs[~first]]
    left_at = np.full(st.prof.size // 4, np.inf)
    left_at[cs // 4] = cut[cs]
    st = replace(st, alive_before_end=before, alive_after_end=after, lo=lo, length=length)
    return _concat([*kept, filler]), st, left_at


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The parts' columns concatenated in order."""
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _inside_window(parts: list[dict[str, np.ndarray]], days: float) -> dict[str, np.ndarray]:
    """The parts' columns concatenated in order, keeping the events inside [0, days)."""
    ev = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    inside = (ev["time"] >= 0.0) & (ev["time"] < days)
    return {key: value[inside] for key, value in ev.items()}


def _fill_missing(
    rng: np.random.Generator, ev: dict[str, np.ndarray], cat_dom: np.ndarray, mood: np.ndarray
) -> np.ndarray:
    """Draw the channel and category (in place) where the stream did not set them; return the
    sentiment of every event (NaN for event types without one)."""
    ev_prof = ev["prof"].astype(np.int64)
    ev_type = ev["type"].astype(np.int64)
    missing = np.flatnonzero(ev["chan"] < 0)
    ev["chan"][missing] = _draw(
        rng, _TAB["chan"], _TAB["chan_last"], ev_prof[missing] * len(EVENT_TYPES) + ev_type[missing]
    )
    missing = np.flatnonzero((ev["cat"] < 0) & _TAB["has_cat"][ev_type])
    # The dominant category of the stretch the event is in.
    ev["cat"][missing] = _pick_category(rng, ev_prof[missing], cat_dom[ev["stretch"][missing]])
    has_sent = np.flatnonzero(_TAB["sent_type"][ev_type])
    sentiment = np.full(ev_type.size, np.nan)
    mean = (
        _TAB["sent"][ev_prof[has_sent]]
        + _TAB["sent_offset"][ev_type[has_sent]]
        + mood[ev["client"][has_sent]]
    )
    sentiment[has_sent] = np.round(np.clip(rng.normal(mean, 0.3), -1.0, 1.0), 2)
    return sentiment


def _pick_category(rng: np.random.Generator, prof: np.ndarray, dominant: np.ndarray) -> np.ndarray:
    """The dominant category with the profile's probability, else one drawn from its taste."""
    keep = rng.random(prof.size) < _TAB["p_dom"][prof]
    drawn = _draw(rng, _TAB["cat"], _TAB["cat_last"], prof)
    return np.where(keep, dominant, drawn).astype(np.int8)


def _part(
    stretch: np.ndarray,
    time: np.ndarray,
    etype: int | np.ndarray,
    prof: np.ndarray,
    chan: np.ndarray | None,
    cat: np.ndarray | None,
    amount: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Columns of one kind of event; `stretch` = 4 * local client index + stretch number."""
    size = time.size
    return {
        "stretch": stretch,
        "client": stretch // 4,
        "time": time,
        "type": np.broadcast_to(np.asarray(etype, dtype=np.int8), (size,)).copy(),
        "prof": prof.astype(np.int8),
        "chan": np.full(size, -1, np.int8) if chan is None else chan.astype(np.int8),
        "cat": np.full(size, -1, np.int8) if cat is None else cat.astype(np.int8),
        "amount": np.full(size, np.nan) if amount is None else amount,
    }


def _client_ids(first: int, n: int) -> pa.Array:
    return pa.array([f"c{i:08d}" for i in range(first, first + n)], type=pa.string())


def _to_arrow(
    first: int, n: int, w: _Window, ev: dict[str, np.ndarray], sentiment: np.ndarray
) -> pa.Table:
    day_us = 86_400_000_000
    t_us = np.minimum((ev["time"] * day_us).astype(np.int64), w.days * day_us - 1)
    order = np.lexsort((ev["type"], t_us, ev["client"]))
    client = ev["client"][order]
    per_client = np.bincount(client, minlength=n)
    seq = np.arange(client.size) - np.repeat(np.cumsum(per_client) - per_client, per_client)
    epoch_us = (w.start - date(1970, 1, 1)).days * day_us
    client_col = _client_ids(first, n).take(pa.array(client))
    cat = ev["cat"][order]
    amount = ev["amount"][order]
    sentiment = sentiment[order]
    columns = {
        "client_id": client_col,
        "event_time": pa.array(t_us[order] + epoch_us, type=pa.timestamp("us", tz="UTC")),
        "event_type": pa.array(EVENT_TYPES).take(pa.array(ev["type"][order])),
        "channel": pa.array(CHANNELS).take(pa.array(ev["chan"][order])),
        "amount": pa.array(amount, mask=np.isnan(amount)),
        "category": pa.array(EVENT_CATEGORIES).take(pa.array(cat, mask=cat < 0)),
        "sentiment": pa.array(sentiment, mask=np.isnan(sentiment)),
        "event_id": pc.binary_join_element_wise(
            client_col, pc.cast(pa.array(seq), pa.string()), "-"
        ),
    }
    return pa.Table.from_arrays(list(columns.values()), schema=EVENT_SCHEMA)


def _truth(
    first: int,
    n: int,
    w: _Window,
    clients: _Clients,
    rates: _Rates,
    stretches: _Stretches,
    plants: _Plants,
) -> pa.Table:
    """One row per client: personas, shift, categories, dropout, the latent rates and what the
    journey plants did (the day the client left after the drop-off cause, the purchases the
    moment of truth added)."""
    persona, after, shifted = clients.persona, clients.after, clients.shifted
    cat_before, cat_after, start = clients.cat_before, clients.cat_after, clients.start
    b, e = stretches.alive_before_end, stretches.alive_after_end
    activity, buy_factor, spend_factor = rates.activity, rates.buy_factor, rates.spend_factor
    names, cats = np.array(PERSONAS), np.array(CATEGORIES)
    origin = (w.start - date(1970, 1, 1)).days
    last_drop = np.where(shifted, e, b)
    dropped = last_drop < w.days
    mean_spend = _SPEND_P * _TAB["gg_gamma"] / (_SPEND_Q * spend_factor[:, None])  # p / nu
    columns = [
        _client_ids(first, n),
        pa.array(names[persona]),
        pa.array(names[after]),
        pa.array(shifted),
        pa.array(np.full(n, origin + w.shift_day, np.int32), pa.date32(), mask=~shifted),
        pa.array(cats[cat_before]),
        pa.array(cats[cat_after]),
        pa.array((origin + np.floor(start)).astype(np.int32), pa.date32()),
        pa.array(
            (origin + np.floor(np.minimum(last_drop, w.days - 1))).astype(np.int32),
            pa.date32(),
            mask=~dropped,
        ),
        pa.array(~dropped),
        pa.array(_TAB["browse"][persona] * activity),
        pa.array(_TAB["browse"][after] * activity),
        pa.array(_TAB["buy"][persona] * buy_factor),
        pa.array(_TAB["buy"][after] * buy_factor),
        pa.array(mean_spend[np.arange(n), persona]),
        pa.array(mean_spend[np.arange(n), after]),
        pa.array(
            (origin + np.floor(np.nan_to_num(plants.left_at, posinf=0.0))).astype(np.int32),
            pa.date32(),
            mask=~np.isfinite(plants.left_at),
        ),
        pa.array(plants.moment_purchases, pa.int32()),
    ]
    return pa.Table.from_arrays(columns, schema=TRUTH_SCHEMA)
