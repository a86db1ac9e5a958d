"""Secrets never become flow parameters: URLs with a password reach Prefect masked, and the flow
resolves the real ones in the process (a registered reference) or, for a served run, from the
environment or the config file."""

from __future__ import annotations

import json

import pytest
import yaml

from configs import load_config
from pipelines import flow_params, nightly
from pipelines.nightly import FlowArgumentError

SECRET = "s3cr3t-PW"
STORE = f"postgresql://postgres:{SECRET}@127.0.0.1:5432/test"
MLFLOW = f"postgresql://mlflow:{SECRET}@127.0.0.1:5432/mlflow"


@pytest.fixture
def config(tmp_path, monkeypatch):
    for name in ("SEGMENTATION_STORE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "workdir": str(tmp_path / "work"),
                "store": {"url": STORE},
                "mlflow": {"tracking_uri": MLFLOW},
            }
        )
    )
    return load_config(path)


def test_flow_parameters_carry_no_secret(config):
    with flow_params.secret_parameters(config, STORE + "?sslmode=disable") as params:
        assert SECRET not in json.dumps(params)
        assert params["config"]["store"]["url"] == "postgresql://postgres:***@127.0.0.1:5432/test"
        cfg, url = flow_params.resolve_secrets(
            params["config"], params["store_url"], params["secrets_ref"]
        )
        assert cfg.store.url == STORE and cfg.mlflow.tracking_uri == MLFLOW
        assert url == STORE + "?sslmode=disable"
        assert cfg.digest() == config.digest()
    assert not flow_params._SECRETS  # forgotten once the flow has run


def test_a_served_run_resolves_masked_urls_from_the_config_file(config):
    cfg, url = flow_params.resolve_secrets(flow_params.masked_payload(config), None, None)
    assert cfg.store.url == STORE and cfg.mlflow.tracking_uri == MLFLOW and url is None


def test_a_masked_store_url_parameter_resolves_from_the_environment(config, monkeypatch):
    masked = "postgresql://postgres:***@127.0.0.1:5432/test"
    with pytest.raises(FlowArgumentError, match="SEGMENTATION_STORE_URL") as info:
        flow_params.resolve_secrets(flow_params.masked_payload(config), masked, "gone")
    assert SECRET not in str(info.value)
    monkeypatch.setenv("SEGMENTATION_STORE_URL", STORE)
    _, url = flow_params.resolve_secrets(flow_params.masked_payload(config), masked, "gone")
    assert url == STORE


def test_masked_urls_without_a_config_file_fail_clearly(config):
    payload = {**flow_params.masked_payload(config), "source": "<flow parameter>"}
    with pytest.raises(FlowArgumentError, match="store.url") as info:
        flow_params.resolve_secrets(payload, None, None)
    assert SECRET not in str(info.value)


def test_urls_without_a_password_pass_unchanged(tmp_path):
    from configs import config_from_mapping

    config = config_from_mapping({"workdir": str(tmp_path)}, source="<test>")
    with flow_params.secret_parameters(config, "duckdb:///x.duckdb") as params:
        assert params["config"] == flow_params.config_payload(config)
        assert params["store_url"] == "duckdb:///x.duckdb"


def test_served_deployments_carry_no_secret(config, monkeypatch):
    import pipelines.schedule

    seen = {}

    def capture(flow, cfg, parameters):
        seen.update(parameters)

    monkeypatch.setattr(pipelines.schedule, "serve_nightly", capture)
    nightly.serve(config)
    assert seen["config"]["store"]["url"].endswith(":***@127.0.0.1:5432/test")
    assert SECRET not in json.dumps(seen)
