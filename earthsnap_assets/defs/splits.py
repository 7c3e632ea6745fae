"""Preprocessed shards and stable, stratified train/val/test splits of a dataset version."""

import dagster as dg
from pydantic import Field

from earthsnap_assets.ml.dataset_build import build_dataset
from earthsnap_assets.ml.preprocessing import PreprocessConfig
from earthsnap_assets.ml.splits import SplitConfig
from earthsnap_assets.ml.validation import load_manifest
from earthsnap_assets.refs import DatasetRef, ManifestRef
from earthsnap_assets.reports import split_table
from earthsnap_assets.resources.object_store import ObjectStore

COVERAGE_CHECK = "every_species_in_every_split"


class DatasetConfig(dg.Config):
    image_size: int = Field(64, description="training resolution (square, pixels); small suits CPU training")
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = Field(0, description="order in which new images fill split quotas")
    shard_size: int = Field(1024, description="images per shard")
    workers: int = Field(8, description="decoding threads (Pillow releases the GIL while decoding)")


@dg.asset(
    group_name="data",
    kinds={"s3", "numpy"},
    check_specs=[dg.AssetCheckSpec(COVERAGE_CHECK, asset="dataset_splits")],
)
def dataset_splits(
    context: dg.AssetExecutionContext, config: DatasetConfig, store: ObjectStore, validated_manifest: ManifestRef
):
    """Resize + pack shards per split and group under `datasets/<dataset_version>/<layout>/`."""
    manifest = load_manifest(store, validated_manifest.bucket, validated_manifest.dataset_version)
    splits = SplitConfig(config.val_fraction, config.test_fraction, config.seed)
    result = build_dataset(
        store,
        manifest,
        raw_bucket=manifest.source["bucket"],
        lake_bucket=store.lake_bucket,
        preprocess=PreprocessConfig(image_size=config.image_size),
        splits=splits,
        shard_size=config.shard_size,
        workers=config.workers,
    )
    index = result.index
    ref = DatasetRef(
        result.dataset_version,
        result.layout_id,
        store.lake_bucket,
        result.prefix,
        config.image_size,
        counts=index["counts"],
        labels=index["labels"],
    )
    totals = {split: sum(per.values()) for split, per in index["counts"].items()}
    context.log.info(f"{ref.uri}: {totals}; preprocessed {result.preprocessed} new images, reused={result.reused}")
    yield dg.Output(
        ref,
        data_version=dg.DataVersion(f"{result.dataset_version}/{result.layout_id}"),
        metadata={
            "dataset_version": result.dataset_version,
            "layout_id": result.layout_id,
            "dataset_uri": ref.uri,
            "dagster/row_count": sum(totals.values()),
            **{f"{split}_images": n for split, n in totals.items()},
            "shards": len(index["shards"]),
            "groups": dg.MetadataValue.json(index["labels"]["species"]),
            "preprocessed_this_run": result.preprocessed,
            "reused_existing_layout": result.reused,
            "counts": dg.MetadataValue.md(split_table(index["counts"])),
        },
    )
    species = sorted({s for per in index["counts"].values() for s in per})
    missing = [f"{s}:{split}" for s in species for split, per in index["counts"].items() if not per.get(s)]
    yield dg.AssetCheckResult(
        check_name=COVERAGE_CHECK,
        passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"missing": dg.MetadataValue.json(missing)},
    )
