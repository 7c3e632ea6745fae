"""Where steps run: training and tuning share the `gpu` pool and ask Kubernetes for a GPU.

The request is attached to each training/tuning op (not to the run or the job), so it holds however a
run starts: UI materialization, partition backfill, sensor or declarative automation. Run-level
`dagster-k8s/config` tags are dropped on some of those paths (dagster issues 26720, 33430); op tags
come from the code, so no launch path can lose them. `k8s_job_executor` reads them; other executors
ignore them. Which nodes a GPU step lands on (node selector, tolerations) is cluster configuration:
see `earthsnap_assets.cluster`.
"""

GPU_POOL = "gpu"
COMPUTE_TAG = "earthsnap/compute"

GPU_OP_TAGS = {
    COMPUTE_TAG: "gpu",
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
    },
}
