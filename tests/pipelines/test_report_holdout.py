"""The run report's holdout section: lift in words, "too few clients", escaped text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.report_holdout import holdout_section, lift_words
from segmentation.holdout import HOLDOUT_OUTCOME_COLUMNS, compare_holdout


def outcomes() -> pd.DataFrame:
    rows = [
        {
            "segment_id": "C<1>",
            "segment_name": "loyal & <b>bold</b>",
            "treated_clients": 950,
            "holdout_clients": 50,
            "days_after_entry_mean": 12.25,
            "treated_purchases_mean": 1.12,
            "holdout_purchases_mean": 1.0,
            "purchases_diff": 0.12,
            "purchases_diff_low": -0.03,
            "purchases_diff_high": 0.27,
            "treated_spend_mean": 55.5,
            "holdout_spend_mean": 40.0,
            "spend_diff": 15.5,
            "spend_diff_low": 2.25,
            "spend_diff_high": 28.75,
            "note": None,
        },
        {
            "segment_id": "rule_vip",
            "segment_name": "vip",
            "treated_clients": 40,
            "holdout_clients": 3,
            "days_after_entry_mean": 4.0,
            "treated_purchases_mean": 2.0,
            "holdout_purchases_mean": 1.5,
            "purchases_diff": np.nan,
            "purchases_diff_low": np.nan,
            "purchases_diff_high": np.nan,
            "treated_spend_mean": 300.0,
            "holdout_spend_mean": 350.0,
            "spend_diff": np.nan,
            "spend_diff_low": np.nan,
            "spend_diff_high": np.nan,
            "note": "too few clients",
        },
    ]
    return pd.DataFrame(rows, columns=HOLDOUT_OUTCOME_COLUMNS)


def test_section_says_the_lift_in_words():
    html = holdout_section(outcomes())
    assert html.startswith('<section id="holdout">') and html.endswith("</section>")
    assert (
        "+0.12 purchases per member (95% interval -0.03 to +0.27): "
        "not distinguishable from zero" in html
    )
    assert "+15.50 spend per member (95% interval +2.25 to +28.75): higher for the" in html
    assert "too few clients" in html
    assert "950" in html and "12.2" in html  # counts and mean days since entry
    assert '<p class="explain">' in html and "held out of its campaigns" in html


def test_section_escapes_text():
    html = holdout_section(outcomes())
    assert "<b>bold</b>" not in html and "C<1>" not in html
    assert "loyal &amp; &lt;b&gt;bold&lt;/b&gt;" in html and "C&lt;1&gt;" in html
    hostile = outcomes().assign(note=["<script>x</script>", "<i>too few</i>"])
    hostile[["purchases_diff", "purchases_diff_low", "purchases_diff_high"]] = np.nan
    page = holdout_section(hostile)
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<i>" not in page


def test_lift_words():
    row = outcomes().iloc[0].to_dict()
    assert lift_words({**row, "purchases_diff_high": -0.01}, "purchases", "purchases", "90%") == (
        "+0.12 purchases per member (90% interval -0.03 to -0.01): lower for the treated members"
    )
    assert lift_words(outcomes().iloc[1].to_dict(), "spend", "spend", "95%") == "too few clients"


def test_confidence_level_and_empty():
    assert "90% interval" in holdout_section(outcomes(), confidence=0.9)
    assert "97.5% interval" in holdout_section(outcomes(), confidence=0.975)
    empty = holdout_section(outcomes().iloc[:0])
    assert "No segment has members" in empty
    none_held = holdout_section(outcomes().assign(holdout_clients=0))
    assert "Nobody is held out" in none_held
    with pytest.raises(ValueError, match="no column"):
        holdout_section(outcomes().drop(columns="note"))


def test_from_compare_holdout_to_html():
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame(
        {
            "segment_id": "C1",
            "segment_name": "loyal",
            "holdout": np.arange(n) % 8 == 0,
            "days_since_entry": rng.integers(0, 20, n),
            "purchases": rng.poisson(1.0, n),
            "spend": rng.gamma(2.0, 10.0, n),
        }
    )
    html = holdout_section(compare_holdout(frame))
    assert "purchases per member (95% interval" in html
    assert "spend per member (95% interval" in html
