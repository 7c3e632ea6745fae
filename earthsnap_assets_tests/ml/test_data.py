"""Label tasks, split loading, balanced sampling and the shard stream over a tiny real dataset."""

import hashlib
import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from earthsnap_assets.lake.storage import MemoryBlobs, unpack_arrays
from earthsnap_assets.ml.data import (
    ShardStream,
    balanced_sample,
    child_task,
    load_split,
    make_loader,
    parent_task,
)
from earthsnap_assets_tests.ml.training_fixtures import LAKE_IMAGE_SIZE, LAKE_SPECIES, TinyLake, build_tiny_lake


@pytest.fixture(scope="module")
def lake() -> TinyLake:
    return build_tiny_lake()


def _digest(pixels: np.ndarray | torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def test_index_describes_groups_species_and_shards(lake):
    index = lake.index  # the parent's sample: every group
    assert index.groups == ["flowers", "insects"]
    assert index.species_of("flowers") == ["rose", "tulip"] and index.species_of("insects") == ["moth"]
    assert index.image_size == LAKE_IMAGE_SIZE
    flowers = lake.groups["flowers"]  # one group's layout: several small shards per split
    assert len(flowers.shards("train")) > 1 and all(s["group"] == "flowers" for s in flowers.shards("train"))
    assert all(s["name"].startswith("datasets/") for s in flowers.shards("train"))


def test_parent_split_has_every_group_and_the_pixels_of_each_entry(lake):
    index = lake.index
    arrays = load_split(lake.blobs, lake.bucket, index, "train", parent_task(index))
    entries = index.entries("train")
    assert arrays.classes == ["flowers", "insects"] and len(arrays) == len(entries)
    assert arrays.pixels.dtype == np.uint8 and arrays.pixels.shape[1:] == (LAKE_IMAGE_SIZE, LAKE_IMAGE_SIZE, 3)
    by_digest = {_digest(p): int(label) for p, label in zip(arrays.pixels, arrays.labels, strict=True)}
    for entry in entries:
        shard = unpack_arrays(lake.blobs.read(lake.bucket, entry["shard"]))
        assert by_digest[_digest(shard[entry["row"]])] == index.groups.index(entry["group"])


def test_child_split_reads_only_its_group_shards_and_labels_species(lake):
    index, blobs = lake.groups["flowers"], lake.blobs
    before = blobs.reads
    arrays = load_split(blobs, lake.bucket, index, "train", child_task(index, "flowers"))
    assert blobs.reads - before == len(index.shards("train", "flowers"))
    assert arrays.classes == ["rose", "tulip"]
    species = Counter(e["species"] for e in index.entries("train", "flowers"))
    assert Counter(arrays.classes[label] for label in arrays.labels) == species


def test_a_corrupted_shard_is_refused(lake):
    index = lake.groups["insects"]
    blobs = MemoryBlobs()
    blobs.objects = dict(lake.blobs.objects)
    name = index.shards("val", "insects")[0]["name"]
    blobs.objects[("lake", name)] += b"\0"
    with pytest.raises(ValueError, match="content hash"):
        load_split(blobs, "lake", index, "val", child_task(index, "insects"))


def test_balanced_sample_takes_the_same_number_from_each_class_deterministically(lake):
    arrays = load_split(lake.blobs, lake.bucket, lake.index, "train", parent_task(lake.index))
    counts = arrays.class_counts()
    assert counts[0] > counts[1]  # flowers has two species, insects one
    sample = balanced_sample(arrays, None, seed=1)
    assert list(sample.class_counts()) == [counts[1], counts[1]]
    again = balanced_sample(arrays, None, seed=1)
    assert np.array_equal(sample.pixels, again.pixels) and np.array_equal(sample.labels, again.labels)
    other = balanced_sample(arrays, None, seed=2)
    assert not np.array_equal(sample.pixels, other.pixels)
    capped = balanced_sample(arrays, int(counts[1]) + 2, seed=0)
    assert list(capped.class_counts()) == [counts[1] + 2, counts[1]]  # a small class keeps all it has


def _epoch_items(lake: TinyLake, seed: int, epoch: int, workers: int) -> list[tuple[str, int]]:
    stream = ShardStream(lake.blobs, lake.bucket, lake.index, "train", parent_task(lake.index), seed=seed)
    stream.set_epoch(epoch)
    items = []
    for pixels, labels in make_loader(stream, batch_size=3, num_workers=workers):
        assert pixels.dtype == torch.uint8 and pixels.shape[1:] == (LAKE_IMAGE_SIZE, LAKE_IMAGE_SIZE, 3)
        items.extend((_digest(p.numpy()), int(label)) for p, label in zip(pixels, labels, strict=True))
    return items


def test_shard_stream_yields_every_row_once_per_epoch_across_workers(lake):
    arrays = load_split(lake.blobs, lake.bucket, lake.index, "train", parent_task(lake.index))
    expected = Counter((_digest(p), int(label)) for p, label in zip(arrays.pixels, arrays.labels, strict=True))
    first = _epoch_items(lake, seed=5, epoch=0, workers=2)
    assert Counter(first) == expected and len(first) == len(expected)
    assert first == _epoch_items(lake, seed=5, epoch=0, workers=2)  # order: a function of (seed, epoch)
    assert first != _epoch_items(lake, seed=5, epoch=1, workers=2)
    assert first != _epoch_items(lake, seed=6, epoch=0, workers=2)


def test_shard_stream_is_picklable_for_workers_and_knows_its_size(lake):
    index = lake.groups["insects"]
    stream = ShardStream(lake.blobs, lake.bucket, index, "train", child_task(index, "insects"))
    clone = pickle.loads(pickle.dumps(stream))
    train_insects = [e for e in index.entries("train") if LAKE_SPECIES[e["species"]] == "insects"]
    assert len(clone) == len(train_insects) and list(clone.class_counts()) == [len(train_insects)]
