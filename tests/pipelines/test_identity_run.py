"""End to end with identity stitching: journeys with cookies, devices and hashed emails and
phones -> nightly runs on persons -> identity tables, merges and history that follows them."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pandas as pd
import pytest

from configs import config_from_mapping
from features.generator import write_dataset
from pipelines.nightly import run_nightly
from pipelines.store import open_store

END = date(2025, 6, 30)
FIRST = date(2025, 5, 1)
SECOND = END  # every planted trap is complete by then


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("identity-journeys")
    write_dataset(out, clients=1200, days=240, end=END, seed=5, identities=True)
    return out


@pytest.fixture
def config(tmp_path, monkeypatch, dataset):
    for name in ("SEGMENTATION_STORE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return config_from_mapping(
        {
            "workdir": str(tmp_path / "work"),
            "identity": {"links_file": str(dataset / "identity_links.parquet")},
            "clustering": {"sample_size": 1200, "min_cluster_size": 25},
            "schedule": {"retries": 0},
            "mlflow": {"enabled": False},
        },
        source=str(tmp_path / "test-config.yaml"),
    )


@pytest.mark.slow
def test_nightly_runs_segment_persons_and_publish_their_merges(prefect_harness, dataset, config):
    events = str(dataset / "events")
    first = run_nightly(config, as_of=FIRST, events=events)
    store = open_store(config.store_url)
    before = store.membership()
    second = run_nightly(config, as_of=SECOND, events=events)
    assert first["clients"] and second["clients"]

    truth = pd.read_parquet(dataset / "identity_truth.parquet")
    identity_map = store.identity_map()
    merged = identity_map.merge(truth, on=["id_type", "id_value"], suffixes=("", "_true"))
    real = merged[~merged["trap"]]
    # Persons: every found person holds the identifiers of one true person only.
    assert (real.groupby("person_id")["person_id_true"].nunique() == 1).all()
    # Trap identifiers are never in the map: they are quarantined.
    traps = truth[truth["trap"]]
    assert not identity_map.merge(traps, on=["id_type", "id_value"]).shape[0]
    quarantine = store.quarantine()
    over = quarantine[quarantine["reason"] == "identifier_over_linked"]
    assert len(over) >= 1 and over["detail"].str.startswith("linked to").all()

    membership = store.membership()
    assert membership["client_id"].is_unique
    assert set(membership["client_id"]) <= set(identity_map["person_id"])

    # Anonymous visitors of the first night who logged in by the second are merges.
    merges = store.identity_merges()
    assert len(merges) >= 1
    assert (pd.to_datetime(merges["as_of"]).dt.date == SECOND).all()
    assert not set(merges["merged_id"]) & set(membership["client_id"])
    assert set(merges["merged_id"]) <= set(before["client_id"]) | set(
        identity_map.loc[identity_map["id_type"] == "client_id", "id_value"]
    )
    evidence = json.loads(merges["evidence"].iloc[0])
    assert evidence["identifiers"] >= 1
    # History follows the person: a merged id has no open stretch left, and a survivor that
    # had no history of its own continues the merged id's stretch (no entry from null).
    history = store.history()
    open_rows = history[history["valid_to"].isna()]
    assert not set(merges["merged_id"]) & set(open_rows["client_id"])
    transitions = store.transitions(as_of=SECOND)
    continued = merges[~merges["into_id"].isin(before["client_id"])]
    entered = transitions[transitions["from_segment_id"].isna()]
    if len(continued):
        assert not set(continued["into_id"]) & set(entered["client_id"])


@pytest.mark.slow
def test_a_rerun_of_the_same_night_does_not_duplicate_merges(prefect_harness, dataset, config):
    events = str(dataset / "events")
    run_nightly(config, as_of=FIRST, events=events)
    run_nightly(config, as_of=SECOND, events=events)
    store = open_store(config.store_url)
    merges = store.identity_merges()
    run_nightly(config, as_of=SECOND, events=events)
    again = store.identity_merges()
    assert sorted(again["merged_id"]) == sorted(merges["merged_id"])
    assert len(store.identity_map()) > 0
    assert SECOND - timedelta(days=1) > FIRST


@pytest.mark.slow
def test_the_report_shows_persons_from_identifiers(prefect_harness, dataset, config, tmp_path):
    from pipelines.report import write_report

    run_nightly(config, as_of=SECOND, events=str(dataset / "events"))
    page = write_report(config, as_of=SECOND, out=tmp_path / "report.html").read_text()
    assert "Identity: persons from identifiers" in page
    assert "persons from" in page and "identifier over linked" in page
