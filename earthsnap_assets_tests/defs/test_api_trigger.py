"""Launching the pipeline from another system: Dagster's GraphQL API on a real `dagster dev`."""

import pytest

from earthsnap_assets.api import trigger, wait
from earthsnap_assets.ingest import ingest
from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.stack import dagster_dev, stack_up
from earthsnap_assets.stack.process import ManagedProcess

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def dagster_url(stack):
    """`dagster dev` (webserver + daemon) next to the session stack, stopped again afterwards."""
    stack_up(stack, dagster=True)
    try:
        yield f"http://127.0.0.1:{stack.dagster_port}"
    finally:
        ManagedProcess(dagster_dev.NAME, stack.home).stop(dagster_dev.STOP_TIMEOUT)


def test_data_pipeline_runs_when_triggered_over_graphql(dagster_url, small_dataset):
    store = ObjectStore()  # the stack's default buckets, as the code location in dagster dev sees them
    ingest(store, small_dataset.root, small_dataset.taxonomy_csv)
    run_id = trigger(dagster_url, "data_pipeline", tags={"test": "api"})
    assert wait(dagster_url, run_id, timeout=300) == "SUCCESS"
    assert any(k.startswith("manifests/") for k in store.list_keys(store.lake_bucket, "manifests/"))


def test_an_unknown_job_is_a_clear_error(dagster_url):
    with pytest.raises(Exception, match="no_such_job"):
        trigger(dagster_url, "no_such_job")
