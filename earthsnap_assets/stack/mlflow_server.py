"""The MLflow tracking server of the stack: SQLite metadata, artifacts proxied into the S3 bucket.

Clients only ever talk HTTP to the server (`mlflow-artifacts:/` URIs); the server alone holds the S3
credentials, so a training process needs MLFLOW_TRACKING_URI and nothing else.
"""

from __future__ import annotations

import os
import sys
import urllib.request

from earthsnap_assets.settings import Settings
from earthsnap_assets.stack import seaweed
from earthsnap_assets.stack.process import ManagedProcess, Port, find_executable

NAME = "mlflow"
START_TIMEOUT = 120.0  # importing mlflow and migrating a fresh SQLite file takes ~6 s on 2 cores
STOP_TIMEOUT = 10.0


def url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.mlflow_port}"


def ports(settings: Settings) -> list[Port]:
    return [Port(settings.mlflow_port, "mlflow", "EARTHSNAP_MLFLOW_PORT")]


def command(settings: Settings, mlflow: list[str] | None = None) -> list[str]:
    db = settings.home / "mlflow" / "mlflow.db"
    return [
        *(mlflow or ["mlflow"]),
        "server",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--serve-artifacts",
        "--artifacts-destination",
        f"s3://{settings.mlflow_bucket}/artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.mlflow_port),
        "--workers",
        "1",
    ]


def environment(settings: Settings) -> dict[str, str]:
    """The server's env: S3 credentials for the proxy; MLflow's job runner off.

    The job runner (GenAI judges, online scoring) would add seven huey worker processes that this
    platform never uses.
    """
    return {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": seaweed.endpoint(settings),
        "AWS_ACCESS_KEY_ID": settings.access_key,
        "AWS_SECRET_ACCESS_KEY": settings.secret_key,
        "AWS_DEFAULT_REGION": settings.region,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PYTHONUNBUFFERED": "1",
    }


def launch(settings: Settings) -> ManagedProcess:
    (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    exe = find_executable("mlflow")
    prefix = [exe] if exe else [sys.executable, "-m", "mlflow"]
    proc = ManagedProcess(NAME, settings.home)
    proc.start(command(settings, prefix), env=environment(settings), cwd=settings.home / "mlflow")
    return proc


def healthy(settings: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"{url(settings)}/health", timeout=2) as response:
            return response.status == 200
    except Exception:
        return False


def after_healthy(settings: Settings) -> None:
    """Nothing to do: experiments are created by whoever logs to them."""


def after_stop(settings: Settings) -> None:
    """Nothing to clean up."""
