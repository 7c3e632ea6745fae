"""Keeping the lake honest and small: the reconciliation listing and garbage collection."""

from datetime import timedelta

import dagster as dg
from pydantic import Field

from earthsnap_assets.lake.gc import ModelData, collect_garbage
from earthsnap_assets.lake.reconcile import reconcile
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.reports import markdown_table
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore

MODEL_FILTER = "name LIKE 'earthsnap-%'"


@dg.asset(
    group_name="maintenance",
    kinds={"s3"},
    automation_condition=dg.AutomationCondition.on_cron("30 3 * * *"),
)
def raw_reconciliation(
    context: dg.AssetExecutionContext, store: ObjectStore, taxonomy: Taxonomy
) -> dg.MaterializeResult:
    """Daily full listing of the raw bucket (in its own run) against the object tables: missed events recovered."""
    result = reconcile(store, store.raw_bucket, store.lake_bucket, taxonomy)
    for group in result.touched:
        context.log_event(dg.AssetMaterialization("raw_changes", partition=group, metadata={"cause": "reconciliation"}))
    rows = [(g, c["missing"], c["changed"], c["gone"]) for g, c in sorted(result.groups.items()) if any(c.values())]
    return dg.MaterializeResult(
        metadata={
            "listed_objects": result.listed,
            "groups_with_differences": len(result.touched),
            "differences": dg.MetadataValue.md(
                markdown_table(["group", "missing", "changed", "gone"], rows, limit=200)
            ),
            "unknown_species_folders": dg.MetadataValue.json(result.unknown_folders[:200]),
            "objects_outside_layout": result.outside_layout,
            "seconds": round(result.seconds, 2),
        }
    )


class GcConfig(dg.Config):
    dry_run: bool = Field(True, description="only list what would be deleted")
    keep_versions: int = Field(3, description="newest dataset versions kept whatever references them")
    min_age_hours: float = Field(6.0, description="never delete files younger than this (a running step's output)")


def registered_data(registry: MlflowRegistry) -> list[ModelData]:
    """Every registered version's training data, from its tags: what GC must never delete."""
    found = []
    for version in registry.search_versions(MODEL_FILTER):
        tags = version.tags or {}
        found.append(
            ModelData(version.name, str(version.version), tags.get("dataset_version", ""), tags.get("dataset_uri", ""))
        )
    return found


@dg.asset(group_name="maintenance", kinds={"s3"})
def lake_garbage_collection(
    context: dg.AssetExecutionContext, config: GcConfig, store: ObjectStore, registry: MlflowRegistry
) -> dg.MaterializeResult:
    """Deletes lake files no current state, recent dataset version or registered model refers to."""
    models = registered_data(registry)
    result = collect_garbage(
        store,
        store.lake_bucket,
        models,
        keep_versions=config.keep_versions,
        min_age=timedelta(hours=config.min_age_hours),
        dry_run=config.dry_run,
    )
    verb = "would delete" if result.dry_run else "deleted"
    context.log.info(f"{verb} {len(result.garbage)} files ({result.garbage_bytes / 1e6:.1f} MB)")
    return dg.MaterializeResult(
        metadata={
            "dry_run": result.dry_run,
            "garbage_files": len(result.garbage),
            "garbage_mb": round(result.garbage_bytes / 1e6, 2),
            "live_files": result.live,
            "protected_model_versions": result.protected_models,
            "kept_dataset_versions": dg.MetadataValue.json(result.kept_versions),
            "by_prefix": dg.MetadataValue.json(result.by_prefix),
            "sample": dg.MetadataValue.md(markdown_table(["file"], [(k,) for k in result.garbage], limit=50)),
        }
    )


gc_job = dg.define_asset_job(
    "lake_gc", selection=["lake_garbage_collection"], description="Garbage-collect the lake (dry run by default)."
)
gc_schedule = dg.ScheduleDefinition(
    name="weekly_lake_gc",
    job=gc_job,
    cron_schedule="0 5 * * 0",
    run_config={"ops": {"lake_garbage_collection": {"config": {"dry_run": False}}}},
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Deletes unreferenced lake files weekly; turn on once a dry run looks right.",
)
