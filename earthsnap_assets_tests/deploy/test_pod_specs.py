"""Pod specs of step pods, as dagster-k8s's k8s_job_executor builds them from the Kubernetes code location.

GPU request, node selector and tolerations must be on training and tuning steps, and only there.
"""

from collections.abc import Iterator

import dagster as dg
import kubernetes_validate
import pytest
from dagster._core.test_utils import create_run_for_test

from earthsnap_assets.cluster import ClusterConfig
from earthsnap_assets.definitions import build_definitions
from earthsnap_assets.k8s_definitions import cluster_executor
from earthsnap_assets_tests.deploy.step_pods import (
    GPU,
    GPU_STEPS,
    NAMESPACE,
    as_manifest,
    assert_gpu_pod,
    assert_plain_pod,
    k8s_run_launcher_overrides,
    pod_placement,
    reconstructable_job,
    step_jobs,
)

K8S_VERSION = "1.33"


@pytest.fixture(scope="module")
def k8s_instance(tmp_path_factory) -> Iterator[dg.DagsterInstance]:
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    with dg.instance_for_test(overrides=k8s_run_launcher_overrides(kubeconfig)) as instance:
        yield instance


def run_of(instance: dg.DagsterInstance, job_name: str, *assets: str, partition: str | None = None) -> dg.DagsterRun:
    selection = {dg.AssetKey(a) for a in assets} or None
    recon = reconstructable_job(job_name, selection)
    tags = {"dagster/partition": partition} if partition else {}
    return create_run_for_test(
        instance, job_name=job_name, tags=tags, asset_selection=selection, job_code_origin=recon.get_python_origin()
    )


def test_parent_training_puts_tuning_and_training_on_gpu_nodes_and_evaluation_elsewhere(k8s_instance):
    jobs = step_jobs(k8s_instance, run_of(k8s_instance, "parent_training"))
    assert set(jobs) == {"parent_hyperparams", "parent_model", "parent_evaluation", "registered_parent"}
    for step, job in jobs.items():
        (assert_gpu_pod if step in GPU_STEPS else assert_plain_pod)(job)
        assert job.metadata.namespace is None or job.metadata.namespace == NAMESPACE
        assert job.spec.template.spec.containers[0].image == "earthsnap/earthsnap:0.1.0-cpu"


def test_data_steps_never_ask_for_a_gpu(k8s_instance):
    group = step_jobs(k8s_instance, run_of(k8s_instance, "data_pipeline", partition="beetles"))
    assert set(group) == {"raw_images", "validated_manifest", "dataset_splits"}  # one group's pods
    fan_in = step_jobs(k8s_instance, run_of(k8s_instance, "dataset_release"))
    assert set(fan_in) == {"dataset_version", "parent_sample"}
    for job in [*group.values(), *fan_in.values()]:
        assert_plain_pod(job)


def test_a_child_partition_run_trains_on_a_gpu_node(k8s_instance):
    jobs = step_jobs(k8s_instance, run_of(k8s_instance, "child_training", partition="beetles"))
    assert_gpu_pod(jobs["child_model"])
    assert_gpu_pod(jobs["child_hyperparams"])
    assert_plain_pod(jobs["child_evaluation"])


def test_a_single_asset_run_without_any_run_tags_still_gets_the_gpu(k8s_instance):
    """What the UI's Materialize button launches: the implicit asset job, no job tags at all."""
    run = run_of(k8s_instance, "__ASSET_JOB", "flat_baseline_model")
    assert not any(key.startswith("dagster-k8s") or key.startswith("earthsnap") for key in run.tags)
    jobs = step_jobs(k8s_instance, run)
    assert set(jobs) == {"flat_baseline_model"}
    assert_gpu_pod(jobs["flat_baseline_model"])


def test_cluster_configuration_moves_gpu_steps_and_leaves_data_steps_alone(k8s_instance):
    config = ClusterConfig(
        gpu_node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        gpu_tolerations=[{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}],
        gpus_per_step=2,
    )
    executor = cluster_executor(config, build_definitions())
    jobs = step_jobs(k8s_instance, run_of(k8s_instance, "parent_training"), executor_def=executor)
    requests, limits, selector, tolerations = pod_placement(jobs["parent_model"])
    assert requests[GPU] == limits[GPU] == "2"
    assert selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"} in tolerations
    assert_plain_pod(jobs["registered_parent"])


def test_every_step_job_is_a_valid_kubernetes_job(k8s_instance):
    jobs = step_jobs(k8s_instance, run_of(k8s_instance, "child_training", partition="ferns"))
    for job in jobs.values():
        manifest = {"apiVersion": "batch/v1", "kind": "Job", **as_manifest(job)}
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        assert manifest["spec"]["template"]["spec"]["enableServiceLinks"] is False
