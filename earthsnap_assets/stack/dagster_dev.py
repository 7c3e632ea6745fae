"""`dagster dev` for the stack: webserver + daemon on the repo's workspace.yaml, persistent instance.

DAGSTER_HOME is `<home>/dagster`, so runs, schedules and sensor cursors survive `stack down/up`
(without it `dagster dev` uses a throwaway temp instance). The process gets the stack's settings as
EARTHSNAP_* variables, so the code location it loads builds the same `Settings` as the CLI did.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from earthsnap_assets.settings import Settings
from earthsnap_assets.stack.process import ManagedProcess, Port, StackError, find_executable

NAME = "dagster"
START_TIMEOUT = 180.0  # the code location imports torch; the webserver answers only after that
STOP_TIMEOUT = 20.0
REPO_ROOT = Path(__file__).resolve().parents[2]

# Storage is left at its default: SQLite under $DAGSTER_HOME/storage, i.e. persistent.
_DAGSTER_YAML = """# Written by `earthsnap stack up`; edit freely, it is not overwritten.
telemetry:
  enabled: false
# Training and tuning steps share the pool `gpu`: one at a time on a laptop (raise it on a GPU node).
concurrency:
  pools:
    granularity: op
    default_limit: 1
  runs:
    max_concurrent_runs: 4
    # one deployment at a time: staging is shared, and stage tests must see only their own version
    tag_concurrency_limits:
      - key: earthsnap/deploy
        limit: 1
      # one run per species group at a time: a group's tables have one writer (automation and a user's
      # backfill of the same group queue behind each other instead of racing)
      - key: dagster/partition
        value:
          applyLimitPerUniqueValue: true
        limit: 1
"""


def url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.dagster_port}"


def ports(settings: Settings) -> list[Port]:
    return [Port(settings.dagster_port, "dagster", "EARTHSNAP_DAGSTER_PORT")]


def dagster_home(settings: Settings) -> Path:
    return settings.home / "dagster"


def prepare_home(settings: Settings) -> Path:
    """Create DAGSTER_HOME with a dagster.yaml (telemetry off) unless one is already there."""
    home = dagster_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(_DAGSTER_YAML)
    return home


def settings_env(settings: Settings) -> dict[str, str]:
    """The EARTHSNAP_* variables that rebuild `settings` in a child process."""
    cadence = {"EARTHSNAP_SENSOR_INTERVAL_S": str(settings.sensor_interval_s)} if settings.sensor_interval_s else {}
    return cadence | {
        "EARTHSNAP_HOME": str(settings.home),
        "EARTHSNAP_S3_PORT": str(settings.s3_port),
        "EARTHSNAP_S3_ENDPOINT": settings.s3_endpoint or "aws",
        "EARTHSNAP_S3_ACCESS_KEY": settings.access_key,
        "EARTHSNAP_S3_SECRET_KEY": settings.secret_key,
        "EARTHSNAP_S3_REGION": settings.region,
        "EARTHSNAP_RAW_BUCKET": settings.raw_bucket,
        "EARTHSNAP_LAKE_BUCKET": settings.lake_bucket,
        "EARTHSNAP_MLFLOW_BUCKET": settings.mlflow_bucket,
        "EARTHSNAP_MLFLOW_PORT": str(settings.mlflow_port),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "EARTHSNAP_DAGSTER_PORT": str(settings.dagster_port),
        "EARTHSNAP_WEED_MASTER_PORT": str(settings.weed_master_port),
        "EARTHSNAP_WEED_VOLUME_PORT": str(settings.weed_volume_port),
        "EARTHSNAP_WEED_FILER_PORT": str(settings.weed_filer_port),
        "EARTHSNAP_REVIEW_PORT": str(settings.review_port),
        "EARTHSNAP_REVIEW_URL": settings.review_url,
        "EARTHSNAP_REVIEW_USER": settings.review_user,
        "EARTHSNAP_REVIEW_PASSWORD": settings.review_password,
        "EARTHSNAP_REVIEW_TOKEN": settings.review_token,
        "EARTHSNAP_REVIEW_VENV": str(settings.review_venv),
    }


def environment(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        **settings_env(settings),
        "DAGSTER_HOME": str(dagster_home(settings)),
        "PYTHONUNBUFFERED": "1",
    }


def command(settings: Settings, workspace: Path, dagster: list[str] | None = None) -> list[str]:
    return [
        *(dagster or ["dagster"]),
        "dev",
        "-w",
        str(workspace),
        "-h",
        "127.0.0.1",
        "-p",
        str(settings.dagster_port),
    ]


def launch(settings: Settings, workspace: Path | None = None) -> ManagedProcess:
    """Start `dagster dev` in the workspace's folder (the repo root for the default workspace)."""
    workspace = (workspace or REPO_ROOT / "workspace.yaml").resolve()
    if not workspace.is_file():
        raise StackError(f"{NAME}: workspace file {workspace} not found")
    prepare_home(settings)
    exe = find_executable("dagster")
    prefix = [exe] if exe else [sys.executable, "-m", "dagster"]
    proc = ManagedProcess(NAME, settings.home)
    proc.start(command(settings, workspace, prefix), env=environment(settings), cwd=workspace.parent)
    return proc


def healthy(settings: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"{url(settings)}/server_info", timeout=2) as response:
            return response.status == 200
    except Exception:
        return False


def after_healthy(settings: Settings) -> None:
    """Nothing to do: the webserver loads the code location itself."""


def after_stop(settings: Settings) -> None:
    """Nothing to clean up."""
