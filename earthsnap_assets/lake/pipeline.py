"""The data side as plain function calls, in the order the assets run them: for tests, benchmarks and tools.

Per group: intake; then the global checks over all groups at once; per group: manifest and layout; then
the fan-ins: dataset version and the parent's sample. Dagster runs exactly these steps as `raw_images[g]`,
`content_checks`, `validated_manifest[g]`, `dataset_splits[g]`, `dataset_version` and `parent_sample`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from earthsnap_assets.lake.content import ChecksResult, check_groups
from earthsnap_assets.lake.intake import IntakeConfig, IntakeResult, intake_group
from earthsnap_assets.lake.layouts import LayoutConfig, LayoutResult, build_layout
from earthsnap_assets.lake.manifest import ManifestConfig, ManifestResult, validate_group
from earthsnap_assets.lake.sample import SampleConfig, SampleResult, build_sample
from earthsnap_assets.lake.splits import SplitConfig
from earthsnap_assets.lake.storage import VersionedBlobs
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.lake.versions import VersionResult, build_version, record_layout
from earthsnap_assets.ml.preprocessing import PreprocessConfig
from earthsnap_assets.ml.quality import QualityRules
from earthsnap_assets.refs import DatasetRef


@dataclass(frozen=True)
class DataConfig:
    rules: QualityRules = field(default_factory=QualityRules)
    splits: SplitConfig = field(default_factory=SplitConfig)
    image_size: int = 64
    shard_size: int = 1024
    sample: SampleConfig = field(default_factory=SampleConfig)
    workers: int = 8

    def intake(self) -> IntakeConfig:
        return IntakeConfig(self.rules, PreprocessConfig(self.image_size), workers=self.workers)

    def manifest(self) -> ManifestConfig:
        return ManifestConfig(self.rules, self.splits)

    def layout(self) -> LayoutConfig:
        return LayoutConfig(PreprocessConfig(self.image_size), self.shard_size, workers=self.workers)


@dataclass
class GroupRun:
    intake: IntakeResult
    manifest: ManifestResult
    layout: LayoutResult

    def ref(self, bucket: str, image_size: int) -> DatasetRef:
        species = sorted({s for per in self.layout.counts.values() for s in per})
        return DatasetRef(
            self.layout.group_version,
            self.layout.layout_id,
            bucket,
            self.layout.index_key,
            image_size,
            labels={self.layout.group: species},
            counts=self.layout.counts,
            group=self.layout.group,
        )


@dataclass
class PreparedData:
    checks: ChecksResult
    groups: dict[str, GroupRun]
    version: VersionResult
    sample: SampleResult
    sample_ref: DatasetRef
    group_refs: dict[str, DatasetRef] = field(default_factory=dict)


def prepare_dataset(
    blobs: VersionedBlobs,
    raw_bucket: str,
    lake_bucket: str,
    taxonomy: Taxonomy,
    config: DataConfig | None = None,
) -> PreparedData:
    """Every group's intake, the global checks, every group's manifest and layout, then the fan-ins."""
    config = config or DataConfig()
    groups = taxonomy.groups
    intakes = {
        g: intake_group(blobs, raw_bucket, lake_bucket, g, taxonomy.species_in(g), config.intake()) for g in groups
    }
    checks = check_groups(blobs, lake_bucket, groups, config.manifest().checks())
    runs = {}
    for group in groups:
        manifest = validate_group(blobs, lake_bucket, group, taxonomy.species_in(group), config.manifest())
        layout = build_layout(blobs, raw_bucket, lake_bucket, group, config.layout())
        runs[group] = GroupRun(intakes[group], manifest, layout)
    version = build_version(blobs, lake_bucket, taxonomy, config.manifest())
    layout = config.layout().layout_id
    labels = {g: sorted({s for per in r.layout.counts.values() for s in per}) for g, r in runs.items()}
    sample = build_sample(
        blobs,
        lake_bucket,
        layout,
        {g: r.layout.index_key for g, r in runs.items()},
        version.dataset_version,
        labels,
        config.sample,
    )
    record_layout(
        blobs,
        lake_bucket,
        version.dataset_version,
        layout,
        {g: {"index": r.layout.index_key, "group_version": r.layout.group_version} for g, r in runs.items()},
    )
    committed = sample.committed
    sample_ref = DatasetRef(
        committed["dataset_version"],
        layout,
        lake_bucket,
        committed["index"],
        config.image_size,
        labels=committed["labels"],
        counts=committed["counts"],
    )
    refs = {g: r.ref(lake_bucket, config.image_size) for g, r in runs.items()}
    return PreparedData(checks, runs, version, sample, sample_ref, refs)
