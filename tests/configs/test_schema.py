"""Config loading: defaults, environment overrides, and errors naming the file and the key."""

from __future__ import annotations

from typing import Literal, get_args, get_origin

import annotated_types
import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from configs import (
    DEFAULT_CONFIG_PATH,
    CltvConfig,
    ClusteringConfig,
    ConfigError,
    EngineConfig,
    SegmentationError,
    config_from_mapping,
    load_config,
)
from configs.schema import InvalidParameterError, validate_parameters
from models.cltv import CltvModel
from segmentation.clustering import ClusterModel


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


# --------------------------------------------------------------------------------------------
# Config sections that parametrize an estimator: one source of names, defaults, constraints

ESTIMATOR_SECTIONS = [
    # section, estimator, its parameters that are not config keys, config keys that are not
    # its parameters
    pytest.param(
        "clustering",
        ClusteringConfig,
        ClusterModel,
        {"clip", "validate_assigner", "select_by_quality", "n_jobs", "random_state"},
        set(),
        id="clustering",
    ),
    pytest.param(
        "cltv",
        CltvConfig,
        CltvModel,
        set(),
        {
            "holdout_days",
            "learned_model",
            "min_training_purchasers",
            "max_training_clients",
            "window_clients",
        },
        id="cltv",
    ),
]


def _violations(field: FieldInfo) -> list[object]:
    """Values that break the constraints declared on a config field (bounds, length, options)."""
    kinds = set(get_args(field.annotation)) or {field.annotation}
    step = 1 if int in kinds else 1e-3
    bad: list[object] = []
    for constraint in field.metadata:
        if isinstance(constraint, annotated_types.Ge):
            bad.append(constraint.ge - step)
        elif isinstance(constraint, annotated_types.Gt):
            bad.append(constraint.gt)
        elif isinstance(constraint, annotated_types.Le):
            bad.append(constraint.le + step)
        elif isinstance(constraint, annotated_types.Lt):
            bad.append(constraint.lt)
        elif isinstance(constraint, annotated_types.MinLen):
            bad.append(())
    if get_origin(field.annotation) is Literal:
        bad.append("bogus")
    return bad


def _constraint_cases():
    for case in ESTIMATOR_SECTIONS:
        name, section, estimator = case.values[:3]
        for key, field in section.model_fields.items():
            if key in case.values[4]:
                continue
            for value in _violations(field):
                yield pytest.param(name, estimator, key, value, id=f"{name}.{key}={value!r}")


@pytest.mark.parametrize(("name", "section", "estimator", "own", "not_params"), ESTIMATOR_SECTIONS)
def test_estimator_and_config_section_share_names_and_defaults(
    name, section, estimator, own, not_params
):
    params = estimator().get_params()
    keys = set(section.model_fields)
    assert set(params) - keys == own
    assert keys - set(params) == not_params
    defaults = section()
    for key in keys & set(params):
        assert params[key] == getattr(defaults, key), key
    # and the shipped default.yaml holds those defaults too
    shipped = getattr(load_config(DEFAULT_CONFIG_PATH), name)
    assert {k: getattr(shipped, k) for k in keys} == {k: getattr(defaults, k) for k in keys}


@pytest.mark.parametrize(("name", "estimator", "key", "value"), list(_constraint_cases()))
def test_a_value_breaking_a_constraint_is_rejected_by_config_and_estimator(
    name, estimator, key, value
):
    with pytest.raises(ConfigError, match=rf"key '{name}\.{key}'"):
        config_from_mapping({name: {key: value}})
    with pytest.raises(InvalidParameterError, match=rf"{estimator.__name__} parameter '{key}'"):
        estimator(**{key: value}).fit(pd.DataFrame())


def test_every_constrained_key_is_covered():
    covered = {(case.values[0], case.values[2]) for case in _constraint_cases()}
    assert ("clustering", "sample_size") in covered and ("clustering", "stickiness") in covered
    assert ("clustering", "features") in covered and ("cltv", "horizon_days") in covered
    assert not any(key == "holdout_days" for _, key in covered)


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    size: int = Field(100, ge=100)
    share: float = Field(0.5, gt=0, le=1)
    names: tuple[str, ...] | None = Field(None, min_length=1)
    method: Literal["a", "b"] = "a"
    flag: bool = True


def test_validate_parameters_is_strict_and_names_owner_and_parameter():
    ok = validate_parameters(
        _Params,
        {"size": np.int64(200), "share": np.float32(0.25), "names": ["x", "y"], "flag": np.False_},
        "Thing",
    )
    assert (ok.size, ok.share, ok.names, ok.flag) == (200, 0.25, ("x", "y"), False)
    assert type(ok.size) is int and type(ok.flag) is bool
    assert validate_parameters(_Params, {"names": pd.Index(["x"])}, "Thing").names == ("x",)
    for params, message in [
        ({"size": 150.0}, "Thing parameter 'size': Input should be a valid integer, got 150.0"),
        ({"size": 99}, "Thing parameter 'size': Input should be greater than or equal to 100"),
        ({"share": "0.5"}, "Thing parameter 'share'"),
        ({"share": 0}, "Thing parameter 'share'"),
        ({"names": "xy"}, "Thing parameter 'names'"),
        ({"names": []}, "Thing parameter 'names'"),
        ({"names": ["x", 1, 2]}, r"^Thing parameter 'names'.*got \['x', 1, 2\]$"),
        ({"method": "c"}, "Thing parameter 'method'"),
        ({"flag": 1}, "Thing parameter 'flag'"),
        ({"other": 1}, "Thing has no parameter 'other' in _Params"),
    ]:
        with pytest.raises(InvalidParameterError, match=message):
            validate_parameters(_Params, params, "Thing")
    with pytest.raises(InvalidParameterError, match="'size'.*; Thing parameter 'share'"):
        validate_parameters(_Params, {"size": 1, "share": 2}, "Thing")


def test_invalid_parameter_error_is_a_config_value_and_type_error():
    for base in (ConfigError, SegmentationError, ValueError, TypeError):
        assert issubclass(InvalidParameterError, base)
