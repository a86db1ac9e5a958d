"""The failure alert: a small JSON POST to `alerts.failure_webhook` when a run fails.

The nightly's failure path calls `notify_failure`; it never raises (an alert that cannot be
sent must not hide the run's own error), logs a warning when the webhook does not answer 2xx,
and returns whether it was delivered. `${ENV_VAR}` in the URL is replaced from the
environment, so a secret token stays out of the config file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import urllib.error
import urllib.request
from datetime import UTC, date, datetime

from configs import EngineConfig

__all__ = ["expand_env", "failure_payload", "notify_failure"]

log = logging.getLogger(__name__)

_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str) -> str:
    """`text` with each `${NAME}` replaced by the environment variable NAME.

    Raises
    ------
    KeyError
        A named variable is not set (its name, never a value, in the message).
    """

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise KeyError(f"environment variable {name} is not set")
        return os.environ[name]

    return _ENV_VAR.sub(value, text)


def failure_payload(*, run_id: str, as_of: date | str, error: object) -> dict[str, str]:
    """The JSON body of a failure alert: what failed, for which date, why, and when."""
    message = " ".join(str(error).split()) or type(error).__name__
    return {
        "event": "segmentation.run_failed",
        "run_id": run_id,
        "as_of": str(as_of),
        "error": message[:2000],
        "host": socket.gethostname(),
        "sent_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "text": f"segmentation run {run_id} as of {as_of} failed: {message[:500]}",
    }


def notify_failure(config: EngineConfig, *, run_id: str, as_of: date | str, error: object) -> bool:
    """POST a failure alert to `config.alerts.failure_webhook`, if one is configured.

    Parameters
    ----------
    config : EngineConfig
        `alerts.failure_webhook` (None: no alert) and `alerts.timeout_seconds`.
    run_id, as_of : str, date
        The failed run.
    error : object
        The error (an exception or its text); sent as one line.

    Returns
    -------
    bool
        True when the webhook answered 2xx; False when none is configured or it could not be
        delivered (then a warning is logged, naming the host but never the URL's secrets).
        Never raises.
    """
    template = config.alerts.failure_webhook
    if not template:
        return False
    url = ""
    try:
        url = expand_env(template)
        body = json.dumps(failure_payload(run_id=run_id, as_of=as_of, error=error)).encode()
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "segmentation-alerts"},
        )
        with urllib.request.urlopen(request, timeout=config.alerts.timeout_seconds) as response:
            status = int(response.status)
        if 200 <= status < 300:
            log.info("failure alert for run %s sent (HTTP %s)", run_id, status)
            return True
        log.warning("failure alert for run %s: webhook answered HTTP %s", run_id, status)
    except urllib.error.HTTPError as exc:
        log.warning("failure alert for run %s: webhook answered HTTP %s", run_id, exc.code)
    except Exception as exc:  # never raise: the run's own error matters more
        log.warning(
            "failure alert for run %s not sent to %s: %s",
            run_id,
            _where(template),
            _reason(exc).replace(url, _where(template)) if url else _reason(exc),
        )
    return False


def _where(template: str) -> str:
    """The webhook's scheme and host (no path, query or credentials: they may hold a token)."""
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^@/]*@)?([^/?#]*)", template)
    return (match.group(1) + match.group(2)) if match else "the configured webhook"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
