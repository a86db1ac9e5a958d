"""The journey map in words: sentences with their figures, "too few clients" instead of a
number, escaping in the report section, and the terminal view of a real small map."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.journey_view import (
    JourneyTables,
    cause_sentence,
    dropoff_sentence,
    journey_section,
    journey_text,
    moment_sentence,
)

NAN = np.nan


def _tables(name: str = "Bargain <b>hunters</b>") -> JourneyTables:
    stages = pd.DataFrame(
        [
            ("S", name, "*", None, 400, NAN, NAN, NAN, NAN, 100, 0.25, 300, 2000, 0.1, 50, None),
            ("S", name, "consideration", None, 300, NAN, NAN, NAN, NAN, 20, 0.07, 40, 900, NAN, 0, None),
            ("S", name, "consideration", "purchase", 300, 180, 0.6, 3.5, 12.0, NAN, NAN, NAN, NAN, NAN, NAN, None),
            ("S", name, "purchase", None, 200, NAN, NAN, NAN, NAN, 60, 0.3, 20, 700, -0.4, 30, None),
        ],
        columns=[
            "segment_id", "segment_name", "stage", "to_stage", "clients", "moved",
            "conversion_rate", "median_days", "p90_days", "stalled", "stall_share",
            "in_progress", "events", "sentiment_mean", "sentiment_events", "note",
        ],
    )  # fmt: skip
    touchpoints = pd.DataFrame(
        [("S", name, "purchase", "checkout_start", "app", "client", 1, 300, 150, 0.37, NAN, 0, 0, False, None)],
        columns=[
            "segment_id", "segment_name", "stage", "event_type", "channel", "initiated_by",
            "rank", "events", "clients", "reach", "sentiment_mean", "sentiment_events",
            "negative_events", "is_pain", "note",
        ],
    )  # fmt: skip
    dropoffs = pd.DataFrame(
        [
            ("S", name, "dropoff", 1, "purchase", None, "checkout_start", "app", None, None, 40, 40, NAN, 100, NAN, 0.29, 0.22, 0.37, None),
            ("S", name, "cause", 1, "purchase", None, "checkout_start", "app", "category", "delivery_costs", 40, 40, 30, 100, 25, 3.0, 2.1, 4.3, None),
            ("S", name, "moment", 1, "consideration", "purchase", "consultation", "call_center", "raises", "consultation/call_center", 300, 60, 50, 240, 130, 0.29, 0.18, 0.38, None),
            ("S", name, "moment", 2, "consideration", "purchase", "search", "web", "raises", "search/web", 300, 40, 26, 260, 154, 0.06, -0.1, 0.2, None),
        ],
        columns=[
            "segment_id", "segment_name", "kind", "rank", "stage", "to_stage", "event_type",
            "channel", "factor_kind", "factor", "clients", "group_clients", "group_with",
            "other_clients", "other_with", "effect", "effect_low", "effect_high", "note",
        ],
    )  # fmt: skip
    return JourneyTables(stages, touchpoints, dropoffs)


def test_sentences_carry_the_figures_and_intervals():
    drops = _tables().dropoffs
    assert dropoff_sentence(drops.iloc[0]) == (
        "checkout_start (app), purchase stage: 40 clients stalled here (29% of those who"
        " stalled here or went on; interval 22%-37%)."
    )
    assert cause_sentence(drops.iloc[1]).startswith(
        "3.0x more often after category delivery_costs (interval 2.1x-4.3x): 30 of 40 who"
        " stalled vs 25 of 100 who went on"
    )
    sure = moment_sentence(drops.iloc[2])
    assert "raises the chance by 29 points (interval +18 to +38)" in sure
    assert "83% with it (60 clients) vs 54% without (240)" in sure
    assert "not distinguishable from no effect" in moment_sentence(drops.iloc[3])


def test_too_few_clients_replaces_the_number():
    point = _tables().dropoffs.iloc[0].copy()
    point[["effect", "effect_low", "effect_high"]] = NAN
    point["note"] = "too few clients"
    assert dropoff_sentence(point).endswith("(too few clients for a rate).")


def test_report_section_escapes_and_draws_every_stage():
    html = journey_section(_tables(), {})
    assert "Bargain &lt;b&gt;hunters&lt;/b&gt;" in html and "<b>hunters" not in html
    assert html.count("class='jstage'") == 5
    assert "delivery_costs" in html and "consultation" in html
    assert "No journey map" in journey_section(None, {})


def test_terminal_view():
    text = journey_text(_tables("Bargain hunters"), "S")
    assert text.splitlines()[0] == "Journey map: Bargain hunters (S)"
    assert "Where journeys stop" in text and "Moments of truth" in text
    assert "60%" in text  # consideration -> purchase
