"""Jobs users launch from the UI, the CLI or the GraphQL API (automation needs none of them)."""

import dagster as dg

from earthsnap_assets.defs.compute import COMPUTE_TAG

# Run-level tag of the training jobs, for the run queue's limit on GPU runs (deploy/dagster.yaml). The
# GPU request itself is on the ops: runs started from the UI or by automation have no job tags.
GPU_RUN_TAGS = {COMPUTE_TAG: "gpu"}

taxonomy_job = dg.define_asset_job(
    "taxonomy_update",
    selection=dg.AssetSelection.assets("taxonomy"),
    description="Parse taxonomy.csv and keep the species_group partitions in step with it.",
)

data_job = dg.define_asset_job(
    "data_pipeline",
    selection=dg.AssetSelection.assets("raw_images", "validated_manifest", "dataset_splits"),
    description="One species group's data: intake (QA + preprocessing), validated manifest, training shards.",
)

intake_job = dg.define_asset_job(
    "intake",
    selection=dg.AssetSelection.assets("raw_images"),
    description="One species group's intake: new photos read once, QA'd and preprocessed from one decode.",
)

checks_job = dg.define_asset_job(
    "global_checks",
    selection=dg.AssetSelection.assets("content_checks"),
    description="Duplicates, label conflicts, near-duplicates and splits for every group's new photos at once.",
)

dataset_job = dg.define_asset_job(
    "dataset_release",
    selection=dg.AssetSelection.assets("dataset_version", "parent_sample"),
    description="Fan-in over the groups: the dataset version and the parent's balanced sample.",
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

hierarchy_schedule = dg.ScheduleDefinition(
    name="daily_hierarchy_report",
    job=hierarchy_job,
    cron_schedule="0 6 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="The end-to-end comparison once a day, after the night's retraining.",
)
