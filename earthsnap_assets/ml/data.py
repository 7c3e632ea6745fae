"""Training data from a training index: label tasks, in-memory splits and a shard stream.

A training index is either one species group's layout (what a child reads: only that group's shards) or
the parent's sample (a bounded, balanced sample of every group, built by the data side). Either way it is
a small Parquet table of rows (sha256, key, species, group, split, shard, row) pointing into
content-addressed uint8 shards; nothing here ever reads all the photos of the dataset.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from earthsnap_assets.lake.layouts import read_shard as read_lake_shard
from earthsnap_assets.lake.storage import Blobs
from earthsnap_assets.lake.tables import read_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetIndex:
    """The rows of one training index, the labels they use, and which data version they come from."""

    table: pa.Table = field(repr=False)
    image_size: int
    labels: dict[str, list[str]]  # group -> species: the classes the models of this data know
    dataset_version: str  # dv-... for the parent's sample, gv-... for a group
    layout_id: str
    source: str = ""  # lake key of the index

    @property
    def groups(self) -> list[str]:
        return sorted(self.labels)

    def species_of(self, group: str) -> list[str]:
        return list(self.labels[group])

    @cached_property
    def _rows(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()

    def entries(self, split: str, group: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self._rows if e["split"] == split and group in (None, e["group"])]

    def shards(self, split: str, group: str | None = None) -> list[dict[str, Any]]:
        """Shards holding rows of `split` (and `group`), in key order, with how many of their rows are used."""
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for e in self.entries(split, group):
            counts[(e["shard"], e["group"])] += 1
        return [{"name": k, "group": g, "split": split, "count": n} for (k, g), n in sorted(counts.items())]


def load_index(
    blobs: Blobs,
    bucket: str,
    key: str,
    *,
    image_size: int,
    labels: dict[str, list[str]],
    dataset_version: str,
    layout_id: str,
) -> DatasetIndex:
    """A training index as stored in the lake (its rows are small: no pixels)."""
    return DatasetIndex(read_table(blobs, bucket, key), image_size, labels, dataset_version, layout_id, key)


@dataclass(frozen=True)
class LabelTask:
    """What a model learns: its classes, and which group's rows it reads (None: every group)."""

    name: str
    classes: tuple[str, ...]
    group: str | None
    column: str = "species"  # the row field that is the label: "group" for the parent

    @cached_property
    def _position(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def label_of(self, entry: dict[str, Any]) -> int:
        return self._position[entry[self.column]]


def parent_task(index: DatasetIndex) -> LabelTask:
    return LabelTask("parent", tuple(index.groups), None, "group")


def child_task(index: DatasetIndex, group: str) -> LabelTask:
    return LabelTask(f"child/{group}", tuple(index.species_of(group)), group)


@dataclass(frozen=True)
class LabeledArrays:
    pixels: np.ndarray  # uint8 N x S x S x 3
    labels: np.ndarray  # int64 N
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))

    def take(self, rows: np.ndarray | slice) -> LabeledArrays:
        return LabeledArrays(self.pixels[rows], self.labels[rows], self.classes)


def _labels_by_row(index: DatasetIndex, split: str, task: LabelTask) -> dict[tuple[str, int], int]:
    return {(e["shard"], e["row"]): task.label_of(e) for e in index.entries(split, task.group)}


def _rows_by_shard(index: DatasetIndex, split: str, task: LabelTask) -> dict[str, list[tuple[int, int]]]:
    """shard -> (row, label) of the rows the task uses; a delta shard may hold rows no longer used."""
    found: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for e in index.entries(split, task.group):
        found[e["shard"]].append((e["row"], task.label_of(e)))
    return dict(sorted(found.items()))


def read_shard(blobs: Blobs, bucket: str, index: DatasetIndex, shard: dict[str, Any]) -> np.ndarray:
    """One shard's pixels, checked against the content hash in its key."""
    return read_lake_shard(blobs, bucket, shard["name"])


def load_split(blobs: Blobs, bucket: str, index: DatasetIndex, split: str, task: LabelTask) -> LabeledArrays:
    """The rows of `split` for `task`, shard by shard; reads only the shards those rows are in."""
    pixels, labels = [], []
    for shard, rows in _rows_by_shard(index, split, task).items():
        array = read_lake_shard(blobs, bucket, shard)
        pixels.append(array[[r for r, _ in rows]])
        labels.extend(label for _, label in rows)
    size = index.image_size
    stacked = np.concatenate(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return LabeledArrays(stacked, np.asarray(labels, dtype=np.int64), list(task.classes))


def balanced_sample(arrays: LabeledArrays, per_class: int | None, seed: int) -> LabeledArrays:
    """The same number of rows from every class (a class with fewer keeps all of its rows).

    `per_class=None` takes the size of the smallest non-empty class. Rows are chosen with a seeded RNG and
    kept in their original order, so the same inputs always give the same sample.
    """
    counts = arrays.class_counts()
    present = counts[counts > 0]
    take = int(present.min()) if per_class is None and present.size else per_class
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(len(arrays.classes)):
        rows = np.flatnonzero(arrays.labels == label)
        size = min(take or 0, rows.size)
        chosen.append(rng.choice(rows, size=size, replace=False) if size < rows.size else rows)
    keep = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    return arrays.take(keep)


def _mix_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class ShardStream(IterableDataset):
    """Streams (uint8 HWC tensor, label) shard by shard, through a seeded shuffle buffer.

    Shard order and buffer draws depend only on (seed, epoch, worker id), so with a fixed number of
    DataLoader workers an epoch's order is reproducible. Workers take disjoint shards. Call `set_epoch`
    before each epoch in the main process (use non-persistent workers so they see it).
    """

    def __init__(
        self,
        blobs: Blobs,
        bucket: str,
        index: DatasetIndex,
        split: str,
        task: LabelTask,
        *,
        seed: int = 0,
        shuffle: bool = True,
        buffer_size: int = 2048,
    ) -> None:
        super().__init__()
        self.blobs, self.bucket, self.index, self.split, self.task = blobs, bucket, index, split, task
        self.seed, self.shuffle, self.buffer_size = seed, shuffle, buffer_size
        self.epoch = 0

    @property
    def classes(self) -> list[str]:
        return list(self.task.classes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index.entries(self.split, self.task.group))

    def class_counts(self) -> np.ndarray:
        labels = list(_labels_by_row(self.index, self.split, self.task).values())
        return np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(self.task.classes))

    def _my_shards(self) -> tuple[list[dict[str, Any]], int]:
        shards = self.index.shards(self.split, self.task.group)
        if self.shuffle:
            order = np.random.default_rng(_mix_seed(self.seed, self.epoch)).permutation(len(shards))
            shards = [shards[i] for i in order]
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return shards[worker::workers], worker

    def _rows(self, shards: list[dict[str, Any]]) -> Iterator[tuple[np.ndarray, int]]:
        rows_of = _rows_by_shard(self.index, self.split, self.task)
        for shard in shards:
            array = read_lake_shard(self.blobs, self.bucket, shard["name"])
            for row, label in rows_of[shard["name"]]:
                yield array[row], label

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        shards, worker = self._my_shards()
        rows = self._rows(shards)
        if not self.shuffle:
            yield from ((torch.from_numpy(p.copy()), label) for p, label in rows)
            return
        rng = np.random.default_rng(_mix_seed(self.seed, self.epoch, worker))
        buffer: list[tuple[np.ndarray, int]] = []
        for item in rows:
            buffer.append(item)
            if len(buffer) >= self.buffer_size:
                yield self._pop(buffer, rng)
        while buffer:
            yield self._pop(buffer, rng)

    @staticmethod
    def _pop(buffer: list[tuple[np.ndarray, int]], rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """Remove a random item in O(1) by swapping it with the last one."""
        i = int(rng.integers(len(buffer)))
        buffer[i], buffer[-1] = buffer[-1], buffer[i]
        pixels, label = buffer.pop()
        return torch.from_numpy(pixels.copy()), label


def collate_uint8(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples into a uint8 NHWC batch and int64 labels (augmentation runs later, on the batch)."""
    pixels = torch.stack([p for p, _ in items])
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return pixels, labels


def make_loader(stream: ShardStream, batch_size: int, *, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over a `ShardStream`; workers are re-created each epoch so they see `set_epoch`."""
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_uint8,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )
