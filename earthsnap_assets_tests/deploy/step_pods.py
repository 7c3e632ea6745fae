"""The Kubernetes Jobs that `k8s_job_executor` would create for a run's steps, built by dagster-k8s itself.

`K8sStepHandler.launch_step` runs unchanged; only its Kubernetes API client is swapped for one that
keeps the Job bodies instead of sending them to a cluster (there is none here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import create_context_free_log_manager
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
from dagster._core.system_config.objects import ResolvedRunConfig
from dagster._grpc.types import ExecuteStepArgs
from dagster_k8s.client import DagsterKubernetesClient
from kubernetes.client import ApiClient, V1Job

from earthsnap_assets.cluster import DEFAULT_GPU_NODE_SELECTOR

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_MODULE = "earthsnap_assets.k8s_definitions"
NAMESPACE = "earthsnap"
GPU = "nvidia.com/gpu"
# Tuning and training: the steps that must land on GPU nodes, and the only ones.
GPU_STEPS = {"parent_hyperparams", "parent_model", "child_hyperparams", "child_model", "flat_baseline_model"}
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: unused}}]
contexts: [{name: none, context: {cluster: none, user: none, namespace: earthsnap}}]
current-context: none
"""


class CapturedJobs:
    """Stands in for kubernetes.client.BatchV1Api: keeps each Job the step handler creates."""

    def __init__(self) -> None:
        self.jobs: list[V1Job] = []

    def create_namespaced_job(self, body: V1Job, namespace: str, **_: Any) -> V1Job:
        self.jobs.append(body)
        return body


def k8s_run_launcher_overrides(kubeconfig: Path) -> dict[str, Any]:
    """Instance overrides with the K8sRunLauncher the Helm chart configures (no cluster contacted)."""
    kubeconfig.write_text(KUBECONFIG)
    return {
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": {
                "service_account_name": "dagster",
                "instance_config_map": "dagster-instance",
                "postgres_password_secret": "dagster-postgresql-secret",
                "dagster_home": "/opt/dagster/dagster_home",
                "job_image": "earthsnap/earthsnap:0.1.0-cpu",
                "job_namespace": NAMESPACE,
                "load_incluster_config": False,
                "kubeconfig_file": str(kubeconfig),
            },
        }
    }


def reconstructable_job(job_name: str, asset_selection: set[dg.AssetKey] | None = None) -> ReconstructableJob:
    repo = ReconstructableRepository.for_module(K8S_MODULE, "defs", working_directory=str(REPO_ROOT))
    job = repo.get_reconstructable_job(job_name)
    return job.get_subset(asset_selection=asset_selection) if asset_selection else job


def step_jobs(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    executor_def: dg.ExecutorDefinition | None = None,
) -> dict[str, V1Job]:
    """Step key -> the Kubernetes Job `k8s_job_executor` launches for it, for every step of `run`."""
    recon = reconstructable_job(run.job_name, set(run.asset_selection or ()) or None)
    job_def = recon.get_definition()
    executor_def = executor_def or job_def.executor_def
    resolved = ResolvedRunConfig.build(job_def.with_executor_def(executor_def), run.run_config or {})
    executor = executor_def.executor_creation_fn(
        InitExecutorContext(
            job=recon,
            executor_def=executor_def,
            executor_config=resolved.execution.execution_engine_config,
            instance=instance,
        )
    )
    captured = CapturedJobs()
    executor._step_handler._api_client = DagsterKubernetesClient.production_client(batch_api_override=captured)
    plan = create_execution_plan(recon, run_config=run.run_config, tags=run.tags, instance_ref=instance.get_ref())
    plan_context = PlanOrchestrationContext(
        plan_data=PlanData(
            job=recon,
            dagster_run=run,
            instance=instance,
            execution_plan=plan,
            raise_on_error=True,
            retry_mode=RetryMode.DISABLED,
        ),
        log_manager=create_context_free_log_manager(instance, run),
        executor=executor,
        output_capture=None,
    )
    jobs: dict[str, V1Job] = {}
    for step in plan.steps:
        args = ExecuteStepArgs(recon.get_python_origin(), run.run_id, [step.key], instance_ref=instance.get_ref())
        context = StepHandlerContext(instance, plan_context, plan.steps, args, run)
        list(executor._step_handler.launch_step(context))
        jobs[step.key] = captured.jobs[-1]
    return jobs


def as_manifest(job: V1Job) -> dict[str, Any]:
    """The Job as the YAML/JSON a cluster would receive."""
    return ApiClient().sanitize_for_serialization(job)


def pod_placement(job: V1Job) -> tuple[dict[str, str], dict[str, str], dict[str, str], list[dict[str, Any]]]:
    """(requests, limits, node selector, tolerations) of the Job's single step container/pod."""
    spec = as_manifest(job)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    resources = container.get("resources") or {}
    return (
        resources.get("requests") or {},
        resources.get("limits") or {},
        spec.get("nodeSelector") or {},
        spec.get("tolerations") or [],
    )


def assert_gpu_pod(job: V1Job) -> None:
    """One GPU, on the default GPU nodes, tolerating their taint."""
    requests, limits, selector, tolerations = pod_placement(job)
    assert requests[GPU] == limits[GPU] == "1"
    assert selector == DEFAULT_GPU_NODE_SELECTOR
    assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in tolerations)


def assert_plain_pod(job: V1Job) -> None:
    """No GPU, no placement, the default step resources."""
    requests, limits, selector, tolerations = pod_placement(job)
    assert GPU not in requests and GPU not in limits
    assert selector == {} and tolerations == []
    assert requests["cpu"] == "1" and requests["memory"] == "2Gi"  # the default step resources
