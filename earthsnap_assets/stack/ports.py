"""A stack on free ports: for test sessions, benchmarks, or a second stack beside a developer's own."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from earthsnap_assets.stack.process import port_in_use
from earthsnap_assets.stack.seaweed import GRPC_OFFSET


def pick_free_ports(with_grpc: int, single: int, rng: random.Random | None = None) -> tuple[list[int], list[int]]:
    """Free ports: `with_grpc` of them with port + GRPC_OFFSET free as well (SeaweedFS), `single` plain ones."""
    rng = rng or random.Random()
    taken: set[int] = set()

    def pick(grpc: bool) -> int:
        for _ in range(1000):
            port = rng.randrange(20_000, 65_535 - GRPC_OFFSET)
            wanted = {port, port + GRPC_OFFSET} if grpc else {port}
            if not wanted & taken and not any(port_in_use(p) for p in wanted):
                taken.update(wanted)
                return port
        raise RuntimeError("no free ports found for a stack")

    return [pick(True) for _ in range(with_grpc)], [pick(False) for _ in range(single)]


def free_port() -> int:
    """One free loopback port, chosen by the OS: for a single extra server (tests, benchmarks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_stack_env(home: Path) -> dict[str, str]:
    """EARTHSNAP_* variables for a stack in `home` on fresh free ports (never the defaults)."""
    (s3, master, volume, filer), (mlflow, dagster) = pick_free_ports(4, 2)
    return {
        "EARTHSNAP_HOME": str(home),
        "EARTHSNAP_S3_PORT": str(s3),
        "EARTHSNAP_S3_ENDPOINT": f"http://127.0.0.1:{s3}",
        "EARTHSNAP_WEED_MASTER_PORT": str(master),
        "EARTHSNAP_WEED_VOLUME_PORT": str(volume),
        "EARTHSNAP_WEED_FILER_PORT": str(filer),
        "EARTHSNAP_MLFLOW_PORT": str(mlflow),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow}",
        "EARTHSNAP_DAGSTER_PORT": str(dagster),
    }
