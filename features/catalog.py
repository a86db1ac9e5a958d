"""The feature catalog: every feature's name, family, type and one-line description, in one place.

The feature build (`features.build`) takes its column order and Arrow types from here, and the
documentation (docs/features.md) is generated from here:

    python -m features.catalog > docs/features.md

Windowed families depend on the configured windows, so the catalog is a function of the
`FeaturesConfig`; `FEATURES` is the catalog of the default configuration.

Types: counts are int64, durations (days), money, shares, rates and scores are float64, text is
string. An undefined numeric value (for example days_since_last_purchase of a client who never
purchased) is null in Arrow; pandas readers turn it into NaN.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pyarrow as pa

from configs import STAGES, FeaturesConfig

# Rank of each journey stage; events of unknown type (stage `other`) have rank 0.
STAGE_RANK = {"other": 0, **{stage: i + 1 for i, stage in enumerate(STAGES)}}
CHANNELS = ("web", "app", "email", "messenger", "social", "store", "call_center")
# Windows that always exist, whatever the config, because other modules (the shipped rules:
# active_days_365d) use their names.
REQUIRED_WINDOWS = (30, 90, 365)
# Fixed window of the funnel and pain features (their names carry it).
FIXED_WINDOW = 90
# Weight of the last FIXED_WINDOW days' events in the recency-weighted mixes (*_weighted): for
# steady behavior the last quarter then weighs a little more than the rest of the year, so a
# change of behavior moves the mix within weeks while a quiet month does not erase the year.
RECENT_WEIGHT = 4
# Windows of the per-channel event counts (fixed, to keep the column count reasonable).
CHANNEL_WINDOWS = (30, 90)

ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}

FAMILIES = {
    "key": "The client the row describes.",
    "rfm": "Recency, frequency, monetary value and purchase history up to the as-of date.",
    "btyd": "Inputs of the buy-till-you-die CLTV models (BG/NBD, Gamma-Gamma), in days.",
    "activity": "Activity by window: the client's own events (client-initiated), active days,"
    " purchases, spend, by stage and channel.",
    "exposure": "Exposure: brand-initiated touches (ads shown, messages sent or delivered, and"
    " whatever else the taxonomy marks `brand`), kept apart from the client's own activity.",
    "change": "Momentum: the recent window against the window before it.",
    "journey": "Journey stage: furthest reached, current, and how long since it advanced.",
    "funnel": "Funnel drop-off: carts and checkouts without a purchase in time.",
    "channel": "Channel mix: shares, preferred channel and diversity.",
    "emotion": "Emotion and pain: support contacts, returns and sentiment.",
    "intent": "Intent: the categories pursued recently and before, and how much they moved.",
    "advocacy": "Advocacy: reviews, referrals and shares.",
    "rates": "Behavior rates: normalized by purchases, active time or events, so that a client"
    " who went quiet keeps the profile of how they behaved while active.",
}


@dataclass(frozen=True)
class Feature:
    """One output column of the feature table."""

    name: str
    family: str
    dtype: str  # "string" | "int64" | "float64"
    description: str

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.dtype]


def feature_windows(config: FeaturesConfig | None = None) -> tuple[int, ...]:
    """The windows (days) of the activity family: the configured ones plus 30, 90 and 365."""
    config = config or FeaturesConfig()
    return tuple(sorted(set(config.windows_days) | set(REQUIRED_WINDOWS)))


def feature_catalog(config: FeaturesConfig | None = None) -> list[Feature]:
    """Every feature of the table built with `config`, in column order."""
    config = config or FeaturesConfig()
    m, i, a = config.momentum_days, config.intent_days, config.abandonment_days
    w90 = FIXED_WINDOW
    out: list[Feature] = []

    def add(name: str, family: str, dtype: str, description: str) -> None:
        out.append(Feature(name, family, dtype, description))

    add("client_id", "key", "string", "Client identifier.")

    add(
        "recency_days",
        "rfm",
        "float64",
        "Days from the last client-initiated event to the end of the as-of day (a brand touch"
        " such as an ad impression or a sent email does not count); from the first event of any"
        " kind if the client never acted.",
    )
    add(
        "days_since_last_purchase",
        "rfm",
        "float64",
        "Days from the last purchase to the end of the as-of day; null if never purchased.",
    )
    add(
        "tenure_days",
        "rfm",
        "float64",
        "Days from the first event of any kind to the end of the as-of day.",
    )
    add("n_events", "rfm", "int64", "Client-initiated events up to the as-of date.")
    add("n_purchases", "rfm", "int64", "Purchase events up to the as-of date.")
    add("purchase_days", "rfm", "int64", "Distinct days with a purchase.")
    add("has_purchased", "rfm", "int64", "1 if the client ever purchased, else 0.")
    add("total_spend", "rfm", "float64", "Sum of purchase amounts (0 if none).")
    add(
        "avg_order_value",
        "rfm",
        "float64",
        "Total spend per purchase event; null if never purchased.",
    )
    add(
        "mean_days_between_purchases",
        "rfm",
        "float64",
        "Days from the first to the last purchase day per repeat purchase day; null if none.",
    )
    add("n_returns", "rfm", "int64", "Return events up to the as-of date.")
    add("n_refunds", "rfm", "int64", "Refund events up to the as-of date.")
    add("return_amount", "rfm", "float64", "Money given back on returns (0 if none).")
    add("refund_amount", "rfm", "float64", "Money given back on refunds (0 if none).")
    add("net_spend", "rfm", "float64", "Total spend minus return and refund amounts.")

    add(
        "frequency",
        "btyd",
        "int64",
        "Repeat purchase days: distinct purchase days minus 1 (0 if none).",
    )
    add(
        "recency",
        "btyd",
        "float64",
        "Days from the first to the last purchase day (0 if at most one purchase day).",
    )
    add(
        "T",
        "btyd",
        "float64",
        "Days from the start of the first purchase day to the end of the as-of day (0 if none).",
    )
    add(
        "monetary_value",
        "btyd",
        "float64",
        "Mean spend per repeat purchase day, first purchase day excluded (0 if frequency is 0).",
    )

    windows = feature_windows(config)
    for w in windows:
        add(f"events_{w}d", "activity", "int64", f"Client-initiated events in the last {w} days.")
    for w in windows:
        add(
            f"active_days_{w}d",
            "activity",
            "int64",
            f"Days with at least one client-initiated event, last {w} days.",
        )
    for w in windows:
        add(f"purchases_{w}d", "activity", "int64", f"Purchase events in the last {w} days.")
    for w in windows:
        add(f"spend_{w}d", "activity", "float64", f"Purchase amounts in the last {w} days.")
    for w in windows:
        for stage in STAGES:
            add(
                f"{stage}_events_{w}d",
                "activity",
                "int64",
                f"Client-initiated events of journey stage {stage} in the last {w} days.",
            )
    for w in CHANNEL_WINDOWS:
        for channel in CHANNELS:
            add(
                f"{channel}_events_{w}d",
                "activity",
                "int64",
                f"Client-initiated events on channel {channel} in the last {w} days.",
            )

    add(
        "n_exposures",
        "exposure",
        "int64",
        "Brand-initiated events (ads shown, messages sent or delivered) up to the as-of date.",
    )
    for w in windows:
        add(
            f"exposures_{w}d",
            "exposure",
            "int64",
            f"Brand-initiated events in the last {w} days.",
        )

    add(
        "activity_momentum",
        "change",
        "float64",
        f"(r - p) / (r + p) for client-initiated events in the last {m} days (r) and the {m}"
        " days before (p);"
        " 0 when both are 0.",
    )
    add(
        "spend_momentum",
        "change",
        "float64",
        f"(r - p) / (r + p) for purchase amounts in the last {m} days and the {m} days before;"
        " 0 when both are 0.",
    )
    add(
        "purchase_momentum",
        "change",
        "float64",
        f"(r - p) / (r + p) for purchase events in the last {m} days and the {m} days before;"
        " 0 when both are 0.",
    )
    add(
        "return_gap_days",
        "change",
        "float64",
        f"Days from the last client-initiated event before the last {m} days to the first one"
        " inside them;"
        " null if none on either side.",
    )

    add(
        "furthest_stage",
        "journey",
        "string",
        "Furthest journey stage reached by a client-initiated event (awareness < ... <"
        " advocacy); 'other' if none.",
    )
    add("furthest_stage_rank", "journey", "int64", "Rank of furthest_stage: 0 (other) to 5.")
    add(
        "current_stage",
        "journey",
        "string",
        "Journey stage of the most recent client-initiated event with a known stage; 'other'"
        " if none.",
    )
    add("current_stage_rank", "journey", "int64", "Rank of current_stage: 0 (other) to 5.")
    add(
        "days_since_stage_advance",
        "journey",
        "float64",
        "Days since the client first reached the furthest stage (the last advance).",
    )

    add(f"carts_{w90}d", "funnel", "int64", f"add_to_cart events in the last {w90} days.")
    add(f"checkouts_{w90}d", "funnel", "int64", f"checkout_start events in the last {w90} days.")
    add(
        f"carts_abandoned_{w90}d",
        "funnel",
        "int64",
        f"Carts of the last {w90} days with no purchase within {a} days (deadline passed).",
    )
    add(
        f"checkouts_abandoned_{w90}d",
        "funnel",
        "int64",
        f"Checkouts of the last {w90} days with no purchase within {a} days (deadline passed).",
    )
    add(
        f"cart_abandon_rate_{w90}d",
        "funnel",
        "float64",
        "Abandoned carts / carts with a known outcome (abandoned or bought); null if none.",
    )
    add(
        f"checkout_abandon_rate_{w90}d",
        "funnel",
        "float64",
        "Abandoned checkouts / checkouts with a known outcome; null if none.",
    )
    add(
        "open_carts",
        "funnel",
        "int64",
        f"Carts of the last {a} days not yet followed by a purchase (outcome still open).",
    )

    add(
        "preferred_channel",
        "channel",
        "string",
        "Channel with the most client-initiated events (ties: alphabetical first; unknown"
        " channels as 'other');"
        " null if no channel.",
    )
    add(
        "channel_entropy",
        "channel",
        "float64",
        "Shannon entropy (bits) of the channel distribution; null if no channel.",
    )
    add("channels_used", "channel", "int64", "Distinct channels used (unknown ones as 'other').")
    for channel in CHANNELS:
        add(
            f"share_{channel}",
            "channel",
            "float64",
            f"Share of client-initiated events with a channel that were on {channel}; null if"
            " no channel.",
        )

    add(
        f"support_tickets_{w90}d",
        "emotion",
        "int64",
        f"support_ticket events in the last {w90} days.",
    )
    add(f"returns_{w90}d", "emotion", "int64", f"Return events in the last {w90} days.")
    add(f"refunds_{w90}d", "emotion", "int64", f"Refund events in the last {w90} days.")
    add("n_support_tickets", "emotion", "int64", "support_ticket events up to the as-of date.")
    add("n_sentiment", "emotion", "int64", "Events carrying a sentiment score.")
    add("sentiment_mean", "emotion", "float64", "Mean sentiment in [-1, 1]; null if none.")
    add("sentiment_last", "emotion", "float64", "Most recent sentiment; null if none.")
    add(
        f"sentiment_{w90}d",
        "emotion",
        "float64",
        f"Mean sentiment in [-1, 1] over the last {w90} days (how they feel now); null if none.",
    )
    add(
        "sentiment_trend",
        "emotion",
        "float64",
        "Most recent sentiment minus the mean of the earlier ones (0 with one score);"
        " null if none.",
    )

    add(
        "dominant_category_recent",
        "intent",
        "string",
        f"Most frequent category in the last {i} days (ties: alphabetical first); null if none.",
    )
    add(
        "dominant_category_before",
        "intent",
        "string",
        f"Most frequent category in the {i} days before that; null if none.",
    )
    add("categories_recent", "intent", "int64", f"Distinct categories in the last {i} days.")
    add(
        "intent_shift",
        "intent",
        "float64",
        "Jensen-Shannon distance (base 2, 0..1) between the category distributions of the two"
        " intent windows; null if either is empty.",
    )

    add("reviews", "advocacy", "int64", "Review events up to the as-of date.")
    add("referrals", "advocacy", "int64", "Referral events up to the as-of date.")
    add("shares", "advocacy", "int64", "Share events up to the as-of date.")

    add(
        "purchases_per_active_month",
        "rates",
        "float64",
        "Purchase events per 30 days of the active span (first event to the last"
        " client-initiated one, at least 30 days).",
    )
    for name, what in (
        ("tickets_per_purchase", "Support tickets"),
        ("returns_per_purchase", "Returns"),
        ("advocacy_per_purchase", "Reviews, referrals and shares"),
    ):
        add(name, "rates", "float64", f"{what} per purchase event (per 1 if none).")
    w = windows[-1]
    for stage in STAGES:
        add(
            f"{stage}_share_{w}d",
            "rates",
            "float64",
            f"Share of the last {w} days' client-initiated events in the {stage} stage; null if"
            " none.",
        )
    # Mixes that follow a change of behavior within weeks yet remember the year (the segments'
    # default inputs, see segmentation/clustering.py).
    times = {2: "twice", 3: "three times", 4: "four times"}.get(RECENT_WEIGHT, f"{RECENT_WEIGHT}x")
    for stage in STAGES:
        add(
            f"{stage}_share_weighted",
            "rates",
            "float64",
            f"Share of client-initiated events in the {stage} stage over the last {w} days,"
            f" those of the last"
            f" {w90} days counting {times}; null if none.",
        )
    for channel in CHANNELS:
        add(
            f"share_{channel}_weighted",
            "channel",
            "float64",
            f"Share of client-initiated events on {channel} among the standard channels, all"
            f" time, those of the"
            f" last {w90} days counting {times}; null if none.",
        )
    return out


FEATURES: list[Feature] = feature_catalog()


def feature_names(config: FeaturesConfig | None = None) -> list[str]:
    """Column names of the feature table, in order."""
    return [f.name for f in feature_catalog(config)]


def feature_schema(config: FeaturesConfig | None = None) -> pa.Schema:
    """The Arrow schema of the feature table built with `config`."""
    return pa.schema([pa.field(f.name, f.arrow_type) for f in feature_catalog(config)])


def render_markdown(config: FeaturesConfig | None = None) -> str:
    """The feature documentation (docs/features.md), generated from the catalog."""
    config = config or FeaturesConfig()
    catalog = feature_catalog(config)
    lines = [
        "# Features",
        "",
        "<!-- Generated by `python -m features.catalog > docs/features.md`: do not edit. -->",
        "",
        "One row per client with at least one event up to the as-of date (inclusive day), sorted",
        "by client_id. Nothing after the end of the as-of day counts; durations are in days,",
        "measured to the end of the as-of day (`features.events.day_end(as_of)`).",
        "",
        f"Default configuration: windows {list(config.windows_days)} days (30, 90 and 365 always"
        f" included), momentum {config.momentum_days} days, intent {config.intent_days} days,"
        f" abandonment {config.abandonment_days} days; per-channel counts over"
        f" {' and '.join(map(str, CHANNEL_WINDOWS))} days. {len(catalog)} columns.",
        "",
        "Types: counts are int64; days, money, shares, rates and scores are float64; text is",
        "string. An undefined numeric value is null in Arrow/Parquet (NaN once in pandas).",
        "Money is summed in exact integer micro-units, sentiment in nano-units, so the one-shot",
        "and the sharded builds give identical tables.",
        "",
    ]
    for family, about in FAMILIES.items():
        members = [f for f in catalog if f.family == family]
        lines += [f"## {family}", "", about, "", "| name | type | description |", "|---|---|---|"]
        lines += [f"| `{f.name}` | {f.dtype} | {f.description} |" for f in members]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - exercised through the docs test
    sys.stdout.write(render_markdown())
