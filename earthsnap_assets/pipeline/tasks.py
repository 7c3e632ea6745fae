"""What each model learns and from which rows: parent (groups), child (a group's species), flat (all species)."""

from __future__ import annotations

from earthsnap_assets.lake.storage import Blobs
from earthsnap_assets.ml.data import (
    DatasetIndex,
    LabeledArrays,
    LabelTask,
    balanced_sample,
    child_task,
    load_index,
    load_split,
    parent_task,
)
from earthsnap_assets.refs import DatasetRef


def index_of(blobs: Blobs, ref: DatasetRef) -> DatasetIndex:
    """The training index an asset value points to: a group's layout, or the parent's sample."""
    return load_index(
        blobs,
        ref.bucket,
        ref.index_key,
        image_size=ref.image_size,
        labels=ref.labels,
        dataset_version=ref.data_version,
        layout_id=ref.layout_id,
    )


def flat_task(index: DatasetIndex) -> LabelTask:
    """The baseline: one network over every species, to compare the hierarchy against."""
    return LabelTask("flat", tuple(s for g in index.groups for s in index.species_of(g)), None, "species")


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
