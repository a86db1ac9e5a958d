"""The journey map as people read it: sentences, a terminal view and the report's section.

The three published journey tables (`journey_stages`, `journey_touchpoints`,
`journey_dropoffs`; docs/journey.md) hold numbers. Here they become what a CX analyst would
draw: stages as columns with their reach, conversion, stall share, top touchpoints and
emotion; the drop-off points ranked by lost clients with their likeliest causes; and the
moments of truth written out in a sentence, with the interval and the clients behind it, or
"too few clients" where a number would mislead.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from configs import STAGES

__all__ = [
    "JourneyTables",
    "cause_sentence",
    "dropoff_sentence",
    "journey_section",
    "journey_text",
    "moment_sentence",
    "segment_ids",
]

ALL = "*"
_TOP_TOUCHPOINTS = 3
_TOP_DROPOFFS = 3
_TOP_MOMENTS = 2


@dataclass(frozen=True)
class JourneyTables:
    """One as-of date's journey tables (as the store's readers return them)."""

    stages: pd.DataFrame
    touchpoints: pd.DataFrame
    dropoffs: pd.DataFrame

    @property
    def empty(self) -> bool:
        return self.stages.empty


def segment_ids(tables: JourneyTables) -> list[str]:
    """The segments the map covers: "*" (all clients) first, then by clients, largest first."""
    every = tables.stages[tables.stages["stage"] == "*"]
    ordered = every.assign(_all=every["segment_id"] != ALL).sort_values(
        ["_all", "clients", "segment_id"], ascending=[True, False, True], kind="stable"
    )
    return [str(s) for s in ordered["segment_id"]]


def journey_text(tables: JourneyTables, segment_id: str = ALL, *, width: int = 100) -> str:
    """The map of one segment for the terminal: stages, touchpoints, drop-offs, moments."""
    stages = _of(tables.stages, segment_id)
    name = _name(stages, segment_id)
    every = stages[stages["stage"] == "*"]
    lines = [f"Journey map: {name} ({segment_id})"]
    if len(every):
        row = every.iloc[0]
        lines.append(
            f"{_int(row['clients'])} clients with events in the window; {_int(row['stalled'])} stalled,"
            f" {_int(row['in_progress'])} in progress. {_note(row)}".rstrip()
        )
    lines.append("")
    lines.append(_stage_grid(stages, _of(tables.touchpoints, segment_id), width))
    drops = _of(tables.dropoffs, segment_id)
    points = drops[drops["kind"] == "dropoff"].sort_values("rank")
    if len(points):
        lines += ["", "Where journeys stop (last touchpoint before stalling):"]
        for _, point in points.head(_TOP_DROPOFFS).iterrows():
            lines.append(f"  {int(point['rank'])}. {dropoff_sentence(point)}")
            for _, cause in _causes_of(drops, point).head(2).iterrows():
                lines.append(f"       {cause_sentence(cause)}")
    moments = drops[drops["kind"] == "moment"]
    if len(moments):
        lines += ["", "Moments of truth (what goes with reaching the next stage):"]
        for stage in STAGES[:-1]:
            for _, moment in _top_moments(moments, stage).iterrows():
                lines.append(f"  - {moment_sentence(moment)}")
    other = stages[stages["stage"] == "other"]
    if len(other):
        lines += [
            "",
            f"Events of unknown types (stage other): {_int(other.iloc[0]['events'])} from"
            f" {_int(other.iloc[0]['clients'])} clients, counted apart.",
        ]
    return "\n".join(lines)


def dropoff_sentence(point: pd.Series) -> str:
    """'checkout_start (app), purchase stage: 120 clients stalled here (38% of those who
    stalled here or went on from it; 95% interval 33-43%).' The share leaves out the clients
    still in progress there (neither stalled nor gone on): where the touchpoint is always a
    client's latest (a purchase-only log), it is every decided client."""
    where = f"{_touchpoint(point)}, {point['stage']} stage"
    lost = f"{_int(point['clients'])} clients stalled here"
    if _missing(point.get("effect")):
        return f"{where}: {lost} ({point.get('note') or 'too few clients'} for a rate)."
    return (
        f"{where}: {lost} ({_pct(point['effect'])} of those who stalled here or went on;"
        f" interval {_pct(point['effect_low'])}-{_pct(point['effect_high'])})."
    )


def cause_sentence(cause: pd.Series) -> str:
    """'3.1x more often after category delivery_costs (interval 2.4-4.0x): 80 of 120 who
    stalled vs 210 of 1,000 who went on.'"""
    factor = _factor(cause)
    counts = (
        f"{_int(cause['group_with'])} of {_int(cause['group_clients'])} who stalled vs"
        f" {_int(cause['other_with'])} of {_int(cause['other_clients'])} who went on"
    )
    if _missing(cause.get("effect")):
        return f"{factor}: {counts} ({cause.get('note') or 'too few clients'})."
    return (
        f"{_times(cause['effect'])} more often {factor} (interval {_times(cause['effect_low'])}"
        f"-{_times(cause['effect_high'])}): {counts}."
    )


def moment_sentence(moment: pd.Series) -> str:
    """'Reaching purchase: consultation (call_center) raises the chance by 28 points
    (interval 20 to 36): 74% with it (310 clients) vs 46% without (1,900).'"""
    head = f"Reaching {moment['to_stage']}: {_touchpoint(moment)}"
    n_with, n_without = _int(moment["group_clients"]), _int(moment["other_clients"])
    if _missing(moment.get("effect")):
        return (
            f"{head}: {n_with} clients with it, {n_without} without:"
            f" {moment.get('note') or 'too few clients'} to say."
        )
    effect, low, high = (float(moment[c]) * 100 for c in ("effect", "effect_low", "effect_high"))
    verb = "raises" if effect > 0 else "lowers"
    sure = "" if low > 0 or high < 0 else " (not distinguishable from no effect)"
    with_rate = float(moment["group_with"]) / float(moment["group_clients"])
    without_rate = float(moment["other_with"]) / max(float(moment["other_clients"]), 1.0)
    return (
        f"{head} {verb} the chance by {abs(effect):.0f} points (interval {low:+.0f} to"
        f" {high:+.0f}){sure}: {_pct(with_rate)} with it ({n_with} clients) vs"
        f" {_pct(without_rate)} without ({n_without})."
    )


def journey_section(
    tables: JourneyTables | None, labels: Mapping[str, str], *, max_segments: int = 8
) -> str:
    """The report's journey-map section: one map per segment (all clients first)."""
    title = "Customer journey map"
    if tables is None or tables.empty:
        return _section(title, "No journey map was published for this run.", "")
    ids = segment_ids(tables)
    shown = ids[: max_segments + 1]
    maps = []
    for i, segment_id in enumerate(shown):
        stages = _of(tables.stages, segment_id)
        name = labels.get(segment_id) or _name(stages, segment_id)
        body = _segment_map_html(tables, segment_id)
        opened = " open" if i == 0 else ""
        maps.append(
            f"<details class='journey'{opened}><summary>{_e(name)}"
            f" <span class='muted'>({_e(segment_id)})</span></summary>{body}</details>"
        )
    more = len(ids) - len(shown)
    if more > 0:
        maps.append(
            f"<p class='muted'>{more} smaller segments are in the table journey_stages and in"
            " <code>segmentation journey --segment ID</code>.</p>"
        )
    explain = (
        "Built from the events of the analysis window: stages as columns with the clients who"
        " reached each, how many moved on and how fast, the share that stalled there (no action"
        " of their own since), the touchpoints used most and the mean sentiment measured there"
        " (the emotion line). Below: where stalled journeys end and what is over-represented"
        " among those who stopped compared with those who went on, and the touchpoints that go"
        " with reaching the next stage. These are associations in observed data; the holdout"
        " groups measure what campaigns cause."
    )
    return _section(title, explain, "\n".join(maps) + _STYLE)


# ----------------------------------------------------------------------------- terminal


def _stage_grid(stages: pd.DataFrame, touchpoints: pd.DataFrame, width: int) -> str:
    """Stages as columns: reached, on to next, stalled, emotion, top touchpoints."""
    col = max(15, (width - 14) // len(STAGES))
    rows: list[list[str]] = [[s for s in STAGES]]
    labels = ["", "reached", "on to next", "median days", "stalled", "sentiment"]
    reached, onward, days, stalled, emotion = [], [], [], [], []
    for i, stage in enumerate(STAGES):
        own = _stage_row(stages, stage)
        nxt = _pair_row(stages, stage, STAGES[i + 1]) if i + 1 < len(STAGES) else None
        reached.append(_int(own["clients"]) if own is not None else "0")
        onward.append(_rate(nxt, "conversion_rate") if nxt is not None else "")
        days.append(_num(nxt["median_days"], 1) if nxt is not None else "")
        stalled.append(_rate(own, "stall_share") if own is not None else "")
        emotion.append(_num(own["sentiment_mean"], 2) if own is not None else "")
    rows += [reached, onward, days, stalled, emotion]
    out = []
    for label, row in zip(labels, rows, strict=True):
        out.append((f"{label:<13}" + "".join(f"{cell[: col - 1]:<{col}}" for cell in row)).rstrip())
    out += ["", "Touchpoints used most (share of the clients who acted):"]
    for stage in (*STAGES, "other"):
        top = _top_touchpoints(touchpoints, stage)
        if top:
            out.append(f"  {stage}: {', '.join(top)}")
    return "\n".join(out)


def _top_touchpoints(touchpoints: pd.DataFrame, stage: str) -> list[str]:
    mine = touchpoints[touchpoints["stage"] == stage].sort_values("rank")
    out = []
    for _, row in mine.head(_TOP_TOUCHPOINTS).iterrows():
        reach = "" if _missing(row["reach"]) else f" {_pct(row['reach'])}"
        out.append(f"{_touchpoint(row)}{reach}")
    return out


# ----------------------------------------------------------------------------- HTML


def _segment_map_html(tables: JourneyTables, segment_id: str) -> str:
    stages = _of(tables.stages, segment_id)
    touchpoints = _of(tables.touchpoints, segment_id)
    drops = _of(tables.dropoffs, segment_id)
    every = stages[stages["stage"] == "*"]
    head = ""
    if len(every):
        row = every.iloc[0]
        head = (
            f"<p>{_int(row['clients'])} clients with events in the window: {_int(row['stalled'])}"
            f" stalled, {_int(row['in_progress'])} in progress.{_e(' ' + _note(row))}</p>"
        )
    cells = []
    for i, stage in enumerate(STAGES):
        own = _stage_row(stages, stage)
        nxt = _pair_row(stages, stage, STAGES[i + 1]) if i + 1 < len(STAGES) else None
        cells.append(_stage_cell(stage, own, nxt, touchpoints))
    grid = f"<div class='jgrid'>{''.join(cells)}</div>"
    emotion = _emotion_svg([_stage_row(stages, s) for s in STAGES])
    points = drops[drops["kind"] == "dropoff"].sort_values("rank").head(_TOP_DROPOFFS)
    drop_items = []
    for _, point in points.iterrows():
        causes = "".join(
            f"<li>{_e(cause_sentence(cause))}</li>"
            for _, cause in _causes_of(drops, point).head(3).iterrows()
        )
        share = 0.0 if _missing(point["effect"]) else float(point["effect"])
        drop_items.append(
            f"<li>{_bar(share, '#d9534f')} {_e(dropoff_sentence(point))}"
            + (f"<ul class='causes'>{causes}</ul>" if causes else "")
            + "</li>"
        )
    drops_html = f"<h4>Where journeys stop</h4><ol>{''.join(drop_items)}</ol>" if drop_items else ""
    moments = drops[drops["kind"] == "moment"]
    moment_items = [
        f"<li>{_e(moment_sentence(m))}</li>"
        for stage in STAGES[:-1]
        for _, m in _top_moments(moments, stage).iterrows()
    ]
    moments_html = (
        f"<h4>Moments of truth</h4><ul>{''.join(moment_items)}</ul>" if moment_items else ""
    )
    return head + grid + emotion + drops_html + moments_html


def _stage_cell(
    stage: str, own: pd.Series | None, nxt: pd.Series | None, touchpoints: pd.DataFrame
) -> str:
    reached = _int(own["clients"]) if own is not None else "0"
    parts = [f"<div class='jstage'><h5>{_e(stage)}</h5><p><b>{reached}</b> reached</p>"]
    if nxt is not None:
        days = _num(nxt["median_days"], 1)
        parts.append(
            f"<p>{_rate(nxt, 'conversion_rate')} on to {_e(str(nxt['to_stage']))}"
            + (f", median {days} days" if days else "")
            + "</p>"
        )
    if own is not None:
        share = own["stall_share"]
        parts.append(
            f"<p>{_bar(0.0 if _missing(share) else float(share), '#f0ad4e')}"
            f" {_rate(own, 'stall_share')} stalled here</p>"
        )
    tops = _top_touchpoints(touchpoints, stage)
    if tops:
        parts.append("<ul>" + "".join(f"<li>{_e(t)}</li>" for t in tops) + "</ul>")
    pains = touchpoints[(touchpoints["stage"] == stage) & touchpoints["is_pain"].astype(bool)]
    if len(pains):
        pains = pains.sort_values(["clients", "event_type"], ascending=[False, True]).head(4)
        text = ", ".join(
            f"{_touchpoint(p)} {_int(p['clients'])}"
            + (
                ""
                if not p["negative_events"]
                else f" ({_int(p['negative_events'])} negative events)"
            )
            for _, p in pains.iterrows()
        )
        parts.append(f"<p class='pain'>pains: {_e(text)}</p>")
    return "".join(parts) + "</div>"


def _emotion_svg(rows: Sequence[pd.Series | None]) -> str:
    """The emotion line: mean sentiment per stage on a -1..1 scale, gaps where unmeasured."""
    # one point at the middle of each stage's column of the grid above (five equal columns)
    w, h = 1000, 70
    step = w / len(rows)
    points = []
    labels = []
    for i, row in enumerate(rows):
        value = (
            None if row is None or _missing(row["sentiment_mean"]) else float(row["sentiment_mean"])
        )
        x = (i + 0.5) * step
        if value is None:
            labels.append(f"<text x='{x:.0f}' y='{h - 2}' class='sv'>n/a</text>")
            continue
        y = h / 2 - value * (h / 2 - 8)
        points.append(f"{x:.0f},{y:.0f}")
        colour = "#5cb85c" if value >= 0 else "#d9534f"
        labels.append(
            f"<circle cx='{x:.0f}' cy='{y:.0f}' r='4' fill='{colour}'/>"
            f"<text x='{x + 6:.0f}' y='{y - 4:.0f}' class='sv'>{value:+.2f}</text>"
        )
    line = (
        f"<polyline points='{' '.join(points)}' fill='none' stroke='#555'/>"
        if len(points) > 1
        else ""
    )
    axis = f"<line x1='0' y1='{h / 2}' x2='{w}' y2='{h / 2}' stroke='#ccc'/>"
    return (
        f"<div class='emotion'><span class='muted'>emotion (mean sentiment, -1 to +1)</span>"
        f"<svg viewBox='0 0 {w} {h}' width='100%'>{axis}{line}{''.join(labels)}</svg>"
        "</div>"
    )


def _bar(share: float, colour: str) -> str:
    width = max(0.0, min(1.0, share)) * 60
    return (
        f"<span class='jbar'><span style='width:{width:.0f}px;background:{colour}'></span></span>"
    )


_STYLE = """<style>
.jgrid{display:grid;grid-template-columns:repeat(5,1fr);gap:8px;margin:8px 0}
.jstage{border:1px solid #ddd;border-radius:6px;padding:6px;font-size:13px}
.jstage h5{margin:0 0 4px 0;text-transform:capitalize}.jstage p{margin:2px 0}
.jstage ul{margin:4px 0;padding-left:16px}.pain{color:#a94442}
.jbar{display:inline-block;width:60px;height:8px;background:#eee;vertical-align:middle}
.jbar span{display:block;height:8px}.emotion svg .sv,svg .sv{font-size:11px;fill:#333}
details.journey{margin:8px 0}details.journey summary{font-weight:600;cursor:pointer}
ul.causes{font-size:13px;color:#444}
</style>"""


# ----------------------------------------------------------------------------- small helpers


def _section(title: str, explain: str, body: str) -> str:
    return (
        f'<section id="journey"><h2>{_e(title)}</h2><p class="explain">{_e(explain)}</p>'
        f"{body}</section>"
    )


def _of(frame: pd.DataFrame, segment_id: str) -> pd.DataFrame:
    return frame[frame["segment_id"].astype(str) == segment_id]


def _stage_row(stages: pd.DataFrame, stage: str) -> pd.Series | None:
    rows = stages[(stages["stage"] == stage) & stages["to_stage"].isna()]
    return rows.iloc[0] if len(rows) else None


def _pair_row(stages: pd.DataFrame, stage: str, to_stage: str) -> pd.Series | None:
    rows = stages[(stages["stage"] == stage) & (stages["to_stage"] == to_stage)]
    return rows.iloc[0] if len(rows) else None


def _causes_of(drops: pd.DataFrame, point: pd.Series) -> pd.DataFrame:
    """The causes of a drop-off point worth a sentence: those whose interval stays above 1,
    or, where the sample is too small for any, the most common factors with their counts."""
    causes = _all_causes_of(drops, point)
    sure = causes[causes["effect_low"] > 1]
    return sure if len(sure) else causes[causes["note"].notna()]


def _all_causes_of(drops: pd.DataFrame, point: pd.Series) -> pd.DataFrame:
    same_channel = (drops["channel"] == point["channel"]) | (
        drops["channel"].isna() & _missing(point["channel"])
    )
    return drops[
        (drops["kind"] == "cause")
        & (drops["stage"] == point["stage"])
        & (drops["event_type"] == point["event_type"])
        & same_channel
    ].sort_values("rank")


def _top_moments(moments: pd.DataFrame, stage: str) -> pd.DataFrame:
    """The best-supported raising and lowering touchpoints of a stage (reliable ones only,
    or the largest samples with their "too few clients" when none is)."""
    mine = moments[moments["stage"] == stage].sort_values("rank")
    sure = mine[(mine["effect_low"] > 0) | (mine["effect_high"] < 0)]
    if len(sure):
        raises = sure[sure["factor_kind"] == "raises"].head(_TOP_MOMENTS)
        lowers = sure[sure["factor_kind"] == "lowers"].head(1)
        return pd.concat([raises, lowers])
    return mine[mine["note"].notna()].head(1)


def _name(stages: pd.DataFrame, segment_id: str) -> str:
    names = stages["segment_name"].dropna()
    if len(names):
        return str(names.iloc[0])
    return "All clients" if segment_id == ALL else segment_id


def _touchpoint(row: pd.Series) -> str:
    channel = row.get("channel")
    return f"{row['event_type']}" + ("" if _missing(channel) else f" ({channel})")


def _factor(cause: pd.Series) -> str:
    kind, factor = str(cause["factor_kind"]), str(cause["factor"])
    if kind == "category":
        return f"after category {factor}"
    if kind == "channel":
        return f"after using channel {factor}"
    if kind == "sentiment":
        return "after a negative experience (sentiment)"
    if kind == "exposure":
        return f"after the brand's {factor.replace('/', ' via ')}"
    return f"after {factor.replace('/', ' via ')}"


def _note(row: pd.Series) -> str:
    note = row.get("note")
    return "" if _missing(note) else f"({note})"


def _missing(value: object) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return math.isnan(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _int(value: object) -> str:
    return "0" if _missing(value) else f"{int(value):,}"  # type: ignore[call-overload]


def _pct(value: object) -> str:
    return "n/a" if _missing(value) else f"{float(value) * 100:.0f}%"  # type: ignore[arg-type]


def _rate(row: pd.Series | None, column: str) -> str:
    if row is None:
        return ""
    if _missing(row[column]):
        return "too few clients" if not _missing(row.get("note")) else "n/a"
    return _pct(row[column])


def _num(value: object, digits: int) -> str:
    return "" if _missing(value) else f"{float(value):.{digits}f}"  # type: ignore[arg-type]


def _times(value: object) -> str:
    return f"{float(value):.1f}x"  # type: ignore[arg-type]


def _e(text: str) -> str:
    return html.escape(text, quote=True)
