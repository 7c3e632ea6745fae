"""What each model learns and from which rows: parent (groups), child (a group's species), flat (all species)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from earthsnap_assets.ml.data import DatasetIndex, LabeledArrays, balanced_sample, child_task, load_split, parent_task
from earthsnap_assets.ml.storage import Blobs


@dataclass(frozen=True)
class FlatTask:
    """The baseline: one network over every species, to compare the hierarchy against."""

    name: str
    classes: tuple[str, ...]
    group: None = None

    def label_of(self, entry: dict[str, Any]) -> int:
        return self.classes.index(entry["species"])


def flat_task(index: DatasetIndex) -> FlatTask:
    return FlatTask("flat", tuple(s for g in index.groups for s in index.species_of(g)))


def label_task(index: DatasetIndex, kind: str, group: str | None = None):
    if kind == "parent":
        return parent_task(index)
    if kind == "child":
        if group not in index.groups:
            raise ValueError(f"group {group!r} is not in dataset {index.dataset_version} (groups: {index.groups})")
        return child_task(index, group)
    if kind == "flat":
        return flat_task(index)
    raise ValueError(f"unknown task kind {kind!r}")


def training_data(
    blobs: Blobs,
    bucket: str,
    index: DatasetIndex,
    kind: str,
    group: str | None,
    seed: int,
    per_class: int | None = None,
) -> tuple[LabeledArrays, LabeledArrays]:
    """(train, val) arrays; the parent trains on a per-group balanced sample so big groups don't dominate."""
    task = label_task(index, kind, group)
    train = load_split(blobs, bucket, index, "train", task)
    if kind == "parent" or per_class is not None:
        train = balanced_sample(train, per_class, seed)
    return train, load_split(blobs, bucket, index, "val", task)


def evaluation_data(
    blobs: Blobs, bucket: str, index: DatasetIndex, kind: str, group: str | None = None
) -> LabeledArrays:
    return load_split(blobs, bucket, index, "test", label_task(index, kind, group))
