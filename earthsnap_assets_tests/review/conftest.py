"""Own buckets and a Dagster instance for the review tests (Label Studio: `review_stack`, root conftest)."""

from __future__ import annotations

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
def review_lake(review_stack) -> Iterator[ReviewLake]:
    suffix = uuid.uuid4().hex[:8]
    store = ObjectStore(raw_bucket_name=f"test-raw-{suffix}", lake_bucket_name=f"test-lake-{suffix}")
    store.ensure_bucket(store.raw_bucket)
    store.ensure_bucket(store.lake_bucket)
    with dg.instance_for_test() as instance:
        yield ReviewLake(store, instance)
