"""Cluster configuration: variables in, k8s_job_executor config out; bad values fail when the location loads."""

import pytest

from earthsnap_assets.cluster import DEFAULT_GPU_NODE_SELECTOR, ClusterConfig, ClusterConfigError
from earthsnap_assets.definitions import defs
from earthsnap_assets.k8s_definitions import gpu_ops
from earthsnap_assets.settings import Settings


def test_defaults_place_gpu_ops_on_gpu_nodes_and_give_every_step_resources():
    config = ClusterConfig.from_env({}).executor_config(["parent_model"])
    placement = config["per_step_k8s_config"]["parent_model"]
    assert placement["pod_spec_config"]["node_selector"] == DEFAULT_GPU_NODE_SELECTOR
    assert placement["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert config["step_k8s_config"]["container_config"]["resources"]["requests"]["cpu"] == "1"
    assert config["step_k8s_config"]["pod_spec_config"]["enable_service_links"] is False
    assert "job_image" not in config  # steps use the code location's own image


def test_variables_override_placement_and_counts():
    env = {
        "EARTHSNAP_GPU_NODE_SELECTOR": '{"pool": "a100"}',
        "EARTHSNAP_GPU_TOLERATIONS": '[{"key": "gpu", "operator": "Exists"}]',
        "EARTHSNAP_GPUS_PER_STEP": "4",
        "EARTHSNAP_STEP_IMAGE": "registry.local/earthsnap:1-cuda",
    }
    config = ClusterConfig.from_env(env).executor_config(["child_model"])
    placement = config["per_step_k8s_config"]["child_model"]
    assert placement["pod_spec_config"] == {
        "node_selector": {"pool": "a100"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
    }
    assert placement["container_config"]["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert config["job_image"] == "registry.local/earthsnap:1-cuda"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("EARTHSNAP_GPU_NODE_SELECTOR", "{not json", "not valid JSON"),
        ("EARTHSNAP_GPU_NODE_SELECTOR", '["a"]', "must be a JSON dict"),
        ("EARTHSNAP_GPU_TOLERATIONS", '{"key": "x"}', "must be a JSON list"),
        ("EARTHSNAP_GPUS_PER_STEP", "0", "positive integer"),
        ("EARTHSNAP_MAX_CONCURRENT_STEPS", "many", "positive integer"),
    ],
)
def test_a_malformed_variable_is_a_clear_error_naming_it(name, value, message):
    with pytest.raises(ClusterConfigError, match=f"{name}.*{message}"):
        ClusterConfig.from_env({name: value})


def test_gpu_ops_are_exactly_tuning_and_training():
    assert gpu_ops(defs) == {
        "parent_hyperparams",
        "child_hyperparams",
        "parent_model",
        "child_model",
        "flat_baseline_model",
    }


def test_kubernetes_service_link_variables_do_not_break_settings():
    env = {"EARTHSNAP_STAGING_PORT": "tcp://10.0.0.7:80", "EARTHSNAP_PRODUCTION_PORT": "9000"}
    settings = Settings.from_env(env)
    assert settings.staging_port == 8101 and settings.production_port == 9000
    with pytest.raises(ValueError, match="EARTHSNAP_PRODUCTION_PORT"):
        Settings.from_env({"EARTHSNAP_PRODUCTION_PORT": "eighty"})
