"""Flow parameters without secrets: what a flow run records in Prefect's database is masked.

A local run keeps the real config and store URL in this process under a random reference and
passes Prefect only masked copies plus the reference; a served or API-triggered run, which has
no reference, takes the real URLs from the environment (SEGMENTATION_STORE_URL,
MLFLOW_TRACKING_URI) or from the config file, accepting only one whose masked form matches.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from configs import (
    ENV_MLFLOW_URI,
    ENV_STORE_URL,
    EngineConfig,
    SegmentationError,
    config_from_mapping,
    load_config,
)

__all__ = [
    "FlowArgumentError",
    "config_from_payload",
    "config_payload",
    "mark_started",
    "masked_payload",
    "resolve_secrets",
    "secret_parameters",
    "started",
    "unmask",
]


class FlowArgumentError(SegmentationError, ValueError):
    """A flow or command called with arguments that contradict each other or cannot be used."""


def started(ref: str) -> bool:
    """Whether the flow body registered under `ref` has started (it then logs its failures)."""
    return ref in _STARTED


def mark_started(ref: str) -> None:
    """Note that the flow body under `ref` has started."""
    _STARTED.add(ref)


def config_payload(config: EngineConfig) -> dict[str, Any]:
    """The config as a JSON flow parameter (with its resolved work directory)."""
    payload = config.model_dump(mode="json")
    payload["workdir"] = str(config.workdir_path)
    return payload


# Secret flow inputs of this process, by a random reference passed as a flow parameter instead.
_SECRETS: dict[str, tuple[dict[str, Any], str | None]] = {}
_SECRET_KEYS = (("store", "url"), ("mlflow", "tracking_uri"))
_STARTED: set[str] = set()  # references whose flow body started (it logs its own failures)


@contextmanager
def secret_parameters(config: EngineConfig, store_url: str | None) -> Iterator[dict[str, Any]]:
    """Flow parameters without secrets (`config`, `store_url`, `secrets_ref`), the real values
    kept in this process under the reference for as long as the flow runs."""
    from pipelines.store import mask_url

    ref = secrets.token_hex(16)
    _SECRETS[ref] = (config_payload(config), store_url)
    try:
        yield {
            "config": masked_payload(config),
            "store_url": mask_url(store_url) if store_url else None,
            "secrets_ref": ref,
        }
    finally:
        _SECRETS.pop(ref, None)
        _STARTED.discard(ref)


def masked_payload(config: EngineConfig) -> dict[str, Any]:
    """The config payload with the password of every URL in it masked."""
    from pipelines.store import mask_url

    payload = config_payload(config)
    for section, key in _SECRET_KEYS:
        payload[section] = {**payload[section], key: mask_url(payload[section][key])}
    return payload


def resolve_secrets(
    payload: dict[str, Any] | None, store_url: str | None, ref: str | None
) -> tuple[EngineConfig, str | None]:
    """The config and store URL a flow runs with: the real ones registered under `ref` in this
    process; else (a served or API-triggered run) masked URLs are unmasked from the
    environment (SEGMENTATION_STORE_URL, MLFLOW_TRACKING_URI) or the config file at `source`."""
    if ref is not None and ref in _SECRETS:
        real, url = _SECRETS[ref]
        mark_started(ref)  # from here on, the run logs its own failure
        return config_from_payload(real), url
    if payload is None:
        return config_from_payload(None), unmask(store_url, "store URL", [ENV_STORE_URL], [])
    raw = {**payload, **{section: dict(payload[section]) for section, _ in _SECRET_KEYS}}
    source = raw.get("source")
    from_file = load_config(source) if source and Path(source).is_file() else None
    for (section, key), env in zip(_SECRET_KEYS, (ENV_STORE_URL, ENV_MLFLOW_URI), strict=True):
        filed = [getattr(getattr(from_file, section), key)] if from_file is not None else []
        raw[section][key] = unmask(raw[section][key], f"{section}.{key}", [env], filed)
    return config_from_payload(raw), unmask(store_url, "store URL", [ENV_STORE_URL], [])


def unmask(value: str | None, what: str, envs: list[str], candidates: list[str]) -> str | None:
    """`value` itself when it holds no masked password, else the candidate (environment first)
    whose masked form it is; a masked value nothing matches fails, naming where to put it."""
    from pipelines.store import mask_url

    if value is None or "***" not in value:
        return value
    for candidate in [*(os.environ.get(env) for env in envs), *candidates]:
        if candidate and mask_url(candidate) == value:
            return candidate
    raise FlowArgumentError(
        f"{what} {value} reached the flow with its password masked and nothing to take it"
        f" from: set {' or '.join(envs)} to the full URL where the flow runs"
    )


def config_from_payload(payload: dict[str, Any] | None) -> EngineConfig:
    """The config back from a flow parameter; None: the default config (and environment)."""
    if payload is None:
        return load_config()
    raw = dict(payload)
    source = raw.pop("source", None) or "<flow parameter>"
    return config_from_mapping(raw, source=source)
