"""deploy/k8s/mlflow.yaml's basic auth, run for real: who may read the registry, and who may move an alias.

The `auth-users` init container's script (ConfigMap `mlflow-auth-users`) and the server's command line come from the
manifests, the auth config from the example Secret, with the placeholders filled in: SQLite files in a temporary
folder instead of PostgreSQL (the tracking store and the auth database), a free loopback port, one worker instead of
two (start-up time). No S3 is needed: nothing here uploads an artifact.
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from earthsnap_assets.stack.ports import free_port
from earthsnap_assets.stack.process import ManagedProcess
from earthsnap_assets_tests.deploy.mlflow_pod import (
    AUTH_CONFIG,
    auth_setup,
    base_env,
    command_line,
    container,
    container_env,
    doc,
    mlflow_pod,
    password,
    run_init_container,
    with_option,
)

pytestmark = pytest.mark.stack  # a real server process (no SeaweedFS needed): ~20 s idle, ~60 s on busy cores


@dataclass(frozen=True)
class AuthServer:
    url: str
    admin: tuple[str, str]
    serving: tuple[str, str]
    pipeline: tuple[str, str]
    rerun_users: Callable[[str], None]  # the init container once more, after the serving password changed


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    root = tmp_path_factory.mktemp("mlflow-auth")
    auth = auth_setup(root, f"sqlite:///{root / 'auth.db'}")
    maps = {
        "earthsnap-config": doc("configmap.yaml", "ConfigMap", "earthsnap-config")["data"],
        "earthsnap-mlflow-db": {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'mlflow.db'}"},
        "earthsnap-s3": {"AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": "unused"},
        **auth.maps,
    }
    local = {"HOME": str(root), **auth.local_env}
    pod = mlflow_pod()
    init = container(pod, "auth-users")
    assert container_env(init, maps)["MLFLOW_AUTH_CONFIG_PATH"] == AUTH_CONFIG

    def run_users() -> None:
        run_init_container(init, {**base_env(), **container_env(init, maps), **local}, root, timeout=120)

    def rerun_users(serving_password: str) -> None:
        maps["earthsnap-mlflow-serving"]["MLFLOW_TRACKING_PASSWORD"] = serving_password
        run_users()

    run_users()  # db-upgrade is left out: on SQLite the server creates its tables itself
    server = container(pod, "mlflow")
    env = {**base_env(), **container_env(server, maps), **local}
    port = free_port()
    args = command_line(server, env)
    args = with_option(with_option(with_option(args, "--host", "127.0.0.1"), "--port", str(port)), "--workers", "1")
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess("mlflow-auth", root)
    process.start(args, env=env)

    def healthy() -> bool:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200

    try:
        process.wait_healthy(healthy, 120, port=port)
        yield AuthServer(
            url=url,
            admin=auth.admin,
            serving=auth.user("earthsnap-mlflow-serving"),
            pipeline=auth.user("earthsnap-mlflow-pipeline"),
            rerun_users=rerun_users,
        )
    finally:
        process.stop(timeout=20)  # SIGTERM to its process group, SIGKILL for what is left after 20 s


def api(server: AuthServer, method: str, path: str, user: tuple[str, str] | None, **body: Any) -> requests.Response:
    options: dict[str, Any] = {"params": body} if method == "GET" else {"json": body}
    return requests.request(method, f"{server.url}/api/2.0/mlflow/{path}", auth=user, timeout=30, **options)


def client_as(monkeypatch: pytest.MonkeyPatch, server: AuthServer, user: tuple[str, str]) -> MlflowClient:
    """An MLflow client with the credentials the pods get: MLFLOW_TRACKING_USERNAME / _PASSWORD from their Secret."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def register(client: MlflowClient, name: str) -> str:
    """A registered model with one version (its source a run's artifact path; nothing is uploaded)."""
    experiment = client.create_experiment(f"auth-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment)
    client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    return version.version


def test_every_api_call_needs_a_user_but_health_does_not(auth_server: AuthServer) -> None:
    assert requests.get(f"{auth_server.url}/health", timeout=10).status_code == 200, "kubelet probes carry no user"
    assert api(auth_server, "GET", "registered-models/search", None).status_code == 401
    wrong = (auth_server.serving[0], "not-the-password")
    assert api(auth_server, "GET", "registered-models/search", wrong).status_code == 401
    assert api(auth_server, "GET", "registered-models/search", auth_server.serving).status_code == 200


def test_service_users_exist_and_are_not_admins(auth_server: AuthServer) -> None:
    for user in (auth_server.serving, auth_server.pipeline):
        answer = api(auth_server, "GET", "users/get", auth_server.admin, username=user[0])
        assert answer.status_code == 200, answer.text
        assert answer.json()["user"]["is_admin"] is False, user[0]
    # Only an admin manages users: the pipeline cannot make itself (or anyone) one.
    promote = api(auth_server, "PATCH", "users/update-admin", auth_server.pipeline, username=auth_server.pipeline[0])
    assert promote.status_code == 403


def test_pipeline_writes_what_it_owns_serving_only_reads(auth_server: AuthServer, monkeypatch) -> None:
    name = f"auth-test-{uuid.uuid4().hex[:8]}"
    pipeline = client_as(monkeypatch, auth_server, auth_server.pipeline)
    version = register(pipeline, name)
    pipeline.set_registered_model_alias(name, "staging", version)
    pipeline.set_model_version_tag(name, version, "approval", "pending")

    serving = client_as(monkeypatch, auth_server, auth_server.serving)
    assert serving.get_model_version_by_alias(name, "staging").version == version, "serving reads the registry"
    assert serving.get_model_version(name, version).tags["approval"] == "pending"
    for write in (
        lambda: serving.set_model_version_tag(name, version, "approval", "approved"),
        lambda: serving.set_registered_model_alias(name, "production", version),
        lambda: serving.delete_registered_model_alias(name, "staging"),
    ):
        with pytest.raises(MlflowException) as refused:
            write()
        assert refused.value.get_http_status_code() == 403
    assert pipeline.get_model_version(name, version).tags["approval"] == "pending"
    assert "production" not in pipeline.get_registered_model(name).aliases


def test_admin_creates_a_model_that_the_read_only_user_cannot_tag(auth_server: AuthServer) -> None:
    name = f"auth-admin-{uuid.uuid4().hex[:8]}"
    created = api(auth_server, "POST", "registered-models/create", auth_server.admin, name=name)
    assert created.status_code == 200, created.text
    assert api(auth_server, "GET", "registered-models/get", auth_server.serving, name=name).status_code == 200
    tag = api(auth_server, "POST", "registered-models/set-tag", auth_server.serving, name=name, key="k", value="v")
    assert tag.status_code == 403, tag.text
    # default_permission READ holds for the pipeline user too on what it did not create.
    tag = api(auth_server, "POST", "registered-models/set-tag", auth_server.pipeline, name=name, key="k", value="v")
    assert tag.status_code == 403, tag.text


def test_a_changed_password_in_the_secret_takes_effect_at_the_next_start(auth_server: AuthServer) -> None:
    """The init container is idempotent: run again (next pod start) it sets the Secret's new password."""
    old = auth_server.serving
    new_password = password()
    auth_server.rerun_users(new_password)
    assert api(auth_server, "GET", "registered-models/search", (old[0], new_password)).status_code == 200
    assert api(auth_server, "GET", "registered-models/search", old).status_code == 401
