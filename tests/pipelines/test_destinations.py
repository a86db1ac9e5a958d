"""Destinations against a real local HTTP server and real stores (DuckDB and PostgreSQL):
batches, idempotency keys, retries with backoff, timeouts, errors, re-sending what failed and
never what was delivered, holdout members, file drops, and the publish left untouched."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from configs.schema import EngineConfig
from pipelines.destinations import (
    EVENT_COLUMNS,
    batch_id,
    deliver,
    deliver_after_publish,
    deliver_command,
    event_id,
    masked_location,
)
from pipelines.store import Store, open_store
from segmentation.holdout import holdout_flags
from tests.pipelines.store_worker import make_request
from tests.pipelines.test_store import published_tables
from tests.pipelines.webhook_server import WebhookServer, unreachable_url

DAY1, DAY2, DAY3 = (date(2024, 5, 1) + timedelta(days=i) for i in range(3))
N = 30
HOLDOUT = {"share": 0.2, "salt": "test-salt"}


def publish(store: Store, day: date, n: int = N) -> None:
    """A small run whose membership carries the holdout draw of HOLDOUT (as the nightly)."""
    request = make_request(day, n)
    m = request.membership
    m["holdout"] = holdout_flags(m["client_id"], m["segment_id"], **HOLDOUT)
    store.publish(request)


def config(tmp_path: Path, *destinations: dict[str, Any]) -> EngineConfig:
    return EngineConfig.model_validate(
        {"workdir": str(tmp_path), "holdout": HOLDOUT, "destinations": list(destinations)}
    )


def hook(url: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "kind": "webhook",
        "name": "hook",
        "url": url,
        "batch_size": 6,
        "timeout_seconds": 0.5,
        "max_attempts": 4,
        "backoff_seconds": 0.02,
        **kwargs,
    }


def expected_events(store: Store, day: date, *, include_holdout: bool = False) -> pd.DataFrame:
    """Entries and exits of the day computed independently from the transitions."""
    t = store.transitions(day)
    t = t[t["from_segment_id"].fillna("-") != t["to_segment_id"].fillna("-")]
    entries = t[t["to_segment_id"].notna()].assign(segment_id=t["to_segment_id"], kind="entry")
    exits = t[t["from_segment_id"].notna()].assign(segment_id=t["from_segment_id"], kind="exit")
    out = pd.concat([entries, exits])[["client_id", "segment_id", "kind"]]
    out["holdout"] = holdout_flags(out["client_id"], out["segment_id"], **HOLDOUT)
    if not include_holdout:
        out = out[~out["holdout"]]
    return out.reset_index(drop=True)


def keyset(events: list[dict[str, Any]] | pd.DataFrame) -> set[tuple[str, str, str]]:
    frame = pd.DataFrame(events)
    return set(zip(frame["client_id"], frame["segment_id"], frame["kind"], strict=True))


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    with WebhookServer() as s:
        yield s


@pytest.fixture(scope="module")
def duck_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "store.duckdb"
    with open_store(f"duckdb://{path}") as store:
        publish(store, DAY1)
        publish(store, DAY2)
    return path


@pytest.fixture
def duck(tmp_path: Path, duck_template: Path) -> Iterator[Store]:
    """A DuckDB store with two published nights (DAY2 has entries, exits and moves): a copy
    of one published file."""
    path = tmp_path / "store.duckdb"
    for source in duck_template.parent.glob("store.duckdb*"):
        if not source.name.endswith(".lock"):
            shutil.copy(source, tmp_path / source.name)
    store = open_store(f"duckdb://{path}", lock_timeout=10, reader_retry=10)
    yield store
    store.close()


@pytest.fixture
def two_nights(store: Store) -> Store:
    """The same two nights on the test's backend (DuckDB and PostgreSQL)."""
    publish(store, DAY1)
    publish(store, DAY2)
    return store


# -- webhooks, both backends --------------------------------------------------------------------
def test_webhook_delivers_each_event_once_and_never_twice(
    two_nights, server, tmp_path, monkeypatch
):
    store = two_nights
    monkeypatch.setenv("HOOK_TOKEN", "s3cret-token")
    url = server.url + "?key=${HOOK_TOKEN}"
    cfg = config(tmp_path, hook(url, headers={"Authorization": "Bearer ${HOOK_TOKEN}"}))
    before = published_tables(store)

    summary = deliver(store, cfg)
    assert summary.ok and summary.as_of == DAY2
    (result,) = summary.destinations
    requests = server.receiver.requests
    assert result.sent == len(requests) > 1 and result.failed == result.pending == 0
    expected = expected_events(store, DAY2)
    assert keyset(server.receiver.events()) == keyset(expected)
    assert result.clients == len(expected)

    for r in requests:
        body = r.body
        assert set(body) == {
            "destination", "batch_id", "as_of", "segment_id", "kind", "batch_number",
            "batches", "events",
        }  # fmt: skip
        assert r.headers["Idempotency-Key"] == body["batch_id"]
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["Authorization"] == "Bearer s3cret-token"
        assert r.path == "/hook?key=s3cret-token"
        assert 1 <= body["batch_number"] <= body["batches"] and len(body["events"]) <= 6
        ids = [e["client_id"] for e in body["events"]]
        assert ids == sorted(ids)
        assert body["batch_id"] == batch_id(
            "hook", DAY2, body["segment_id"], body["kind"], body["batch_number"], ids
        )
        for e in body["events"]:
            assert list(e) == list(EVENT_COLUMNS)
            assert e["kind"] == {"entries": "entry", "exits": "exit"}[body["kind"]]
            assert e["segment_id"] == body["segment_id"] and e["as_of"] == DAY2.isoformat()
            assert e["event_id"] == event_id(
                "hook", DAY2, e["segment_id"], body["kind"], e["client_id"]
            )
            assert e["holdout"] is False and e["run_id"] == "run-2024-05-02"
            assert e["segment_name"] == f"segment {e['segment_id']}"
        entry = next((e for e in body["events"] if e["kind"] == "entry"), None)
        if entry is not None:
            assert isinstance(entry["predicted_cltv"], float)

    rows = store.deliveries(destination="hook")
    assert len(rows) == len(requests) and set(rows["status"]) == {"delivered"}
    assert (rows["attempts"] == 1).all() and rows["delivered_at"].notna().all()
    assert set(rows["location"]) == {masked_location(url)}
    assert "s3cret" not in rows.to_csv()
    assert set(rows["batch_id"]) == {r.body["batch_id"] for r in requests}

    # a second call sends nothing: every batch is already delivered
    again = deliver(store, cfg).destinations[0]
    assert (again.sent, again.skipped, again.failed) == (0, result.sent, 0)
    assert len(server.receiver.requests) == len(requests)
    assert published_tables(store) == before


def test_failed_batches_are_sent_by_the_next_call_with_the_same_keys(two_nights, server, tmp_path):
    store = two_nights
    before = published_tables(store)
    cfg = config(tmp_path, hook(server.url, max_attempts=2, timeout_seconds=0.2))
    server.receiver.answer(default="sleep:0.5")  # every request times out

    started = time.monotonic()
    summary = deliver(store, cfg)
    (r,) = summary.destinations
    assert time.monotonic() - started < 5
    assert not summary.ok and r.failed == 1 and r.sent == 0 and r.pending > 0
    assert "timed out after 0.2 s" in r.error
    assert len(server.receiver.requests) == 2  # 2 attempts, then the destination is left
    failed = store.deliveries(destination="hook", status="failed")
    assert len(failed) == 1 and failed["attempts"].iloc[0] == 2
    failed_key = failed["batch_id"].iloc[0]
    assert {q.headers["Idempotency-Key"] for q in server.receiver.requests} == {failed_key}
    assert published_tables(store) == before  # a delivery failure never touches the publish

    # retry=False sends what was never attempted, not the failed batch
    server.receiver.answer(default="ok")
    server.receiver.requests.clear()
    r = deliver(store, cfg, retry=False).destinations[0]
    assert r.failed == 0 and r.pending == 1 and r.sent == len(server.receiver.requests) > 0
    assert failed_key not in {q.body["batch_id"] for q in server.receiver.requests}

    # retry=True sends the failed one, with the same idempotency key
    r = deliver(store, cfg).destinations[0]
    assert (r.sent, r.pending, r.failed) == (1, 0, 0)
    assert server.receiver.requests[-1].headers["Idempotency-Key"] == failed_key
    rows = store.deliveries(destination="hook").set_index("batch_id")
    assert set(rows["status"]) == {"delivered"} and rows.loc[failed_key, "attempts"] == 3
    assert rows.loc[failed_key, "first_attempt_at"] < rows.loc[failed_key, "delivered_at"]
    # the receiver, deduplicating by event_id, has every event exactly once
    events = server.receiver.events()
    assert len({e["event_id"] for e in events}) == len(events)
    assert keyset(events) == keyset(expected_events(store, DAY2))
    assert deliver(store, cfg).destinations[0].sent == 0


def test_next_night_sends_what_an_earlier_night_could_not(two_nights, server, tmp_path):
    store = two_nights
    cfg = config(tmp_path, hook(server.url, max_attempts=1))
    server.receiver.answer(default="500")
    assert deliver_after_publish(store, cfg, DAY2).destinations[0].failed == 1
    publish(store, DAY3)
    server.receiver.answer(default="ok")
    server.receiver.requests.clear()

    summary = deliver_after_publish(store, cfg, DAY3)
    (r,) = summary.destinations
    assert summary.ok and r.days == (DAY2, DAY3)
    by_day = {
        d: [q for q in server.receiver.requests if q.body["as_of"] == d.isoformat()]
        for d in (DAY2, DAY3)
    }
    assert keyset([e for q in by_day[DAY2] for e in q.body["events"]]) == keyset(
        expected_events(store, DAY2)
    )
    assert keyset([e for q in by_day[DAY3] for e in q.body["events"]]) == keyset(
        expected_events(store, DAY3)
    )
    assert set(store.deliveries(destination="hook")["status"]) == {"delivered"}


# -- retries, errors and budgets (DuckDB) -------------------------------------------------------
def one_segment(url: str, **kwargs: Any) -> dict[str, Any]:
    return hook(url, segments=["s1"], batch_size=100, **kwargs)


def first_batch_requests(server: WebhookServer) -> list[Any]:
    key = server.receiver.requests[0].headers["Idempotency-Key"]
    return [q for q in server.receiver.requests if q.headers["Idempotency-Key"] == key]


def test_500s_are_retried_with_exponential_backoff(duck, server, tmp_path):
    server.receiver.answer("500", "503", "500")
    r = deliver(duck, config(tmp_path, one_segment(server.url, backoff_seconds=0.05))).destinations[
        0
    ]
    assert r.ok and r.failed == 0
    tries = first_batch_requests(server)
    assert [q.action for q in tries] == ["500", "503", "500", "ok"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2
    row = duck.deliveries(destination="hook").iloc[0]
    assert row["attempts"] == 4 and row["status"] == "delivered"


def test_retry_after_is_honoured(duck, server, tmp_path):
    server.receiver.answer("429:0.4")
    r = deliver(duck, config(tmp_path, one_segment(server.url))).destinations[0]
    assert r.ok
    tries = first_batch_requests(server)
    assert [q.action for q in tries] == ["429:0.4", "ok"] and tries[1].at - tries[0].at >= 0.4


def test_a_closed_connection_is_retried(duck, server, tmp_path):
    server.receiver.answer("close")
    r = deliver(duck, config(tmp_path, one_segment(server.url))).destinations[0]
    assert r.ok and [q.action for q in first_batch_requests(server)] == ["close", "ok"]


def test_a_400_fails_at_once_and_is_retried_by_the_next_call(duck, server, tmp_path):
    cfg = config(tmp_path, hook(server.url, segments=["s1", "s2"]))
    server.receiver.answer("400")
    r = deliver(duck, cfg).destinations[0]
    assert r.failed == 1 and r.sent > 0 and r.error == "HTTP 400 Bad Request"
    assert len(first_batch_requests(server)) == 1  # not retried in this call
    failed = duck.deliveries(status="failed")
    assert len(failed) == 1 and failed["error"].iloc[0] == "HTTP 400 Bad Request"

    r = deliver(duck, cfg).destinations[0]
    assert (r.sent, r.failed, r.skipped) == (1, 0, len(duck.deliveries()) - 1)
    assert set(duck.deliveries()["status"]) == {"delivered"}


def test_an_unreachable_destination_does_not_block(duck, tmp_path, caplog):
    before = published_tables(duck)
    cfg = config(tmp_path, hook(unreachable_url(), max_attempts=3, segments=["s1", "s2"]))
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="pipelines.destinations"):
        summary = deliver_after_publish(duck, cfg, DAY2)
    assert time.monotonic() - started < 3
    (r,) = summary.destinations
    assert r.failed == 1 and r.pending > 0 and r.error == "connection refused (after 3 attempts)"
    assert "destination hook (webhook) as_of 2024-05-02: 0 batches sent" in caplog.text
    assert published_tables(duck) == before
    assert deliver_command(cfg, store_url=duck.url, as_of=DAY2) == 1


def test_a_missing_variable_fails_the_destination_without_leaking(
    duck, server, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("TOKEN_SET", "very-secret-value")
    monkeypatch.delenv("TOKEN_UNSET", raising=False)
    url = server.url.replace("127.0.0.1", "user:${TOKEN_SET}@127.0.0.1") + "?a=${TOKEN_UNSET}"
    with caplog.at_level(logging.DEBUG):
        r = deliver(duck, config(tmp_path, one_segment(url))).destinations[0]
    assert r.failed == 1 and r.error == "environment variable TOKEN_UNSET is not set"
    assert server.receiver.requests == []
    rows = duck.deliveries()
    assert (
        rows["location"].iloc[0]
        == "http://***@127.0.0.1:" + url.split(":")[-1].split("?")[0] + "?***"
    )
    assert "very-secret" not in rows.to_csv() and "very-secret" not in caplog.text


def test_holdout_members_are_left_out_unless_included(duck, server, tmp_path):
    cfg = config(
        tmp_path,
        hook(server.url, name="treated", batch_size=1000, segments=["s1", "s2", "s3"]),
        hook(
            server.url,
            name="all",
            batch_size=1000,
            segments=["s1", "s2", "s3"],
            include_holdout=True,
        ),
    )
    deliver(duck, cfg)
    by_dest: dict[str, list[dict[str, Any]]] = {"treated": [], "all": []}
    for q in server.receiver.requests:
        by_dest[q.body["destination"]] += q.body["events"]
    everyone = expected_events(duck, DAY2, include_holdout=True)
    everyone = everyone[everyone["segment_id"].isin(["s1", "s2", "s3"])]
    held = everyone[everyone["holdout"]]
    assert len(held) > 0
    assert keyset(by_dest["treated"]) == keyset(everyone[~everyone["holdout"]])
    assert keyset(by_dest["all"]) == keyset(everyone)
    flagged = {(e["client_id"], e["segment_id"], e["kind"]) for e in by_dest["all"] if e["holdout"]}
    assert flagged == keyset(held)
    # an entry's flag is the one the membership published
    members = duck.membership().set_index("client_id")["holdout"]
    for e in by_dest["all"]:
        if e["kind"] == "entry":
            assert e["holdout"] == bool(members[e["client_id"]])


def test_segments_filter_and_stable_keys(duck, server, tmp_path):
    cfg = config(tmp_path, hook(server.url, segments=["s1", "s2"]))
    deliver(duck, cfg)
    assert {q.body["segment_id"] for q in server.receiver.requests} <= {"s1", "s2"}
    assert keyset(server.receiver.events()) == keyset(
        expected_events(duck, DAY2).query("segment_id in ['s1', 's2']")
    )
    # the key depends on where, what and who, and on nothing else
    assert batch_id("hook", DAY2, "s1", "entries", 1, ["a", "b"]) == batch_id(
        "hook", DAY2, "s1", "entries", 1, ["a", "b"]
    )
    assert batch_id("hook", DAY2, "s1", "entries", 1, ["a", "b"]) != batch_id(
        "hook", DAY2, "s1", "entries", 1, ["a", "c"]
    )
    assert event_id("hook", DAY2, "s1", "entries", "a") != event_id(
        "other", DAY2, "s1", "entries", "a"
    )


# -- file drops ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_file_drop_writes_complete_files_once(duck, tmp_path, fmt):
    cfg = config(
        tmp_path,
        {
            "kind": "file",
            "name": "drop",
            "path": "{workdir}/out",
            "format": fmt,
            "segments": ["s1", "s2"],
        },
    )
    summary = deliver(duck, cfg)
    (r,) = summary.destinations
    folder = tmp_path / "out" / DAY2.isoformat() / "drop"
    files = sorted(p.name for p in folder.iterdir())
    segments = ["s1", "s2"]
    assert files == sorted(f"{s}_{k}.{fmt}" for s in segments for k in ("entries", "exits"))
    assert r.ok and r.sent == len(files)

    expected = expected_events(duck, DAY2)
    read = pd.read_parquet if fmt == "parquet" else pd.read_csv
    frames = []
    for name in files:
        frame = read(folder / name)
        assert list(frame.columns) == list(EVENT_COLUMNS)
        segment_id, kind = name.rsplit(".", 1)[0].split("_")
        event_kind = {"entries": "entry", "exits": "exit"}[kind]
        want = expected[(expected["segment_id"] == segment_id) & (expected["kind"] == event_kind)]
        assert sorted(frame["client_id"].astype(str)) == sorted(want["client_id"])
        assert list(frame["client_id"].astype(str)) == sorted(frame["client_id"].astype(str))
        frames.append(frame)
    assert keyset(pd.concat(frames).astype({"client_id": str})) == keyset(
        expected[expected["segment_id"].isin(segments)]
    )

    rows = duck.deliveries(destination="drop")
    assert set(rows["status"]) == {"delivered"}
    assert {Path(p).name for p in rows["location"]} == set(files)
    mtimes = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    time.sleep(0.01)
    again = deliver(duck, cfg).destinations[0]
    assert again.sent == 0 and again.skipped == len(files)
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes  # not rewritten


def test_file_drop_failure_is_recorded_and_retried(duck, tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("a file where the folder should be")
    cfg = config(
        tmp_path,
        {"kind": "file", "name": "drop", "path": str(blocker), "format": "csv", "segments": ["s1"]},
    )
    r = deliver(duck, cfg).destinations[0]
    assert r.failed > 0 and r.sent == 0 and "cannot write" in r.error
    blocker.unlink()
    r = deliver(duck, cfg).destinations[0]
    assert r.ok and r.sent > 0 and set(duck.deliveries()["status"]) == {"delivered"}


def test_deliver_command_prints_the_summary(duck, server, tmp_path, capsys):
    cfg = config(tmp_path, one_segment(server.url))
    assert deliver_command(cfg, store_url=duck.url, retry=True) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["as_of"] == DAY2.isoformat()
    assert out["destinations"][0]["sent"] == len(server.receiver.requests)


def test_no_destinations_and_no_run(duck, tmp_path):
    assert deliver(duck, config(tmp_path)).destinations == ()
    cfg = config(tmp_path, hook(unreachable_url()))
    summary = deliver_after_publish(duck, cfg, date(2020, 1, 1))
    assert summary.error is not None and "no successful run" in summary.error
