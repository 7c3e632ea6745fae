"""deploy/k8s/mlflow.yaml's pod run as local processes: environment, command lines, the basic-auth Secrets.

Shared by the tests that start the manifest's MLflow server for real (test_mlflow_on_postgres,
test_mlflow_basic_auth). What a cluster would mount or inject is replaced by local files and values.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from earthsnap_assets_tests.deploy.k8s_schema import expand_vars, k8s_documents

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# Where the manifest mounts the auth-users script (ConfigMap) and the auth config (Secret).
SCRIPT_DIR = "/opt/earthsnap/"
AUTH_CONFIG = "/etc/mlflow-auth/basic_auth.ini"


def doc(file: str, kind: str, name: str | None = None) -> dict[str, Any]:
    """The first document of `kind` (named `name`, if given) in a file of deploy/k8s."""
    return next(
        d for d in k8s_documents(K8S / file) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    )


def example_secret(name: str) -> dict[str, str]:
    return dict(doc("secrets.example.yaml", "Secret", name)["stringData"])


def mlflow_pod() -> dict[str, Any]:
    return doc("mlflow.yaml", "Deployment", "mlflow")["spec"]["template"]["spec"]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == name)


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
    return expand_vars(container["command"] + container.get("args", []), env)


def with_option(args: list[str], option: str, value: str) -> list[str]:
    index = args.index(option)
    return [*args[: index + 1], value, *args[index + 2 :]]


def password() -> str:
    return secrets.token_urlsafe(18)  # MLflow wants at least 12 characters


@dataclass
class AuthSetup:
    """The basic-auth files and Secrets of the example, placeholders filled in, for one local server."""

    root: Path
    maps: dict[str, dict[str, str]]
    admin: tuple[str, str]

    def user(self, secret: str) -> tuple[str, str]:
        values = self.maps[secret]
        return values["MLFLOW_TRACKING_USERNAME"], values["MLFLOW_TRACKING_PASSWORD"]

    @property
    def local_env(self) -> dict[str, str]:
        """What the cluster's mounts provide, here as local paths."""
        return {"MLFLOW_AUTH_CONFIG_PATH": str(self.root / "basic_auth.ini")}


def auth_setup(root: Path, auth_database_uri: str) -> AuthSetup:
    """basic_auth.ini from the example Secret (database and admin password filled in), the auth-users script from
    its ConfigMap, and the three auth Secrets with fresh passwords."""
    auth = example_secret("earthsnap-mlflow-auth")
    admin_password = password()
    lines = []
    for line in auth["basic_auth.ini"].splitlines():
        key = line.split("=", 1)[0].strip()
        if key == "database_uri":
            line = f"database_uri = {auth_database_uri}"
        elif key == "admin_password":
            line = f"admin_password = {admin_password}"
        lines.append(line)
    ini = "\n".join(lines) + "\n"
    assert "CHANGE-ME" not in ini
    (root / "basic_auth.ini").write_text(ini)
    admin = next(line for line in lines if line.startswith("admin_username")).split("=", 1)[1].strip()
    volumes = {volume["name"]: volume for volume in mlflow_pod()["volumes"]}
    for name, text in doc("mlflow.yaml", "ConfigMap", volumes["auth-users"]["configMap"]["name"])["data"].items():
        (root / name).write_text(text)
    maps = {
        "earthsnap-mlflow-auth": {**auth, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)},
        "earthsnap-mlflow-serving": {
            **example_secret("earthsnap-mlflow-serving"),
            "MLFLOW_TRACKING_PASSWORD": password(),
        },
        "earthsnap-mlflow-pipeline": {
            **example_secret("earthsnap-mlflow-pipeline"),
            "MLFLOW_TRACKING_PASSWORD": password(),
        },
    }
    return AuthSetup(root=root, maps=maps, admin=(admin, admin_password))


def run_init_container(init: dict[str, Any], env: dict[str, str], script_dir: Path, timeout: float = 300) -> None:
    """One init container's command, to completion: `mlflow ...` as is, `python <script>` from `script_dir`."""
    args = [arg.replace(SCRIPT_DIR, f"{script_dir}/") for arg in command_line(init, env)]
    if args[0] == "python":
        args[0] = sys.executable
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{init['name']}: {done.stderr[-2000:]}"


def base_env() -> dict[str, str]:
    """This process's environment without MLflow and AWS settings, the venv's bin first on PATH."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    return base
