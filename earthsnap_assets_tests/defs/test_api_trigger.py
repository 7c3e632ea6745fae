"""Launching the pipeline from another system: Dagster's GraphQL API on a real `dagster dev`."""

import pytest

from earthsnap_assets.api import trigger, wait
from earthsnap_assets.ingest import ingest
from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.stack import stack_up

pytestmark = pytest.mark.stack


def test_data_pipeline_runs_when_triggered_over_graphql(stack, small_dataset):
    stack_up(stack, dagster=True)  # the session stack plus dagster dev (webserver + daemon)
    store = ObjectStore()  # the stack's default buckets, as the code location in dagster dev sees them
    ingest(store, small_dataset.root, small_dataset.taxonomy_csv)
    url = f"http://127.0.0.1:{stack.dagster_port}"
    run_id = trigger(url, "data_pipeline", tags={"test": "api"})
    assert wait(url, run_id, timeout=300) == "SUCCESS"
    assert any(k.startswith("manifests/") for k in store.list_keys(store.lake_bucket, "manifests/"))


def test_an_unknown_job_is_a_clear_error(stack):
    stack_up(stack, dagster=True)
    with pytest.raises(Exception, match="no_such_job"):
        trigger(f"http://127.0.0.1:{stack.dagster_port}", "no_such_job")
