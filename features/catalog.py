"""The feature catalog: every feature's name, family, type, description, label and unit, in one place.

The feature build (`features.build`) takes its column order and Arrow types from here, and the
documentation (docs/features.md) is generated from here:

    python -m features.catalog > docs/features.md

Windowed families depend on the configured windows, so the catalog is a function of the
`FeaturesConfig`; `FEATURES` is the catalog of the default configuration.

Labels and units say how a value reads in words (segment names, profiles, membership
reasons: segmentation.profiles, segmentation.reasons), e.g. "3 carts abandoned in the last 90
days" or "share of store activity: 82%".

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


# How a feature's value reads (segmentation.reasons and the profiles render values by unit).
UNITS = {
    "id": "an identifier, never shown",
    "days": 'a duration in days ("12 days since last activity")',
    "count": 'a number of things ("3 carts abandoned in the last 90 days")',
    "amount": "money, in the unit of the events' amount",
    "share": "a fraction in 0..1, shown as a percentage",
    "rate": 'things per unit ("0.5 support tickets per purchase")',
    "score": "a number on the scale its label gives",
    "flag": "1 yes, 0 no",
    "stage": "a journey stage rank, shown as the stage's name",
    "text": "a word (a stage, a channel, a category)",
}
# Channels in words, for the labels.
CHANNEL_LABELS = {
    "web": "website",
    "app": "app",
    "email": "email",
    "messenger": "messenger",
    "social": "social media",
    "store": "store",
    "call_center": "call center",
}


@dataclass(frozen=True)
class Feature:
    """One output column of the feature table, with how to say it in words.

    `label` is the feature in plain language, read with its value by `unit` (see UNITS): a
    count's or days' label starts with its plural noun ("carts abandoned in the last 90
    days"), so "3 " + label reads. `window` is the window (days) of a windowed count, so that
    a zero reads "no cart abandoned since <date>"; `date_label` lets a days feature read as a
    date ("last purchase on <date>"); `if_null` says what a null means ("never purchased").
    """

    name: str
    family: str
    dtype: str  # "string" | "int64" | "float64"
    description: str
    label: str = ""
    unit: str = ""
    window: int | None = None
    date_label: str = ""
    if_null: str = ""

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

    def add(
        name: str,
        family: str,
        dtype: str,
        description: str,
        *,
        label: str,
        unit: str,
        window: int | None = None,
        date_label: str = "",
        if_null: str = "",
    ) -> None:
        out.append(
            Feature(name, family, dtype, description, label, unit, window, date_label, if_null)
        )

    add("client_id", "key", "string", "Client identifier.", label="client", unit="id")

    add(
        "recency_days",
        "rfm",
        "float64",
        "Days from the last client-initiated event to the end of the as-of day (a brand touch"
        " such as an ad impression or a sent email does not count); from the first event of any"
        " kind if the client never acted.",
        label="days since last activity",
        unit="days",
        date_label="last activity",
    )
    add(
        "days_since_last_purchase",
        "rfm",
        "float64",
        "Days from the last purchase to the end of the as-of day; null if never purchased.",
        label="days since last purchase",
        unit="days",
        date_label="last purchase",
        if_null="never purchased",
    )
    add(
        "tenure_days",
        "rfm",
        "float64",
        "Days from the first event of any kind to the end of the as-of day.",
        label="days since first seen",
        unit="days",
        date_label="first seen",
    )
    add(
        "n_events",
        "rfm",
        "int64",
        "Client-initiated events up to the as-of date.",
        label="actions in total",
        unit="count",
    )
    add(
        "n_purchases",
        "rfm",
        "int64",
        "Purchase events up to the as-of date.",
        label="purchases in total",
        unit="count",
    )
    add(
        "purchase_days",
        "rfm",
        "int64",
        "Distinct days with a purchase.",
        label="days with a purchase",
        unit="count",
    )
    add(
        "has_purchased",
        "rfm",
        "int64",
        "1 if the client ever purchased, else 0.",
        label="has purchased",
        unit="flag",
    )
    add(
        "total_spend",
        "rfm",
        "float64",
        "Sum of purchase amounts (0 if none).",
        label="total spend",
        unit="amount",
    )
    add(
        "avg_order_value",
        "rfm",
        "float64",
        "Total spend per purchase event; null if never purchased.",
        label="average order value",
        unit="amount",
        if_null="no order yet",
    )
    add(
        "mean_days_between_purchases",
        "rfm",
        "float64",
        "Days from the first to the last purchase day per repeat purchase day; null if none.",
        label="days between purchases on average",
        unit="days",
        if_null="no repeat purchase",
    )
    add(
        "n_returns",
        "rfm",
        "int64",
        "Return events up to the as-of date.",
        label="returns in total",
        unit="count",
    )
    add(
        "n_refunds",
        "rfm",
        "int64",
        "Refund events up to the as-of date.",
        label="refunds in total",
        unit="count",
    )
    add(
        "return_amount",
        "rfm",
        "float64",
        "Money given back on returns (0 if none).",
        label="money back on returns",
        unit="amount",
    )
    add(
        "refund_amount",
        "rfm",
        "float64",
        "Money given back on refunds (0 if none).",
        label="money back on refunds",
        unit="amount",
    )
    add(
        "net_spend",
        "rfm",
        "float64",
        "Total spend minus return and refund amounts.",
        label="spend after returns and refunds",
        unit="amount",
    )

    add(
        "frequency",
        "btyd",
        "int64",
        "Repeat purchase days: distinct purchase days minus 1 (0 if none).",
        label="repeat purchase days",
        unit="count",
    )
    add(
        "recency",
        "btyd",
        "float64",
        "Days from the first to the last purchase day (0 if at most one purchase day).",
        label="days from first to last purchase day",
        unit="days",
    )
    add(
        "T",
        "btyd",
        "float64",
        "Days from the start of the first purchase day to the end of the as-of day (0 if none).",
        label="days since the first purchase day",
        unit="days",
    )
    add(
        "monetary_value",
        "btyd",
        "float64",
        "Mean spend per repeat purchase day, first purchase day excluded (0 if frequency is 0).",
        label="average spend per repeat purchase day",
        unit="amount",
    )

    windows = feature_windows(config)
    for w in windows:
        add(
            f"events_{w}d",
            "activity",
            "int64",
            f"Client-initiated events in the last {w} days.",
            label=f"actions in the last {w} days",
            unit="count",
            window=w,
        )
    for w in windows:
        add(
            f"active_days_{w}d",
            "activity",
            "int64",
            f"Days with at least one client-initiated event, last {w} days.",
            label=f"active days in the last {w} days",
            unit="count",
            window=w,
        )
    for w in windows:
        add(
            f"purchases_{w}d",
            "activity",
            "int64",
            f"Purchase events in the last {w} days.",
            label=f"purchases in the last {w} days",
            unit="count",
            window=w,
        )
    for w in windows:
        add(
            f"spend_{w}d",
            "activity",
            "float64",
            f"Purchase amounts in the last {w} days.",
            label=f"spend in the last {w} days",
            unit="amount",
            window=w,
        )
    for w in windows:
        for stage in STAGES:
            add(
                f"{stage}_events_{w}d",
                "activity",
                "int64",
                f"Client-initiated events of journey stage {stage} in the last {w} days.",
                label=f"{stage} actions in the last {w} days",
                unit="count",
                window=w,
            )
    for w in CHANNEL_WINDOWS:
        for channel in CHANNELS:
            add(
                f"{channel}_events_{w}d",
                "activity",
                "int64",
                f"Client-initiated events on channel {channel} in the last {w} days.",
                label=f"{CHANNEL_LABELS[channel]} actions in the last {w} days",
                unit="count",
                window=w,
            )

    add(
        "n_exposures",
        "exposure",
        "int64",
        "Brand-initiated events (ads shown, messages sent or delivered) up to the as-of date.",
        label="brand touches in total",
        unit="count",
    )
    for w in windows:
        add(
            f"exposures_{w}d",
            "exposure",
            "int64",
            f"Brand-initiated events in the last {w} days.",
            label=f"brand touches in the last {w} days",
            unit="count",
            window=w,
        )

    add(
        "activity_momentum",
        "change",
        "float64",
        f"(r - p) / (r + p) for client-initiated events in the last {m} days (r) and the {m}"
        " days before (p);"
        " 0 when both are 0.",
        label=f"activity trend, last {m} days against the {m} before (-1 to 1)",
        unit="score",
    )
    add(
        "spend_momentum",
        "change",
        "float64",
        f"(r - p) / (r + p) for purchase amounts in the last {m} days and the {m} days before;"
        " 0 when both are 0.",
        label=f"spend trend, last {m} days against the {m} before (-1 to 1)",
        unit="score",
    )
    add(
        "purchase_momentum",
        "change",
        "float64",
        f"(r - p) / (r + p) for purchase events in the last {m} days and the {m} days before;"
        " 0 when both are 0.",
        label=f"purchase trend, last {m} days against the {m} before (-1 to 1)",
        unit="score",
    )
    add(
        "return_gap_days",
        "change",
        "float64",
        f"Days from the last client-initiated event before the last {m} days to the first one"
        " inside them;"
        " null if none on either side.",
        label="days of silence before coming back",
        unit="days",
        if_null="no return after a silence",
    )

    add(
        "furthest_stage",
        "journey",
        "string",
        "Furthest journey stage reached by a client-initiated event (awareness < ... <"
        " advocacy); 'other' if none.",
        label="furthest journey stage",
        unit="text",
    )
    add(
        "furthest_stage_rank",
        "journey",
        "int64",
        "Rank of furthest_stage: 0 (other) to 5.",
        label="furthest journey stage",
        unit="stage",
    )
    add(
        "current_stage",
        "journey",
        "string",
        "Journey stage of the most recent client-initiated event with a known stage; 'other'"
        " if none.",
        label="current journey stage",
        unit="text",
    )
    add(
        "current_stage_rank",
        "journey",
        "int64",
        "Rank of current_stage: 0 (other) to 5.",
        label="current journey stage",
        unit="stage",
    )
    add(
        "days_since_stage_advance",
        "journey",
        "float64",
        "Days since the client first reached the furthest stage (the last advance).",
        label="days since reaching the furthest stage",
        unit="days",
        date_label="furthest stage reached",
    )

    add(
        f"carts_{w90}d",
        "funnel",
        "int64",
        f"add_to_cart events in the last {w90} days.",
        label=f"carts in the last {w90} days",
        unit="count",
        window=w90,
    )
    add(
        f"checkouts_{w90}d",
        "funnel",
        "int64",
        f"checkout_start events in the last {w90} days.",
        label=f"checkouts started in the last {w90} days",
        unit="count",
        window=w90,
    )
    add(
        f"carts_abandoned_{w90}d",
        "funnel",
        "int64",
        f"Carts of the last {w90} days with no purchase within {a} days (deadline passed).",
        label=f"carts abandoned in the last {w90} days",
        unit="count",
        window=w90,
    )
    add(
        f"checkouts_abandoned_{w90}d",
        "funnel",
        "int64",
        f"Checkouts of the last {w90} days with no purchase within {a} days (deadline passed).",
        label=f"checkouts abandoned in the last {w90} days",
        unit="count",
        window=w90,
    )
    add(
        f"cart_abandon_rate_{w90}d",
        "funnel",
        "float64",
        "Abandoned carts / carts with a known outcome (abandoned or bought); null if none.",
        label=f"share of carts abandoned in the last {w90} days",
        unit="share",
        if_null="no cart with a known outcome",
    )
    add(
        f"checkout_abandon_rate_{w90}d",
        "funnel",
        "float64",
        "Abandoned checkouts / checkouts with a known outcome; null if none.",
        label=f"share of checkouts abandoned in the last {w90} days",
        unit="share",
        if_null="no checkout with a known outcome",
    )
    add(
        "open_carts",
        "funnel",
        "int64",
        f"Carts of the last {a} days not yet followed by a purchase (outcome still open).",
        label=f"carts still open (last {a} days)",
        unit="count",
    )

    add(
        "preferred_channel",
        "channel",
        "string",
        "Channel with the most client-initiated events (ties: alphabetical first; unknown"
        " channels as 'other');"
        " null if no channel.",
        label="preferred channel",
        unit="text",
        if_null="no channel",
    )
    add(
        "channel_entropy",
        "channel",
        "float64",
        "Shannon entropy (bits) of the channel distribution; null if no channel.",
        label="channel variety (0 for a single channel)",
        unit="score",
        if_null="no channel",
    )
    add(
        "channels_used",
        "channel",
        "int64",
        "Distinct channels used (unknown ones as 'other').",
        label="channels used",
        unit="count",
    )
    for channel in CHANNELS:
        add(
            f"share_{channel}",
            "channel",
            "float64",
            f"Share of client-initiated events with a channel that were on {channel}; null if"
            " no channel.",
            label=f"share of {CHANNEL_LABELS[channel]} activity",
            unit="share",
            if_null="no channel",
        )

    add(
        f"support_tickets_{w90}d",
        "emotion",
        "int64",
        f"support_ticket events in the last {w90} days.",
        label=f"support tickets in the last {w90} days",
        unit="count",
        window=w90,
    )
    add(
        f"returns_{w90}d",
        "emotion",
        "int64",
        f"Return events in the last {w90} days.",
        label=f"returns in the last {w90} days",
        unit="count",
        window=w90,
    )
    add(
        f"refunds_{w90}d",
        "emotion",
        "int64",
        f"Refund events in the last {w90} days.",
        label=f"refunds in the last {w90} days",
        unit="count",
        window=w90,
    )
    add(
        "n_support_tickets",
        "emotion",
        "int64",
        "support_ticket events up to the as-of date.",
        label="support tickets in total",
        unit="count",
    )
    add(
        "n_sentiment",
        "emotion",
        "int64",
        "Events carrying a sentiment score.",
        label="sentiment scores received",
        unit="count",
    )
    add(
        "sentiment_mean",
        "emotion",
        "float64",
        "Mean sentiment in [-1, 1]; null if none.",
        label="average sentiment (-1 to 1)",
        unit="score",
        if_null="no sentiment score",
    )
    add(
        "sentiment_last",
        "emotion",
        "float64",
        "Most recent sentiment; null if none.",
        label="last sentiment (-1 to 1)",
        unit="score",
        if_null="no sentiment score",
    )
    add(
        f"sentiment_{w90}d",
        "emotion",
        "float64",
        f"Mean sentiment in [-1, 1] over the last {w90} days (how they feel now); null if none.",
        label=f"average sentiment in the last {w90} days (-1 to 1)",
        unit="score",
        if_null=f"no sentiment score in the last {w90} days",
    )
    add(
        "sentiment_trend",
        "emotion",
        "float64",
        "Most recent sentiment minus the mean of the earlier ones (0 with one score);"
        " null if none.",
        label="sentiment trend, last against earlier",
        unit="score",
        if_null="no sentiment score",
    )

    add(
        "dominant_category_recent",
        "intent",
        "string",
        f"Most frequent category in the last {i} days (ties: alphabetical first); null if none.",
        label=f"main category in the last {i} days",
        unit="text",
        if_null=f"no category in the last {i} days",
    )
    add(
        "dominant_category_before",
        "intent",
        "string",
        f"Most frequent category in the {i} days before that; null if none.",
        label=f"main category in the {i} days before",
        unit="text",
        if_null=f"no category in the {i} days before",
    )
    add(
        "categories_recent",
        "intent",
        "int64",
        f"Distinct categories in the last {i} days.",
        label=f"categories in the last {i} days",
        unit="count",
        window=i,
    )
    add(
        "intent_shift",
        "intent",
        "float64",
        "Jensen-Shannon distance (base 2, 0..1) between the category distributions of the two"
        " intent windows; null if either is empty.",
        label="change of categories (0 same, 1 all new)",
        unit="score",
        if_null="no categories to compare",
    )

    add(
        "reviews",
        "advocacy",
        "int64",
        "Review events up to the as-of date.",
        label="reviews written",
        unit="count",
    )
    add(
        "referrals",
        "advocacy",
        "int64",
        "Referral events up to the as-of date.",
        label="referrals made",
        unit="count",
    )
    add(
        "shares",
        "advocacy",
        "int64",
        "Share events up to the as-of date.",
        label="shares made",
        unit="count",
    )

    add(
        "purchases_per_active_month",
        "rates",
        "float64",
        "Repeat purchases (purchase events after the first) per 30 days of the active"
        " span (first event to the last client-initiated one, at least 30 days); 0 for a"
        " client with one purchase or none. A single purchase shows no rate: counted as a"
        " rate over a 30-day floor it would rank one-time buyers above regular ones.",
        label="repeat purchases per active month",
        unit="rate",
    )
    for name, what in (
        ("tickets_per_purchase", "Support tickets"),
        ("returns_per_purchase", "Returns"),
        ("advocacy_per_purchase", "Reviews, referrals and shares"),
    ):
        add(
            name,
            "rates",
            "float64",
            f"{what} per purchase event (per 1 if none).",
            label=f"{what.lower()} per purchase",
            unit="rate",
        )
    w = windows[-1]
    for stage in STAGES:
        add(
            f"{stage}_share_{w}d",
            "rates",
            "float64",
            f"Share of the last {w} days' client-initiated events in the {stage} stage; null if"
            " none.",
            label=f"share of {stage} actions in the last {w} days",
            unit="share",
            if_null=f"no action in the last {w} days",
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
            label=f"share of {stage} actions",
            unit="share",
            if_null="no action",
        )
    for channel in CHANNELS:
        add(
            f"share_{channel}_weighted",
            "channel",
            "float64",
            f"Share of client-initiated events on {channel} among the standard channels, all"
            f" time, those of the"
            f" last {w90} days counting {times}; null if none.",
            label=f"share of {CHANNEL_LABELS[channel]} activity",
            unit="share",
            if_null="no channel",
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
        "Each feature also has a label in plain words and a unit, which say how its value reads",
        "in segment names, profiles and membership reasons (`segmentation.reasons`): "
        + "; ".join(f"{unit}: {meaning}" for unit, meaning in UNITS.items())
        + ".",
        "",
    ]
    for family, about in FAMILIES.items():
        members = [f for f in catalog if f.family == family]
        lines += [
            f"## {family}",
            "",
            about,
            "",
            "| name | type | unit | label | description |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| `{f.name}` | {f.dtype} | {f.unit} | {f.label} | {f.description} |" for f in members
        ]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - exercised through the docs test
    sys.stdout.write(render_markdown())
