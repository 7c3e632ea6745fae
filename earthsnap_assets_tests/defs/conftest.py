"""Fixtures for materializing assets in-process against the real stack, each test in its own buckets."""

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from earthsnap_assets.ingest import ingest
from earthsnap_assets.demo.synthetic import SyntheticSpec, SyntheticSummary, generate_dataset
from earthsnap_assets.resources.lake_io_manager import LakeIOManager
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore

SMALL_SPEC = SyntheticSpec(groups=4, species_per_group=2, images_per_species=12, min_side=360, max_side=480)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> SyntheticSummary:
    """A small synthetic dataset on disk (with bad files), generated once per session."""
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), SMALL_SPEC)


@dataclass
class Buckets:
    store: ObjectStore
    instance: dg.DagsterInstance
    registry: MlflowRegistry

    @property
    def resources(self) -> dict:
        return {"store": self.store, "registry": self.registry, "io_manager": LakeIOManager(store=self.store)}

    def ingest(self, root: Path, taxonomy_csv: Path):
        return ingest(self.store, root, taxonomy_csv)

    def materialize(self, assets, run_config=None, selection=None, raise_on_error=True):
        return dg.materialize(
            assets,
            resources=self.resources,
            instance=self.instance,
            run_config=run_config,
            selection=selection,
            raise_on_error=raise_on_error,
        )


@contextlib.contextmanager
def fresh_lake() -> Iterator[Buckets]:
    """Fresh raw and lake buckets on the real S3, a real (temporary, SQLite) Dagster instance, own experiment."""
    suffix = uuid.uuid4().hex[:8]
    store = ObjectStore(raw_bucket_name=f"test-raw-{suffix}", lake_bucket_name=f"test-lake-{suffix}")
    store.ensure_bucket(store.raw_bucket)
    store.ensure_bucket(store.lake_bucket)
    with dg.instance_for_test() as instance:
        yield Buckets(store, instance, MlflowRegistry(experiment=f"test-{suffix}"))


@pytest.fixture
def lake(stack) -> Iterator[Buckets]:
    with fresh_lake() as buckets:
        yield buckets


@pytest.fixture(scope="session")
def trained(stack, small_dataset, tmp_path_factory):
    """Buckets with a dataset whose parent, children and flat baseline are trained and registered once."""
    from earthsnap_assets_tests.defs.training_setup import train_everything

    with fresh_lake() as lake:
        yield train_everything(lake, small_dataset, tmp_path_factory.mktemp("training") / "data")
