"""A stack of the fault suite's own (SeaweedFS + MLflow on free ports, in a temporary home).

Faults are real: services are stopped by PID (SIGTERM, SIGKILL at the timeout) and started again on the same
ports and data, exactly as `earthsnap stack up` would. The session's stack is never touched, so a fault here
cannot leak into other tests.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from earthsnap_assets.registry.client import RegistryClient
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.settings import Settings
from earthsnap_assets.stack import mlflow_server, seaweed, stack_down, stack_up
from earthsnap_assets.stack.ports import free_stack_env
from earthsnap_assets.stack.process import ManagedProcess, port_in_use
from earthsnap_assets_tests.polling import wait_until

MARKER = "faults/written-before-any-fault"


@dataclass
class FaultStack:
    settings: Settings

    def store(self, suffix: str | None = None) -> ObjectStore:
        """Fresh buckets on this stack's SeaweedFS (or its default ones with `suffix=None`)."""
        s = self.settings
        names = {} if suffix is None else {"raw_bucket_name": f"f-raw-{suffix}", "lake_bucket_name": f"f-lake-{suffix}"}
        store = ObjectStore(endpoint_url=s.s3_endpoint, access_key=s.access_key, secret_key=s.secret_key, **names)
        store.ensure_bucket(store.raw_bucket)
        store.ensure_bucket(store.lake_bucket)
        return store

    def registry(self, experiment: str | None = None) -> MlflowRegistry:
        return MlflowRegistry(
            tracking_uri=self.settings.mlflow_tracking_uri, experiment=experiment or f"faults-{uuid.uuid4().hex[:8]}"
        )

    def client(self, experiment: str | None = None) -> RegistryClient:
        return RegistryClient(self.settings.mlflow_tracking_uri, experiment or f"faults-{uuid.uuid4().hex[:8]}")

    def stop(self, service: str) -> float:
        """Stop `mlflow` or `seaweedfs` by PID; the seconds it took."""
        module = {"mlflow": mlflow_server, "seaweedfs": seaweed}[service]
        began = time.monotonic()
        assert ManagedProcess(module.NAME, self.settings.home).stop(module.STOP_TIMEOUT), f"{service} was not running"
        module.after_stop(self.settings)
        return time.monotonic() - began

    def start(self) -> float:
        """Start whatever is stopped, on the same ports and data; the seconds until healthy."""
        began = time.monotonic()
        for module in (seaweed, mlflow_server):  # a stopped server's ports take a moment to be released
            if not ManagedProcess(module.NAME, self.settings.home).is_running():
                wait_until(lambda m=module: not any(port_in_use(p.number) for p in m.ports(self.settings)), 60)
        stack_up(self.settings, dagster=False)
        # healthy is not yet serving old data: SeaweedFS answers InternalError on GetObject until its volumes
        # are loaded again. Wait until an object written before the fault reads back.
        wait_until(self._marker_reads, 60, interval=0.5)
        return time.monotonic() - began

    def _marker_reads(self) -> bool:
        try:
            return self.store().read(self.settings.lake_bucket, MARKER) == MARKER.encode()
        except Exception:
            return False


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory, stack: Settings) -> Iterator[FaultStack]:
    settings = Settings.from_env({**os.environ, **free_stack_env(tmp_path_factory.mktemp("fault-home"))})
    stack_up(settings, dagster=False)
    try:
        faults = FaultStack(settings)
        faults.store().write(settings.lake_bucket, MARKER, MARKER.encode())
        yield faults
    finally:
        stack_down(settings)
