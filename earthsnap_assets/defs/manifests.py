"""Data QA: the global checks over every group's new photos, and each group's validated, versioned manifest."""

import dagster as dg

from earthsnap_assets.defs.automation import checks_due, new_events
from earthsnap_assets.defs.partitions import species_group
from earthsnap_assets.lake.content import check_groups
from earthsnap_assets.lake.manifest import validate_group
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.refs import GroupObjectsRef, ManifestRef
from earthsnap_assets.reports import markdown_table
from earthsnap_assets.resources.dataset import DatasetSettings
from earthsnap_assets.resources.object_store import ObjectStore

REJECTION_CHECK = "rejection_rate_below_threshold"
MINIMUM_CHECK = "every_species_has_minimum_images"

group_checks = dg.AssetSpec(
    "group_checks",
    group_name="data",
    partitions_def=species_group,
    deps=["content_checks"],
    kinds={"s3"},
    description="Verdict deltas for one group's manifest, written by content_checks (reported per touched group).",
)


@dg.asset(group_name="data", kinds={"s3", "numpy"}, deps=["raw_images"], automation_condition=checks_due())
def content_checks(context: dg.AssetExecutionContext, store: ObjectStore, dataset: DatasetSettings, taxonomy: Taxonomy):
    """Exact copies, labelling conflicts and near-duplicates across *all* groups, for every group's new
    photos at once (one pass over the content table, whatever the number of groups), plus splits.

    Each group whose manifest rows changed gets a delta, and `group_checks[g]` is reported for it, so only
    those groups' `validated_manifest` runs.
    """
    result = check_groups(store, store.lake_bucket, taxonomy.groups, dataset.manifest().checks())
    for group, rows in sorted(result.groups.items()):
        context.log_event(dg.AssetMaterialization("group_checks", partition=group, metadata={"delta_rows": rows}))
    context.log.info(f"{result.new_rows} new object rows in {len(result.groups)} groups; {result.probed} probed")
    return dg.MaterializeResult(
        metadata={
            "groups_changed": len(result.groups),
            "new_object_rows": result.new_rows,
            "newly_accepted_probed": result.probed,
            "compared_with_accepted": result.compared_with,
            "content_buckets_read": result.buckets_read,
            "content_buckets_written": result.buckets_written,
            "checked_everything_again": result.reset,
            "delta_rows_per_group": dg.MetadataValue.json(dict(sorted(result.groups.items()))),
            "seconds": round(result.seconds, 3),
        }
    )


@dg.asset(
    group_name="data",
    partitions_def=species_group,
    kinds={"s3", "python"},
    deps=[group_checks],
    automation_condition=new_events(),
    check_specs=[
        dg.AssetCheckSpec(REJECTION_CHECK, asset="validated_manifest", blocking=True),
        dg.AssetCheckSpec(MINIMUM_CHECK, asset="validated_manifest"),
    ],
)
def validated_manifest(
    context: dg.AssetExecutionContext,
    store: ObjectStore,
    dataset: DatasetSettings,
    raw_images: GroupObjectsRef,
    taxonomy: Taxonomy,
):
    """Group g's rows with their verdicts (duplicates and label conflicts across all groups), clusters and
    splits, applied from content_checks' deltas, versioned. Run alone for a group, it runs the checks for
    that group first."""
    group = context.partition_key
    config = dataset.manifest()
    result = validate_group(store, store.lake_bucket, group, taxonomy.species_in(group), config)
    report = result.report
    ref = ManifestRef(
        group,
        result.group_version,
        store.lake_bucket,
        result.segment_key,
        result.report_key,
        report["accepted"],
        report["rejected"],
    )
    context.log.info(f"{group}: {result.group_version}; {result.changed} rows changed, {result.removed} removed")
    yield dg.Output(
        ref,
        data_version=dg.DataVersion(result.group_version),
        metadata={
            "group_version": result.group_version,
            "manifest_uri": ref.uri,
            "dagster/row_count": report["accepted"],
            "accepted": report["accepted"],
            "rejected": report["rejected"],
            "rejection_rate": report["rejection_rate"],
            "changed_rows": result.changed,
            "removed_rows": result.removed,
            "deltas_applied": result.deltas,
            "checks_ran_for_this_group": result.checked_here,
            "near_duplicate_clusters": report["near_duplicate_clusters"],
            "near_duplicates_across_species": report["near_duplicates_across_species_count"],
            "rejected_by_reason": dg.MetadataValue.json(report["rejected_by_reason"]),
            "images_per_species": dg.MetadataValue.md(
                markdown_table(["species", "images"], sorted(report["images_per_species"].items()), limit=200)
            ),
            "seconds": round(result.seconds, 3),
        },
    )
    yield dg.AssetCheckResult(
        check_name=REJECTION_CHECK,
        passed=report["rejection_rate"] <= config.rules.max_rejection_rate,
        metadata={"rejection_rate": report["rejection_rate"], "threshold": config.rules.max_rejection_rate},
    )
    below = report["species_below_minimum"]
    yield dg.AssetCheckResult(
        check_name=MINIMUM_CHECK,
        passed=not below,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "minimum": config.rules.min_images_per_species,
            "species_below_minimum": dg.MetadataValue.json(below),
        },
    )
