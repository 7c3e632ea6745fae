"""How the code location runs on Kubernetes: each step in its own pod, GPU steps on GPU nodes.

Pure configuration, no Dagster imports: `ClusterConfig.from_env` reads the variables the Helm values
set on the user-code deployment (they reach run and step pods too), and `executor_config` turns them
into `k8s_job_executor` config. Placement goes through `per_step_k8s_config`, keyed by the ops of the
`gpu` pool, so it is attached to steps whatever started the run, never to run tags.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_GPU_NODE_SELECTOR = {"earthsnap.io/accelerator": "nvidia-gpu"}
DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
DEFAULT_STEP_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi"}}
DEFAULT_GPU_STEP_RESOURCES = {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "32Gi"}}


class ClusterConfigError(ValueError):
    """A cluster variable is malformed; raised when the code location loads, naming the variable."""


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _json(env: Mapping[str, str], name: str, default: Any, kind: type) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ClusterConfigError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, kind):
        raise ClusterConfigError(f"{name} must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ClusterConfigError(f"{name} must be a positive integer, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class ClusterConfig:
    """Executor settings for a cluster.

    Variables (JSON where structured):
      EARTHSNAP_GPU_NODE_SELECTOR   node labels a GPU step must match [{"earthsnap.io/accelerator": "nvidia-gpu"}]
      EARTHSNAP_GPU_TOLERATIONS     tolerations for tainted GPU nodes [nvidia.com/gpu Exists NoSchedule]
      EARTHSNAP_GPUS_PER_STEP       GPUs per training/tuning pod [1]
      EARTHSNAP_GPU_STEP_RESOURCES  cpu/memory of a GPU step's container [4 CPU, 16Gi]
      EARTHSNAP_STEP_RESOURCES      cpu/memory of every other step's container [1 CPU, 2Gi]
      EARTHSNAP_MAX_CONCURRENT_STEPS  step pods one run may have at once [8]
      EARTHSNAP_STEP_IMAGE          image of step pods [the code location's own image]
    """

    gpu_node_selector: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_GPU_NODE_SELECTOR))
    gpu_tolerations: list[dict[str, Any]] = field(default_factory=lambda: _copy(DEFAULT_GPU_TOLERATIONS))
    gpus_per_step: int = 1
    gpu_step_resources: dict[str, Any] = field(default_factory=lambda: _copy(DEFAULT_GPU_STEP_RESOURCES))
    step_resources: dict[str, Any] = field(default_factory=lambda: _copy(DEFAULT_STEP_RESOURCES))
    max_concurrent_steps: int = 8
    step_image: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClusterConfig:
        default = cls()
        return cls(
            gpu_node_selector=_json(env, "EARTHSNAP_GPU_NODE_SELECTOR", default.gpu_node_selector, dict),
            gpu_tolerations=_json(env, "EARTHSNAP_GPU_TOLERATIONS", default.gpu_tolerations, list),
            gpus_per_step=_positive_int(env, "EARTHSNAP_GPUS_PER_STEP", default.gpus_per_step),
            gpu_step_resources=_json(env, "EARTHSNAP_GPU_STEP_RESOURCES", default.gpu_step_resources, dict),
            step_resources=_json(env, "EARTHSNAP_STEP_RESOURCES", default.step_resources, dict),
            max_concurrent_steps=_positive_int(env, "EARTHSNAP_MAX_CONCURRENT_STEPS", default.max_concurrent_steps),
            step_image=env.get("EARTHSNAP_STEP_IMAGE") or None,
        )

    def gpu_step_k8s_config(self) -> dict[str, Any]:
        """The `dagster-k8s/config` of one GPU step: its node, its toleration, its GPUs, its cpu/memory."""
        gpus = str(self.gpus_per_step)
        resources = _copy(self.gpu_step_resources)
        resources.setdefault("requests", {})["nvidia.com/gpu"] = gpus
        resources.setdefault("limits", {})["nvidia.com/gpu"] = gpus
        return {
            "container_config": {"resources": resources},
            "pod_spec_config": {"node_selector": dict(self.gpu_node_selector), "tolerations": self.gpu_tolerations},
        }

    def executor_config(self, gpu_ops: Iterable[str]) -> dict[str, Any]:
        """`k8s_job_executor` config: default resources for every step pod, GPU placement for `gpu_ops`."""
        config: dict[str, Any] = {
            "max_concurrent": self.max_concurrent_steps,
            # No service-link variables in step pods: `<SERVICE>_PORT=tcp://...` would shadow EARTHSNAP_* ports.
            "step_k8s_config": {
                "container_config": {"resources": self.step_resources},
                "pod_spec_config": {"enable_service_links": False},
            },
            "per_step_k8s_config": {op: self.gpu_step_k8s_config() for op in sorted(gpu_ops)},
        }
        if self.step_image:
            config["job_image"] = self.step_image
        return config
