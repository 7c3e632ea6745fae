"""Where steps run: training and tuning share the `gpu` pool and ask Kubernetes for a GPU."""

GPU_POOL = "gpu"

# Attached to each training/tuning op (not the run), so it holds however a run starts: UI, backfill,
# sensor or declarative automation. k8s_job_executor reads it; other executors ignore it.
GPU_OP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
        "pod_spec_config": {
            "node_selector": {"earthsnap.io/accelerator": "nvidia-gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
}
