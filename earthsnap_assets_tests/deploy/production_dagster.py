"""A real `dagster dev` (webserver + daemon) on deploy/dagster.yaml over the test PostgreSQL and S3.

Shared by the launch-path and GPU-queue tests: they launch runs the way the UI does (GraphQL) and read
what the daemon made of them from PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.settings import Settings
from earthsnap_assets.stack.ports import free_port
from earthsnap_assets.stack.process import ManagedProcess
from earthsnap_assets_tests.deploy.postgres import PostgresServer

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
LOCATION = "earthsnap"

LAUNCH_RUN = """mutation($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""


def instance_env(postgres: PostgresServer, stack: Settings, db: str, logs_bucket: str) -> dict[str, str]:
    """Every variable deploy/dagster.yaml reads, pointed at the test PostgreSQL and the stack's S3."""
    return {
        **postgres.env(db),
        "DAGSTER_COMPUTE_LOGS_BUCKET": logs_bucket,
        "DAGSTER_S3_ENDPOINT_URL": stack.s3_endpoint or "",
        "AWS_ACCESS_KEY_ID": stack.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.secret_key,
        "AWS_DEFAULT_REGION": stack.region,
    }


def graphql(url: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    assert "errors" not in answer, answer
    return answer["data"]


def launch(url: str, job: str, assets: list[str] | None = None) -> str:
    """What the UI sends for "Launch run" of a job, or "Materialize" of selected assets; returns the run id."""
    selector: dict[str, Any] = {
        "repositoryLocationName": LOCATION,
        "repositoryName": "__repository__",
        "pipelineName": job,
    }
    if assets:
        selector |= {"assetSelection": [{"path": [a]} for a in assets], "assetCheckSelection": []}
    params = {"selector": selector, "mode": "default", "executionMetadata": {"tags": []}, "runConfigData": {}}
    result = graphql(url, LAUNCH_RUN, {"executionParams": params})["launchPipelineExecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


@dataclass
class ProductionDagster:
    url: str
    home: Path

    @contextlib.contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            yield instance


def _loaded(url: str) -> bool:
    """The webserver answers and every code location has loaded (the daemon shares its code server)."""
    data = graphql(url, "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }", {})
    entries = data["workspaceOrError"]["locationEntries"]
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


@contextlib.contextmanager
def production_dagster(
    postgres: PostgresServer,
    stack: Settings,
    home: Path,
    module: str,
    edit_config: Callable[[dict[str, Any]], None] = lambda config: None,
    partitions: list[str] | None = None,
) -> Iterator[ProductionDagster]:
    """`dagster dev` loading `module`, on deploy/dagster.yaml (after `edit_config`), its own database."""
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    edit_config(config)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    location = {
        "module_name": module,
        "attribute": "defs",
        "location_name": LOCATION,
        "working_directory": str(REPO_ROOT),
    }
    workspace = home / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": location}]}))
    suffix = uuid.uuid4().hex[:8]
    logs_bucket = f"test-logs-{suffix}"
    ObjectStore().ensure_bucket(logs_bucket)
    db = postgres.create_database(f"dagster_{suffix}")
    env = {**instance_env(postgres, stack, db, logs_bucket), "DAGSTER_HOME": str(home)}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        running = ProductionDagster(url="", home=home)
        if partitions:
            with running.instance() as instance:
                instance.add_dynamic_partitions("species_group", partitions)
        port = free_port()
        running.url = f"http://127.0.0.1:{port}"
        # Webserver, daemon, code server and run workers: one process group, stopped together.
        process = ManagedProcess("dagster-dev", home)
        command = [str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(workspace)]
        process.start(
            [*command, "-h", "127.0.0.1", "-p", str(port)], env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=REPO_ROOT
        )
        try:
            process.wait_healthy(lambda: _loaded(running.url), 240, port=port)
            yield running
        finally:
            process.stop(timeout=30)
