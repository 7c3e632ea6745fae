"""Raw data as users and the app store it, and its intake: one species group per partition.

`taxonomy_csv` and `raw_changes` are observed from outside (the change sensor and the reconciliation
report them); `taxonomy` parses the CSV and keeps the `species_group` partitions in step with it;
`raw_images[g]` brings group g's object table up to date: each new or changed photo read once, QA'd and
preprocessed from one decode.
"""

import dagster as dg
from pydantic import Field

from earthsnap_assets.defs.automation import new_events
from earthsnap_assets.defs.partitions import species_group, sync_groups
from earthsnap_assets.lake import paths
from earthsnap_assets.lake.intake import IntakeConfig, intake_group
from earthsnap_assets.lake.taxonomy import Taxonomy, TaxonomyError, parse_taxonomy
from earthsnap_assets.lake.versions import current_taxonomy, save_taxonomy
from earthsnap_assets.refs import GroupObjectsRef
from earthsnap_assets.reports import markdown_table
from earthsnap_assets.resources.dataset import DatasetSettings
from earthsnap_assets.resources.object_store import ObjectStore

taxonomy_csv = dg.AssetSpec(
    "taxonomy_csv",
    group_name="data",
    kinds={"s3"},
    description="s3://<raw-bucket>/taxonomy.csv as uploaded (reported by raw_change_sensor when it changes).",
)

raw_changes = dg.AssetSpec(
    "raw_changes",
    group_name="data",
    partitions_def=species_group,
    kinds={"s3"},
    description=(
        "New, overwritten and deleted photos of one species group, appended to its change log in the lake by "
        "raw_change_sensor (S3 events), raw_reconciliation (full listing) or another group's validation."
    ),
)


def _groups_whose_species_changed(old: Taxonomy | None, new: Taxonomy) -> list[str]:
    if old is None:
        return new.groups
    groups = set(old.groups) | set(new.groups)
    return sorted(g for g in groups if old.species_in(g) != new.species_in(g) and g in new.by_group)


@dg.asset(group_name="data", kinds={"s3"}, deps=[taxonomy_csv], automation_condition=dg.AutomationCondition.eager())
def taxonomy(context: dg.AssetExecutionContext, store: ObjectStore) -> dg.Output[Taxonomy]:
    """`taxonomy.csv` parsed and validated (errors name the line); keeps `species_group` partitions in step."""
    bucket = store.raw_bucket
    if not store.exists(bucket, paths.TAXONOMY_KEY):
        raise dg.Failure(f"s3://{bucket}/{paths.TAXONOMY_KEY} is missing: upload a 'species,group' CSV")
    try:
        parsed = parse_taxonomy(store.read(bucket, paths.TAXONOMY_KEY).decode("utf-8"))
    except (TaxonomyError, UnicodeDecodeError) as exc:
        raise dg.Failure(f"s3://{bucket}/{paths.TAXONOMY_KEY}: {exc}") from exc
    previous = current_taxonomy(store, store.lake_bucket)
    added, removed = sync_groups(context.instance, parsed.groups)
    save_taxonomy(store, store.lake_bucket, parsed)
    touched = _groups_whose_species_changed(previous, parsed)
    for group in touched:  # their intake lists the species that joined and drops those that left
        context.log_event(dg.AssetMaterialization("raw_changes", partition=group, metadata={"cause": "taxonomy"}))
    folder_keys, _ = store.list_level(bucket, paths.IMAGES_PREFIX)
    folders = {f.removeprefix(paths.IMAGES_PREFIX).rstrip("/") for f in folder_keys}
    unknown = sorted(folders - set(parsed.species_to_group))
    if unknown:
        context.log.warning(f"image folders not in taxonomy.csv (no group takes their images): {unknown}")
    rows = [
        (g, len(members), ", ".join(members[:20]) + (" ..." if len(members) > 20 else ""))
        for g, members in parsed.by_group.items()
    ]
    return dg.Output(
        parsed,
        data_version=dg.DataVersion(parsed.fingerprint()),
        metadata={
            "species": len(parsed.species_to_group),
            "groups": len(parsed.groups),
            "fingerprint": parsed.fingerprint(),
            "new_group_partitions": dg.MetadataValue.json(added),
            "removed_group_partitions": dg.MetadataValue.json(removed),
            "groups_with_changed_species": dg.MetadataValue.json(touched),
            "unknown_species_folders": dg.MetadataValue.json(unknown[:200]),
            "species_without_images": dg.MetadataValue.json(sorted(set(parsed.species_to_group) - folders)[:200]),
            "groups_table": dg.MetadataValue.md(markdown_table(["group", "species", "members"], rows, limit=200)),
        },
    )


class IntakeRunConfig(dg.Config):
    workers: int = Field(8, description="reading and decoding threads (Pillow releases the GIL while decoding)")
    relist: bool = Field(
        False, description="list every species folder of the group and reconcile (otherwise: pending events only)"
    )


@dg.asset(
    group_name="data",
    partitions_def=species_group,
    kinds={"s3", "python"},
    deps=[raw_changes],
    automation_condition=new_events(),
)
def raw_images(
    context: dg.AssetExecutionContext,
    config: IntakeRunConfig,
    store: ObjectStore,
    dataset: DatasetSettings,
    taxonomy: Taxonomy,
) -> dg.Output[GroupObjectsRef]:
    """Group g's object table: each new or changed photo read once, QA'd and preprocessed from one decode."""
    group = context.partition_key
    if group not in taxonomy.by_group:
        raise dg.Failure(f"species group {group!r} is not in taxonomy.csv any more")
    settings = IntakeConfig(dataset.rules(), dataset.preprocess(), workers=config.workers, relist=config.relist)
    result = intake_group(store, store.raw_bucket, store.lake_bucket, group, taxonomy.species_in(group), settings)
    context.log.info(
        f"{group}: {result.events} pending events, listed {len(result.listed_species)} species folders, "
        f"decoded {result.decoded}, deleted {result.deleted}"
    )
    return dg.Output(
        GroupObjectsRef(group, store.lake_bucket, result.state_hash, result.counts),
        data_version=dg.DataVersion(f"objects-{result.state_hash}"),
        metadata={
            "objects": result.counts["objects"],
            "passed_per_object_qa": result.counts["ok"],
            "rejected_per_object_qa": result.counts["rejected"],
            "decoded_this_run": result.decoded,
            "deleted_this_run": result.deleted,
            "events_consumed": result.events,
            "listed_species_folders": len(result.listed_species),
            "segments": result.segments,
            "seconds": round(result.seconds, 3),
            "rejected_this_run": dg.MetadataValue.json(result.rejected_by_reason),
            "rejections": dg.MetadataValue.md(
                markdown_table(["key", "reason", "detail"], result.rejected_examples, limit=100)
            ),
            "state_hash": result.state_hash,
        },
    )
