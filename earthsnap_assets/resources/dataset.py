"""What defines the dataset, in one resource: QA rules, splits, training resolution, index sizes.

Intake (`raw_images`), validation, layouts and the parent's sample all read the same settings, so a
photo is preprocessed once, at the resolution its layout uses, and every group is validated under the
same rules. Every field goes into a fingerprint (object rules, manifest config, layout id): changing one
makes new versions, never silently mixed ones. Override per run in the launchpad under
`resources: dataset: config:`.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from earthsnap_assets.lake.layouts import LayoutConfig
from earthsnap_assets.lake.manifest import ManifestConfig
from earthsnap_assets.lake.sample import SampleConfig
from earthsnap_assets.lake.splits import SplitConfig
from earthsnap_assets.ml.preprocessing import PreprocessConfig
from earthsnap_assets.ml.presets import preset
from earthsnap_assets.ml.quality import QualityRules
from earthsnap_assets.settings import Settings


class DatasetSettings(dg.ConfigurableResource):
    min_side: int = Field(64, description="shortest accepted image side, pixels")
    max_pixels: int = Field(40_000_000, description="larger images are rejected before decoding")
    allowed_formats: list[str] = Field(["JPEG", "PNG", "WEBP"])
    min_images_per_species: int = Field(10, description="species below this are reported and fail a check")
    near_duplicate_bits: int = Field(3, description="dHash distance (0-3) that makes two images one cluster")
    max_rejection_rate: float = Field(0.2, description="share of a group's objects rejected that fails its QA check")
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = Field(0, description="order in which new images fill split quotas")
    image_size: int | None = Field(
        None, description="training resolution (square, pixels); None = the training preset's (cpu 64, gpu 224)"
    )
    shard_size: int = Field(1024, description="images per full shard")
    max_delta_shards: int = Field(8, description="per group and split; more are compacted into full shards")
    content_buckets: int = Field(256, description="sha256 buckets of the global content table (fixed once it exists)")
    sample_train_per_group: int = Field(1000, description="parent's sample: training photos per group")
    sample_eval_per_group: int = Field(200, description="parent's sample: validation and test photos per group, each")
    sample_seed: int = 0
    parent_retrain_share: float = Field(
        0.1, description="the parent's sample (and so the parent) moves on when more than this share changed"
    )

    def rules(self) -> QualityRules:
        return QualityRules(
            min_side=self.min_side,
            max_pixels=self.max_pixels,
            allowed_formats=tuple(self.allowed_formats),
            min_images_per_species=self.min_images_per_species,
            near_duplicate_bits=self.near_duplicate_bits,
            max_rejection_rate=self.max_rejection_rate,
        )

    def resolution(self) -> int:
        """The layout's image size: set here, or the training preset's (read at run time, not import)."""
        return self.image_size or preset(Settings.from_env().preset).resolution()

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(image_size=self.resolution())

    def manifest(self) -> ManifestConfig:
        splits = SplitConfig(self.val_fraction, self.test_fraction, self.split_seed)
        return ManifestConfig(self.rules(), splits, self.content_buckets)

    def layout(self, workers: int = 8) -> LayoutConfig:
        return LayoutConfig(self.preprocess(), self.shard_size, self.max_delta_shards, workers)

    def sample(self) -> SampleConfig:
        return SampleConfig(
            self.sample_train_per_group, self.sample_eval_per_group, self.sample_seed, self.parent_retrain_share
        )
