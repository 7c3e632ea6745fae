"""deploy/k8s: schema-valid manifests whose names, ports, probes and settings agree with the code they run.

All offline: the Kubernetes schemas ship with kubernetes_validate, and the command lines are parsed by the
real click commands (`earthsnap serve`, `mlflow server`, `mlflow db upgrade`) without running them, so a
flag that does not exist or a probe on a route the app does not have fails here, not in the cluster.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from earthsnap_assets.settings import Settings
from earthsnap_assets_tests.deploy.k8s_schema import (
    K8S_VERSIONS,
    VAR_REF,
    ManifestError,
    describe,
    expand_vars,
    k8s_documents,
    validate_fragment,
    validate_manifest,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRETS_EXAMPLE = "secrets.example.yaml"  # applied by hand, after editing: never in the kustomization
NAMESPACE = "earthsnap"
ENVIRONMENTS = ("staging", "production")
SERVING_PORT = 8080
MLFLOW_PORT = 5000
REVIEW_PORT = 8080
# The project's images, and Label Studio's official one at the version the local stack pins.
LABEL_STUDIO_IMAGE = "heartexlabs/label-studio:1.23.2"
ALLOWED_IMAGES = frozenset(
    {"earthsnap/earthsnap:0.1.0-cpu", "earthsnap/earthsnap:0.1.0-cuda", "earthsnap/mlflow:0.1.0", LABEL_STUDIO_IMAGE}
)
SPOOL_DIR = "/var/spool/earthsnap"
SECRET_KEYS = {
    "earthsnap-s3": {
        "EARTHSNAP_S3_ACCESS_KEY",
        "EARTHSNAP_S3_SECRET_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    },
    "earthsnap-serving-s3": {"EARTHSNAP_S3_ACCESS_KEY", "EARTHSNAP_S3_SECRET_KEY"},
    "earthsnap-mlflow-db": {"MLFLOW_BACKEND_STORE_URI"},
    "earthsnap-review": {
        "EARTHSNAP_REVIEW_USER",
        "EARTHSNAP_REVIEW_PASSWORD",
        "EARTHSNAP_REVIEW_TOKEN",
        "LABEL_STUDIO_AWS_ACCESS_KEY_ID",
        "LABEL_STUDIO_AWS_SECRET_ACCESS_KEY",
    },
    "earthsnap-label-studio-db": {"POSTGRE_HOST", "POSTGRE_PASSWORD"},
    "earthsnap-mlflow-auth": {"basic_auth.ini", "MLFLOW_FLASK_SERVER_SECRET_KEY"},
    "earthsnap-mlflow-serving": {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
    "earthsnap-mlflow-pipeline": {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
    "earthsnap-release": {"EARTHSNAP_RELEASE_KEY"},
}
# Keys of the example Secrets that are names, not secrets: they may keep their example value.
NOT_SECRET = {"MLFLOW_TRACKING_USERNAME"}
# Where a library reads the non-EARTHSNAP variables of the ConfigMap: (package, file that names them).
READERS = {"MLFLOW_": ("mlflow", "environment_variables.py"), "AWS_": ("botocore", "configprovider.py")}


# --- loading -----------------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    """Every YAML file under deploy/k8s except the kustomization (not a Kubernetes kind)."""
    return sorted(p for p in K8S.rglob("*") if p.suffix in {".yaml", ".yml"} and p != KUSTOMIZATION)


def relative(path: Path) -> str:
    return path.relative_to(K8S).as_posix()


@functools.cache
def documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file relative to deploy/k8s, document) for every document of every manifest file."""
    return tuple((relative(path), doc) for path in manifest_files() for doc in k8s_documents(path))


def doc_ids() -> list[str]:
    return [f"{name}:{describe(doc)}" for name, doc in documents()]


def objects(kind: str) -> dict[str, dict[str, Any]]:
    """Objects of one kind by name; names are unique per kind (a test checks)."""
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc.get("kind") == kind}


def deployment(name: str) -> dict[str, Any]:
    return objects("Deployment")[name]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{describe(workload)}: expected one container, found {len(containers)}"
    return containers[0]


def all_containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def workloads() -> list[dict[str, Any]]:
    return list(objects("Deployment").values())


def config() -> dict[str, str]:
    return objects("ConfigMap")["earthsnap-config"]["data"]


def resolve_port(container: dict[str, Any], port: int | str) -> int | None:
    """The container port a probe or a Service's targetPort means (by number or by name), or None."""
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return declared["containerPort"]
    return None


def explicit_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def expand(args: list[str], container: dict[str, Any]) -> list[str]:
    """$(VAR) references replaced as the kubelet would, from literal values or the ConfigMap."""
    values: dict[str, str] = {}
    for name, entry in explicit_env(container).items():
        if "value" in entry:
            values[name] = entry["value"]
        elif ref := entry.get("valueFrom", {}).get("configMapKeyRef"):
            values[name] = objects("ConfigMap")[ref["name"]]["data"][ref["key"]]
        else:
            values[name] = f"<{name}>"  # a Secret or a resource field: only its presence matters here
    return expand_vars(args, values)


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity (`500m`, `2`, `4Gi`) as a number, for comparing requests with limits."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def library_source(package: str, filename: str) -> str:
    """Text of a file of an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    return (Path(next(iter(spec.submodule_search_locations))) / filename).read_text(encoding="utf-8")


def settings_names() -> set[str]:
    """Environment variables earthsnap_assets/settings.py reads (its code and its documented list)."""
    source = (ROOT / "earthsnap_assets" / "settings.py").read_text(encoding="utf-8")
    return set(re.findall(r"\bEARTHSNAP_[A-Z][A-Z0-9_]*\b", source)) | set(re.findall(r"\bMLFLOW_[A-Z_]+\b", source))


# --- 1. schema -----------------------------------------------------------------------------------------


def test_manifests_exist() -> None:
    """The parametrized tests below pass vacuously on an empty directory; this one does not."""
    assert manifest_files(), f"no manifests under {K8S}"
    for path in manifest_files():
        assert k8s_documents(path), f"{relative(path)} has no documents"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), documents(), ids=doc_ids())
def test_document_matches_kubernetes_schema(name: str, doc: dict[str, Any], version: str) -> None:
    """Strict: unknown fields fail, on the oldest and the newest Kubernetes version supported."""
    validate_manifest(doc, versions=(version,))


def test_objects_are_unique_and_in_the_namespace() -> None:
    seen: set[tuple[str, str]] = set()
    for name, doc in documents():
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{name}: {describe(doc)} is defined twice"
        seen.add(key)
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{name}: {describe(doc)} is not in {NAMESPACE}"
    assert ("Namespace", NAMESPACE) in seen


def test_kustomization_lists_every_manifest_but_the_secrets() -> None:
    """`kubectl apply -k` must apply everything in the directory, and never the example Secrets."""
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    for entry in listed:
        assert not PurePosixPath(entry).is_absolute() and ".." not in PurePosixPath(entry).parts, entry
        assert (K8S / entry).is_file(), f"kustomization.yaml lists {entry}, which does not exist"
    expected = {relative(path) for path in manifest_files()} - {SECRETS_EXAMPLE}
    assert set(listed) == expected, f"missing {sorted(expected - set(listed))}, extra {sorted(set(listed) - expected)}"
    for entry in listed:
        kinds = {doc["kind"] for doc in k8s_documents(K8S / entry)}
        assert "Secret" not in kinds, f"{entry} holds a Secret: credentials do not belong in the kustomization"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders_the_same_objects() -> None:
    """`kubectl kustomize` (offline) builds the directory into exactly the listed objects, images untouched."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    built = {describe(doc): doc for doc in yaml.safe_load_all(rendered.stdout) if doc}
    expected = {describe(doc): doc for name, doc in documents() if name != SECRETS_EXAMPLE}
    assert sorted(built) == sorted(expected)
    assert built == expected


# --- 2. the validator bites ----------------------------------------------------------------------------


def test_validator_rejects_a_misspelled_field_and_a_wrong_type() -> None:
    original = deployment("earthsnap-production")
    validate_manifest(copy.deepcopy(original))  # so that the failures below come from the edits alone

    misspelled = copy.deepcopy(original)
    misspelled["spec"]["replica"] = misspelled["spec"].pop("replicas")
    with pytest.raises(ManifestError, match=r"\$\.spec: .*'replica' was unexpected"):
        validate_manifest(misspelled)

    too_deep = copy.deepcopy(original)
    too_deep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["path"] = "/ready"
    with pytest.raises(ManifestError, match=r"readinessProbe: .*'path' was unexpected"):
        validate_manifest(too_deep)

    wrong_type = copy.deepcopy(original)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(ManifestError, match=r"containerPort: '8080' is not of type 'integer'"):
        validate_manifest(wrong_type)


def test_fragment_validation_bites_and_unknown_kinds_are_refused() -> None:
    """The helpers other tests use for pod specs embedded in other YAML, and for non-Kubernetes documents."""
    container = main_container(deployment("mlflow"))
    validate_fragment(container, "io.k8s.api.core.v1.Container")
    validate_fragment(pod_spec(deployment("mlflow")), "io.k8s.api.core.v1.PodSpec")
    with pytest.raises(ManifestError, match="'envfrom' was unexpected"):
        validate_fragment({**container, "envfrom": container["envFrom"]}, "io.k8s.api.core.v1.Container")
    with pytest.raises(ManifestError, match=r"did you mean \['io.k8s.api.core.v1.Container'\]"):
        validate_fragment(container, "Container")
    with pytest.raises(ManifestError, match="Couldn't find schema for kind Kustomization"):
        validate_manifest(yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8")))


# --- 3. serving ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_serving_command_is_the_real_cli(env: str) -> None:
    """The arguments parse with `earthsnap serve` itself; they serve `env` on all interfaces, on the pod's port."""
    from earthsnap_assets.serving.cli import serve

    workload = deployment(f"earthsnap-{env}")
    container = main_container(workload)
    assert container["command"] == ["earthsnap"]
    assert container["args"][0] == "serve"
    params = serve.make_context("serve", expand(container["args"][1:], container)).params
    assert params["env"] == env
    assert params["host"] == "0.0.0.0"
    assert params["port"] == SERVING_PORT == resolve_port(container, "http")
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "earthsnap-serving"
    assert labels["earthsnap.io/environment"] == env


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_serving_probes(env: str) -> None:
    """Ready = models loaded (`/ready`), alive = process answers (`/health`), both on the serving port.

    The startup probe is on /health, not /ready: an alias that does not exist yet must leave the pod
    waiting, unready, rather than restarting forever.
    """
    from earthsnap_assets.serving.app import create_app

    container = main_container(deployment(f"earthsnap-{env}"))
    routes = {route.path for route in create_app(env).routes}
    expected = {"readinessProbe": "/ready", "livenessProbe": "/health", "startupProbe": "/health"}
    for probe, path in expected.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path, f"{probe} on {http['path']}"
        assert http["path"] in routes
        assert resolve_port(container, http["port"]) == SERVING_PORT, f"{probe} on port {http['port']}"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "imports on a throttled CPU are slow"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_serving_environment_and_scratch_space(env: str) -> None:
    """Settings come from the ConfigMap and serving's S3 Secret; EARTHSNAP_HOME and /tmp are writable emptyDirs."""
    workload = deployment(f"earthsnap-{env}")
    container = main_container(workload)
    sources = [next(iter(source.items())) for source in container["envFrom"]]
    assert ("configMapRef", {"name": "earthsnap-config"}) in sources
    assert ("secretRef", {"name": "earthsnap-serving-s3"}) in sources, "serving's own, least-privilege S3 keys"
    assert ("secretRef", {"name": "earthsnap-s3"}) not in sources, "the pipeline's S3 keys"
    assert ("secretRef", {"name": "earthsnap-release"}) in sources, "serve only signed releases"
    volumes = {volume["name"]: volume for volume in pod_spec(workload).get("volumes", [])}
    writable = [
        mount["mountPath"]
        for mount in container.get("volumeMounts", [])
        if not mount.get("readOnly") and "emptyDir" in volumes[mount["name"]]
    ]
    for path in (config()["EARTHSNAP_HOME"], "/tmp"):
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in writable), f"{path} is not writable"
    threads = explicit_env(container)["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert threads["resource"] == "limits.cpu", "torch would start one thread per core of the node"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_serving_spool_has_its_own_volume_and_the_logs_time_to_close(env: str) -> None:
    """The log spool is a volume of its own (a container restart keeps it; /tmp downloads cannot crowd it out),
    and SIGKILL comes only after both logs had their 30 s to close (preStop + 2 x 30 s)."""
    from earthsnap_assets.serving.cli import serve

    workload = deployment(f"earthsnap-{env}")
    container = main_container(workload)
    params = serve.make_context("serve", expand(container["args"][1:], container)).params
    assert params["spool_dir"] == SPOOL_DIR
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec(workload)["volumes"]}
    spool = volumes[mounts[SPOOL_DIR]]
    assert mounts[SPOOL_DIR] != mounts["/tmp"], "the spool shares its volume with model downloads"
    assert "emptyDir" in spool, "survives container restarts; pod deletion: see deploy/README.md"
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod_spec(workload)["terminationGracePeriodSeconds"] >= pre_stop + 2 * 30


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_serving_keeps_no_photos(env: str) -> None:
    """Privacy: EARTHSNAP_KEEP_PHOTOS is set explicitly to `none`, and that is what `earthsnap serve` reads."""
    from earthsnap_assets.serving.cli import serve

    container = main_container(deployment(f"earthsnap-{env}"))
    assert explicit_env(container)["EARTHSNAP_KEEP_PHOTOS"] == {"name": "EARTHSNAP_KEEP_PHOTOS", "value": "none"}
    assert "--keep-photos" not in container["args"], "one place only: the variable"
    (option,) = [p for p in serve.params if p.name == "keep_photos"]
    assert option.envvar == "EARTHSNAP_KEEP_PHOTOS"
    assert "EARTHSNAP_KEEP_PHOTOS" not in config(), "the ConfigMap would be a second place to turn it on"


def test_production_survives_disruptions() -> None:
    """Two replicas, a rollout that never drops below them, and a budget that keeps one through drains."""
    production = deployment("earthsnap-production")
    assert production["spec"]["replicas"] == 2
    for env in ENVIRONMENTS:
        rolling = deployment(f"earthsnap-{env}")["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxUnavailable"] == 0, f"{env}: a rollout must wait for the new pod's model"
    labels = production["spec"]["template"]["metadata"]["labels"]
    budgets = [
        pdb
        for pdb in objects("PodDisruptionBudget").values()
        if pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(budgets) == 1
    assert 1 <= budgets[0]["spec"]["minAvailable"] < production["spec"]["replicas"], "or drains would block"


def test_services_select_exactly_one_deployment() -> None:
    """Each Service reaches the pods of one Deployment (its namesake), on a port those pods listen on."""
    selected: dict[str, str] = {}
    for name, service in objects("Service").items():
        selector = service["spec"]["selector"]
        matches = [
            workload
            for workload in workloads()
            if selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert [describe(m) for m in matches] == [f"Deployment/{name}"], f"Service {name} selects {matches}"
        container = main_container(matches[0])
        for port in service["spec"]["ports"]:
            assert resolve_port(container, port["targetPort"]) is not None, f"{name}: no port {port['targetPort']}"
        selected[name] = matches[0]["metadata"]["name"]
    assert selected["earthsnap-staging"] != selected["earthsnap-production"]
    assert selected["label-studio"] == "label-studio"
    for name in ("earthsnap-staging", "earthsnap-production"):
        (port,) = objects("Service")[name]["spec"]["ports"]
        assert port["port"] == 80
        assert resolve_port(main_container(deployment(name)), port["targetPort"]) == SERVING_PORT


def test_deployment_selectors_match_their_pods_only() -> None:
    """A selector must match its own template, and no other Deployment's (or the two would fight over pods)."""
    for workload in workloads():
        selector = workload["spec"]["selector"]["matchLabels"]
        owners = [w for w in workloads() if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert owners == [workload], f"{describe(workload)} selects {[describe(o) for o in owners]}"


# --- 3b. Label Studio (the review queue) ---------------------------------------------------------------


def label_studio() -> dict[str, Any]:
    return deployment("label-studio")


def test_label_studio_is_the_pinned_version_of_the_local_stack() -> None:
    from earthsnap_assets.stack import label_studio as local

    container = main_container(label_studio())
    assert container["image"] == f"heartexlabs/label-studio:{local.VERSION}" == LABEL_STUDIO_IMAGE
    assert container["command"] == ["label-studio"] and container["args"][0] == "start"
    args = container["args"]
    assert args[args.index("--port") + 1] == str(REVIEW_PORT) == str(resolve_port(container, "http"))
    assert args[args.index("--internal-host") + 1] == "0.0.0.0"
    (port,) = objects("Service")["label-studio"]["spec"]["ports"]
    assert resolve_port(container, port["targetPort"]) == REVIEW_PORT
    assert urlsplit(config()["EARTHSNAP_REVIEW_URL"]).port == port["port"]


def test_label_studio_runs_alone_as_non_root_with_health_probes() -> None:
    workload = label_studio()
    spec = pod_spec(workload)
    assert workload["spec"]["replicas"] == 1
    assert workload["spec"]["strategy"]["type"] == "Recreate", "migrations at start: one version at a time"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["serviceAccountName"] == "label-studio"
    container = main_container(workload)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/health", probe
        assert resolve_port(container, http["port"]) == REVIEW_PORT, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "first start migrates an empty database"


def test_label_studio_credentials_come_from_secrets() -> None:
    """Admin, token and database password never literal; the token is the one the platform uses."""
    from earthsnap_assets.stack.label_studio import environment

    container = main_container(label_studio())
    env = explicit_env(container)
    for name, key in (
        ("LABEL_STUDIO_USERNAME", "EARTHSNAP_REVIEW_USER"),
        ("LABEL_STUDIO_PASSWORD", "EARTHSNAP_REVIEW_PASSWORD"),
        ("LABEL_STUDIO_USER_TOKEN", "EARTHSNAP_REVIEW_TOKEN"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "earthsnap-review", "key": key}, name
    for name in ("LABEL_STUDIO_AWS_ACCESS_KEY_ID", "LABEL_STUDIO_AWS_SECRET_ACCESS_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "earthsnap-review" and ref["optional"] is True, "IRSA: the keys may be absent"
    sources = [next(iter(source.items())) for source in container["envFrom"]]
    assert sources == [("secretRef", {"name": "earthsnap-label-studio-db"})]
    assert env["DJANGO_DB"]["value"] == "default"
    assert not {"POSTGRE_PASSWORD", "POSTGRE_HOST"} & set(env), "from the Secret only"
    # The settings the local stack gives Label Studio, here too (legacy token, no sign-up, no phoning home).
    local = environment(Settings.from_env({}))
    for name in (
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK",
        "LABEL_STUDIO_LATEST_VERSION_CHECK",
        "LABEL_STUDIO_COLLECT_ANALYTICS",
        "LABEL_STUDIO_SENTRY_DSN",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN",
    ):
        assert env[name]["value"] == local[name], name
    # On AWS: AWS's own endpoints (the ConfigMap says so), so no S3 endpoint for Label Studio either.
    assert config()["EARTHSNAP_S3_ENDPOINT"] == "aws" and "LABEL_STUDIO_S3_ENDPOINT" not in env


def test_only_label_studio_and_the_code_location_see_the_review_secret() -> None:
    """Serving and MLflow never get the review token (the Dagster code location gets it from the Helm values)."""
    for workload in workloads():
        if workload["metadata"]["name"] == "label-studio":
            continue
        text = yaml.safe_dump(pod_spec(workload))
        assert "earthsnap-review" not in text and "label-studio-db" not in text, describe(workload)


# --- 4. MLflow -----------------------------------------------------------------------------------------


@functools.cache
def mlflow_params() -> dict[str, Any]:
    """The server's arguments as `mlflow server` itself parses them (no server is started)."""
    from mlflow.cli import server

    container = main_container(deployment("mlflow"))
    assert container["command"] == ["mlflow"]
    assert container["args"][0] == "server"
    return server.make_context("server", expand(container["args"][1:], container)).params


def test_mlflow_backend_store_comes_from_the_secret() -> None:
    """No database URI in the manifest: `mlflow server` and the migration read it from the Secret."""
    from mlflow.cli import server

    workload = deployment("mlflow")
    tracking = [c for c in all_containers(workload) if c["command"] == ["mlflow"]]  # not `auth-users` (its own db)
    assert [c["name"] for c in tracking] == ["db-upgrade", "mlflow"]
    for container in tracking:
        entry = explicit_env(container)["MLFLOW_BACKEND_STORE_URI"]
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "earthsnap-mlflow-db", "key": "MLFLOW_BACKEND_STORE_URI"}, container["name"]
        for arg in container.get("args", []):
            assert not re.search(r"postgres|sqlite|mysql", arg), f"{container['name']}: literal database URI {arg!r}"
    container = main_container(workload)
    args = container["args"]
    if "--backend-store-uri" in args:
        assert args[args.index("--backend-store-uri") + 1] == "$(MLFLOW_BACKEND_STORE_URI)"
    else:  # the server reads the variable itself: true of this MLflow version, checked here
        (option,) = [p for p in server.params if p.name == "backend_store_uri"]
        assert option.envvar == "MLFLOW_BACKEND_STORE_URI"


def test_mlflow_migrates_then_serves_artifacts_from_s3() -> None:
    from mlflow.db import upgrade

    params = mlflow_params()
    assert params["serve_artifacts"] is True
    assert params["artifacts_destination"] == f"s3://{config()['EARTHSNAP_MLFLOW_BUCKET']}/artifacts"
    assert params["host"] == "0.0.0.0"
    assert int(params["workers"]) >= 1
    inits = pod_spec(deployment("mlflow"))["initContainers"]
    assert [c["name"] for c in inits] == ["db-upgrade", "auth-users"], "migrate first, then the users"
    init = inits[0]
    assert init["image"] == main_container(deployment("mlflow"))["image"], "migrate with the server's own version"
    assert init["command"] == ["mlflow"] and init["args"][:2] == ["db", "upgrade"]
    assert upgrade.make_context("upgrade", expand(init["args"][2:], init)).params["url"] == "<MLFLOW_BACKEND_STORE_URI>"


def test_mlflow_runs_alone_on_its_port_with_health_probes() -> None:
    """One replica, replaced (not rolled): migrations and first-start table creation are not multi-pod safe."""
    workload = deployment("mlflow")
    container = main_container(workload)
    assert workload["spec"]["replicas"] == 1
    assert workload["spec"]["strategy"]["type"] == "Recreate"
    assert mlflow_params()["port"] == MLFLOW_PORT == resolve_port(container, "http")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/health", probe
        assert resolve_port(container, http["port"]) == MLFLOW_PORT, probe
    (port,) = objects("Service")["mlflow"]["spec"]["ports"]
    assert port["port"] == MLFLOW_PORT
    assert resolve_port(container, port["targetPort"]) == MLFLOW_PORT


def test_mlflow_accepts_the_host_names_clients_use() -> None:
    """MLflow refuses unknown Host headers (DNS rebinding); the cluster names of the Service must pass."""
    from mlflow.server.security_utils import is_allowed_host_header, is_health_endpoint

    allowed = [host.strip() for host in mlflow_params()["allowed_hosts"].split(",")]
    tracking = urlsplit(config()["MLFLOW_TRACKING_URI"]).netloc
    for host in (tracking, "mlflow:5000", "mlflow.earthsnap:5000", "mlflow.earthsnap.svc:5000", "localhost:5000"):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "attacker.example:5000"), "every host is allowed"
    assert is_health_endpoint("/health"), "kubelet probes by pod IP: /health must be exempt"


# --- 4b. MLflow authentication ------------------------------------------------------------------------


def secret_file_mount(workload: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at `path` in `container`: a mounted Secret volume that projects that key."""
    volumes = {volume["name"]: volume for volume in pod_spec(workload)["volumes"]}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix) or "secret" not in volumes[mount["name"]]:
            continue
        assert mount.get("readOnly") is True, f"{container['name']}: {mount['mountPath']} is writable"
        secret = volumes[mount["name"]]["secret"]
        (item,) = [item for item in secret.get("items", []) if item["path"] == path[len(prefix) :]]
        return secret["secretName"], item["key"]
    raise AssertionError(f"{container['name']}: {path} is not a file of a mounted Secret")


def example_auth_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The example Secret's basic_auth.ini as MLflow's own reader understands it."""
    from mlflow.server.auth.config import read_auth_config

    path = tmp_path / "basic_auth.ini"
    path.write_text(objects("Secret")["earthsnap-mlflow-auth"]["stringData"]["basic_auth.ini"])
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    return read_auth_config()


def test_mlflow_runs_the_basic_auth_app_with_its_config_from_the_secret() -> None:
    """`--app-name basic-auth` (an app MLflow registers), configured by a file of Secret earthsnap-mlflow-auth."""
    from importlib.metadata import entry_points

    assert mlflow_params()["app_name"] == "basic-auth"
    assert "basic-auth" in {entry.name for entry in entry_points(group="mlflow.app")}
    workload = deployment("mlflow")
    for name in ("mlflow", "auth-users"):
        container = next(c for c in all_containers(workload) if c["name"] == name)
        path = explicit_env(container)["MLFLOW_AUTH_CONFIG_PATH"]["value"]
        assert secret_file_mount(workload, container, path) == ("earthsnap-mlflow-auth", "basic_auth.ini"), name
    key = explicit_env(main_container(workload))["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": "earthsnap-mlflow-auth", "key": "MLFLOW_FLASK_SERVER_SECRET_KEY"}, "same key in each worker"


def test_example_auth_config_reads_by_default_and_keeps_users_in_postgres(tmp_path, monkeypatch) -> None:
    from mlflow.server.auth.config import DEFAULT_AUTHORIZATION_FUNCTION
    from sqlalchemy.engine import make_url

    auth = example_auth_config(tmp_path, monkeypatch)
    assert auth.default_permission in {"READ", "NO_PERMISSIONS"}, "READ or stricter"
    assert auth.authorization_function == DEFAULT_AUTHORIZATION_FUNCTION
    assert auth.admin_username and auth.admin_password == "CHANGE-ME"
    users = make_url(auth.database_uri)
    tracking = make_url(objects("Secret")["earthsnap-mlflow-db"]["stringData"]["MLFLOW_BACKEND_STORE_URI"])
    assert users.drivername == tracking.drivername == "postgresql+psycopg2"
    assert users.database != tracking.database, "both keep an alembic_version table: one database each"


def test_each_mlflow_client_has_its_own_user() -> None:
    """Serving: the read-only user; the auth Secret (admin password, database) only in the MLflow pod; the init
    container creates both service users from their clients' Secrets (one place for each password)."""
    for env in ENVIRONMENTS:
        container = main_container(deployment(f"earthsnap-{env}"))
        refs = {source["secretRef"]["name"] for source in container["envFrom"] if "secretRef" in source}
        assert "earthsnap-mlflow-serving" in refs and "earthsnap-mlflow-pipeline" not in refs, env
    for workload in workloads():
        if workload["metadata"]["name"] != "mlflow":
            assert "earthsnap-mlflow-auth" not in yaml.safe_dump(pod_spec(workload)), describe(workload)
    init = next(c for c in all_containers(deployment("mlflow")) if c["name"] == "auth-users")
    refs = {
        (entry["name"], ref["name"], ref["key"])
        for entry in init["env"]
        if (ref := entry.get("valueFrom", {}).get("secretKeyRef"))
    }
    for role, secret in (("SERVING", "earthsnap-mlflow-serving"), ("PIPELINE", "earthsnap-mlflow-pipeline")):
        assert (f"{role}_USERNAME", secret, "MLFLOW_TRACKING_USERNAME") in refs
        assert (f"{role}_PASSWORD", secret, "MLFLOW_TRACKING_PASSWORD") in refs
    users = {
        objects("Secret")[s]["stringData"]["MLFLOW_TRACKING_USERNAME"]
        for s in ("earthsnap-mlflow-serving", "earthsnap-mlflow-pipeline")
    }
    assert len(users) == 2


def test_the_init_script_is_the_configmap_it_mounts() -> None:
    """`auth-users` runs a script of ConfigMap mlflow-auth-users; it must be mounted where the command looks."""
    workload = deployment("mlflow")
    init = next(c for c in all_containers(workload) if c["name"] == "auth-users")
    volumes = {volume["name"]: volume for volume in pod_spec(workload)["volumes"]}
    (script,) = init["args"]
    (mount,) = [m for m in init["volumeMounts"] if script.startswith(m["mountPath"].rstrip("/") + "/")]
    data = objects("ConfigMap")[volumes[mount["name"]]["configMap"]["name"]]["data"]
    source = data[script[len(mount["mountPath"].rstrip("/")) + 1 :]]
    compile(source, script, "exec")  # valid Python
    assert init["command"] == ["python"]


# --- 5. ConfigMap --------------------------------------------------------------------------------------


def test_config_keys_are_read_by_someone() -> None:
    """A typo in a key (EARTHSNAP_S3_REGOIN) would be ignored silently; every key must be a name in use."""
    names = settings_names()
    for key in config():
        if key.startswith("EARTHSNAP_") or key in names:
            assert key in names, f"{key} is not read by earthsnap_assets/settings.py"
            continue
        prefix = next((p for p in READERS if key.startswith(p)), None)
        assert prefix is not None, f"{key}: nobody reads it"
        package, filename = READERS[prefix]
        quoted = re.compile(rf"[\"']{key}[\"']")
        assert quoted.search(library_source(package, filename)), f"{key} is not read by {package}"


def test_config_means_what_it_says_to_settings() -> None:
    """Settings.from_env on exactly this ConfigMap (plus the Secret) points at AWS and the in-cluster Services."""
    secret = objects("Secret")["earthsnap-s3"]["stringData"]
    settings = Settings.from_env({**config(), **secret})
    data = config()
    assert data["EARTHSNAP_S3_ENDPOINT"] == "aws" and settings.s3_endpoint is None
    assert data["AWS_DEFAULT_REGION"] == data["EARTHSNAP_S3_REGION"] == settings.region
    assert settings.buckets == (
        data["EARTHSNAP_RAW_BUCKET"],
        data["EARTHSNAP_LAKE_BUCKET"],
        data["EARTHSNAP_MLFLOW_BUCKET"],
    )
    assert str(settings.home) == data["EARTHSNAP_HOME"]
    assert settings.mlflow_tracking_uri == "http://mlflow.earthsnap.svc.cluster.local:5000"
    for env in ENVIRONMENTS:
        assert settings.endpoint_url(env) == f"http://earthsnap-{env}.earthsnap.svc.cluster.local"
    assert settings.review_url == f"http://label-studio.earthsnap.svc.cluster.local:{REVIEW_PORT}"


def test_config_urls_point_at_services_here() -> None:
    """`<service>.<namespace>.svc.cluster.local[:port]` of each URL names a Service of this directory and its port."""
    services = objects("Service")
    for key in ("MLFLOW_TRACKING_URI", "EARTHSNAP_STAGING_URL", "EARTHSNAP_PRODUCTION_URL", "EARTHSNAP_REVIEW_URL"):
        url = urlsplit(config()[key])
        name, namespace, *rest = (url.hostname or "").split(".")
        assert rest == ["svc", "cluster", "local"] and namespace == NAMESPACE, key
        assert name in services, f"{key}: no Service {name}"
        assert (url.port or 80) in {port["port"] for port in services[name]["spec"]["ports"]}, key


def test_pods_reference_only_what_exists() -> None:
    """Every ConfigMap, Secret, key and ServiceAccount a pod refers to is defined here (Secrets in the example)."""
    defined = {("ConfigMap", name): set(doc.get("data", {})) for name, doc in objects("ConfigMap").items()}
    for name, doc in objects("Secret").items():
        defined["Secret", name] = set(doc.get("stringData", {})) | set(doc.get("data", {}))
    for workload in workloads():
        spec = pod_spec(workload)
        assert spec["serviceAccountName"] in objects("ServiceAccount"), describe(workload)
        for container in all_containers(workload):
            for source in container.get("envFrom", []):
                for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if field in source:
                        assert (kind, source[field]["name"]) in defined, f"{container['name']}: {source}"
            for entry in container.get("env", []):
                for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    if ref := entry.get("valueFrom", {}).get(field):
                        assert ref["key"] in defined.get((kind, ref["name"]), set()), f"{container['name']}: {ref}"


def test_example_secrets_are_placeholders() -> None:
    """The example has exactly the keys the pods use, and no value that could be mistaken for a real one."""
    secrets = {name: doc for name, doc in objects("Secret").items()}
    assert set(secrets) == set(SECRET_KEYS)
    for name, doc in secrets.items():
        assert "data" not in doc, f"{name}: use stringData (readable placeholders)"
        assert set(doc["stringData"]) == SECRET_KEYS[name], name
        for key, value in doc["stringData"].items():
            assert key in NOT_SECRET or "CHANGE-ME" in value, f"{name}.{key} is not a placeholder"
    files = {name for name, doc in documents() if doc["kind"] == "Secret"}
    assert files == {SECRETS_EXAMPLE}


def test_variable_references_are_defined_in_env() -> None:
    """The kubelet leaves an unknown $(VAR) as literal text; every reference must be an `env` entry."""
    for workload in workloads():
        for container in all_containers(workload):
            declared = set(explicit_env(container))
            for text in [*container.get("command", []), *container.get("args", [])]:
                for name in VAR_REF.findall(text):
                    assert name in declared, f"{describe(workload)}/{container['name']}: $({name}) is not in env"


def test_service_links_are_off() -> None:
    """Service links would inject `<SERVICE>_PORT=tcp://ip:port` into every pod of the namespace.

    For these Service names that overwrites variables the code reads as numbers: EARTHSNAP_STAGING_PORT and
    EARTHSNAP_PRODUCTION_PORT (Settings.from_env raises), MLFLOW_PORT (`mlflow server --port`).
    """
    read = settings_names() | set(re.findall(r'envvar="([A-Z_]+)"', library_source("mlflow", "utils/cli_args.py")))
    injected = set()
    for name in objects("Service"):
        prefix = name.upper().replace("-", "_")
        injected |= {f"{prefix}_PORT", f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT"}
    clashes = sorted(read & injected)
    for workload in workloads():
        assert pod_spec(workload).get("enableServiceLinks") is False, f"{describe(workload)} would get {clashes}"


# --- security and resources ----------------------------------------------------------------------------


def test_pods_run_as_non_root_and_locked_down() -> None:
    """Pod Security `restricted`, a read-only root filesystem, and no API token (none of them calls the API)."""
    for workload in workloads():
        spec = pod_spec(workload)
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, describe(workload)
        assert security["runAsUser"] == 10001, describe(workload)
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, describe(workload)
        assert spec["automountServiceAccountToken"] is False, describe(workload)
        for container in all_containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]
            assert "/tmp" in {m["mountPath"] for m in container.get("volumeMounts", [])}, container["name"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_serving_pods_are_locked_down(env: str) -> None:
    """The pods that face untrusted clients: non-root, nothing writable but two size-limited emptyDirs (/tmp and the
    spool), no capabilities, no privilege escalation, no host access, no Kubernetes API token (pod and account)."""
    workload = deployment(f"earthsnap-{env}")
    spec = pod_spec(workload)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"].get("runAsGroup", 0) != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert objects("ServiceAccount")[spec["serviceAccountName"]]["automountServiceAccountToken"] is False
    assert not {"hostNetwork", "hostPID", "hostIPC", "hostUsers"} & {k for k, v in spec.items() if v is True}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert all(set(volume) == {"name", "emptyDir"} for volume in volumes.values()), "emptyDirs only (no hostPath)"
    for container in all_containers(workload):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}, "no capability added back"
        assert context.get("privileged") is not True and context.get("runAsUser", 1) != 0
        writable = {m["mountPath"]: m["name"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert set(writable) == {"/tmp", SPOOL_DIR}, writable
        for name in writable.values():
            assert volumes[name]["emptyDir"].get("sizeLimit"), f"{name}: a full node disk would evict other pods"


def test_every_container_has_requests_and_limits() -> None:
    for workload in workloads():
        for container in all_containers(workload):
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = quantity(resources["requests"][resource])
                limit = quantity(resources["limits"][resource])
                assert 0 < request <= limit, f"{describe(workload)}/{container['name']} {resource}: {request} > {limit}"


# --- 6. images -----------------------------------------------------------------------------------------


def test_images_are_known_and_retaggable() -> None:
    """Only the project's images, and each one listed in the kustomization's `images:` with its tag."""
    used = {container["image"] for workload in workloads() for container in all_containers(workload)}
    assert used, "no containers found"
    assert used <= ALLOWED_IMAGES, f"unknown images {sorted(used - ALLOWED_IMAGES)}"
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    entries = {entry["name"]: entry for entry in kustomization["images"]}
    for image in used:
        repository, tag = image.rsplit(":", 1)
        assert repository in entries, f"{repository} is not in kustomization.yaml images:"
        assert entries[repository].get("newTag", tag) == tag, f"kustomization.yaml retags {image}"
