"""Data QA: the validated, versioned manifest and its checks."""

import dagster as dg
from pydantic import Field

from earthsnap_assets.ml.quality import QualityRules
from earthsnap_assets.ml.taxonomy import Taxonomy
from earthsnap_assets.ml.validation import validate
from earthsnap_assets.refs import ManifestRef, RawListing
from earthsnap_assets.reports import markdown_table
from earthsnap_assets.resources.object_store import ObjectStore

REJECTION_CHECK = "rejection_rate_below_threshold"
MINIMUM_CHECK = "every_species_has_minimum_images"


class QualityConfig(dg.Config):
    """The QA rules; every field is part of the dataset version."""

    min_side: int = Field(64, description="shortest accepted image side, pixels")
    max_pixels: int = Field(40_000_000, description="larger images are rejected before decoding")
    allowed_formats: list[str] = Field(["JPEG", "PNG", "WEBP"])
    min_images_per_species: int = Field(10, description="species below this are reported and fail a check")
    near_duplicate_bits: int = Field(3, description="dHash distance (0-3) that makes two images one cluster")
    max_rejection_rate: float = Field(0.2, description="share of rejected objects that fails the QA check")
    workers: int = Field(8, description="decoding threads (Pillow releases the GIL while decoding)")

    def rules(self) -> QualityRules:
        fields = self.model_dump(exclude={"workers"})
        return QualityRules(**{**fields, "allowed_formats": tuple(fields["allowed_formats"])})


@dg.asset(
    group_name="data",
    kinds={"s3", "python"},
    check_specs=[
        dg.AssetCheckSpec(REJECTION_CHECK, asset="validated_manifest", blocking=True),
        dg.AssetCheckSpec(MINIMUM_CHECK, asset="validated_manifest"),
    ],
)
def validated_manifest(
    context: dg.AssetExecutionContext,
    config: QualityConfig,
    store: ObjectStore,
    raw_images: RawListing,
    taxonomy: Taxonomy,
):
    """QA of every raw object (cached by key + ETag) -> `manifests/<dataset_version>/` in the lake."""
    rules = config.rules()
    result = validate(
        store,
        raw_images.objects,
        taxonomy,
        rules,
        raw_bucket=raw_images.bucket,
        lake_bucket=store.lake_bucket,
        prefix=raw_images.prefix,
        workers=config.workers,
    )
    manifest, report = result.manifest, result.manifest.report
    context.log.info(f"{manifest.dataset_version}: decoded {result.decoded} new objects, reused {result.reused}")
    ref = ManifestRef(
        manifest.dataset_version, store.lake_bucket, result.manifest_prefix, report["accepted"], report["rejected"]
    )
    rejections = [(r.key, r.reason, r.detail) for r in manifest.rejected]
    yield dg.Output(
        ref,
        data_version=dg.DataVersion(manifest.dataset_version),
        metadata={
            "dataset_version": manifest.dataset_version,
            "manifest_uri": ref.uri,
            "dagster/row_count": report["accepted"],
            "accepted": report["accepted"],
            "rejected": report["rejected"],
            "rejection_rate": report["rejection_rate"],
            "decoded_this_run": result.decoded,
            "reused_from_cache": result.reused,
            "near_duplicate_clusters": report["near_duplicate_clusters"],
            "rejected_by_reason": dg.MetadataValue.json(report["rejected_by_reason"]),
            "rejections": dg.MetadataValue.md(markdown_table(["key", "reason", "detail"], rejections, limit=100)),
            "images_per_species": dg.MetadataValue.md(
                markdown_table(["species", "images"], sorted(report["images_per_species"].items()))
            ),
        },
    )
    yield dg.AssetCheckResult(
        check_name=REJECTION_CHECK,
        passed=report["rejection_rate"] <= rules.max_rejection_rate,
        metadata={"rejection_rate": report["rejection_rate"], "threshold": rules.max_rejection_rate},
    )
    below = report["species_below_minimum"]
    yield dg.AssetCheckResult(
        check_name=MINIMUM_CHECK,
        passed=not below,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"minimum": rules.min_images_per_species, "species_below_minimum": dg.MetadataValue.json(below)},
    )
