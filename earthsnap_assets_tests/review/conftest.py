"""A real Label Studio for the session (started by the stack service, on a free port, data in the test stack's home).

Its virtual environment is built once per machine (`Settings.review_venv`, a few minutes the first time); the
first start in a fresh home migrates its SQLite database (about a minute). A start that fails fails the tests
with the end of Label Studio's log.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import pytest

from earthsnap_assets.resources.dataset import DatasetSettings
from earthsnap_assets.resources.label_studio import LabelStudio
from earthsnap_assets.resources.lake_io_manager import LakeIOManager
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.resources.raw_events import RawEvents
from earthsnap_assets.review.client import ReviewClient
from earthsnap_assets.settings import Settings
from earthsnap_assets.stack import StackError, label_studio, stack_up
from earthsnap_assets.stack.ports import free_port
from earthsnap_assets.stack.process import ManagedProcess


@pytest.fixture(scope="session")
def review_stack(stack: Settings) -> Iterator[Settings]:
    """The test stack plus Label Studio; EARTHSNAP_REVIEW_* point at it for the session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EARTHSNAP_REVIEW_PORT", str(free_port()))
        patch.delenv("EARTHSNAP_REVIEW_URL", raising=False)
        settings = Settings.from_env()
        began = time.monotonic()
        try:
            stack_up(settings, dagster=False, review=True)
        except StackError as exc:
            pytest.fail(f"Label Studio did not start:\n{exc}", pytrace=False)
        print(f"\nLabel Studio healthy after {time.monotonic() - began:.1f} s (venv {settings.review_venv})")
        try:
            yield settings
        finally:
            ManagedProcess(label_studio.NAME, settings.home).stop(label_studio.STOP_TIMEOUT)


@pytest.fixture(scope="session")
def review_client(review_stack: Settings) -> ReviewClient:
    return ReviewClient(review_stack.review_url, review_stack.review_token)


@dataclass
class ReviewLake:
    """Own raw and lake buckets and a Dagster instance, with every resource the assets ask for."""

    store: ObjectStore
    instance: dg.DagsterInstance

    @property
    def resources(self) -> dict:
        return {
            "store": self.store,
            "registry": MlflowRegistry(experiment=f"test-{self.store.lake_bucket}"),
            "io_manager": LakeIOManager(store=self.store),
            "dataset": DatasetSettings(),
            "raw_events": RawEvents(),
            "label_studio": LabelStudio(),
        }

    def materialize(self, selection: list[str], partition: str | None = None, **kwargs) -> dg.ExecuteInProcessResult:
        from earthsnap_assets.definitions import defs

        return dg.materialize(
            list(defs.assets),
            selection=selection,
            partition_key=partition,
            resources={**self.resources, **kwargs.pop("resources", {})},
            instance=self.instance,
            **kwargs,
        )


@pytest.fixture(scope="module")
def review_lake(review_stack: Settings) -> Iterator[ReviewLake]:
    suffix = uuid.uuid4().hex[:8]
    store = ObjectStore(raw_bucket_name=f"test-raw-{suffix}", lake_bucket_name=f"test-lake-{suffix}")
    store.ensure_bucket(store.raw_bucket)
    store.ensure_bucket(store.lake_bucket)
    with dg.instance_for_test() as instance:
        yield ReviewLake(store, instance)
