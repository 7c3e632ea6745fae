"""deploy/k8s/mlflow.yaml's containers, run for real: PostgreSQL backend, artifacts proxied into S3.

The init container's and the server's command lines and environment are taken from the manifest, with
the ConfigMap and Secret values a cluster would inject, pointed at the test PostgreSQL and the test
stack's S3. Two deliberate changes: the server listens on a free loopback port instead of 0.0.0.0:5000,
and MLFLOW_S3_ENDPOINT_URL points at SeaweedFS (on AWS it is unset).
"""

import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.stack.ports import free_port
from earthsnap_assets.stack.process import ManagedProcess
from earthsnap_assets_tests.deploy.k8s_schema import expand_vars, k8s_documents

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
pytestmark = pytest.mark.stack


def _doc(file: str, kind: str) -> dict[str, Any]:
    return next(d for d in k8s_documents(K8S / file) if d["kind"] == kind)


def container_env(container: dict[str, Any], maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """The variables Kubernetes would set: envFrom maps first, then env entries (literal or from a map)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        env.update(maps[ref["name"]])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"].get("secretKeyRef") or entry["valueFrom"].get("configMapKeyRef")
            env[entry["name"]] = maps[ref["name"]][ref["key"]]
    return env


def command_line(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded the way the kubelet does."""
    return expand_vars(container["command"] + container["args"], env)


def with_option(args: list[str], option: str, value: str) -> list[str]:
    index = args.index(option)
    return [*args[: index + 1], value, *args[index + 2 :]]


def healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
        return response.status == 200


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres, stack, tmp_path_factory) -> Iterator[tuple[str, str, str]]:
    """(tracking URL, database name, artifact bucket) of the manifest's MLflow server, started for real."""
    suffix = uuid.uuid4().hex[:8]
    bucket = f"test-mlflow-{suffix}"
    ObjectStore().ensure_bucket(bucket)
    db = postgres.create_database(f"mlflow_{suffix}")
    home = tmp_path_factory.mktemp("mlflow-home")
    config = {**_doc("configmap.yaml", "ConfigMap")["data"], "EARTHSNAP_MLFLOW_BUCKET": bucket}
    secrets = {
        "earthsnap-s3": {"AWS_ACCESS_KEY_ID": stack.access_key, "AWS_SECRET_ACCESS_KEY": stack.secret_key},
        "earthsnap-mlflow-db": {
            "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://{postgres.user}@{postgres.host}:{postgres.port}/{db}"
        },
    }
    maps = {"earthsnap-config": config, **secrets}
    pod = _doc("mlflow.yaml", "Deployment")["spec"]["template"]["spec"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    local = {"HOME": str(home), "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint or ""}
    bin_dir = Path(sys.executable).parent
    base["PATH"] = f"{bin_dir}{os.pathsep}{base.get('PATH', '')}"

    (init,) = pod["initContainers"]
    init_env = {**base, **container_env(init, maps), **local}
    upgrade = subprocess.run(command_line(init, init_env), env=init_env, capture_output=True, text=True, timeout=300)
    assert upgrade.returncode == 0, upgrade.stderr[-2000:]

    (server,) = pod["containers"]
    env = {**base, **container_env(server, maps), **local}
    port = free_port()
    args = with_option(with_option(command_line(server, env), "--host", "127.0.0.1"), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess("mlflow", home)
    process.start(args, env=env)
    try:
        process.wait_healthy(lambda: healthy(url), 120, port=port)
        yield url, db, bucket
    finally:
        process.stop(timeout=20)


def test_runs_models_and_aliases_live_in_postgres_and_artifacts_in_s3(mlflow_on_postgres, postgres, tmp_path):
    url, db, bucket = mlflow_on_postgres
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    experiment = client.create_experiment(f"deploy-test-{uuid.uuid4().hex[:6]}")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "accuracy", 0.75)
    note = tmp_path / "note.txt"
    note.write_text("stored through the MLflow server")
    client.log_artifact(run.info.run_id, str(note))
    client.create_registered_model("earthsnap-parent")
    version = client.create_model_version("earthsnap-parent", f"runs:/{run.info.run_id}/note.txt", run.info.run_id)
    client.set_registered_model_alias("earthsnap-parent", "staging", version.version)

    assert client.get_model_version_by_alias("earthsnap-parent", "staging").version == version.version
    assert client.get_run(run.info.run_id).data.metrics["accuracy"] == 0.75
    # The artifact went through the server (mlflow-artifacts:/ URI) into the bucket of the manifest's destination.
    assert client.get_run(run.info.run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
    keys = ObjectStore().list_keys(bucket, "artifacts/")
    assert any(key.endswith(f"{run.info.run_id}/artifacts/note.txt") for key in keys), keys
    # And the tracking data is in PostgreSQL, not in a SQLite file inside the container.
    conn = psycopg2.connect(host=postgres.host, port=postgres.port, user=postgres.user, dbname=db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", ("earthsnap-parent",))
            assert cur.fetchall() == [("staging", int(version.version))]
    finally:
        conn.close()
