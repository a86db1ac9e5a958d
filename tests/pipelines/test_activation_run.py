"""The nightly run end to end with what marketing acts on: the journey map and the holdout
comparison published with the run, entries and exits delivered to a real local webhook and a
file drop after the publish, a failure alert for a failed run, and the preview and journey
commands reading the result."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pandas as pd
import pytest

from configs import config_from_mapping
from features.generator import write_dataset
from pipelines.cli import main
from pipelines.nightly import run_nightly
from pipelines.store import open_store
from tests.pipelines.webhook_server import WebhookServer

END = date(2025, 6, 30)
FIRST = date(2025, 6, 1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("journeys")
    write_dataset(out, clients=1500, days=240, end=END, seed=5)
    return out


def _config(tmp_path, webhook: str, alerts: str | None):
    return config_from_mapping(
        {
            "workdir": str(tmp_path / "work"),
            "clustering": {"sample_size": 1500, "min_cluster_size": 25},
            "schedule": {"retries": 0},
            "holdout": {"share": 0.1},
            "destinations": [
                {"kind": "webhook", "name": "crm", "url": webhook, "backoff_seconds": 0.01},
                {"kind": "file", "name": "drop", "path": "{workdir}/drops", "format": "csv"},
            ],
            "alerts": {"failure_webhook": alerts},
        },
        source=str(tmp_path / "test-config.yaml"),
    )


@pytest.mark.slow
def test_a_night_publishes_the_map_and_holdout_and_delivers(
    prefect_harness, dataset, tmp_path, monkeypatch, capsys
):
    for name in ("SEGMENTATION_STORE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    events = str(dataset / "events")
    with WebhookServer() as crm, WebhookServer() as alerts:
        config = _config(tmp_path, crm.url, alerts.url)
        run_nightly(config, as_of=FIRST, events=events)
        crm.receiver.answer("500", default="ok")  # the second night's first batch fails once
        run_nightly(config, as_of=END, events=events)
        store = open_store(config.store_url)

        # the journey map of the night, overall and per segment, in the store
        stages = store.journey_stages()
        assert set(pd.to_datetime(stages["as_of"]).dt.date) == {END}
        assert "*" in set(stages["segment_id"])
        segments = set(store.membership()["segment_id"])
        assert set(stages["segment_id"]) - {"*"} <= segments
        assert len(store.journey_stages(as_of=FIRST)) > 0  # each night keeps its own map
        assert (store.journey_dropoffs()["kind"] == "dropoff").any()

        # holdout: about a tenth of each segment's members, compared after entry
        membership = store.membership()
        share = membership.loc[membership["segment_id"] != "noise", "holdout"].mean()
        assert 0.06 < share < 0.14
        outcomes = store.holdout_outcomes()
        assert len(outcomes) and outcomes["holdout_clients"].sum() == membership["holdout"].sum()

        # deliveries: every batch delivered once; held-out members were not sent
        deliveries = store.deliveries(as_of=END)
        assert len(deliveries) and (deliveries["status"] == "delivered").all()
        sent = pd.DataFrame([e for e in crm.receiver.events() if e["as_of"] == END.isoformat()])
        assert len(sent) and not sent["holdout"].any()
        assert sent["event_id"].is_unique
        drops = list((tmp_path / "work" / "drops" / END.isoformat()).rglob("*.csv"))
        assert drops
        assert not alerts.receiver.requests  # nothing failed

        # a failed night tells the failure webhook; the tables stay as they were
        before = store.membership()
        with pytest.raises(Exception, match="older than the latest"):
            run_nightly(config, as_of=FIRST + timedelta(days=3), events=events)
        assert len(alerts.receiver.requests) == 1
        assert "older than the latest" in json.dumps(alerts.receiver.requests[0].body)
        pd.testing.assert_frame_equal(store.membership(), before)
        store.close()

    config_file = tmp_path / "cli.yaml"
    config_file.write_text(f"workdir: {tmp_path / 'work'}\nevents:\n  path: {events}\n")
    capsys.readouterr()
    assert main(["journey", "--config", str(config_file)]) == 0
    text = capsys.readouterr().out
    assert "Journey map: All clients" in text and "Where journeys stop" in text
    assert main(["journey", "--segment", "nope", "--config", str(config_file)]) != 0
    assert "unknown segment 'nope'" in capsys.readouterr().err

    # the published rules previewed again: nobody moves
    assert main(["preview", "--config", str(config_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["moved"] == 0 and result["clients"] == len(before)
