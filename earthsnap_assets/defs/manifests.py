"""Data QA of one species group: its validated, versioned manifest and the checks on it."""

import dagster as dg

from earthsnap_assets.defs.automation import data_changed
from earthsnap_assets.defs.partitions import species_group
from earthsnap_assets.lake.manifest import validate_group
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.refs import GroupObjectsRef, ManifestRef
from earthsnap_assets.reports import markdown_table
from earthsnap_assets.resources.dataset import DatasetSettings
from earthsnap_assets.resources.object_store import ObjectStore

REJECTION_CHECK = "rejection_rate_below_threshold"
MINIMUM_CHECK = "every_species_has_minimum_images"


@dg.asset(
    group_name="data",
    partitions_def=species_group,
    kinds={"s3", "python"},
    automation_condition=data_changed().ignore(dg.AssetSelection.assets("taxonomy")),
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
    """Group g's verdicts (duplicates and label conflicts across all groups), clusters and splits, versioned."""
    group = context.partition_key
    config = dataset.manifest()
    result = validate_group(store, store.lake_bucket, group, taxonomy.species_in(group), config)
    for other, keys in result.revalidate.items():  # the same bytes elsewhere: that group checks its copy again
        context.log.info(f"{len(keys)} objects of group {other} change verdict: asking it to revalidate")
        context.log_event(
            dg.AssetMaterialization("raw_changes", partition=other, metadata={"cause": f"revalidate from {group}"})
        )
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
            "index_buckets_read": result.index_reads,
            "near_duplicate_clusters": report["near_duplicate_clusters"],
            "near_duplicates_across_species": report["near_duplicates_across_species_count"],
            "groups_asked_to_revalidate": dg.MetadataValue.json(sorted(result.revalidate)),
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
