"""A client who stops acting goes quiet, however many ads and emails the brand keeps sending.

The events go through the real load (taxonomy: who started each event), the feature build and
the shipped rules, on nights 10, 50 and 140 days after the client's last own action.
"""

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from configs import load_config
from features.events import load_configured_events
from pipelines import steps
from segmentation.combine import assign_segments

LAST_OWN = datetime(2025, 3, 1, 12)


def _events(path: Path) -> Path:
    rows = []
    for client in ("quiet", "steady"):
        for d in range(0, 120, 3):  # both act every three days for four months
            when = LAST_OWN - timedelta(days=118 - d)
            rows.append((client, when, "product_view", "web"))
            if d % 15 == 0:
                rows.append((client, when + timedelta(minutes=5), "purchase", "web"))
    for d in range(1, 200):  # then "quiet" stops; the brand writes to both, every other day
        when = LAST_OWN + timedelta(days=d)
        if d % 2 == 0:
            rows += [
                ("quiet", when, "email_sent", "email"),
                ("steady", when, "email_sent", "email"),
            ]
            rows.append(("quiet", when + timedelta(hours=1), "email_open", "email"))
        rows.append(("quiet", when, "ad_impression", "social"))
        if d % 3 == 0:
            rows.append(("steady", when, "product_view", "web"))
            if d % 15 == 0:
                rows.append(("steady", when + timedelta(minutes=5), "purchase", "web"))
    frame = pd.DataFrame(rows, columns=["client_id", "event_time", "event_type", "channel"])
    frame["amount"] = frame["event_type"].map({"purchase": 40.0})
    out = path / "events.parquet"
    frame.to_parquet(out)
    return out


def test_a_client_who_stops_acting_goes_at_risk_then_lapsed_and_changes_segment(tmp_path):
    config = load_config()
    con = duckdb.connect()
    load_configured_events(con, config, _events(tmp_path), now=datetime(2026, 1, 1))
    rules = steps.load_ruleset(config)
    seen = {}
    previous = None
    for days in (10, 50, 140):
        as_of = (LAST_OWN + timedelta(days=days)).date()
        features = steps.compute_features(con, as_of, config)
        membership = assign_segments(features, None, rules, previous=previous).set_index(
            "client_id"
        )
        previous = membership.reset_index()[["client_id", "segment_id"]]
        seen[days] = membership
        quiet = features.set_index("client_id").loc["quiet"]
        assert quiet["recency_days"] > days - 1  # the brand's touches do not count
        assert quiet["n_exposures"] > 0
    stage = {days: m.loc["quiet", "lifecycle_stage"] for days, m in seen.items()}
    assert stage == {10: "active", 50: "at_risk", 140: "lapsed"}
    assert seen[10].loc["quiet", "segment_id"] != "rule_gone_quiet"
    assert seen[50].loc["quiet", "segment_id"] == "rule_gone_quiet"
    # The client who keeps acting stays active all along and never goes quiet.
    for membership in seen.values():
        assert membership.loc["steady", "lifecycle_stage"] == "active"
        assert membership.loc["steady", "segment_id"] != "rule_gone_quiet"
