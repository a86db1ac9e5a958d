"""The daily operation commands against a real published store (DuckDB and PostgreSQL):
export, explain, runs, status; the unknown-segment error; the failure webhook."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pandas as pd
import pyarrow.parquet as pq
import pytest

from configs import SegmentationError, config_from_mapping
from pipelines.alerts import notify_failure
from pipelines.cli import main
from pipelines.operate import (
    EXPORT_COLUMNS,
    TRANSITION_EXPORT_COLUMNS,
    UnknownSegmentError,
    check_status,
    unknown_segment_error,
)
from tests.pipelines.store_worker import make_request

DAYS = [date(2025, 3, 1), date(2025, 3, 2)]
N = 80


@pytest.fixture
def published(store, tmp_path, monkeypatch):
    """A store with two published days, and the CLI arguments that reach it."""
    for name in ("SEGMENTATION_STORE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    requests = [make_request(day, N) for day in DAYS]
    for request in requests:
        store.publish(request)
    config = tmp_path / "config.yaml"
    config.write_text(f"workdir: {tmp_path / 'work'}\nstore:\n  schema_name: {store.schema}\n")
    return store, ["--store", _url(store), "--config", str(config)], requests


def _url(store) -> str:
    from tests.pipelines.conftest import PG_URL

    return PG_URL if store.backend == "postgresql" else store.url


def test_export_members_as_csv_and_parquet(published, tmp_path, capsys):
    store, args, _ = published
    members = store.membership("s1")
    out = tmp_path / "out" / "s1.csv"
    assert main(["export", "--segment", "s1", "--format", "csv", "--out", str(out), *args]) == 0
    line = capsys.readouterr().out
    assert line == f"{len(members)} members of segment s1 written to {out}\n"
    frame = pd.read_csv(out, dtype={"client_id": str})
    assert list(frame.columns) == list(EXPORT_COLUMNS)
    assert sorted(frame["client_id"]) == sorted(members["client_id"])
    assert (frame["holdout"] == False).all()  # noqa: E712 (no holdout column yet: not held out)
    assert frame["predicted_cltv"].notna().all() and (frame["as_of"] == str(DAYS[1])).all()
    assert [p.name for p in out.parent.iterdir()] == ["s1.csv"]  # no temporary file left

    parquet = tmp_path / "s1.parquet"
    assert main(["export", "--segment", "s1", "--out", str(parquet), *args]) == 0
    table = pq.read_table(parquet).to_pandas()
    assert len(table) == len(members) and table["valid_from"].notna().all()


def test_export_entries_and_exits_since_a_date(published, tmp_path, capsys):
    store, args, _ = published
    out = tmp_path / "entries.csv"
    since = ["--entries-since", str(DAYS[1])]
    assert main(["export", "--segment", "s2", *since, "--out", str(out), *args]) == 0
    entries = pd.read_csv(out)
    t = store.transitions(DAYS[1])
    expected = t[(t["to_segment_id"] == "s2") & (t["from_segment_id"] != "s2")]
    assert list(entries.columns) == list(TRANSITION_EXPORT_COLUMNS)
    assert len(entries) == len(expected) > 0 and set(entries["change"]) == {"entry"}
    assert main(["export", "--segment", "s2", *since, "--exits", "--out", str(out), *args]) == 0
    both = pd.read_csv(out)
    exits = t[(t["from_segment_id"] == "s2") & (t["to_segment_id"] != "s2")]
    assert (both["change"] == "exit").sum() == len(exits) > 0
    assert "entries and exits of segment s2" in capsys.readouterr().out
    # from the first day on: the first day's entries (everyone new) are there too
    assert (
        main(
            ["export", "--segment", "s2", "--entries-since", str(DAYS[0]), "--out", str(out), *args]
        )
        == 0
    )
    assert set(pd.read_csv(out)["as_of"]) == {str(DAYS[0]), str(DAYS[1])}


def test_an_unknown_segment_names_the_closest_ids(published, tmp_path, capsys):
    _, args, _ = published
    out = tmp_path / "x.csv"
    assert main(["export", "--segment", "S1x", "--out", str(out), *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown segment 'S1x'; did you mean s1" in err
    assert not out.exists()
    error = unknown_segment_error("vipp", ["rule_vip", "C001", "rule_win_back"])
    assert isinstance(error, UnknownSegmentError) and isinstance(error, SegmentationError)
    assert "did you mean rule_vip?" in str(error)
    assert "known segments: a, b" in str(unknown_segment_error("zzzz", ["b", "a"]))


def test_explain_a_client_and_an_unknown_one(published, capsys):
    store, args, requests = published
    client = str(requests[1].membership["client_id"].iloc[3])
    assert main(["explain", client, *args]) == 0
    text = capsys.readouterr().out
    row = store.client(client).iloc[0]
    assert text.startswith(f"Client {client}: segment {row['segment_id']} ({row['segment_id']}")
    assert "why: synthetic" in text and "last moves (newest first):" in text
    assert main(["explain", client, "--json", *args]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["segment_id"] == row["segment_id"] and answer["holdout"] is False
    assert answer["scores"]["predicted_cltv"] == pytest.approx(row["predicted_cltv"])
    assert answer["as_of"] == str(DAYS[1]) and answer["moves"][0]["valid_to"] is None
    froms = [m["valid_from"] for m in answer["moves"]]
    assert froms == sorted(froms, reverse=True)
    assert main(["explain", "nobody", *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "client 'nobody' is not in the store" in err


def test_runs_newest_first_and_status(published, capsys):
    store, args, requests = published
    assert main(["runs", "--json", *args]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["as_of"] for r in runs] == [str(DAYS[1]), str(DAYS[0])]
    assert runs[0]["status"] == "success" and runs[0]["clients"] == N
    assert runs[0]["duration_seconds"] >= 0 and runs[0]["error"] is None
    assert main(["runs", "--limit", "1", *args]) == 0
    text = capsys.readouterr().out
    assert requests[1].run_id in text and requests[0].run_id not in text

    # the runs finished just now: OK within a day, too old for a minute
    assert main(["status", *args]) == 0
    assert capsys.readouterr().out.startswith(f"OK: run {requests[1].run_id}")
    later = datetime.now(UTC) + timedelta(hours=30)
    stale = check_status(store, max_age_hours=26, now=later)
    assert not stale.ok and "more than the allowed 26 h" in stale.message
    assert main(["status", "--max-age", "-1", *args]) == 1  # monitoring's exit code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than the allowed -1 h" in err

    started = datetime.now(UTC) + timedelta(minutes=1)
    store.record_failed_run("run-broken", DAYS[1], started, error=ValueError("disk full"))
    assert main(["status", "--json", *args]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is False
    assert "latest run run-broken as of 2025-03-02 failed" in captured.err
    assert "disk full" in captured.err


def test_status_of_an_empty_store_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SEGMENTATION_STORE_URL", raising=False)
    url = f"duckdb:///{tmp_path / 'empty.duckdb'}"
    assert main(["status", "--store", url]) == 1
    assert "no successful run" in capsys.readouterr().err
    assert main(["runs", "--store", url]) == 0
    assert capsys.readouterr().out == "no runs yet\n"


# -- the failure webhook ------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    status = 200
    bodies: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    handler = type("Handler", (_Receiver,), {"status": 200, "bodies": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _alert_config(tmp_path, url: str | None):
    return config_from_mapping(
        {"workdir": str(tmp_path), "alerts": {"failure_webhook": url, "timeout_seconds": 2}},
        source=str(tmp_path / "config.yaml"),
    )


def test_failure_webhook_posts_json_with_the_env_token(receiver, tmp_path, monkeypatch):
    handler, base = receiver
    monkeypatch.setenv("ALERT_TOKEN", "t0k3n")
    config = _alert_config(tmp_path, base + "/hooks/${ALERT_TOKEN}")
    error = ValueError("events at /x: missing\n column event_time")
    assert notify_failure(config, run_id="run-1", as_of=date(2025, 3, 2), error=error) is True
    (body,) = handler.bodies
    assert body["run_id"] == "run-1" and body["as_of"] == "2025-03-02"
    assert body["error"] == "events at /x: missing column event_time"
    assert body["event"] == "segmentation.run_failed"
    assert notify_failure(_alert_config(tmp_path, None), run_id="r", as_of="d", error="e") is False


def test_failure_webhook_never_raises(receiver, tmp_path, caplog, monkeypatch):
    handler, base = receiver
    handler.status = 500
    monkeypatch.setenv("ALERT_TOKEN", "s3cr3t")
    with caplog.at_level("WARNING", logger="pipelines.alerts"):
        assert not notify_failure(
            _alert_config(tmp_path, base + "/${ALERT_TOKEN}"), run_id="r", as_of="d", error="x"
        )
        assert "HTTP 500" in caplog.text
        import socket

        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        unreachable = _alert_config(tmp_path, f"http://127.0.0.1:{closed}/${{ALERT_TOKEN}}")
        assert not notify_failure(unreachable, run_id="r2", as_of="d", error="x")
        assert "r2 not sent to http://127.0.0.1" in caplog.text
        monkeypatch.delenv("ALERT_TOKEN")
        assert not notify_failure(unreachable, run_id="r3", as_of="d", error="x")
        assert "ALERT_TOKEN is not set" in caplog.text
    assert "s3cr3t" not in caplog.text
