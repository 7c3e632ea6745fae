"""The GPU request holds however a run starts: UI, partition backfill, sensor, declarative automation.

A real `dagster dev` (webserver + daemon) runs on deploy/dagster.yaml over a real PostgreSQL, with one
change: `max_concurrent_runs: 0`, so every launched run stays queued (nothing trains) and can be
inspected. Each path launches GPU steps its own way; for each resulting run, the step pods dagster-k8s
would create are built and checked. Run-level tags differ per path (issues 26720, 33430): the GPU
request must not depend on them.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.tags import AUTOMATION_CONDITION_TAG, BACKFILL_ID_TAG, SENSOR_NAME_TAG

from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets_tests.deploy import launch_paths_location as location
from earthsnap_assets_tests.deploy.postgres import free_port
from earthsnap_assets_tests.deploy.step_pods import k8s_run_launcher_overrides, pod_placement, step_jobs
from earthsnap_assets_tests.deploy.test_production_instance import DEPLOY, instance_env

pytestmark = pytest.mark.stack
REPO_ROOT = Path(__file__).resolve().parents[2]
GPU = "nvidia.com/gpu"
GPU_STEPS = {"parent_hyperparams", "parent_model", "child_hyperparams", "child_model", "flat_baseline_model"}
PARTITIONS = ["beetles", "ferns"]
WAIT_S = 240.0

LAUNCH_RUN = """mutation($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
LAUNCH_BACKFILL = """mutation($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


def graphql(url: str, query: str, variables: dict) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    assert "errors" not in answer, answer
    return answer["data"]


def wait_until_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster dev exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            data = graphql(url, "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }", {})
            entries = data["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"dagster dev did not load the code location:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def production_dagster(postgres, stack, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`dagster dev` on deploy/dagster.yaml (queue closed) and PostgreSQL; yields (url, DAGSTER_HOME)."""
    home = tmp_path_factory.mktemp("dagster-home")
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = 0  # queued runs stay queued: nothing trains
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    workspace = home / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": location.__name__,
                            "attribute": "defs",
                            "location_name": "earthsnap",
                            "working_directory": str(REPO_ROOT),
                        }
                    }
                ]
            }
        )
    )
    suffix = uuid.uuid4().hex[:8]
    logs_bucket = f"test-logs-{suffix}"
    ObjectStore().ensure_bucket(logs_bucket)
    env = {
        **instance_env(postgres, stack, postgres.create_database(f"launch_{suffix}"), logs_bucket),
        "DAGSTER_HOME": str(home),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions("species_group", PARTITIONS)
        port = free_port()
        log = home / "dagster-dev.log"
        dagster = Path(sys.executable).parent / "dagster"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [str(dagster), "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, proc, log)
            yield url, home
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def launch_from_ui(url: str) -> str:
    """What the UI's Materialize button sends for one selected asset."""
    selector = {
        "repositoryLocationName": "earthsnap",
        "repositoryName": "__repository__",
        "pipelineName": "__ASSET_JOB",
        "assetSelection": [{"path": ["parent_model"]}],
        "assetCheckSelection": [],
    }
    params = {"selector": selector, "mode": "default", "executionMetadata": {"tags": []}, "runConfigData": {}}
    result = graphql(url, LAUNCH_RUN, {"executionParams": params})["launchPipelineExecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def launch_backfill(url: str) -> str:
    """What the UI's "Materialize partitions" dialog sends for child_model over two species groups."""
    params = {"assetSelection": [{"path": ["child_model"]}], "partitionNames": PARTITIONS, "tags": []}
    result = graphql(url, LAUNCH_BACKFILL, {"backfillParams": params})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


@pytest.fixture(scope="module")
def launched(production_dagster) -> dict[str, list[dg.DagsterRun]]:
    """Runs by launch path, once all four paths have produced theirs (the daemon does three of them)."""
    url, home = production_dagster
    ui_run = launch_from_ui(url)
    backfill = launch_backfill(url)
    deadline = time.monotonic() + WAIT_S
    with dg.DagsterInstance.from_config(str(home)) as instance:
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
                raise TimeoutError(f"no runs after {WAIT_S:.0f} s from: {missing}; see {home}/dagster-dev.log")
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
            requests, limits, selector, tolerations = pod_placement(job)
            if key in gpu_steps:
                assert requests.get(GPU) == limits.get(GPU) == "1", (path, key)
                assert selector and tolerations, (path, key)
            else:
                assert GPU not in requests and not selector and not tolerations, (path, key)


def test_the_backfill_made_one_run_per_species_group(launched):
    partitions = sorted(r.tags.get("dagster/partition") for r in launched["backfill"])
    assert partitions == PARTITIONS
