"""The prediction log under load with a real lake outage in the middle: a SeaweedFS of its own, stopped by PID.

The endpoint (tiny models on the session's MLflow) logs to a second SeaweedFS started for this test only;
concurrent clients keep sending while that SeaweedFS is stopped (SIGTERM, SIGKILL at the timeout) and
started again on the same ports. Every answered request must be in the lake exactly once, and no request
may fail because the lake was gone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from earthsnap_assets.lake.s3 import S3Blobs
from earthsnap_assets.serving.app import create_app
from earthsnap_assets.serving.production import Lake
from earthsnap_assets.settings import Settings
from earthsnap_assets.stack import seaweed
from earthsnap_assets.stack.process import ManagedProcess, check_ports_free, port_in_use
from earthsnap_assets_tests.serving.conftest import Deployed
from earthsnap_assets_tests.serving.helpers import serving, wait_ready, wait_until
from earthsnap_assets_tests.serving.traffic import Traffic, lake_rows

pytestmark = pytest.mark.stack


def start_lake(settings: Settings) -> ManagedProcess:
    """`weed server` for `settings` (ports free first), healthy, buckets created."""
    wait_until(lambda: not any(port_in_use(p.number) for p in seaweed.ports(settings)), 30)
    check_ports_free(seaweed.ports(settings))
    process = seaweed.launch(settings)
    process.wait_healthy(lambda: seaweed.healthy(settings), seaweed.START_TIMEOUT, port=settings.s3_port)
    seaweed.after_healthy(settings)
    return process


def stop_lake(settings: Settings) -> None:
    """By PID: SIGTERM, then SIGKILL once `STOP_TIMEOUT` has passed (`ManagedProcess.stop`)."""
    assert ManagedProcess(seaweed.NAME, settings.home).stop(seaweed.STOP_TIMEOUT)
    seaweed.after_stop(settings)


@pytest.fixture
def own_lake(tmp_path: Path, make_stack_settings: Callable[[Path], Settings]) -> Iterator[Settings]:
    """A SeaweedFS of this test only (not the session stack's), stopped at the end whatever happens."""
    settings = make_stack_settings(tmp_path / "lake-home")
    start_lake(settings)
    try:
        yield settings
    finally:
        if ManagedProcess(seaweed.NAME, settings.home).stop(seaweed.STOP_TIMEOUT):
            seaweed.after_stop(settings)


def test_a_lake_outage_under_load_loses_no_prediction(deployed: Deployed, own_lake: Settings, tmp_path: Path) -> None:
    config = deployed.models.config(
        log_flush_interval_s=0.1, log_batch_rows=50, spool_dir=str(tmp_path / "spool"), keep_photos="uncertain"
    )
    app = create_app("staging", config=config, lake=Lake.from_settings(own_lake))
    with serving(app) as url:
        wait_ready(url)

        def log_stats() -> dict[str, Any]:
            return requests.get(f"{url}/stats", timeout=10).json()["prediction_log"]

        with Traffic(url) as traffic:
            wait_until(lambda: traffic.count() >= 100 and log_stats()["written"] > 0, 60)
            stop_lake(own_lake)  # mid-traffic
            during = traffic.count()
            wait_until(lambda: log_stats()["pending_in_spool"] > 0 and traffic.count() >= during + 150, 60)
            start_lake(own_lake)  # same home, same ports
            after = traffic.count()
            wait_until(lambda: log_stats()["pending_in_spool"] == 0 and traffic.count() >= after + 100, 90)
        stats = log_stats()
        print(f"answered {traffic.count()}, {after - during} while the lake was down; log {stats}")
    # the app is closed: its log flushed
    assert traffic.failures == [] and traffic.connection_errors == []  # never refused, never timed out
    assert stats["failures"] > 0 and stats["spooled"] > 0 and "lake_up" in stats  # the outage was real
    rows = lake_rows(own_lake, "staging")
    logged = Counter(row["request_id"] for row in rows)
    assert logged == Counter(traffic.answered)  # every answer once: none lost, none twice
    assert max(logged.values()) == 1
    blobs = S3Blobs.from_settings(own_lake)
    kept = {row["request_id"]: row["photo_key"] for row in rows if row["photo_key"]}
    assert set(kept) == set(traffic.kept_photo) and kept
    for key in set(kept.values()):
        assert blobs.exists(own_lake.lake_bucket, key)
    assert list((tmp_path / "spool").rglob("*.parquet")) == []
