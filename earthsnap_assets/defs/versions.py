"""Small fan-ins over the groups: the dataset version, and the parent's balanced sample of every group."""

import dagster as dg

from earthsnap_assets.defs.automation import data_changed
from earthsnap_assets.defs.manifests import validated_manifest
from earthsnap_assets.defs.splits import dataset_splits
from earthsnap_assets.lake import paths
from earthsnap_assets.lake.heads import load_head
from earthsnap_assets.lake.sample import build_sample, sample_splits
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.lake.versions import IncompleteVersion, build_version, record_layout
from earthsnap_assets.refs import DatasetRef, VersionRef
from earthsnap_assets.reports import markdown_table
from earthsnap_assets.resources.dataset import DatasetSettings
from earthsnap_assets.resources.object_store import ObjectStore


@dg.asset(
    group_name="data",
    kinds={"s3"},
    deps=[validated_manifest],
    automation_condition=data_changed().ignore(dg.AssetSelection.assets("taxonomy")),
)
def dataset_version(store: ObjectStore, dataset: DatasetSettings, taxonomy: Taxonomy) -> dg.Output[VersionRef]:
    """Hash of every group's version, the rules and the taxonomy; its manifest recreates the data exactly."""
    try:
        result = build_version(store, store.lake_bucket, taxonomy, dataset.manifest())
    except IncompleteVersion as exc:
        raise dg.Failure(str(exc)) from exc
    rows = [(g, v["group_version"], v["accepted"], v["rejected"]) for g, v in sorted(result.groups.items())]
    return dg.Output(
        VersionRef(
            result.dataset_version,
            store.lake_bucket,
            result.manifest_key,
            {g: v["group_version"] for g, v in result.groups.items()},
        ),
        data_version=dg.DataVersion(result.dataset_version),
        metadata={
            "dataset_version": result.dataset_version,
            "manifest_uri": f"s3://{store.lake_bucket}/{result.manifest_key}",
            "dagster/row_count": result.totals["accepted"],
            **result.totals,
            "new_version": result.created,
            "groups_table": dg.MetadataValue.md(
                markdown_table(["group", "version", "accepted", "rejected"], rows, limit=200)
            ),
        },
    )


@dg.asset(
    group_name="data",
    kinds={"s3", "numpy"},
    deps=[dataset_splits],
    automation_condition=data_changed().ignore(dg.AssetSelection.assets("taxonomy")),
)
def parent_sample(
    context: dg.AssetExecutionContext,
    store: ObjectStore,
    dataset: DatasetSettings,
    dataset_version: VersionRef,
    taxonomy: Taxonomy,
) -> dg.Output[DatasetRef]:
    """A bounded, per-group balanced sample of every group (stratified over species): the parent's data.

    Its data version moves only when groups changed or more than `parent_retrain_share` of it did, so
    small uploads retrain only their group's child, not the parent.
    """
    layout = dataset.layout()
    heads = {g: load_head(store, store.lake_bucket, paths.layout_head(layout.layout_id, g)) for g in taxonomy.groups}
    stale = sorted(g for g, h in heads.items() if h.get("group_version") != dataset_version.groups.get(g))
    if stale:
        raise dg.Failure(
            f"dataset_splits of {stale} do not match {dataset_version.dataset_version}: materialize them first"
        )
    labels = {g: sorted({s for per in h.value["counts"].values() for s in per}) for g, h in heads.items()}
    result = build_sample(
        store,
        store.lake_bucket,
        layout.layout_id,
        {g: h.value["index"] for g, h in heads.items()},
        dataset_version.dataset_version,
        labels,
        dataset.sample(),
    )
    record_layout(
        store,
        store.lake_bucket,
        dataset_version.dataset_version,
        layout.layout_id,
        {g: {"index": h.value["index"], "group_version": h.value["group_version"]} for g, h in heads.items()},
    )
    committed = result.committed
    context.log.info(f"parent sample: {result.reason}")
    ref = DatasetRef(
        committed["dataset_version"],
        layout.layout_id,
        store.lake_bucket,
        committed["index"],
        dataset.resolution(),
        labels=committed["labels"],
        counts=committed["counts"],
    )
    return dg.Output(
        ref,
        data_version=dg.DataVersion(committed["digest"]),
        metadata={
            "dataset_version": committed["dataset_version"],
            "sample_digest": committed["digest"],
            "index_uri": ref.uri,
            "moved_on": result.moved,
            "reason": result.reason,
            "changed_share": round(result.changed_share, 4),
            "groups_resampled": len(result.built_groups),
            "groups_reused": len(result.reused_groups),
            **{f"{split}_images": n for split, n in sample_splits(committed["counts"]).items()},
            "seconds": round(result.seconds, 3),
        },
    )
