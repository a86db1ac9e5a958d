"""The run report's holdout section: what the campaigns add, per segment, against the holdout.

`holdout_section` turns the `holdout_outcomes` rows (`segmentation.holdout.compare_holdout`:
one row per segment, treated against held-out members' purchases and spend after entry) into
an HTML fragment in the style of `pipelines.report` (a `<section>` with a title, a paragraph
saying how to read it, and a table), every text escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping

import pandas as pd

from segmentation.holdout import HOLDOUT_OUTCOME_COLUMNS, TOO_FEW

_METRICS = (("purchases", "purchases", 2), ("spend", "spend", 2))


def holdout_section(outcomes: pd.DataFrame, *, confidence: float = 0.95) -> str:
    """The holdout comparison as an HTML `<section>` for the run report.

    Parameters
    ----------
    outcomes : pandas.DataFrame
        HOLDOUT_OUTCOME_COLUMNS (extra columns such as as_of and run_id are ignored), one row
        per segment, in the order shown.
    confidence : float, default 0.95
        The confidence level the intervals were computed at (said in the words).

    Returns
    -------
    str
        A `<section id="holdout">` fragment: per segment treated and held-out members, the
        purchases and spend per member after entry in both groups, and the difference with its
        interval in words, or "too few clients".

    Raises
    ------
    ValueError
        A column of HOLDOUT_OUTCOME_COLUMNS is missing.
    """
    if not isinstance(outcomes, pd.DataFrame):
        raise TypeError(f"outcomes must be a pandas DataFrame, got {type(outcomes).__name__}")
    missing = [c for c in HOLDOUT_OUTCOME_COLUMNS if c not in outcomes.columns]
    if missing:
        raise ValueError(f"outcomes has no column(s) {missing}")
    level = f"{100 * confidence:g}%"
    if not len(outcomes):
        body = '<p class="note">No segment has members to compare yet.</p>'
    else:
        body = _table(outcomes, level)
        if int(pd.to_numeric(outcomes["holdout_clients"]).sum()) == 0:
            body = (
                '<p class="note">Nobody is held out (holdout.share is 0 and no segment has a '
                "share of its own): there is no lift to measure.</p>" + body
            )
    return _section("holdout", "Campaign lift against the holdout", _explain(level), body)


def lift_words(row: Mapping[str, object], metric: str, unit: str, level: str) -> str:
    """One difference in words, e.g. "+0.12 purchases per member (95% interval -0.03 to
    +0.27): not distinguishable from zero"; the row's note when there is no difference."""
    diff = _finite(row.get(f"{metric}_diff"))
    low = _finite(row.get(f"{metric}_diff_low"))
    high = _finite(row.get(f"{metric}_diff_high"))
    if diff is None or low is None or high is None:
        note = row.get("note")
        return str(note) if isinstance(note, str) and note else TOO_FEW
    if low > 0:
        verdict = "higher for the treated members"
    elif high < 0:
        verdict = "lower for the treated members"
    else:
        verdict = "not distinguishable from zero"
    return (
        f"{diff:+,.2f} {unit} per member ({level} interval {low:+,.2f} to {high:+,.2f}): {verdict}"
    )


def _table(outcomes: pd.DataFrame, level: str) -> str:
    rows = []
    for record in outcomes.to_dict("records"):
        row = {str(key): value for key, value in record.items()}
        name = _e(row["segment_name"]) if _present(row["segment_name"]) else ""
        cells = [
            f"<td><b>{name}</b><div class=desc><code>{_e(row['segment_id'])}</code></div></td>",
            f"<td class=num>{_int_text(row['treated_clients'])}</td>",
            f"<td class=num>{_int_text(row['holdout_clients'])}</td>",
            f"<td class=num>{_num(row['days_after_entry_mean'], 1)}</td>",
        ]
        for metric, unit, digits in _METRICS:
            treated = _num(row[f"treated_{metric}_mean"], digits)
            held = _num(row[f"holdout_{metric}_mean"], digits)
            words = lift_words(row, metric, unit, level)
            cells.append(f"<td class=num>{treated}</td><td class=num>{held}</td>")
            cells.append(f"<td>{_e(words)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = (
        "<tr><th rowspan=2>Segment</th><th rowspan=2 class=num>Treated</th>"
        "<th rowspan=2 class=num>Held out</th><th rowspan=2 class=num>Days since entry</th>"
        "<th colspan=3>Purchases per member</th><th colspan=3>Spend per member</th></tr>"
        "<tr><th class=num>treated</th><th class=num>held out</th><th>difference</th>"
        "<th class=num>treated</th><th class=num>held out</th><th>difference</th></tr>"
    )
    return f'<table class="holdout"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _explain(level: str) -> str:
    return (
        "In every segment a share of the members is held out of its campaigns, drawn by a hash "
        "of the client, the segment and a salt, so the same members stay held out night after "
        "night and nothing they did decides it. Both groups entered the segment the same way, "
        "so what separates them afterwards is the campaigns: the difference is what the "
        "campaigns added per member, in purchases and in spend (purchases net of returns and "
        "refunds), counted from the day after each member's entry up to this run's as-of "
        f"date. The {level} interval (Welch's t) is the range of differences the data are "
        "compatible with: when it includes zero the campaigns' effect cannot be told apart "
        "from chance; more days or a larger holdout narrow it. Segments with too few members "
        "on either side are not compared; 'days since entry' is the mean time members have "
        "had to respond."
    )


def _section(anchor: str, title: str, explain: str, body: str) -> str:
    return (
        f'<section id="{_e(anchor)}"><h2>{_e(title)}</h2><p class="explain">{_e(explain)}</p>'
        f"{body}</section>"
    )


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _present(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return False
    return not (isinstance(value, float) and math.isnan(value))


def _finite(value: object) -> float | None:
    if value is None or isinstance(value, bool | str):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _num(value: object, digits: int) -> str:
    number = _finite(value)
    return f"{number:,.{digits}f}" if number is not None else "&ndash;"


def _int_text(value: object) -> str:
    number = _finite(value)
    return f"{int(number):,}" if number is not None else "&ndash;"
