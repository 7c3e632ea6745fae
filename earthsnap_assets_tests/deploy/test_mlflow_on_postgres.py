"""deploy/k8s/mlflow.yaml's containers, run for real: PostgreSQL backend, artifacts proxied into S3.

The init containers' (migration, basic-auth users) and the server's command lines and environment are taken
from the manifest, with the ConfigMap and Secret values a cluster would inject, pointed at the test PostgreSQL
(tracking and auth databases) and the test stack's S3. Two deliberate changes: the server listens on a free
loopback port instead of 0.0.0.0:5000, and MLFLOW_S3_ENDPOINT_URL points at SeaweedFS (on AWS it is unset).
The client is the pipeline's MLflow user; who may do what is test_mlflow_basic_auth's subject.
"""

import urllib.request
import uuid
from collections.abc import Iterator

import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.stack.ports import free_port
from earthsnap_assets.stack.process import ManagedProcess
from earthsnap_assets_tests.deploy.mlflow_pod import (
    auth_setup,
    base_env,
    command_line,
    container,
    container_env,
    doc,
    mlflow_pod,
    run_init_container,
    with_option,
)

pytestmark = pytest.mark.stack


def healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
        return response.status == 200


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres, stack, tmp_path_factory) -> Iterator[tuple[str, str, str, tuple[str, str]]]:
    """(tracking URL, database name, artifact bucket, pipeline user) of the manifest's MLflow server, started for
    real: both init containers, then the server with basic auth, its users in a PostgreSQL database of their own."""
    suffix = uuid.uuid4().hex[:8]
    bucket = f"test-mlflow-{suffix}"
    ObjectStore().ensure_bucket(bucket)
    db = postgres.create_database(f"mlflow_{suffix}")
    auth_db = postgres.create_database(f"mlflow_auth_{suffix}")
    home = tmp_path_factory.mktemp("mlflow-home")
    server_url = f"postgresql+psycopg2://{postgres.user}@{postgres.host}:{postgres.port}"
    auth = auth_setup(home, f"{server_url}/{auth_db}")
    config = {**doc("configmap.yaml", "ConfigMap", "earthsnap-config")["data"], "EARTHSNAP_MLFLOW_BUCKET": bucket}
    maps = {
        "earthsnap-config": config,
        "earthsnap-s3": {"AWS_ACCESS_KEY_ID": stack.access_key, "AWS_SECRET_ACCESS_KEY": stack.secret_key},
        "earthsnap-mlflow-db": {"MLFLOW_BACKEND_STORE_URI": f"{server_url}/{db}"},
        **auth.maps,
    }
    pod = mlflow_pod()
    local = {"HOME": str(home), "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint or "", **auth.local_env}

    for init in pod["initContainers"]:  # db-upgrade, then auth-users
        run_init_container(init, {**base_env(), **container_env(init, maps), **local}, home)

    server = container(pod, "mlflow")
    env = {**base_env(), **container_env(server, maps), **local}
    port = free_port()
    args = with_option(with_option(command_line(server, env), "--host", "127.0.0.1"), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess("mlflow", home)
    process.start(args, env=env)
    try:
        process.wait_healthy(lambda: healthy(url), 120, port=port)
        yield url, db, bucket, auth.user("earthsnap-mlflow-pipeline")
    finally:
        process.stop(timeout=20)


def test_runs_models_and_aliases_live_in_postgres_and_artifacts_in_s3(
    mlflow_on_postgres, postgres, tmp_path, monkeypatch
):
    url, db, bucket, (user, password) = mlflow_on_postgres
    # The Dagster pods' credentials (Secret earthsnap-mlflow-pipeline), as MLflow's client reads them.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
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
