"""The code location on Kubernetes: `definitions.py`'s assets, each step in its own pod.

The Helm values point the user-code deployment here (`-m earthsnap_assets.k8s_definitions`); nothing
else changes between the laptop and the cluster. Cluster settings are read once, when the location
loads (see `cluster.ClusterConfig`), and GPU placement goes to every op of the `gpu` pool.
"""

import os

import dagster as dg
from dagster_k8s import k8s_job_executor

from earthsnap_assets.cluster import ClusterConfig
from earthsnap_assets.definitions import build_definitions
from earthsnap_assets.defs.compute import GPU_POOL


def gpu_ops(definitions: dg.Definitions) -> set[str]:
    """Names of the ops in the `gpu` pool: the steps that need a GPU node."""
    return {
        a.op.name
        for a in definitions.assets or []
        if isinstance(a, dg.AssetsDefinition) and a.is_executable and a.op.pool == GPU_POOL
    }


def cluster_executor(config: ClusterConfig, definitions: dg.Definitions) -> dg.ExecutorDefinition:
    """`k8s_job_executor` configured with default step resources and GPU placement for the GPU ops."""
    return k8s_job_executor.configured(config.executor_config(gpu_ops(definitions)), name="k8s_earthsnap")


defs = build_definitions(executor=cluster_executor(ClusterConfig.from_env(os.environ), build_definitions()))
