"""Jobs users launch from the UI, the CLI or the GraphQL API."""

import dagster as dg

from earthsnap_assets.defs.compute import COMPUTE_TAG

# Run-level tag of the training jobs, for the run queue's limit on GPU runs (deploy/dagster.yaml). The
# GPU request itself is on the ops: runs started from the UI or by automation have no job tags.
GPU_RUN_TAGS = {COMPUTE_TAG: "gpu"}

data_job = dg.define_asset_job(
    "data_pipeline",
    selection=dg.AssetSelection.groups("data"),
    description="List raw images, validate them into a versioned manifest, build shards and splits.",
)

parent_job = dg.define_asset_job(
    "parent_training",
    selection=dg.AssetSelection.assets("parent_hyperparams", "parent_model", "parent_evaluation", "registered_parent"),
    description="Tune, train, evaluate and register the parent (group router).",
    tags=GPU_RUN_TAGS,
)

child_job = dg.define_asset_job(
    "child_training",
    selection=dg.AssetSelection.assets("child_hyperparams", "child_model", "child_evaluation", "registered_child"),
    description="Tune, train, evaluate and register one species group's child model (a partition).",
    tags=GPU_RUN_TAGS,
)

hierarchy_job = dg.define_asset_job(
    "hierarchy_report",
    selection=dg.AssetSelection.assets("flat_baseline_model", "hierarchical_evaluation"),
    description="Train the flat baseline and compare it with the hierarchy end to end.",
    tags=GPU_RUN_TAGS,
)
