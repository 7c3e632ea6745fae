"""Fixtures for materializing assets in-process against the real stack, each test in its own buckets."""

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from earthsnap_assets.demo.synthetic import SyntheticSpec, SyntheticSummary, generate_dataset
from earthsnap_assets.ingest import ingest
from earthsnap_assets.lake.capture import CaptureResult, capture
from earthsnap_assets.resources.dataset import DatasetSettings
from earthsnap_assets.resources.label_studio import LabelStudio
from earthsnap_assets.resources.lake_io_manager import LakeIOManager
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.resources.raw_events import RawEvents

SMALL_SPEC = SyntheticSpec(groups=4, species_per_group=2, images_per_species=12, min_side=360, max_side=480)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> SyntheticSummary:
    """A small synthetic dataset on disk (with bad files), generated once per session."""
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), SMALL_SPEC)


# Small images keep the tests fast. The QA threshold is per group: the small dataset puts all its bad files
# into one group of 24 photos (10 of 35 objects), far more than real uploads, so the test allows half.
TEST_DATASET = DatasetSettings(image_size=32, max_rejection_rate=0.5)


@dataclass
class Buckets:
    store: ObjectStore
    instance: dg.DagsterInstance
    registry: MlflowRegistry
    dataset: DatasetSettings = field(default_factory=lambda: TEST_DATASET)
    cursor: str | None = None

    @property
    def resources(self) -> dict:
        return {
            "store": self.store,
            "registry": self.registry,
            "io_manager": LakeIOManager(store=self.store),
            "dataset": self.dataset,
            "raw_events": RawEvents(),
            "label_studio": LabelStudio(),  # built lazily: assets that never call it need no server
        }

    def ingest(self, root: Path, taxonomy_csv: Path):
        return ingest(self.store, root, taxonomy_csv)

    def materialize(self, assets, run_config=None, selection=None, raise_on_error=True, partition=None):
        return dg.materialize(
            assets,
            resources=self.resources,
            instance=self.instance,
            run_config=run_config,
            selection=selection,
            raise_on_error=raise_on_error,
            partition_key=partition,
        )

    def capture(self) -> CaptureResult:
        """One tick of change capture from the real SeaweedFS filer (the first call only starts watching)."""
        source = self.resources["raw_events"].source(self.store.raw_bucket)
        result = capture(source, self.store, self.store.lake_bucket, self.cursor, max_events=10_000, timeout_s=20)
        self.cursor = result.cursor
        return result

    def groups(self) -> list[str]:
        return sorted(self.instance.get_dynamic_partitions("species_group"))

    def build_data(self, run_config=None, raise_on_error=True) -> dict:
        """What automation does after an upload: taxonomy, each group's intake, the global checks, each
        group's manifest and shards, then the fan-ins. Results by step (`intake` holds one per group)."""
        from earthsnap_assets.definitions import defs

        assets = list(defs.assets)
        results = {"taxonomy": self.materialize(assets, run_config, ["taxonomy"], raise_on_error)}
        intake = {g: self.materialize(assets, run_config, ["raw_images"], raise_on_error, g) for g in self.groups()}
        results["checks"] = self.materialize(assets, run_config, ["content_checks"], raise_on_error)
        for group in self.groups():
            chain = ["validated_manifest", "dataset_splits"]
            results[group] = self.materialize(assets, run_config, chain, raise_on_error, partition=group)
        ok = all(r.success for r in [*results.values(), *intake.values()])
        results["intake"] = intake
        if ok:
            results["fan_in"] = self.materialize(
                assets, run_config, ["dataset_version", "parent_sample"], raise_on_error
            )
        return results


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
