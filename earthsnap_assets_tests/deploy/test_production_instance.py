"""deploy/dagster.yaml, loaded as it is, on a real PostgreSQL server and the real S3 of the test stack."""

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.config import PoolGranularity
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from earthsnap_assets.defs.raw_images import raw_images, taxonomy
from earthsnap_assets.demo.synthetic import SyntheticSpec, generate_dataset
from earthsnap_assets.ingest import ingest
from earthsnap_assets.resources.dataset import DatasetSettings
from earthsnap_assets.resources.lake_io_manager import LakeIOManager
from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets_tests.deploy.production_dagster import DEPLOY, instance_env

pytestmark = pytest.mark.stack


@pytest.fixture
def production_home(postgres, stack, tmp_path, monkeypatch) -> Iterator[Path]:
    """A DAGSTER_HOME holding an unmodified copy of deploy/dagster.yaml, its own database and log bucket."""
    suffix = uuid.uuid4().hex[:8]
    logs_bucket = f"test-logs-{suffix}"
    ObjectStore().ensure_bucket(logs_bucket)
    db = postgres.create_database(f"dagster_{suffix}")
    for name, value in instance_env(postgres, stack, db, logs_bucket).items():
        monkeypatch.setenv(name, value)
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    yield tmp_path


def test_the_production_instance_keeps_everything_in_postgres_and_queues_runs(production_home):
    with dg.DagsterInstance.from_config(str(production_home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert isinstance(instance.compute_log_manager, S3ComputeLogManager)


def test_gpu_work_is_limited_per_pool_and_per_run(production_home):
    with dg.DagsterInstance.from_config(str(production_home)) as instance:
        config = instance.get_concurrency_config()
        pools = config.pool_config
        assert pools.pool_granularity == PoolGranularity.OP
        assert pools.default_pool_limit == 2
        queue = config.run_queue_config
        assert queue is not None and queue.should_block_op_concurrency_limited_runs
        assert queue.op_concurrency_slot_buffer == 0
        limits = {(t["key"], json.dumps(t.get("value"))): t["limit"] for t in queue.tag_concurrency_limits}
        assert limits[("earthsnap/compute", '"gpu"')] == 2
        assert limits[("earthsnap/deploy", "null")] == 1
        assert limits[("dagster/partition", '{"applyLimitPerUniqueValue": true}')] == 1  # one run per group


def test_a_materialization_on_postgres_is_stored_and_its_step_logs_land_in_s3(production_home, tmp_path_factory):
    """taxonomy, then one group's raw_images partition, for real: runs, events and partitions survive in PostgreSQL."""
    data = generate_dataset(
        tmp_path_factory.mktemp("pg-data"),
        SyntheticSpec(groups=2, species_per_group=2, images_per_species=2, max_side=400, bad_files=False),
    )
    suffix = uuid.uuid4().hex[:8]
    store = ObjectStore(raw_bucket_name=f"test-raw-{suffix}", lake_bucket_name=f"test-lake-{suffix}")
    store.ensure_bucket(store.raw_bucket)
    store.ensure_bucket(store.lake_bucket)
    ingest(store, data.root, data.taxonomy_csv)

    resources = {"store": store, "io_manager": LakeIOManager(store=store), "dataset": DatasetSettings(image_size=32)}
    with dg.DagsterInstance.from_config(str(production_home)) as instance:
        result = dg.materialize([raw_images, taxonomy], selection=["taxonomy"], resources=resources, instance=instance)
        assert result.success
        run_id = result.run_id
        group = sorted(set(data.species.values()))[0]
        intake = dg.materialize(
            [raw_images, taxonomy],
            selection=["raw_images"],
            partition_key=group,
            resources=resources,
            instance=instance,
        )
        assert intake.success

    # A new instance object: what follows comes from the database, not from memory.
    with dg.DagsterInstance.from_config(str(production_home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(dg.AssetKey("taxonomy"))
        assert event is not None and event.run_id == run_id
        groups = set(data.species.values())
        assert set(instance.get_dynamic_partitions("species_group")) == groups
        intake_event = instance.get_latest_materialization_event(dg.AssetKey("raw_images"))
        assert intake_event is not None and intake_event.dagster_event.partition == group

        bucket = os.environ["DAGSTER_COMPUTE_LOGS_BUCKET"]
        prefix = instance.compute_log_manager.inst_data.config_dict["prefix"]
        keys = store.list_keys(bucket, prefix)
        assert any(run_id in key for key in keys), f"no compute logs of run {run_id} in s3://{bucket}/{prefix}"
