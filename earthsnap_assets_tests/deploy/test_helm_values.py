"""deploy/helm/dagster-values.yaml: valid Kubernetes, the same instance as deploy/dagster.yaml, our code location.

Offline: there is no helm and no copy of the chart here, so the chart's own JSON schema is not checked (the values
file's header says how to run `helm lint`). What is checked is everything the values mean to Kubernetes, to Dagster
and to earthsnap: each Kubernetes fragment against the Kubernetes schemas, the dagster.yaml the chart renders from
them (re-rendered here after the chart's templates, then loaded by Dagster's own instance-config validation) against
deploy/dagster.yaml, and the run worker and step pods that dagster-k8s itself builds from the run launcher and
user-code settings.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes.client
import pytest
import yaml
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.instance.config import dagster_instance_config
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.test_utils import create_run_for_test
from dagster_k8s.job import construct_dagster_k8s_job, get_job_name_from_run_id
from dagster_k8s.models import k8s_model_from_dict
from kubernetes.client import ApiClient

from earthsnap_assets.cluster import ClusterConfig
from earthsnap_assets_tests.deploy.k8s_schema import k8s_documents, validate_fragment, validate_manifest
from earthsnap_assets_tests.deploy.step_pods import KUBECONFIG, as_manifest, reconstructable_job, step_jobs

ROOT = Path(__file__).resolve().parents[2]
VALUES_FILE = ROOT / "deploy" / "helm" / "dagster-values.yaml"
DAGSTER_YAML = ROOT / "deploy" / "dagster.yaml"
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"

CHART_VERSION = "1.13.27"  # the chart version is dagster's version
RELEASE = "dagster"  # `helm upgrade --install dagster ...` (deploy/README.md)
NAMESPACE = "earthsnap"
K8S_MODULE = "earthsnap_assets.k8s_definitions"
USER_CODE_IMAGES = frozenset({"earthsnap/earthsnap:0.1.0-cpu", "earthsnap/earthsnap:0.1.0-cuda"})
DAGSTER_IMAGE = "docker.io/dagster/dagster-k8s"
GPU = "nvidia.com/gpu"
GPU_VARIABLES = {
    "EARTHSNAP_GPU_NODE_SELECTOR",
    "EARTHSNAP_GPU_TOLERATIONS",
    "EARTHSNAP_GPUS_PER_STEP",
    "EARTHSNAP_GPU_STEP_RESOURCES",
}


# --- loading -----------------------------------------------------------------------------------------------------


def load_values() -> dict[str, Any]:
    """The values file as Helm reads it (YAML, one document)."""
    with open(VALUES_FILE, encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def user_deployment(values: Mapping[str, Any]) -> dict[str, Any]:
    """Our only user-code deployment (a list: Helm replaces the chart's example wholesale)."""
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def k8s_launcher(values: Mapping[str, Any]) -> dict[str, Any]:
    return values["runLauncher"]["config"]["k8sRunLauncher"]


def env_of(deployment: Mapping[str, Any]) -> dict[str, str]:
    """The user deployment's `env` list as the environment a process sees (a Secret's value as `<NAME>`)."""
    return {var["name"]: var["value"] if "value" in var else f"<{var['name']}>" for var in deployment["env"]}


# Variables of the user deployment that come from a Secret, not from these values: read by earthsnap_assets
# (Settings), not by the cluster configuration.
SECRET_VARIABLES = {"EARTHSNAP_REVIEW_TOKEN": ("earthsnap-review", "EARTHSNAP_REVIEW_TOKEN")}


def image_of(image: Mapping[str, Any]) -> str:
    return f"{image['repository']}:{image['tag']}"


def names(refs: list[Mapping[str, Any]] | None) -> list[str]:
    return [ref["name"] for ref in refs or []]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# --- the chart's renderings, after its templates (chart 1.13.27) -------------------------------------------------


def rendered_dagster_yaml(values: Mapping[str, Any]) -> dict[str, Any]:
    """The instance dagster.yaml the chart renders (templates/configmap-instance.yaml, helpers/instance/*.tpl)."""
    pg = values["postgresql"]
    postgres_db = {
        "username": pg["postgresqlUsername"],
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": pg["postgresqlHost"],
        "db_name": pg["postgresqlDatabase"],
        "port": pg["service"]["port"],
        "params": pg["postgresqlParams"],
    }
    if pg.get("postgresqlScheme"):
        postgres_db["scheme"] = pg["postgresqlScheme"]

    def storage(module: str, cls: str) -> dict[str, Any]:
        return {"module": module, "class": cls, "config": {"postgres_db": postgres_db}}

    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    queued = coordinator["config"].get("queuedRunCoordinator") or {}
    concurrency = values["concurrency"]
    run_coordinator: dict[str, Any] = {"module": "dagster.core.run_coordinator", "class": coordinator["type"]}
    # With `concurrency` on, the chart writes run limits into run_coordinator only where they are set explicitly.
    conflicting = {
        "max_concurrent_runs": queued.get("maxConcurrentRuns"),
        "tag_concurrency_limits": queued.get("tagConcurrencyLimits") or None,
        "block_op_concurrency_limited_runs": queued.get("blockOpConcurrencyLimitedRuns"),
    }
    if any(v is not None for v in conflicting.values()):
        run_coordinator["config"] = {k: v for k, v in conflicting.items() if v is not None}

    monitoring = daemon["runMonitoring"]
    retries = daemon["runRetries"]
    s3 = values["computeLogManager"]["config"]["s3ComputeLogManager"]
    pools = concurrency["pools"]
    runs = concurrency["runs"]
    rendered: dict[str, Any] = {
        "scheduler": {"module": "dagster.core.scheduler", "class": "DagsterDaemonScheduler"},
        "schedule_storage": storage("dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
        "run_storage": storage("dagster_postgres.run_storage", "PostgresRunStorage"),
        "event_log_storage": storage("dagster_postgres.event_log", "PostgresEventLogStorage"),
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": run_launcher_config(values)},
        "run_coordinator": run_coordinator,
        "compute_logs": {
            "module": "dagster_aws.s3.compute_log_manager",
            "class": values["computeLogManager"]["type"],
            "config": {_snake(k): v for k, v in s3.items()},
        },
        "run_monitoring": {
            "enabled": monitoring["enabled"],
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"],
        },
        "run_retries": {
            "enabled": retries["enabled"],
            "max_retries": retries["maxRetries"],
            "retry_on_asset_or_op_failure": retries["retryOnAssetOrOpFailure"],
        },
        **{
            section: {"use_threads": daemon[section]["useThreads"], "num_workers": daemon[section]["numWorkers"]}
            for section in ("sensors", "schedules", "backfills")
        },
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
        **values.get("additionalInstanceConfig", {}),
    }
    if values["retention"]["enabled"]:
        rendered["retention"] = {
            _snake(kind): {"purge_after_days": values["retention"][kind]["purgeAfterDays"]}
            for kind in ("sensor", "schedule", "autoMaterialize")
            if values["retention"].get(kind)
        }
    if concurrency["enabled"]:
        rendered["concurrency"] = {
            "pools": {
                "default_limit": pools["defaultLimit"],
                "granularity": pools["granularity"],
                "op_granularity_run_buffer": pools["opGranularityRunBuffer"],
            },
            "runs": {
                "max_concurrent_runs": runs["maxConcurrentRuns"],
                "tag_concurrency_limits": [
                    {k: limit[k] for k in ("key", "value", "limit") if limit.get(k) is not None}
                    for limit in runs["tagConcurrencyLimits"]
                ],
            },
        }
    return rendered


def run_launcher_config(values: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """K8sRunLauncher config as helpers/instance/_run-launcher.tpl renders it (env var references made literal)."""
    k8s = k8s_launcher(values)
    run_k8s = {_snake(k): v for k, v in (k8s.get("runK8sConfig") or {}).items()}
    config = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": RELEASE,
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
        "env_config_maps": [f"{RELEASE}-pipeline-env", *names(k8s.get("envConfigMaps"))],
        "env_secrets": names(k8s.get("envSecrets")),
        "env_vars": k8s.get("envVars") or [],
        "volume_mounts": k8s.get("volumeMounts") or [],
        "volumes": k8s.get("volumes") or [],
        "labels": k8s.get("labels") or {},
        "security_context": k8s.get("securityContext") or {},
        "run_k8s_config": run_k8s,
    }
    if k8s.get("resources"):
        config["resources"] = k8s["resources"]
    return {**config, **overrides}


def user_code_container_context(values: Mapping[str, Any]) -> dict[str, Any]:
    """What the code server hands to runs (dagster-user-deployments' `dagsterUserDeployments.k8sContainerContext`)."""
    deployment = user_deployment(values)
    k8s: dict[str, Any] = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{RELEASE}-{deployment['name']}-user-env", *names(deployment.get("envConfigMaps"))],
        "env_secrets": names(deployment.get("envSecrets")),
        "namespace": NAMESPACE,
        "service_account_name": f"{RELEASE}-dagster-user-deployments-user-deployments",
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    for key in ("volumeMounts", "volumes", "labels", "resources"):
        if deployment.get(key):
            k8s[_snake(key)] = deployment[key]
    if isinstance(deployment.get("env"), list):
        k8s["env"] = deployment["env"]
    return {"k8s": k8s}


# --- 1. every Kubernetes fragment is valid Kubernetes --------------------------------------------------------------


def _probe(probe: Mapping[str, Any]) -> dict[str, Any]:
    """A probe as the chart writes it: without the chart's own `enabled` switch."""
    return {k: v for k, v in probe.items() if k != "enabled"}


def _pod_spec(pod_spec_config: Mapping[str, Any]) -> dict[str, Any]:
    """dagster-k8s's snake_case pod_spec_config as the PodSpec it becomes (unknown keys raise, as in dagster-k8s)."""
    model = k8s_model_from_dict(kubernetes.client.V1PodSpec, {"containers": [{"name": "dagster"}], **pod_spec_config})
    return ApiClient().sanitize_for_serialization(model)


def _container(container_config: Mapping[str, Any]) -> dict[str, Any]:
    model = k8s_model_from_dict(kubernetes.client.V1Container, {"name": "dagster", **container_config})
    return ApiClient().sanitize_for_serialization(model)


CORE = "io.k8s.api.core.v1"
# List-valued Kubernetes settings the chart takes in several places, and their item types.
LISTED = {
    "envConfigMaps": "ConfigMapEnvSource",
    "envSecrets": "SecretEnvSource",
    "volumes": "Volume",
    "volumeMounts": "VolumeMount",
}


def listed_fragments(where: str, section: Mapping[str, Any], required: tuple[str, ...] = ()) -> Iterator[tuple]:
    """Each item of the LISTED settings of `section` (the `required` ones must be there) with its definition."""
    for field, kind in LISTED.items():
        items = section[field] if field in required else section.get(field) or []
        for i, item in enumerate(items):
            yield f"{where}.{field}[{i}]", item, f"{CORE}.{kind}"


def kubernetes_fragments(values: Mapping[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """(where, fragment, Kubernetes definition) for every piece of Kubernetes in the values.

    A fragment that must first be converted (dagster-k8s's snake_case config, the GPU variables) is a callable that
    returns it, so that a conversion error fails its own test instead of the collection of the module.
    """
    for component in ("dagsterWebserver", "dagsterDaemon"):
        spec = values[component]
        yield f"{component}.resources", spec["resources"], f"{CORE}.ResourceRequirements"
        yield f"{component}.podSecurityContext", spec["podSecurityContext"], f"{CORE}.PodSecurityContext"
        yield f"{component}.securityContext", spec["securityContext"], f"{CORE}.SecurityContext"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in spec:
                yield f"{component}.{probe}", _probe(spec[probe]), f"{CORE}.Probe"
        yield from listed_fragments(component, spec)

    deployment = user_deployment(values)
    where = f"user-deployments.{deployment['name']}"
    yield f"{where}.resources", deployment["resources"], f"{CORE}.ResourceRequirements"
    yield f"{where}.podSecurityContext", deployment["podSecurityContext"], f"{CORE}.PodSecurityContext"
    yield f"{where}.securityContext", deployment["securityContext"], f"{CORE}.SecurityContext"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        yield f"{where}.{probe}", _probe(deployment[probe]), f"{CORE}.Probe"
    for i, var in enumerate(deployment["env"]):
        yield f"{where}.env[{i}]", var, f"{CORE}.EnvVar"
    yield from listed_fragments(where, deployment, required=("envConfigMaps", "envSecrets"))
    yield f"{where}.labels", {"labels": deployment["labels"]}, "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

    launcher = k8s_launcher(values)
    yield "runLauncher.securityContext", launcher["securityContext"], f"{CORE}.SecurityContext"
    yield from listed_fragments("runLauncher", launcher, required=("envConfigMaps", "envSecrets"))
    yield "runLauncher.labels", {"labels": launcher["labels"]}, "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    run_k8s = launcher["runK8sConfig"]
    yield "runLauncher.runK8sConfig.podSpecConfig", lambda: _pod_spec(run_k8s["podSpecConfig"]), f"{CORE}.PodSpec"
    yield (
        "runLauncher.runK8sConfig.containerConfig",
        lambda: _container(run_k8s["containerConfig"]),
        f"{CORE}.Container",
    )

    # The placement the GPU variables give the training steps (as dagster-k8s applies them to a step pod).
    def cluster() -> ClusterConfig:
        return ClusterConfig.from_env(env_of(deployment))

    def gpu(key: str) -> dict[str, Any]:
        return cluster().gpu_step_k8s_config()[key]

    yield "GPU step pod_spec_config", lambda: _pod_spec(gpu("pod_spec_config")), f"{CORE}.PodSpec"
    yield "GPU step container_config", lambda: _container(gpu("container_config")), f"{CORE}.Container"
    yield "GPU step nodeSelector", lambda: _pod_spec({"node_selector": cluster().gpu_node_selector}), f"{CORE}.PodSpec"
    try:
        tolerations = len(ClusterConfig.from_env(env_of(deployment)).gpu_tolerations)
    except ValueError:  # malformed: let the first toleration's test report it
        tolerations = 1
    for i in range(tolerations):
        yield f"EARTHSNAP_GPU_TOLERATIONS[{i}]", lambda i=i: cluster().gpu_tolerations[i], f"{CORE}.Toleration"
    yield "EARTHSNAP_STEP_RESOURCES", lambda: cluster().step_resources, f"{CORE}.ResourceRequirements"


FRAGMENTS = [
    pytest.param(fragment, definition, id=where) for where, fragment, definition in kubernetes_fragments(load_values())
]


def test_values_file_is_one_yaml_mapping():
    """Helm reads one mapping; a stray `---` or a list at the top would be silently misread or refused."""
    with open(VALUES_FILE, encoding="utf-8") as stream:
        documents = [doc for doc in yaml.safe_load_all(stream) if doc is not None]
    assert len(documents) == 1 and isinstance(documents[0], dict)


@pytest.mark.parametrize(("fragment", "definition"), FRAGMENTS)
def test_kubernetes_fragment_is_valid(fragment: Any | Callable[[], Any], definition: str):
    """Strict schemas: a misspelt or misplaced field fails here, not at install time or silently in the cluster."""
    validate_fragment(fragment() if callable(fragment) else fragment, definition)


# --- 2. the same instance as deploy/dagster.yaml ----------------------------------------------------------------


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return load_values()


@pytest.fixture(scope="module")
def production() -> dict[str, Any]:
    with open(DAGSTER_YAML, encoding="utf-8") as stream:
        return yaml.safe_load(stream)


@pytest.fixture(scope="module")
def rendered(values: dict[str, Any]) -> dict[str, Any]:
    return rendered_dagster_yaml(values)


def test_rendered_instance_passes_dagsters_own_validation(rendered: dict[str, Any], tmp_path: Path):
    """Dagster refuses e.g. run limits in both `concurrency.runs` and the run coordinator, or a malformed retention."""
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(rendered))
    dagster_instance_config(str(tmp_path))


@pytest.mark.parametrize(
    "section", ["telemetry", "concurrency", "run_retries", "sensors", "schedules", "backfills", "auto_materialize"]
)
def test_instance_section_matches_dagster_yaml(rendered: dict[str, Any], production: dict[str, Any], section: str):
    """The cluster and the one-VM instance must behave alike: editing one file without the other fails."""
    assert rendered[section] == production[section]


def test_run_monitoring_matches_dagster_yaml(rendered: dict[str, Any], production: dict[str, Any]):
    """Start timeout (GPU node scale-up), resume attempts and polling, as in dagster.yaml."""
    monitoring = dict(rendered["run_monitoring"])
    # The chart always writes free_slots_after_run_end_seconds: 0 means off, the same as leaving it out.
    assert monitoring.pop("free_slots_after_run_end_seconds") == production["run_monitoring"].get(
        "free_slots_after_run_end_seconds", 0
    )
    assert monitoring == production["run_monitoring"]


def test_run_queue_is_the_same_coordinator_with_limits_only_in_concurrency(
    rendered: dict[str, Any], production: dict[str, Any]
):
    """Dagster refuses run limits in both `concurrency.runs` and the run coordinator's config."""
    assert {k: rendered["run_coordinator"][k] for k in ("module", "class")} == production["run_coordinator"]
    assert "config" not in rendered["run_coordinator"], "run limits belong in concurrency.runs, as in dagster.yaml"


def test_compute_logs_match_dagster_yaml(rendered: dict[str, Any], production: dict[str, Any]):
    """Step logs land under the same prefix, whichever instance wrote them."""
    ours, theirs = rendered["compute_logs"], production["compute_logs"]
    assert (ours["module"], ours["class"]) == (theirs["module"], theirs["class"])
    for key in ("prefix", "skip_empty_files", "upload_interval"):
        assert ours["config"][key] == theirs["config"][key], key
    # The bucket's region is the one the ConfigMap gives every other S3 client.
    (configmap,) = k8s_documents(K8S / "configmap.yaml")
    assert (
        ours["config"]["region"] == configmap["data"]["EARTHSNAP_S3_REGION"] == configmap["data"]["AWS_DEFAULT_REGION"]
    )


def test_storage_is_external_postgresql_with_the_psycopg2_driver(values: dict[str, Any], production: dict[str, Any]):
    """Managed PostgreSQL, password from a Secret created by hand, and the driver SQLAlchemy 2.1 needs named."""
    pg = values["postgresql"]
    assert pg["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert pg["postgresqlScheme"] == production["storage"]["postgres"]["postgres_db"]["scheme"]
    assert values["global"]["postgresqlSecretName"] == "dagster-postgresql-secret"
    assert pg["postgresqlHost"] and pg["postgresqlUsername"] and pg["postgresqlDatabase"]


def test_tick_retention_names_every_tick_status(values: dict[str, Any]):
    """The chart's schema requires all four statuses when purgeAfterDays is a mapping."""
    for kind in ("sensor", "schedule", "autoMaterialize"):
        days = values["retention"][kind]["purgeAfterDays"]
        assert isinstance(days, int) or set(days) == {"skipped", "success", "failure", "started"}, kind


# --- 3. the user-code deployment runs our Kubernetes code location ------------------------------------------------


def test_user_code_deployment_loads_the_kubernetes_code_location(values: dict[str, Any]):
    """The k8s module swaps in k8s_job_executor; run and step pods must get the code server's configuration."""
    deployment = user_deployment(values)
    assert deployment["dagsterApiGrpcArgs"] == ["-m", K8S_MODULE]
    assert importlib.util.find_spec(K8S_MODULE) is not None
    # The same module and port as the image's own CMD (the code server's; the mlflow stage has its own).
    commands = re.findall(r"^CMD (\[.*\])$", DOCKERFILE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    (cmd,) = [c for c in map(json.loads, commands) if c[:3] == ["dagster", "api", "grpc"]]
    assert cmd[cmd.index("-m") + 1] == K8S_MODULE
    assert cmd[cmd.index("-p") + 1] == str(deployment["port"]) == "4000"
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}


def test_env_sources_exist_in_deploy_k8s(values: dict[str, Any]):
    """A missing ConfigMap or Secret keeps every pod that names it from starting."""
    configmaps = {
        doc["metadata"]["name"] for doc in k8s_documents(K8S / "configmap.yaml") if doc["kind"] == "ConfigMap"
    }
    secrets = {
        doc["metadata"]["name"] for doc in k8s_documents(K8S / "secrets.example.yaml") if doc["kind"] == "Secret"
    }
    deployment = user_deployment(values)
    for where, spec in [
        ("user deployment", deployment),
        ("run launcher", k8s_launcher(values)),
        ("webserver", values["dagsterWebserver"]),
    ]:
        assert set(names(spec.get("envConfigMaps"))) <= configmaps, where
        assert set(names(spec.get("envSecrets"))) <= secrets, where
    for spec in (deployment, k8s_launcher(values)):
        assert "earthsnap-config" in names(spec["envConfigMaps"]) and "earthsnap-s3" in names(spec["envSecrets"])
        # MLflow's basic auth: the pipeline's own MLflow user, never the serving pods' read-only one.
        assert "earthsnap-mlflow-pipeline" in names(spec["envSecrets"])
        assert "earthsnap-release" in names(spec["envSecrets"])  # the deploy job signs releases
        assert "earthsnap-mlflow-serving" not in names(spec["envSecrets"])


def test_review_token_comes_from_the_secret_and_reaches_the_label_studio_resource(values: dict[str, Any]):
    """The code location (and, through includeConfigInLaunchedRuns, its run and step pods) gets the review token
    from Secret earthsnap-review, the one Label Studio sets as its admin's token; the URL is in the ConfigMap."""
    from earthsnap_assets.resources.label_studio import LabelStudio
    from earthsnap_assets.settings import Settings

    secrets = {
        doc["metadata"]["name"]: doc["stringData"]
        for doc in k8s_documents(K8S / "secrets.example.yaml")
        if doc["kind"] == "Secret"
    }
    variables = {var["name"]: var for var in user_deployment(values)["env"]}
    for name, (secret, key) in SECRET_VARIABLES.items():
        assert variables[name]["valueFrom"] == {"secretKeyRef": {"name": secret, "key": key}}, name
        assert key in secrets[secret], f"{secret} has no key {key}"
    assert "earthsnap-review" not in names(user_deployment(values).get("envSecrets")), "the admin password too"
    (configmap,) = [doc for doc in k8s_documents(K8S / "configmap.yaml") if doc["kind"] == "ConfigMap"]
    settings = Settings.from_env({**configmap["data"], **env_of(user_deployment(values))})
    assert settings.review_url == configmap["data"]["EARTHSNAP_REVIEW_URL"].rstrip("/")
    assert settings.review_token == "<EARTHSNAP_REVIEW_TOKEN>"
    assert set(LabelStudio.model_fields) >= {"url", "token"}  # unset: read from these variables when a run starts


class _Recorder(dict):
    """An environment that remembers which variables were asked for."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def test_gpu_variables_parse_and_place_gpu_steps(values: dict[str, Any]):
    """A malformed variable stops the code location from loading; a misspelt one is silently ignored."""
    env = env_of(user_deployment(values))
    assert len(env) == len(user_deployment(values)["env"]), "a variable is set twice"
    assert env.keys() >= GPU_VARIABLES
    recorder = _Recorder(env)
    cluster = ClusterConfig.from_env(recorder)
    # Every EARTHSNAP_ variable set here is one the cluster configuration reads (a misspelt name would be ignored).
    assert {name for name in env if name.startswith("EARTHSNAP_")} - set(SECRET_VARIABLES) <= recorder.read
    assert cluster.gpu_node_selector and cluster.gpu_tolerations
    assert cluster.executor_config({"parent_model"})["per_step_k8s_config"]["parent_model"]["pod_spec_config"][
        "node_selector"
    ] == json.loads(env["EARTHSNAP_GPU_NODE_SELECTOR"])


def test_run_worker_resources_are_the_user_deployments_and_never_leak_into_steps(values: dict[str, Any]):
    """The user deployment's resources reach the run worker (container context) and win over the launcher's; step
    pods deep-merge their own resources over the run's, so a key only the run worker sets would reach every step."""
    run_resources = k8s_launcher(values)["runK8sConfig"]["containerConfig"]["resources"]
    assert user_deployment(values)["resources"] == run_resources
    cluster = ClusterConfig.from_env(env_of(user_deployment(values)))
    for step_resources in (cluster.step_resources, cluster.gpu_step_k8s_config()["container_config"]["resources"]):
        for kind, quantities in run_resources.items():
            assert set(quantities) <= set(step_resources.get(kind, {})), (kind, step_resources)


def test_scratch_volume_is_defined_once_for_code_server_runs_and_steps(values: dict[str, Any]):
    """Identical definitions merge into one volume when the container context meets the launcher's config."""
    deployment, launcher = user_deployment(values), k8s_launcher(values)
    assert deployment["volumes"] == launcher["volumes"] and deployment["volumeMounts"] == launcher["volumeMounts"]
    mounts = {m["mountPath"] for m in launcher["volumeMounts"]}
    assert "/tmp" in mounts and env_of(deployment)["HOME"] == "/tmp" and "HOME=/tmp" in launcher["envVars"]


def test_webserver_probes_use_its_port(values: dict[str, Any]):
    """The chart's default probes use port 80; ours listens on the service port."""
    webserver = values["dagsterWebserver"]
    port = webserver["service"]["port"]
    assert port >= 1024, "a non-root webserver cannot bind a privileged port"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert webserver[probe]["httpGet"]["port"] == port, probe


# --- 4. images and GPUs --------------------------------------------------------------------------------------------


def _images(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "repository" in node:
            yield path, node
        for key, value in node.items():
            yield from _images(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _images(value, f"{path}[{i}]")


def test_images_are_pinned(values: dict[str, Any]):
    """A moving tag gives run and step pods of one run different code; Dagster images must match dagster."""
    images = dict(_images(values))
    assert images, "no image in the values"
    for where, image in images.items():
        assert str(image.get("tag") or "") not in ("", "latest"), where
        assert image["pullPolicy"] == "IfNotPresent", where
    assert image_of(user_deployment(values)["image"]) in USER_CODE_IMAGES
    for component in ("dagsterWebserver", "dagsterDaemon"):
        assert (
            image_of(values[component]["image"])
            == f"{DAGSTER_IMAGE}:{dg.__version__}"
            == f"{DAGSTER_IMAGE}:{CHART_VERSION}"
        )


def test_run_launcher_never_asks_for_a_gpu(values: dict[str, Any]):
    """The run worker only coordinates; a GPU request would hold a GPU idle for the whole run."""
    launcher = k8s_launcher(values)
    assert GPU not in yaml.safe_dump(launcher)
    assert GPU not in yaml.safe_dump(user_deployment(values)["resources"])
    pod_spec = launcher["runK8sConfig"]["podSpecConfig"]
    assert not {"node_selector", "tolerations", "affinity"} & set(pod_spec)
    assert pod_spec["enable_service_links"] is False


# --- 5. the pods dagster-k8s builds from these values ----------------------------------------------------------------


@pytest.fixture(scope="module")
def chart_instance(values: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dg.DagsterInstance]:
    """A test instance with the K8sRunLauncher of these values (a kubeconfig that reaches no cluster)."""
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(KUBECONFIG)
    config = run_launcher_config(
        values,
        load_incluster_config=False,
        kubeconfig_file=str(kubeconfig),
        # In the cluster the image comes from the code server (DAGSTER_CURRENT_IMAGE); step_pods' origins carry none.
        job_image=image_of(user_deployment(values)["image"]),
    )
    launcher = {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}
    with dg.instance_for_test(overrides={"run_launcher": launcher}) as instance:
        yield instance


def _run(instance: dg.DagsterInstance, values: dict[str, Any], job_name: str, origin: JobPythonOrigin) -> dg.DagsterRun:
    """A run launched from our code server: its origin carries the image and the user-code container context."""
    repository = origin.repository_origin._replace(
        container_image=image_of(user_deployment(values)["image"]),
        container_context=user_code_container_context(values),
    )
    return create_run_for_test(
        instance, job_name=job_name, job_code_origin=origin._replace(repository_origin=repository)
    )


def _assert_earthsnap_pod(spec: Mapping[str, Any]) -> None:
    (container,) = spec["containers"]
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] in USER_CODE_IMAGES
    env_from = {(ref.get("configMapRef") or ref.get("secretRef"))["name"] for ref in container["envFrom"]}
    assert {"earthsnap-config", "earthsnap-s3", "earthsnap-mlflow-pipeline"} <= env_from
    env_names = [var["name"] for var in container["env"]]
    assert len(env_names) == len(set(env_names)), env_names
    assert set(env_names) >= GPU_VARIABLES
    # The review token reaches run and step pods (review_queue_job's steps call Label Studio) as a Secret reference.
    (token,) = [var for var in container["env"] if var["name"] == "EARTHSNAP_REVIEW_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "earthsnap-review", "key": "EARTHSNAP_REVIEW_TOKEN"}
    volume_names = [volume["name"] for volume in spec["volumes"]]
    assert len(volume_names) == len(set(volume_names)), volume_names


def _as_job_manifest(job: kubernetes.client.V1Job) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", **copy.deepcopy(as_manifest(job))}


def test_run_worker_pod(chart_instance: dg.DagsterInstance, values: dict[str, Any]):
    """The Job K8sRunLauncher.launch_run creates, built the way it builds it (nothing is sent anywhere)."""
    code_pointer = ModuleCodePointer(K8S_MODULE, "defs", working_directory=None)
    origin = JobPythonOrigin("parent_training", RepositoryPythonOrigin(sys.executable, code_pointer))
    run = _run(chart_instance, values, "parent_training", origin)
    launcher = chart_instance.run_launcher
    context = launcher.get_container_context_for_run(run)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(
            job_image=run.job_code_origin.repository_origin.container_image, run_launcher=launcher
        ),
        args=["dagster", "api", "execute_run", "{}"],
        job_name=get_job_name_from_run_id(run.run_id),
        pod_name=get_job_name_from_run_id(run.run_id),
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/run-id": run.run_id},
    )
    manifest = _as_job_manifest(job)
    validate_manifest(manifest)
    spec = manifest["spec"]["template"]["spec"]
    _assert_earthsnap_pod(spec)
    # What deploy/k8s/networkpolicies.yaml lets reach MLflow, Label Studio and the endpoints.
    assert manifest["spec"]["template"]["metadata"]["labels"]["earthsnap.io/pipeline"] == "true"
    (container,) = spec["containers"]
    assert container["image"] == image_of(user_deployment(values)["image"])
    assert container["resources"] == user_deployment(values)["resources"]
    # The run worker coordinates: no GPU, and nothing that pins it to (or lets it onto) GPU nodes.
    assert GPU not in json.dumps(container["resources"])
    assert not {"nodeSelector", "tolerations", "affinity"} & set(spec)
    assert context.namespace == NAMESPACE


def test_step_pods_inherit_the_run_pod_settings_and_keep_their_placement(
    chart_instance: dg.DagsterInstance, values: dict[str, Any]
):
    """k8s_job_executor's step Jobs for a training run: service links off, non-root, GPU only on GPU steps, and
    exactly the executor's resources (nothing of the run worker's)."""
    run = _run(chart_instance, values, "parent_training", reconstructable_job("parent_training").get_python_origin())
    jobs = step_jobs(chart_instance, run)
    # The code location was loaded in this process, so its executor read this process's environment.
    cluster = ClusterConfig.from_env(os.environ)
    gpu_resources = cluster.gpu_step_k8s_config()["container_config"]["resources"]
    gpu_steps = 0
    for step, job in jobs.items():
        manifest = _as_job_manifest(job)
        validate_manifest(manifest)
        spec = manifest["spec"]["template"]["spec"]
        _assert_earthsnap_pod(spec)
        assert manifest["spec"]["template"]["metadata"]["labels"]["earthsnap.io/pipeline"] == "true", step
        resources = spec["containers"][0]["resources"]
        if GPU in resources.get("limits", {}):
            gpu_steps += 1
            assert resources == gpu_resources, step
            assert spec["nodeSelector"] == cluster.gpu_node_selector, step
        else:
            assert resources == cluster.step_resources, step
            assert "nodeSelector" not in spec and "tolerations" not in spec, step
    assert gpu_steps >= 1
