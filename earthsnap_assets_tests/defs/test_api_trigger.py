"""A real `dagster dev` (webserver + daemon): uploads flow in on their own, and other systems can trigger runs.

The daemon runs the change sensor (SeaweedFS's filer subscription) and the automation sensor for real: an
upload becomes runs of exactly the touched groups without anyone launching anything.
"""

import time

import dagster as dg
import pytest

from earthsnap_assets.api import trigger, wait
from earthsnap_assets.demo.synthetic import SyntheticSpec, SyntheticSummary, generate_dataset
from earthsnap_assets.ingest import ingest
from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.stack import dagster_dev, stack_up
from earthsnap_assets.stack.process import ManagedProcess

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory) -> SyntheticSummary:
    """Two groups of good photos: production QA thresholds (as in dagster dev's code location) pass."""
    spec = SyntheticSpec(
        groups=2, species_per_group=2, images_per_species=12, min_side=360, max_side=480, bad_files=False
    )
    return generate_dataset(tmp_path_factory.mktemp("clean"), spec)


@pytest.fixture(scope="module")
def dagster_url(stack):
    """`dagster dev` (webserver + daemon) next to the session stack, stopped again afterwards."""
    stack_up(stack, dagster=True)
    try:
        yield f"http://127.0.0.1:{stack.dagster_port}"
    finally:
        ManagedProcess(dagster_dev.NAME, stack.home).stop(dagster_dev.STOP_TIMEOUT)


def _latest(instance: dg.DagsterInstance, asset: str, partition: str | None = None):
    if partition is None:
        return instance.get_latest_materialization_event(dg.AssetKey(asset))
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    return records[0].event_log_entry if records else None


def test_uploads_become_data_runs_through_change_capture_and_automation_alone(dagster_url, stack, clean_dataset):
    store = ObjectStore()  # the stack's default buckets, as the code location in dagster dev sees them
    time.sleep(8)  # the change sensor's first tick (every 5 s here) starts watching the bucket
    ingest(store, clean_dataset.root, clean_dataset.taxonomy_csv)
    groups = sorted(set(clean_dataset.species.values()))
    with dg.DagsterInstance.from_config(str(dagster_dev.dagster_home(stack))) as instance:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and _latest(instance, "content_checks") is None:
            time.sleep(3)
        checks = _latest(instance, "content_checks")
        assert checks is not None, "no content_checks after the upload: change capture or automation is stuck"
        for group in groups:  # each group's intake ran on its own, then one run of the checks for all of them
            event = _latest(instance, "raw_images", group)
            assert event is not None, group
            run = instance.get_run_by_id(event.run_id)
            assert "earthsnap/launched_by" not in run.tags  # nobody triggered it: automation did
            assert run.tags.get("dagster/from_automation_condition") == "true", run.tags


def test_a_job_runs_when_triggered_over_graphql(dagster_url, stack):
    run_id = trigger(dagster_url, "taxonomy_update", tags={"test": "api"})
    assert wait(dagster_url, run_id, timeout=300) == "SUCCESS"
    with dg.DagsterInstance.from_config(str(dagster_dev.dagster_home(stack))) as instance:
        run = instance.get_run_by_id(run_id)
        assert run.tags["test"] == "api" and run.tags["earthsnap/launched_by"] == "api"


def test_an_unknown_job_is_a_clear_error(dagster_url):
    with pytest.raises(Exception, match="no_such_job"):
        trigger(dagster_url, "no_such_job")


def test_sensors_can_be_paused_and_resumed_like_the_ui_toggle(dagster_url):
    from earthsnap_assets.api import set_sensor

    assert set_sensor(dagster_url, "earthsnap_automation", running=False) == "STOPPED"
    assert set_sensor(dagster_url, "earthsnap_automation", running=True) == "RUNNING"
    with pytest.raises(RuntimeError, match="no_such_sensor"):
        set_sensor(dagster_url, "no_such_sensor", running=True)
