"""Values passed between assets: identities of artifacts (URIs, versions, hashes), never the data."""

from __future__ import annotations

from dataclasses import dataclass, field

from earthsnap_assets.registry import names


@dataclass(frozen=True)
class GroupObjectsRef:
    """A group's object table after intake: its state hash (the asset's data version) and counts."""

    group: str
    bucket: str
    state_hash: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ManifestRef:
    """A group's validated manifest: its group version and where its segment and QA report are."""

    group: str
    group_version: str
    bucket: str
    segment_key: str
    report_key: str
    accepted: int
    rejected: int

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.segment_key}"


@dataclass(frozen=True)
class VersionRef:
    """A dataset version: the fan-in of every group's manifest."""

    dataset_version: str
    bucket: str
    manifest_key: str
    groups: dict[str, str] = field(default_factory=dict)  # group -> group version

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.manifest_key}"


@dataclass(frozen=True)
class DatasetRef:
    """A training index: one group's layout (children) or the parent's sample of every group.

    `data_version` is what a model trained on it records: a group version (gv-...) for a group, the
    dataset version (dv-...) the sample was committed at for the sample.
    """

    data_version: str
    layout_id: str
    bucket: str
    index_key: str
    image_size: int
    labels: dict[str, list[str]] = field(default_factory=dict)  # group -> species
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> species -> rows
    group: str | None = None  # None: the parent's sample

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.index_key}"

    @property
    def dataset_version(self) -> str:
        return self.data_version


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
    weights_uri: str = ""  # the trained state dict as safetensors in the lake: what a child warm-starts from
    weights_sha256: str = ""
    lineage: tuple[tuple[str, str], ...] = ()  # where training started: init_from, init_source, init_sha256, ...

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
