"""Data for the training tests: an easy synthetic task in memory, and a tiny real dataset in a memory lake."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from earthsnap_assets.lake.pipeline import DataConfig, PreparedData, prepare_dataset
from earthsnap_assets.lake.storage import MemoryBlobs
from earthsnap_assets.lake.taxonomy import parse_taxonomy
from earthsnap_assets.ml.data import DatasetIndex, LabeledArrays
from earthsnap_assets.ml.quality import QualityRules
from earthsnap_assets.pipeline.tasks import index_of

SQUARE_COLORS = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220]])
LAKE_SPECIES = {"rose": "flowers", "tulip": "flowers", "moth": "insects"}
LAKE_IMAGE_SIZE = 32


def color_squares(n: int, size: int = 32, seed: int = 0, weights: list[float] | None = None) -> LabeledArrays:
    """Noisy photos whose class is the colour of a square at a random place: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(SQUARE_COLORS), size=n, p=weights)
    pixels = rng.integers(60, 200, (n, 1, 1, 3)) + rng.normal(0, 25, (n, size, size, 3))
    side = size // 2
    for i, label in enumerate(labels):
        y, x = rng.integers(0, size - side + 1, 2)
        pixels[i, y : y + side, x : x + side] = SQUARE_COLORS[label] + rng.normal(0, 20, (side, side, 3))
    classes = ["red", "green", "blue"]
    return LabeledArrays(np.clip(pixels, 0, 255).astype(np.uint8), labels.astype(np.int64), classes)


def photo(seed: int) -> bytes:
    """A JPEG of random ellipses on a random background (distinct seeds give distinct pixels)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (160, 120), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = (int(v) for v in rng.integers(0, 120, 2))
        draw.ellipse([x, y, x + 40, y + 30], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class TinyLake:
    """A memory lake with the tiny dataset prepared: `index` is the parent's sample (every group),
    `groups[g]` each group's own training index (several small shards per split)."""

    blobs: MemoryBlobs
    index: DatasetIndex
    groups: dict[str, DatasetIndex] = field(default_factory=dict)
    prepared: PreparedData | None = None
    bucket: str = "lake"


def build_tiny_lake(per_species: int = 12, shard_size: int = 4) -> TinyLake:
    """Raw photos -> the data side's steps, in memory: 2 groups (flowers: 2 species, insects: 1)."""
    blobs = MemoryBlobs()
    for s, species in enumerate(LAKE_SPECIES):
        for i in range(per_species):
            blobs.write("raw", f"images/{species}/{i:03d}.jpg", photo(1000 * s + i))
    taxonomy = parse_taxonomy("species,group\n" + "".join(f"{s},{g}\n" for s, g in LAKE_SPECIES.items()))
    config = DataConfig(
        rules=QualityRules(min_side=32, min_images_per_species=5), image_size=LAKE_IMAGE_SIZE, shard_size=shard_size
    )
    prepared = prepare_dataset(blobs, "raw", "lake", taxonomy, config)
    groups = {g: index_of(blobs, ref) for g, ref in prepared.group_refs.items()}
    return TinyLake(blobs, index_of(blobs, prepared.sample_ref), groups, prepared)
