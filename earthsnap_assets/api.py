"""Launching pipeline runs from another system through Dagster's GraphQL API.

Any system that can speak HTTP can do what this module does; it uses Dagster's own GraphQL client so
the request shape stays right across Dagster versions. Example (what `earthsnap trigger` runs):

    from earthsnap_assets.api import trigger, wait
    run_id = trigger("http://127.0.0.1:3000", "child_training", partition="flowers")
    wait("http://127.0.0.1:3000", run_id)
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def _client(url: str):
    from dagster_graphql import DagsterGraphQLClient

    parsed = urlparse(url)
    return DagsterGraphQLClient(
        parsed.hostname or "127.0.0.1",
        port_number=parsed.port,
        use_https=parsed.scheme == "https",
        path_prefix=parsed.path.rstrip("/"),
        timeout=60,
    )


def trigger(
    url: str, job: str, partition: str | None = None, run_config: dict | None = None, tags: dict | None = None
) -> str:
    """Submit `job` (for a partitioned job, one species-group partition); returns the run id."""
    all_tags = {"earthsnap/launched_by": "api", **(tags or {})}
    if partition:
        all_tags["dagster/partition"] = partition
    return _client(url).submit_job_execution(job, run_config=run_config or {}, tags=all_tags)


def status(url: str, run_id: str) -> str:
    return _client(url).get_run_status(run_id).value


def wait(url: str, run_id: str, timeout: float = 900.0, poll: float = 2.0) -> str:
    """Poll until the run finishes; returns SUCCESS, FAILURE or CANCELED (TimeoutError otherwise)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = status(url, run_id)
        if state in FINISHED:
            return state
        time.sleep(poll)
    raise TimeoutError(f"run {run_id} did not finish in {timeout:.0f} s (last status {state})")


REPOSITORIES = """
query Repositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } sensors { name } } }
    ... on PythonError { message }
  }
}
"""
SENSOR_QUERY = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { id sensorState { status } }
    ... on PythonError { message }
  }
}
"""
START_SENSOR = """
mutation Start($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}
"""
STOP_SENSOR = """
mutation Stop($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
  }
}
"""


def _sensor_selector(client, name: str) -> dict:
    """Where a sensor lives: code location and repository names differ between workspaces (laptop, cluster)."""
    found = client._execute(REPOSITORIES)["repositoriesOrError"]
    for repository in found.get("nodes", []):
        if name in {s["name"] for s in repository["sensors"]}:
            location, repo = repository["location"]["name"], repository["name"]
            return {"repositoryLocationName": location, "repositoryName": repo, "sensorName": name}
    raise RuntimeError(f"no code location has a sensor {name!r}: {found}")


def set_sensor(url: str, name: str, running: bool) -> str:
    """Turn a sensor on or off, as its toggle in the UI does; returns its status afterwards."""
    client = _client(url)
    selector = _sensor_selector(client, name)
    found = client._execute(SENSOR_QUERY, {"selector": selector})["sensorOrError"]
    if found["__typename"] != "Sensor":
        raise RuntimeError(f"sensor {name!r} not found at {url}: {found}")
    if running:
        result = client._execute(START_SENSOR, {"selector": selector})["startSensor"]
        state = result.get("sensorState")
    else:
        result = client._execute(STOP_SENSOR, {"id": found["id"]})["stopSensor"]
        state = result.get("instigationState")
    if state is None:
        raise RuntimeError(f"could not {'start' if running else 'stop'} sensor {name!r}: {result}")
    return state["status"]
