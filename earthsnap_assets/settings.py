"""Endpoints, credentials and names, from environment variables with local-stack defaults.

Read at call time, never at import: a Dagster code location, the CLI and the tests each build a
`Settings` when they need one, so changing the environment of a process is all that moves it from the
laptop stack to AWS.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    # Kubernetes service links set <SERVICE>_PORT=tcp://ip:port in every pod of a namespace, and our
    # Services `earthsnap-staging`/`-production` collide with EARTHSNAP_STAGING_PORT: not a setting.
    if raw in (None, "") or raw.startswith(("tcp://", "udp://")):
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer port, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    """Everything a process needs to reach the stack.

    Environment variables (defaults in brackets):
      EARTHSNAP_HOME [./.earthsnap]           state of the local stack (data, logs, pids)
      EARTHSNAP_S3_PORT [8333]                SeaweedFS S3 port of the local stack
      EARTHSNAP_S3_ENDPOINT [http://127.0.0.1:<s3 port>]; set to "aws" for AWS's own endpoints
      EARTHSNAP_S3_ACCESS_KEY [earthsnap], EARTHSNAP_S3_SECRET_KEY [earthsnap-secret]
      EARTHSNAP_S3_REGION [us-east-1]
      EARTHSNAP_RAW_BUCKET [earthsnap-raw], EARTHSNAP_LAKE_BUCKET [earthsnap-lake],
      EARTHSNAP_MLFLOW_BUCKET [earthsnap-mlflow]
      EARTHSNAP_MLFLOW_PORT [5000], MLFLOW_TRACKING_URI [http://127.0.0.1:<mlflow port>]
      EARTHSNAP_DAGSTER_PORT [3000]
      EARTHSNAP_STAGING_PORT [8101], EARTHSNAP_PRODUCTION_PORT [8102] (serving); EARTHSNAP_STAGING_URL,
      EARTHSNAP_PRODUCTION_URL [http://127.0.0.1:<port>]
      EARTHSNAP_WEED_MASTER_PORT [9333], EARTHSNAP_WEED_VOLUME_PORT [8380], EARTHSNAP_WEED_FILER_PORT [8888]
      EARTHSNAP_RAW_EVENTS [filer://127.0.0.1:<filer port>]: where raw-bucket change events come from;
        on AWS the URL of the SQS queue that the raw bucket's S3 Event Notifications feed
      EARTHSNAP_SENSOR_INTERVAL_S [unset: 15 s change capture, 30 s automation]: both, when set (tests use 5)
      EARTHSNAP_PRESET [cpu]: the training preset (`ml/presets.py`: cpu or gpu) of runs that name none
      EARTHSNAP_REVIEW_PORT [8180], EARTHSNAP_REVIEW_URL [http://127.0.0.1:<review port>]: Label Studio
      EARTHSNAP_REVIEW_USER [admin@earthsnap.local], EARTHSNAP_REVIEW_PASSWORD [earthsnap-review]: its admin,
        created at first start; EARTHSNAP_REVIEW_TOKEN [earthsnap-review-token]: the API token the platform uses
        (locally set at first start; in production a token created in Label Studio, legacy or personal)
      EARTHSNAP_REVIEW_VENV [~/.cache/earthsnap/label-studio-<version>]: Label Studio's own virtual environment
    """

    home: Path
    s3_port: int
    s3_endpoint: str | None
    access_key: str
    secret_key: str
    region: str
    raw_bucket: str
    lake_bucket: str
    mlflow_bucket: str
    mlflow_port: int
    mlflow_tracking_uri: str
    dagster_port: int
    weed_master_port: int
    weed_volume_port: int
    weed_filer_port: int
    staging_port: int = 8101
    production_port: int = 8102
    sensor_interval_s: int | None = None
    preset: str = "cpu"
    review_port: int = 8180
    review_user: str = "admin@earthsnap.local"
    review_password: str = "earthsnap-review"
    review_token: str = "earthsnap-review-token"
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        s3_port = _int(env, "EARTHSNAP_S3_PORT", 8333)
        mlflow_port = _int(env, "EARTHSNAP_MLFLOW_PORT", 5000)
        endpoint = env.get("EARTHSNAP_S3_ENDPOINT") or f"http://127.0.0.1:{s3_port}"
        return cls(
            home=Path(env.get("EARTHSNAP_HOME") or ".earthsnap").absolute(),
            s3_port=s3_port,
            s3_endpoint=None if endpoint == "aws" else endpoint,
            access_key=env.get("EARTHSNAP_S3_ACCESS_KEY", "earthsnap"),
            secret_key=env.get("EARTHSNAP_S3_SECRET_KEY", "earthsnap-secret"),
            region=env.get("EARTHSNAP_S3_REGION", "us-east-1"),
            raw_bucket=env.get("EARTHSNAP_RAW_BUCKET", "earthsnap-raw"),
            lake_bucket=env.get("EARTHSNAP_LAKE_BUCKET", "earthsnap-lake"),
            mlflow_bucket=env.get("EARTHSNAP_MLFLOW_BUCKET", "earthsnap-mlflow"),
            mlflow_port=mlflow_port,
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"http://127.0.0.1:{mlflow_port}",
            dagster_port=_int(env, "EARTHSNAP_DAGSTER_PORT", 3000),
            weed_master_port=_int(env, "EARTHSNAP_WEED_MASTER_PORT", 9333),
            weed_volume_port=_int(env, "EARTHSNAP_WEED_VOLUME_PORT", 8380),
            weed_filer_port=_int(env, "EARTHSNAP_WEED_FILER_PORT", 8888),
            staging_port=_int(env, "EARTHSNAP_STAGING_PORT", 8101),
            production_port=_int(env, "EARTHSNAP_PRODUCTION_PORT", 8102),
            sensor_interval_s=_int(env, "EARTHSNAP_SENSOR_INTERVAL_S", 0) or None,
            preset=env.get("EARTHSNAP_PRESET") or "cpu",
            review_port=_int(env, "EARTHSNAP_REVIEW_PORT", 8180),
            review_user=env.get("EARTHSNAP_REVIEW_USER") or "admin@earthsnap.local",
            review_password=env.get("EARTHSNAP_REVIEW_PASSWORD") or "earthsnap-review",
            review_token=env.get("EARTHSNAP_REVIEW_TOKEN") or "earthsnap-review-token",
            env=env,
        )

    def endpoint_port(self, env: str) -> int:
        return {"staging": self.staging_port, "production": self.production_port}[env]

    def endpoint_url(self, env: str) -> str:
        """Base URL of a serving environment: EARTHSNAP_<ENV>_URL or the local port."""
        return self.env.get(f"EARTHSNAP_{env.upper()}_URL") or f"http://127.0.0.1:{self.endpoint_port(env)}"

    @property
    def review_url(self) -> str:
        """Label Studio's base URL: EARTHSNAP_REVIEW_URL or the local port."""
        return (self.env.get("EARTHSNAP_REVIEW_URL") or f"http://127.0.0.1:{self.review_port}").rstrip("/")

    @property
    def review_venv(self) -> Path:
        """Where Label Studio's own virtual environment lives: outside any stack home, so it is built once."""
        from earthsnap_assets.stack.label_studio import VERSION

        default = Path.home() / ".cache" / "earthsnap" / f"label-studio-{VERSION}"
        return Path(self.env.get("EARTHSNAP_REVIEW_VENV") or default).absolute()

    @property
    def raw_events_url(self) -> str:
        return self.env.get("EARTHSNAP_RAW_EVENTS") or f"filer://127.0.0.1:{self.weed_filer_port}"

    @property
    def buckets(self) -> tuple[str, str, str]:
        return (self.raw_bucket, self.lake_bucket, self.mlflow_bucket)
