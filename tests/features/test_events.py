"""The event contract: every bad-row kind quarantined with its reason, nothing lost."""

from __future__ import annotations

from datetime import UTC, date, datetime

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import SegmentationError
from features.events import (
    BadInputError,
    EventContractError,
    check_bad_share,
    day_end,
    load_events,
    load_taxonomy,
)

NOW = datetime(2024, 6, 1, tzinfo=UTC)

GOOD = [
    ("c1", "2024-05-01T10:00:00", "purchase", "web", "10.5", "shoes", "", "e1"),
    ("c1", "2024-05-02T10:00:00", "page_view", "app", "", "shoes", "", "e2"),
    ("c2", "2024-05-03T10:00:00", "survey_response", "email", "", "", "-0.5", "e3"),
]
BAD = {
    "missing_client_id": ("", "2024-05-01T10:00:00", "page_view", "web", "", "", "", "b1"),
    "missing_event_time": ("c3", "", "page_view", "web", "", "", "", "b2"),
    "missing_event_type": ("c3", "2024-05-01T10:00:00", "", "web", "", "", "", "b3"),
    "unparseable_event_time": ("c3", "yesterday", "page_view", "web", "", "", "", "b4"),
    "future_event_time": ("c3", "2024-06-05T00:00:00", "page_view", "web", "", "", "", "b5"),
    "unparseable_amount": ("c3", "2024-05-01T10:00:00", "purchase", "web", "ten", "", "", "b6"),
    "non_finite_amount": ("c3", "2024-05-01T10:00:00", "purchase", "web", "inf", "", "", "b7"),
    "negative_amount": ("c3", "2024-05-01T10:00:00", "purchase", "web", "-1", "", "", "b8"),
    "unparseable_sentiment": ("c3", "2024-05-01T10:00:00", "review", "web", "", "", "good", "b9"),
    "sentiment_out_of_range": ("c3", "2024-05-01T10:00:00", "review", "web", "", "", "1.5", "b10"),
}
COLUMNS = [
    "client_id",
    "event_time",
    "event_type",
    "channel",
    "amount",
    "category",
    "sentiment",
    "event_id",
]


def _write_csv(path, rows, columns=COLUMNS):
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def _load(path, **kwargs):
    con = duckdb.connect()
    report = load_events(con, path, now=NOW, **kwargs)
    return con, report


def test_every_bad_kind_is_quarantined_with_its_reason_and_raw_values(tmp_path):
    path = _write_csv(tmp_path / "events.csv", GOOD + list(BAD.values()))
    con, report = _load(path)
    assert report.rows == len(GOOD) + len(BAD)
    assert report.valid == len(GOOD)
    assert report.quarantined == len(BAD)
    assert report.by_reason == dict.fromkeys(BAD, 1)
    quarantine = con.sql(
        "SELECT reason, event_id, event_time, amount, sentiment FROM quarantine"
    ).df()
    by_id = quarantine.set_index("event_id")
    for reason, row in BAD.items():
        assert by_id.loc[row[-1], "reason"] == reason
    # raw values are kept as they came in
    assert by_id.loc["b4", "event_time"] == "yesterday"
    assert by_id.loc["b6", "amount"] == "ten"
    assert by_id.loc["b9", "sentiment"] == "good"


def test_duplicates_by_event_id_are_dropped_and_counted_not_quarantined(tmp_path):
    path = _write_csv(tmp_path / "events.csv", [*GOOD, GOOD[0], GOOD[0]])
    con, report = _load(path)
    assert report.duplicates == 2
    assert report.valid == len(GOOD)
    assert report.quarantined == 0
    assert con.execute("SELECT count(*) FROM events WHERE event_id = 'e1'").fetchall()[0][0] == 1


def test_rows_without_event_id_are_never_deduplicated(tmp_path):
    row = ("c1", "2024-05-01T10:00:00", "page_view", "web", "", "", "", "")
    path = _write_csv(tmp_path / "events.csv", [row, row])
    _, report = _load(path)
    assert report.duplicates == 0
    assert report.valid == 2


def test_unknown_event_type_is_kept_as_stage_other_and_counted(tmp_path):
    rows = [*GOOD, ("c9", "2024-05-01T10:00:00", "Webinar_Join", "web", "", "", "", "u1")]
    con, report = _load(_write_csv(tmp_path / "events.csv", rows))
    assert report.unknown_event_types == {"webinar_join": 1}
    stage = con.execute("SELECT stage FROM events WHERE event_id = 'u1'").fetchall()[0][0]
    assert stage == "other"


def test_taxonomy_extension_from_config_maps_a_new_type(tmp_path):
    rows = [("c9", "2024-05-01T10:00:00", "webinar_join", "web", "", "", "", "u1")]
    taxonomy = load_taxonomy(extra={"webinar_join": "consideration"})
    con, report = _load(_write_csv(tmp_path / "events.csv", rows), taxonomy=taxonomy)
    assert report.unknown_event_types == {}
    assert con.execute("SELECT stage FROM events").fetchall()[0][0] == "consideration"


def test_every_shipped_type_says_who_starts_it():
    taxonomy = load_taxonomy()
    assert taxonomy.defaulted == ()
    assert set(taxonomy.stage_of) == set(taxonomy.initiator_of)
    for brand in ("ad_impression", "email_sent", "email_delivered", "push_sent", "sms_sent"):
        assert taxonomy.initiator(brand) == "brand"
    # Opens are machine-made as often as not (privacy proxies, scanners); a click is the person.
    assert taxonomy.initiator("email_open") == "brand"
    for own in ("page_view", "search", "add_to_cart", "purchase", "login", "email_click"):
        assert taxonomy.initiator(own) == "client"
    assert taxonomy.initiator("never_heard_of") == "client"


def test_loaded_events_carry_who_started_them(tmp_path):
    rows = [
        ("c1", "2024-05-01T10:00:00", "ad_impression", "web", "", "", "", "b1"),
        ("c1", "2024-05-01T11:00:00", "page_view", "web", "", "", "", "b2"),
        ("c1", "2024-05-01T12:00:00", "webinar_join", "web", "", "", "", "b3"),
    ]
    con, _ = _load(_write_csv(tmp_path / "events.csv", rows))
    got = dict(con.execute("SELECT event_type, by_client FROM events").fetchall())
    assert got == {"ad_impression": False, "page_view": True, "webinar_join": True}


def test_a_taxonomy_entry_without_initiator_defaults_to_client_with_a_warning(tmp_path, caplog):
    file = tmp_path / "taxonomy.yaml"
    file.write_text("awareness: [ad_impression, banner_seen]\npurchase:\n  purchase: client\n")
    with caplog.at_level("WARNING", logger="features.events"):
        taxonomy = load_taxonomy(file, extra={"newsletter_sent": {"stage": "awareness"}})
    assert taxonomy.defaulted == ("ad_impression", "banner_seen", "newsletter_sent")
    assert taxonomy.initiator("banner_seen") == "client"
    assert "ad_impression, banner_seen, newsletter_sent" in caplog.text
    brand = load_taxonomy(
        file, extra={"newsletter_sent": {"stage": "awareness", "initiated_by": "brand"}}
    )
    assert brand.brand_types == ("newsletter_sent",)


def test_a_bad_initiator_is_named(tmp_path):
    file = tmp_path / "taxonomy.yaml"
    file.write_text("awareness:\n  ad_impression: marketing\n")
    with pytest.raises(EventContractError, match=r"awareness\.ad_impression.*'marketing'"):
        load_taxonomy(file)


def test_config_extra_types_take_an_initiator(tmp_path):
    from configs import load_config

    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "events:\n  extra_event_types:\n    push_opened: consideration\n"
        "    push_sent_v2: {stage: awareness, initiated_by: brand}\n"
    )
    config = load_config(cfg)
    taxonomy = load_taxonomy(extra=config.events.extra_event_types)
    assert taxonomy.initiator("push_sent_v2") == "brand"
    assert taxonomy.stage("push_opened") == "consideration"
    assert taxonomy.defaulted == ("push_opened",)
    cfg.write_text(
        "events:\n  extra_event_types:\n    x: {stage: awareness, initiated_by: robot}\n"
    )
    with pytest.raises(SegmentationError, match="extra_event_types"):
        load_config(cfg)


@pytest.mark.parametrize("missing", ["client_id", "event_time", "event_type"])
def test_missing_required_column_fails_at_once_naming_it(tmp_path, missing):
    columns = [c for c in COLUMNS if c != missing]
    rows = [tuple(v for c, v in zip(COLUMNS, row, strict=True) if c != missing) for row in GOOD]
    path = _write_csv(tmp_path / "events.csv", rows, columns)
    with pytest.raises(EventContractError, match=missing):
        _load(path)


def test_optional_columns_may_be_absent(tmp_path):
    path = tmp_path / "events.csv"
    pd.DataFrame(
        {"client_id": ["a"], "event_time": ["2024-05-01"], "event_type": ["page_view"]}
    ).to_csv(path, index=False)
    con, report = _load(path)
    assert report.valid == 1
    row = con.execute("SELECT amount, sentiment, channel FROM events").fetchall()[0]
    assert row == (None, None, None)


def test_time_zones_are_converted_to_utc_and_naive_means_utc(tmp_path):
    rows = [
        ("a", "2024-05-01T12:00:00+02:00", "page_view", "web", "", "", "", "t1"),
        ("a", "2024-05-01T10:00:00", "page_view", "web", "", "", "", "t2"),
        ("a", "2024-05-01T05:00:00-05:00", "page_view", "web", "", "", "", "t3"),
    ]
    con, _ = _load(_write_csv(tmp_path / "events.csv", rows))
    times = {r[0]: r[1] for r in con.execute("SELECT event_id, event_time FROM events").fetchall()}
    assert times == {k: datetime(2024, 5, 1, 10) for k in ("t1", "t2", "t3")}


def test_parquet_directory_with_typed_columns_and_timezone(tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    for part, offset in ((0, 0), (1, 2)):
        table = pa.table(
            {
                "client_id": ["a", "b"],
                "event_time": pa.array(
                    [datetime(2024, 5, 1, 10 + offset, tzinfo=UTC)] * 2,
                    pa.timestamp("us", tz="UTC"),
                ),
                "event_type": ["purchase", "page_view"],
                "amount": [12.5, None],
                "sentiment": [None, 0.25],
                "event_id": [f"p{part}a", f"p{part}b"],
            }
        )
        pq.write_table(table, folder / f"part-{part}.parquet")
    con, report = _load(folder)
    assert report.rows == 4 and report.valid == 4
    types = dict(con.execute("DESCRIBE events").fetchall()[i][:2] for i in range(9))
    assert types["event_time"] == "TIMESTAMP"
    assert types["amount"] == "DOUBLE"
    total = con.execute("SELECT sum(amount) FROM events").fetchall()[0][0]
    assert total == pytest.approx(25.0)
    # the same through a glob
    _, by_glob = _load(str(folder / "*.parquet"))
    assert by_glob.valid == 4


def test_parquet_negative_and_nan_amounts_are_quarantined(tmp_path):
    table = pa.table(
        {
            "client_id": ["a", "b", "c"],
            "event_time": pa.array([datetime(2024, 5, 1)] * 3, pa.timestamp("us")),
            "event_type": ["purchase"] * 3,
            "amount": [5.0, -2.0, float("nan")],
        }
    )
    pq.write_table(table, tmp_path / "e.parquet")
    _, report = _load(tmp_path / "e.parquet")
    assert report.by_reason == {"negative_amount": 1, "non_finite_amount": 1}


def test_bad_share_threshold_fails_with_a_clear_message(tmp_path):
    path = _write_csv(tmp_path / "events.csv", GOOD + list(BAD.values()))
    _, report = _load(path)
    check_bad_share(report, max_bad_share=0.9)
    with pytest.raises(BadInputError, match=r"10 of 13 event rows .* above the allowed 5\.0%"):
        check_bad_share(report, max_bad_share=0.05)


def test_missing_path_names_it(tmp_path):
    with pytest.raises(EventContractError, match="nowhere"):
        _load(tmp_path / "nowhere")


def test_day_end_is_the_exclusive_bound_of_the_as_of_day():
    assert day_end(date(2024, 2, 29)) == datetime(2024, 3, 1)


def test_string_fields_are_trimmed_and_types_lowercased(tmp_path):
    rows = [(" c1 ", "2024-05-01T10:00:00", " Purchase ", "WEB", "3", " shoes ", "", "x1")]
    con, _ = _load(_write_csv(tmp_path / "events.csv", rows))
    row = con.execute(
        "SELECT client_id, event_type, channel, category, stage FROM events"
    ).fetchall()[0]
    assert row == ("c1", "purchase", "web", "shoes", "purchase")


def test_a_file_without_a_required_column_in_a_directory_fails_naming_it(tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    _write_csv(folder / "a.csv", GOOD)
    pd.DataFrame({"client_id": ["x"], "persona": ["p"]}).to_csv(folder / "truth.csv", index=False)
    with pytest.raises(
        EventContractError, match=r"truth\.csv: missing required column\(s\) event_time"
    ):
        _load(folder)
