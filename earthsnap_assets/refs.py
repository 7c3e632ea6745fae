"""Values passed between assets: identities of artifacts (URIs, versions, hashes), never the data."""

from __future__ import annotations

from dataclasses import dataclass, field

from earthsnap_assets.ml.hashing import fingerprint
from earthsnap_assets.ml.manifest import RawObject
from earthsnap_assets.registry import names


@dataclass(frozen=True)
class RawListing:
    """What is under the raw prefix at one moment, and a hash of it (its data version)."""

    bucket: str
    prefix: str
    objects: tuple[RawObject, ...]
    taxonomy_key: str
    taxonomy_etag: str | None

    @property
    def listing_hash(self) -> str:
        rows = [(o.key, o.etag) for o in self.objects] + [(self.taxonomy_key, self.taxonomy_etag or "")]
        return fingerprint(rows)

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects)


@dataclass(frozen=True)
class ManifestRef:
    dataset_version: str
    bucket: str
    prefix: str
    accepted: int
    rejected: int

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}manifest.json"


@dataclass(frozen=True)
class DatasetRef:
    dataset_version: str
    layout_id: str
    bucket: str
    prefix: str
    image_size: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    labels: dict = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}dataset.json"


@dataclass(frozen=True)
class ModelRef:
    """A trained model: where it is in MLflow and what it predicts. No network for a one-species group."""

    task: str  # "parent" | "child" | "flat"
    group: str | None
    classes: tuple[str, ...]
    dataset_version: str
    image_size: int
    run_id: str | None = None
    model_uri: str | None = None
    val_accuracy: float | None = None
    parameter_count: int = 0
    train_seconds: float = 0.0
    params: dict = field(default_factory=dict)
    dataset_uri: str = ""

    @property
    def single_species(self) -> bool:
        return self.model_uri is None

    @property
    def registered_name(self) -> str:
        return names.PARENT if self.task == "parent" else names.child_name(self.group or "")


@dataclass(frozen=True)
class EvaluationRef:
    task: str
    group: str | None
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    report_uri: str | None = None
