"""How long a registry call may take before it is an error, not a hang.

MLflow's client retries a failed request `MLFLOW_HTTP_REQUEST_MAX_RETRIES` times (default 7) with
exponential backoff (factor 2) and waits up to `MLFLOW_HTTP_REQUEST_TIMEOUT` (120 s) for each answer: during an
outage one call took about 4 minutes before it failed, `earthsnap approve` looked hung and an endpoint's
`/ready` reported the outage minutes late. Our defaults bound a refused connection to about 10 s and a
server that accepts but never answers to about a minute; MLflow reads these variables at every request, so
setting them in the process is enough. They stay the knobs: a value already in the environment wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",  # seconds per attempt (connect + read)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",  # after the first attempt: 4 attempts in all
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # sleeps of about 1, 2, 4 s between attempts
}


def apply(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put the defaults into `env` (the process environment) where it sets none; the limits in force."""
    env = os.environ if env is None else env
    for key, value in DEFAULTS.items():
        env.setdefault(key, value)
    return {key: env[key] for key in DEFAULTS}


def worst_case_s(env: MutableMapping[str, str] | None = None) -> float:
    """Upper bound on one registry call's duration under the limits in force (every attempt timing out)."""
    limits = apply(env)
    timeout = float(limits["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    retries = int(limits["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor = float(limits["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    backoff = sum(factor * 2**attempt + 1.0 for attempt in range(retries))  # + up to 1 s jitter each
    return (retries + 1) * timeout + backoff
