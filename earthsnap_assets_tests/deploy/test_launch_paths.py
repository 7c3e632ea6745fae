"""The GPU request holds however a run starts: UI, partition backfill, sensor, declarative automation.

A real `dagster dev` (webserver + daemon) runs on deploy/dagster.yaml over a real PostgreSQL, with one
change: `max_concurrent_runs: 0`, so every launched run stays queued (nothing trains) and can be
inspected. Each path launches GPU steps its own way; for each resulting run, the step pods dagster-k8s
would create are built and checked. Run-level tags differ per path (issues 26720, 33430): the GPU
request must not depend on them.
"""

import time
from collections.abc import Iterator

import dagster as dg
import pytest
from dagster._core.storage.tags import AUTOMATION_CONDITION_TAG, BACKFILL_ID_TAG, SENSOR_NAME_TAG

from earthsnap_assets_tests.deploy import launch_paths_location as location
from earthsnap_assets_tests.deploy.production_dagster import ProductionDagster, graphql, launch, production_dagster
from earthsnap_assets_tests.deploy.step_pods import (
    GPU_STEPS,
    assert_gpu_pod,
    assert_plain_pod,
    k8s_run_launcher_overrides,
    step_jobs,
)

pytestmark = pytest.mark.stack
PARTITIONS = ["beetles", "ferns"]
WAIT_S = 240.0

LAUNCH_BACKFILL = """mutation($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


def closed_queue(config: dict) -> None:
    config["concurrency"]["runs"]["max_concurrent_runs"] = 0  # queued runs stay queued: nothing trains


@pytest.fixture(scope="module")
def production(postgres, stack, tmp_path_factory) -> Iterator[ProductionDagster]:
    home = tmp_path_factory.mktemp("dagster-home")
    with production_dagster(postgres, stack, home, location.__name__, closed_queue, PARTITIONS) as running:
        yield running


def launch_backfill(url: str) -> str:
    """What the UI's "Materialize partitions" dialog sends for child_model over two species groups."""
    params = {"assetSelection": [{"path": ["child_model"]}], "partitionNames": PARTITIONS, "tags": []}
    result = graphql(url, LAUNCH_BACKFILL, {"backfillParams": params})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


@pytest.fixture(scope="module")
def launched(production: ProductionDagster) -> dict[str, list[dg.DagsterRun]]:
    """Runs by launch path, once all four paths have produced theirs (the daemon does three of them)."""
    ui_run = launch(production.url, "__ASSET_JOB", ["parent_model"])  # the UI's Materialize button
    backfill = launch_backfill(production.url)
    deadline = time.monotonic() + WAIT_S
    with production.instance() as instance:
        while True:
            runs = instance.get_runs()
            by_path = {
                "ui": [r for r in runs if r.run_id == ui_run],
                "backfill": [r for r in runs if r.tags.get(BACKFILL_ID_TAG) == backfill],
                "sensor": [r for r in runs if r.tags.get(SENSOR_NAME_TAG) == location.train_beetles_sensor.name],
                "automation": [r for r in runs if AUTOMATION_CONDITION_TAG in r.tags],
            }
            if len(by_path["backfill"]) >= len(PARTITIONS) and all(by_path.values()):
                return by_path
            if time.monotonic() > deadline:
                missing = [path for path, found in by_path.items() if not found]
                raise TimeoutError(
                    f"no runs after {WAIT_S:.0f} s from: {missing}; see {production.home}/dagster-dev.log"
                )
            time.sleep(3)


@pytest.fixture(scope="module")
def k8s_instance(tmp_path_factory) -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(overrides=k8s_run_launcher_overrides(tmp_path_factory.mktemp("kube") / "cfg")) as inst:
        yield inst


@pytest.mark.parametrize("path", ["ui", "backfill", "sensor", "automation"])
def test_gpu_steps_get_their_gpu_node_whatever_launched_the_run(path, launched, k8s_instance):
    for run in launched[path]:
        assert run.status == dg.DagsterRunStatus.QUEUED  # the queue held it: nothing ran
        assert not any(k.startswith("dagster-k8s/") for k in run.tags)  # no run-level k8s config to rely on
        jobs = step_jobs(k8s_instance, run)
        gpu_steps = {key for key in jobs if key.split("[")[0] in GPU_STEPS}
        assert gpu_steps, f"{path} run {run.run_id} has no GPU step: {sorted(jobs)}"
        for key, job in jobs.items():
            (assert_gpu_pod if key in gpu_steps else assert_plain_pod)(job)


def test_the_backfill_made_one_run_per_species_group(launched):
    partitions = sorted(r.tags.get("dagster/partition") for r in launched["backfill"])
    assert partitions == PARTITIONS
