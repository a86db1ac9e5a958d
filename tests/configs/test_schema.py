"""Config loading: defaults, environment overrides, and errors naming the file and the key."""

from __future__ import annotations

import pytest

from configs import ConfigError, EngineConfig, load_config


def test_shipped_default_loads_with_embedded_locations(monkeypatch, tmp_path):
    monkeypatch.delenv("SEGMENTATION_STORE_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SEGMENTATION_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    config = load_config()
    work = tmp_path.resolve() / "segmentation-work"
    assert config.store_url == f"duckdb:///{work}/store.duckdb"
    assert config.tracking_uri == f"sqlite:///{work}/mlflow.db"
    assert config.schedule.cron == "0 2 * * *"
    assert config.features.windows_days == (7, 30, 90, 365)


def test_environment_overrides_store_and_tracking(monkeypatch):
    monkeypatch.setenv("SEGMENTATION_STORE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    config = load_config()
    assert config.store_url == "postgresql://postgres@127.0.0.1:5432/test"
    assert config.tracking_uri == "sqlite:////tmp/x.db"


def test_config_path_from_environment(monkeypatch, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 7\n")
    monkeypatch.setenv("SEGMENTATION_CONFIG", str(path))
    assert load_config().seed == 7


def test_unknown_key_names_the_file_and_the_dotted_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("clustering:\n  min_cluster_sise: 10\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message
    assert "clustering.min_cluster_sise" in message
    assert "unknown key" in message


def test_wrong_type_and_value_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("events:\n  max_bad_share: lots\ncltv:\n  horizon_days: -5\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "events.max_bad_share" in str(error.value)
    assert "cltv.horizon_days" in str(error.value)


def test_windows_must_increase(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("features:\n  windows_days: [30, 7]\n")
    with pytest.raises(ConfigError, match="features.windows_days"):
        load_config(path)


def test_unknown_stage_in_taxonomy_extension(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("events:\n  extra_event_types: {webinar: buying}\n")
    with pytest.raises(ConfigError, match="events.extra_event_types"):
        load_config(path)


def test_invalid_yaml_and_missing_file_are_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("store: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_config_is_frozen_and_digest_is_stable():
    config = load_config()
    with pytest.raises(ValueError, match="frozen"):
        config.seed = 1  # type: ignore[misc]
    assert config.digest() == load_config().digest()
    assert config.digest() != EngineConfig(seed=1).digest()
