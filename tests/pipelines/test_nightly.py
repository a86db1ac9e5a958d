"""End to end through Prefect: generated journeys -> nightly runs -> published tables and MLflow."""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
import pandas as pd
import pytest

from configs import config_from_mapping
from features.generator import write_dataset
from pipelines.nightly import _Clock, run_nightly
from pipelines.store import OutOfOrderError, open_store

END = date(2025, 6, 30)
FIRST = date(2025, 5, 1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("journeys")
    write_dataset(out, clients=1500, days=240, end=END, seed=11)
    return out


@pytest.fixture
def config(tmp_path, monkeypatch):
    for name in ("SEGMENTATION_STORE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return config_from_mapping(
        {
            "workdir": str(tmp_path / "work"),
            "clustering": {"sample_size": 1500, "min_cluster_size": 25},
            "schedule": {"retries": 0},
        },
        source=str(tmp_path / "test-config.yaml"),
    )


def test_the_clock_times_every_stage_and_names_the_date_in_progress():
    lines: list[str] = []
    clock = _Clock(FIRST, lines.append)

    def fail() -> None:
        raise ValueError("bad input")

    assert clock.time("add", lambda a, b: a + b, 1, b=2) == 3
    with pytest.raises(ValueError, match="bad input"):
        clock.time("fail", fail)
    clock.say("publishing")
    assert list(clock.seconds) == ["add", "fail"]  # a failed stage is timed too
    assert all(seconds >= 0 for seconds in clock.seconds.values())
    assert lines == ["[2025-05-01] publishing"]
    # the peak memory so far at the end of each stage: positive, never falling
    assert list(clock.peak_gb) == ["add", "fail"]
    assert 0 < clock.peak_gb["add"] <= clock.peak_gb["fail"]


@pytest.mark.slow
def test_nightly_runs_publish_tables_and_track_models(prefect_harness, dataset, config):
    from pipelines.registry import ModelRegistry
    from pipelines.tracking import Tracker

    events = str(dataset / "events")
    first = run_nightly(config, as_of=FIRST, events=events)
    second = run_nightly(config, as_of=FIRST + timedelta(days=1), events=events)

    assert first["refit"] and first["refit_reason"] == "no champion model"
    assert not second["refit"], second["refit_reason"]
    assert second["cluster_model_version"] == first["cluster_model_version"] == "1"
    assert second["cltv_model_version"] == "1"

    store = open_store(config.store_url)
    runs = store.runs()
    assert list(runs["status"]) == ["success", "success"]
    assert runs["mlflow_run_id"].notna().all()
    membership = store.membership()
    assert membership["client_id"].is_unique
    assert len(membership) == second["clients"]
    assert set(membership["segment_source"]) <= {"rule", "cluster", "noise"}
    assert (membership["segment_source"] == "cluster").mean() > 0.3
    assert membership["reason"].str.len().min() > 5
    assert (membership["as_of"].astype(str) == "2025-05-02").all()

    # point in time: exactly the clients with an event up to the as-of date
    con = duckdb.connect()
    seen = con.execute(
        f"SELECT count(DISTINCT client_id) FROM read_parquet('{events}/*.parquet')"
        " WHERE event_time < TIMESTAMPTZ '2025-05-03 00:00:00+00'"
    ).fetchall()[0][0]
    assert len(membership) == seen

    scores = store.scores()
    assert len(scores) == len(membership)
    buyers = scores["cltv_model"].isin(["btyd", "learned"])
    assert set(scores["cltv_model"]) <= {"btyd", "learned", "prospect"} and buyers.any()
    assert scores.loc[buyers, "p_alive"].between(0, 1).all()
    assert scores.loc[~buyers, "p_alive"].isna().all()  # prospects: nothing to be alive for
    assert scores["p_purchase"].dropna().between(0, 1).all()
    assert (scores["predicted_cltv"].dropna() >= 0).all()

    segments = store.segments()
    assert {"cluster", "rule"} <= set(segments["kind"])
    assert (
        segments.set_index("segment_id").loc[membership["segment_id"].unique(), "size"].gt(0).all()
    )

    # one history stretch per client and membership; transitions of the second night only
    history = store.history()
    open_rows = history[history["valid_to"].isna()]
    assert len(open_rows) == len(membership)
    transitions = store.transitions(as_of=FIRST + timedelta(days=1))
    assert len(transitions) == second["entries"] + second["exits"] + second["moves"] + len(
        transitions[
            (transitions["from_segment_id"] == transitions["to_segment_id"])
            & transitions["from_segment_id"].notna()
        ]
    )

    # MLflow: a run per pipeline run, with metrics, and both models champion at version 1
    tracker = Tracker.from_config(config)
    mlflow_run = tracker.get_run(runs["mlflow_run_id"].iloc[0])
    for key in ("noise_share", "events_read", "clients", "seconds.features"):
        assert key in mlflow_run.data.metrics, key
    assert mlflow_run.data.params["config_digest"] == config.digest()
    logged = " ".join([*mlflow_run.data.params.values(), *mlflow_run.data.metrics])
    assert not any(cid in logged for cid in membership["client_id"].head(200))
    registry = ModelRegistry(config.tracking_uri)
    assert registry.champion_version(config.mlflow.cluster_model_name) == 1
    assert registry.champion_version(config.mlflow.cltv_model_name) == 1
    champion, _ = registry.load_champion(config.mlflow.cluster_model_name)
    assert champion.model.sample_ids_ is None  # no client ids inside the registered model


@pytest.mark.slow
def test_rerun_replaces_and_failures_leave_tables_intact(
    prefect_harness, dataset, config, tmp_path
):
    events = str(dataset / "events")
    run_nightly(config, as_of=FIRST, events=events)
    run_nightly(config, as_of=FIRST + timedelta(days=7), events=events)
    store = open_store(config.store_url)
    before = {
        "membership": store.membership().sort_values("client_id").reset_index(drop=True),
        "history": len(store.history()),
        "transitions": len(store.transitions(as_of=FIRST + timedelta(days=7))),
    }

    # the same as-of again: replaced, never duplicated, and the same result
    run_nightly(config, as_of=FIRST + timedelta(days=7), events=events)
    again = store.membership().sort_values("client_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(
        again.drop(columns="run_id"), before["membership"].drop(columns="run_id")
    )
    before["membership"] = again
    assert len(store.history()) == before["history"]
    assert len(store.transitions(as_of=FIRST + timedelta(days=7))) == before["transitions"]
    runs = store.runs()
    assert (runs["status"] == "success").sum() == 2

    # an older date fails fast with a clear message, tables untouched
    with pytest.raises(OutOfOrderError, match="older than the latest published"):
        run_nightly(config, as_of=FIRST + timedelta(days=3), events=events)

    # bad input above the threshold: the run fails, is logged, and publishes nothing
    bad = tmp_path / "bad.csv"
    pd.DataFrame(
        {
            "client_id": ["a", "b", "c"],
            "event_time": ["2025-05-09", "not a time", "2025-05-09"],
            "event_type": ["purchase"] * 3,
            "amount": [-1, 5, 5],
        }
    ).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="above the allowed"):
        run_nightly(config, as_of=FIRST + timedelta(days=8), events=str(bad))
    after = store.membership().sort_values("client_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(after, before["membership"])
    runs = store.runs()
    assert runs["status"].tolist().count("failed") == 2  # the out-of-order and the bad-input run
    errors = runs.loc[runs["status"] == "failed", "error"].tolist()
    assert errors[0].startswith("OutOfOrderError: as_of 2025-05-04 is older than")
    assert "above the allowed" in errors[1] and "\n" not in errors[1]
    assert runs.loc[runs["status"] != "failed", "error"].isna().all()
    assert store.latest_as_of() == FIRST + timedelta(days=7)


@pytest.mark.slow
@pytest.mark.postgres
def test_no_password_reaches_prefect_logs_mlflow_the_store_or_the_report(
    prefect_harness, dataset, tmp_path, pg_url, caplog, monkeypatch
):
    """A store URL with a password, from a config file and from --store: nowhere in Prefect's
    database, the logs, MLflow (database and artifacts), the store's tables or the report."""
    import logging
    import os
    import uuid
    from pathlib import Path

    import yaml
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    from configs import load_config
    from pipelines.store import READABLE
    from tests.pipelines.conftest import drop_schema

    for name in ("SEGMENTATION_STORE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    secret = "s3cr3t-PW"  # trust auth accepts any password
    url = pg_url.replace("postgres@", f"postgres:{secret}@")
    assert secret in url
    schema = f"t_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "config.yaml"
    work = tmp_path / "work"
    path.write_text(
        yaml.safe_dump(
            {
                "workdir": str(work),
                "store": {"url": url, "schema_name": schema},
                "clustering": {"sample_size": 1500, "min_cluster_size": 25},
                "schedule": {"retries": 0},
            }
        )
    )
    config = load_config(path)
    events = str(dataset / "events")
    try:
        with caplog.at_level(logging.DEBUG):
            run_nightly(config, as_of=FIRST, events=events)  # store.url of the config file
            run_nightly(config, as_of=FIRST + timedelta(days=1), events=events, store_url=url)
            with pytest.raises(OutOfOrderError):  # a failed run: its error goes to `runs`
                run_nightly(config, as_of=FIRST, events=events, store_url=url)
        store = open_store(url, schema)
        runs = store.runs()
        assert runs["status"].tolist().count("failed") == 1
        tables = " ".join(store.read_sql(name).to_csv() for name in READABLE)
        store.close()
    finally:
        drop_schema(pg_url, schema)

    assert "OutOfOrderError" in tables
    assert secret not in tables
    assert secret not in caplog.text
    db = PREFECT_API_DATABASE_CONNECTION_URL.value().split("///", 1)[1]
    prefect_files = [*Path(db).parent.glob("*"), *Path(os.environ["PREFECT_HOME"]).rglob("*")]
    mlflow_and_report = list(work.rglob("*"))
    assert any(p.name.endswith(".html") for p in mlflow_and_report)  # the report is there
    assert any(p.name == "mlflow.db" for p in mlflow_and_report)
    parameters_seen = False
    for file in [*prefect_files, *mlflow_and_report]:
        if file.is_file():
            data = file.read_bytes()
            assert secret.encode() not in data, file
            parameters_seen = parameters_seen or b"postgres:***@" in data
    assert parameters_seen  # the flow parameters are in Prefect's database, masked
