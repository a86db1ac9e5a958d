"""Tests of MLflow tracking (params, metrics, artifacts, client-id guard) and the model registry."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from pipelines.registry import ModelRegistry, RegistryError
from pipelines.tracking import (
    TRUNCATION_MARK,
    ClientIdLeakError,
    Tracker,
    TrackingError,
    assert_no_client_ids,
    clean_metrics,
    clean_params,
    sanitize_name,
)


class ShiftModel:
    """A tiny sklearn-style model: learns column means, predicts x - mean + offset."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def fit(self, X: pd.DataFrame) -> ShiftModel:
        self.means_ = X.mean()
        return self

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return (X - self.means_ + self.offset).rename(columns=lambda c: f"{c}_score")


FRAME = pd.DataFrame({"a": [1.0, 2.0, 6.0], "b": [0.5, 0.0, -1.0]})


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    root = tmp_path_factory.mktemp("mlflow")
    # a folder that does not exist yet: the tracker must create it
    return Tracker(f"sqlite:///{root}/not/yet/mlflow.db", "test-experiment")


def _artifact_dir(tracker: Tracker, run_id: str) -> str:
    uri = tracker.get_run(run_id).info.artifact_uri
    assert uri.startswith("file://")
    return uri[len("file://") :]


def test_sqlite_parent_created_and_artifacts_beside_db(tracker: Tracker) -> None:
    with tracker.start_run("first", tags={"as_of": "2024-03-01"}) as run:
        run.log_metrics({"clients": 3})
    db = tracker.tracking_uri[len("sqlite:///") :]
    assert os.path.isfile(db)
    info = tracker.get_run(run.run_id).info
    assert info.status == "FINISHED"
    assert _artifact_dir(tracker, run.run_id).startswith(os.path.join(os.path.dirname(db), ""))
    assert tracker.get_run(run.run_id).data.tags["as_of"] == "2024-03-01"


def test_params_metrics_and_artifacts_are_logged_clean(tracker: Tracker, tmp_path) -> None:
    report = tmp_path / "report.html"
    report.write_text("<html><body>3 segments</body></html>")
    with tracker.start_run("nightly") as run:
        logged = run.log_params(
            {"clustering": {"min_cluster_size": 50, "features": ["a", "b"]}, "note": "x" * 7000}
        )
        metrics = run.log_metrics(
            {"size/seg-1": 10, "noise share%": 0.25, "missing": None, "nan": math.nan, "ok": True}
        )
        names = run.log_artifacts(
            {
                "profiles": {"seg-1": {"size": 10, "mean_spend": 12.5}},
                "report.html": report,
                "summary.txt": "three segments today",
            }
        )
    data = tracker.get_run(run.run_id).data
    assert data.params["clustering.min_cluster_size"] == "50"
    assert json.loads(data.params["clustering.features"]) == ["a", "b"]
    assert len(data.params["note"]) == 6000 and data.params["note"].endswith(TRUNCATION_MARK)
    assert logged["note"] == data.params["note"]
    assert data.metrics == {"size/seg-1": 10.0, "noise share_": 0.25, "ok": 1.0}
    assert metrics == data.metrics
    assert names == ["profiles.json", "report.html", "summary.txt"]
    folder = _artifact_dir(tracker, run.run_id)
    assert sorted(os.listdir(folder)) == names
    with open(os.path.join(folder, "profiles.json")) as fh:
        assert json.load(fh) == {"seg-1": {"mean_spend": 12.5, "size": 10}}
    with open(os.path.join(folder, "report.html")) as fh:
        assert fh.read() == report.read_text()


def test_failing_block_marks_run_failed_and_reraises(tracker: Tracker) -> None:
    with pytest.raises(RuntimeError, match="boom"), tracker.start_run("broken") as run:
        raise RuntimeError("boom")
    assert tracker.get_run(run.run_id).info.status == "FAILED"


def test_bad_inputs_fail_clearly(tracker: Tracker) -> None:
    with pytest.raises(TypeError, match="metric 'segments'"):
        clean_metrics({"segments": "many"})
    with tracker.start_run("bad-artifact") as run:
        with pytest.raises(TrackingError, match="does not exist"):
            run.log_artifacts({"report.html": Path("/nonexistent/report.html")})
        with pytest.raises(TrackingError, match="plain file name"):
            run.log_artifacts({"../escape.json": {"a": 1}})
    assert sanitize_name("a:b/../c*") == "a_b/_/c_"
    assert clean_params({"n": None, "s": {1, 2}}) == {"n": "None", "s": "[1, 2]"}


def test_client_id_guard() -> None:
    ids = ["C000123", "c-77"]
    assert_no_client_ids({"sizes": {"seg-1": 10}, "names": ["loyal", "new"]}, ids)
    assert_no_client_ids("customer C0001234 is not an id token", ids)
    with pytest.raises(ClientIdLeakError, match="C000123"):
        assert_no_client_ids({"top": ["C000123"]}, ids)
    with pytest.raises(ClientIdLeakError, match="c-77"):
        assert_no_client_ids({"c-77": 5.0}, ids)
    with pytest.raises(ClientIdLeakError, match="c-77"):
        assert_no_client_ids("<td>c-77</td> spent the most.", ids)
    with pytest.raises(ClientIdLeakError, match="C000123"):
        assert_no_client_ids("best client: C000123.", ids)
    frame = pd.DataFrame({"client_id": ["C000123"], "x": [1]})
    with pytest.raises(ClientIdLeakError):
        assert_no_client_ids({"sample": frame}, ids)


def test_guarded_run_refuses_client_ids(tracker: Tracker, tmp_path) -> None:
    ids = ["C000123", "C000124"]
    page = tmp_path / "report.html"
    page.write_text("<tr><td>C000124</td></tr>")
    with tracker.start_run("guarded", client_ids=ids) as run:
        run.log_params({"min_cluster_size": 50})
        run.log_metrics({"noise_share": 0.1})
        with pytest.raises(ClientIdLeakError):
            run.log_params({"example": "C000123"})
        with pytest.raises(ClientIdLeakError):
            run.log_metrics({"C000123": 1.0})
        with pytest.raises(ClientIdLeakError):
            run.log_artifacts({"report.html": page})
        with pytest.raises(ClientIdLeakError):
            run.log_artifacts({"profiles": {"seg-1": {"examples": ["C000124"]}}})
    data = tracker.get_run(run.run_id).data
    assert data.params == {"min_cluster_size": "50"}
    assert data.metrics == {"noise_share": 0.1}
    assert (
        os.listdir(_artifact_dir(tracker, run.run_id)) == []
        if os.path.isdir(_artifact_dir(tracker, run.run_id))
        else True
    )


def test_disabled_tracker_records_nothing(tmp_path) -> None:
    off = Tracker(f"sqlite:///{tmp_path}/off/mlflow.db", "x", enabled=False)
    with off.start_run("nothing") as run:
        assert run.log_metrics({"a": 1.0, "b": None}) == {"a": 1.0}
        run.log_params({"p": 1})
    assert run.run_id is None
    assert not (tmp_path / "off").exists()


def test_register_promote_rollback_and_load(tracker: Tracker, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    first = ShiftModel(offset=1.0).fit(FRAME)
    second = ShiftModel(offset=-2.0).fit(FRAME)
    registry = ModelRegistry(tracker.tracking_uri)
    assert registry.load_champion("clusters") is None  # no such model yet

    with tracker.start_run("refit-1") as run1:
        v1 = registry.register("clusters", first, run1.run_id, metrics={"quality": 0.4})
    with tracker.start_run("refit-2") as run2:
        v2 = registry.register("clusters", second, run2.run_id, tags={"reason": "drift"})
    assert (v1, v2) == (1, 2)
    # MLflow mirrors URIs into the environment; the override the config reads is restored
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"
    assert registry.load_champion("clusters") is None  # registered, no champion yet
    assert registry.champion_version("clusters") is None

    assert registry.promote("clusters", v1) is None
    assert registry.promote("clusters", v2) == v1
    assert registry.promote("clusters", v2) == v2  # already champion: nothing changes
    assert registry.champion_version("clusters") == v2
    obj, version = registry.load_champion("clusters")
    assert version == v2
    pd.testing.assert_frame_equal(
        registry.load_version("clusters", v1).predict(FRAME), first.predict(FRAME)
    )
    pd.testing.assert_frame_equal(obj.predict(FRAME), second.predict(FRAME))

    versions = registry.list_versions("clusters")
    assert versions["version"].tolist() == [1, 2]
    assert versions["aliases"].tolist() == ["", "champion"]
    assert versions["run_id"].tolist() == [run1.run_id, run2.run_id]
    assert versions.loc[0, "metric.quality"] == 0.4 and math.isnan(
        versions.loc[1, "metric.quality"]
    )
    assert versions.loc[1, "reason"] == "drift" and versions.loc[1, "previous_champion"] == "1"

    assert registry.rollback("clusters") == v1
    obj, version = registry.load_champion("clusters")
    assert version == v1
    pd.testing.assert_frame_equal(obj.predict(FRAME), first.predict(FRAME))
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback("clusters")

    with pytest.raises(RegistryError, match="no version 7"):
        registry.promote("clusters", 7)
    with pytest.raises(RegistryError, match="'nope' not found"):
        registry.rollback("nope")
    with pytest.raises(RegistryError, match="'nope' not found"):
        registry.list_versions("nope")
    with pytest.raises(RegistryError, match="run 'no-such-run' not found"):
        registry.register("clusters", first, "no-such-run")
    with pytest.raises(TypeError, match="no predict"):
        registry.register("clusters", object(), run1.run_id)
