"""Training layout of one species group: append-only shards per split and the index a child reads."""

import dagster as dg
from pydantic import Field

from earthsnap_assets.defs.automation import data_changed
from earthsnap_assets.defs.partitions import species_group
from earthsnap_assets.lake.layouts import build_layout
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.refs import DatasetRef, ManifestRef
from earthsnap_assets.reports import split_table
from earthsnap_assets.resources.dataset import DatasetSettings
from earthsnap_assets.resources.object_store import ObjectStore

COVERAGE_CHECK = "every_species_in_every_split"


class LayoutRunConfig(dg.Config):
    workers: int = Field(8, description="decoding threads, used only for photos without pixels at this resolution")


@dg.asset(
    group_name="data",
    partitions_def=species_group,
    kinds={"s3", "numpy"},
    automation_condition=data_changed().ignore(dg.AssetSelection.assets("taxonomy")),
    check_specs=[dg.AssetCheckSpec(COVERAGE_CHECK, asset="dataset_splits")],
)
def dataset_splits(
    context: dg.AssetExecutionContext,
    config: LayoutRunConfig,
    store: ObjectStore,
    dataset: DatasetSettings,
    validated_manifest: ManifestRef,
    taxonomy: Taxonomy,
):
    """Group g's training shards (previous ones reused, new photos in delta shards) and its training index."""
    group = context.partition_key
    result = build_layout(store, store.raw_bucket, store.lake_bucket, group, dataset.layout(config.workers))
    species = sorted({s for per in result.counts.values() for s in per})
    ref = DatasetRef(
        result.group_version,
        result.layout_id,
        store.lake_bucket,
        result.index_key,
        dataset.resolution(),
        labels={group: species},
        counts=result.counts,
        group=group,
    )
    totals = {split: sum(per.values()) for split, per in result.counts.items()}
    context.log.info(f"{group}: {totals}; {result.added_rows} new rows, reused={result.reused}")
    yield dg.Output(
        ref,
        data_version=dg.DataVersion(f"{result.group_version}/{result.layout_id}"),
        metadata={
            "group_version": result.group_version,
            "layout_id": result.layout_id,
            "index_uri": ref.uri,
            "dagster/row_count": sum(totals.values()),
            **{f"{split}_images": n for split, n in totals.items()},
            "shards": result.shards,
            "rows_added": result.added_rows,
            "decoded_for_this_layout": result.decoded,
            "compacted_splits": dg.MetadataValue.json(result.compacted),
            "reused_existing_layout": result.reused,
            "counts": dg.MetadataValue.md(split_table(result.counts)),
            "seconds": round(result.seconds, 3),
        },
    )
    wanted = taxonomy.species_in(group)
    missing = [f"{s}:{split}" for s in wanted for split, per in result.counts.items() if not per.get(s)]
    yield dg.AssetCheckResult(
        check_name=COVERAGE_CHECK,
        passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"missing": dg.MetadataValue.json(missing[:200])},
    )
