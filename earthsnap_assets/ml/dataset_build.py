"""From a manifest to training data: preprocess (cached), split (stable), pack shards per split and group.

Layout under `datasets/<dataset_version>/<layout_id>/` (layout = preprocessing + split config):
  dataset.json                      labels, splits of every image, shard list with hashes (written last)
  shards/<split>/<group>-NNNNN.npy  uint8 arrays N x S x S x 3, one group per shard (child subsets)
Preprocessed pixels are cached under `cache/preprocessed/<preprocess fingerprint>/` keyed by content
sha256, and the split ledger under `datasets/split-ledger/`, so a new version costs only its new images.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import partial

import numpy as np

from earthsnap_assets.ml.hashing import fingerprint, sha256_bytes
from earthsnap_assets.ml.manifest import Manifest, ManifestEntry
from earthsnap_assets.ml.parallel import map_objects
from earthsnap_assets.ml.preprocessing import PreprocessConfig, load_image_array
from earthsnap_assets.ml.splits import SplitConfig, SplitItem, assign_splits, counts_by_split
from earthsnap_assets.ml.storage import Blobs, pack_arrays, read_json, unpack_arrays, write_json


@dataclass(frozen=True)
class DatasetResult:
    dataset_version: str
    layout_id: str
    prefix: str
    index: dict
    preprocessed: int
    reused: bool


def layout_id(preprocess: PreprocessConfig, splits: SplitConfig, shard_size: int) -> str:
    return "l-" + fingerprint({"p": preprocess.fingerprint(), "s": splits.fingerprint(), "n": shard_size}, 12)


def _pack_prefix(preprocess: PreprocessConfig) -> str:
    return f"cache/preprocessed/{preprocess.fingerprint()}/"


def _cached_pixels_index(blobs: Blobs, bucket: str, preprocess: PreprocessConfig) -> dict[str, tuple[str, int]]:
    """sha256 -> (pack key, row) over every pack written so far for this preprocessing."""
    index: dict[str, tuple[str, int]] = {}
    for key in blobs.list_keys(bucket, _pack_prefix(preprocess)):
        if key.endswith(".json"):
            for row, sha in enumerate(read_json(blobs, bucket, key)):
                index.setdefault(sha, (key[: -len(".json")] + ".npy", row))
    return index


def _preprocess_missing(blobs, manifest, raw_bucket, lake_bucket, preprocess, index, workers) -> int:
    """Decode and resize images whose content has no cached pixels yet; store them as one new pack."""
    first_key: dict[str, str] = {}
    for entry in manifest.accepted:
        if entry.sha256 not in index:
            first_key.setdefault(entry.sha256, entry.key)
    if not first_key:
        return 0
    shas = sorted(first_key)
    arrays = dict(
        map_objects(
            [first_key[s] for s in shas],
            fetch=partial(blobs.read, raw_bucket),
            work=partial(_preprocess_one, config=preprocess),
            workers=workers,
        )
    )
    stacked = np.stack([arrays[first_key[s]] for s in shas])
    pack = _pack_prefix(preprocess) + "pack-" + fingerprint(shas, 16)
    blobs.write(lake_bucket, pack + ".npy", pack_arrays(stacked))
    write_json(blobs, lake_bucket, pack + ".json", shas)  # the index is written after its pixels
    index.update({sha: (pack + ".npy", row) for row, sha in enumerate(shas)})
    return len(shas)


def _preprocess_one(data: bytes, key: str, config: PreprocessConfig) -> np.ndarray:
    return load_image_array(data, config)


def _assign(blobs, lake_bucket, manifest: Manifest, config: SplitConfig) -> dict[str, str]:
    ledger_key = f"datasets/split-ledger/{config.fingerprint()}.json"
    ledger = read_json(blobs, lake_bucket, ledger_key, default={})
    items = [SplitItem(e.sha256, e.species, e.cluster) for e in manifest.accepted]
    assignment = assign_splits(items, ledger, config)
    if assignment.new or assignment.moved:
        write_json(blobs, lake_bucket, ledger_key, {**ledger, **assignment.splits})
    return assignment.splits


def _write_shards(blobs, lake_bucket, prefix, entries_by_shard, pixels) -> list[dict]:
    shards = []
    for (split, group, number), entries in sorted(entries_by_shard.items()):
        name = f"shards/{split}/{group}-{number:05d}.npy"
        data = pack_arrays(np.stack([pixels[e.sha256] for e in entries]))
        blobs.write(lake_bucket, prefix + name, data)
        shards.append(
            {"name": name, "split": split, "group": group, "count": len(entries), "sha256": sha256_bytes(data)}
        )
    return shards


def build_dataset(
    blobs: Blobs,
    manifest: Manifest,
    *,
    raw_bucket: str,
    lake_bucket: str,
    preprocess: PreprocessConfig,
    splits: SplitConfig,
    shard_size: int = 1024,
    workers: int = 8,
) -> DatasetResult:
    """Make (or find) the shards and split lists of a dataset version under a layout."""
    layout = layout_id(preprocess, splits, shard_size)
    prefix = f"datasets/{manifest.dataset_version}/{layout}/"
    existing = read_json(blobs, lake_bucket, prefix + "dataset.json")
    if existing is not None:
        return DatasetResult(manifest.dataset_version, layout, prefix, existing, preprocessed=0, reused=True)
    index = _cached_pixels_index(blobs, lake_bucket, preprocess)
    fresh = _preprocess_missing(blobs, manifest, raw_bucket, lake_bucket, preprocess, index, workers)
    assignment = _assign(blobs, lake_bucket, manifest, splits)
    groups: dict[tuple[str, str], list[ManifestEntry]] = defaultdict(list)
    for entry in manifest.accepted:
        groups[(assignment[entry.sha256], entry.group)].append(entry)
    chunks = {
        (split, group, i // shard_size): entries[i : i + shard_size]
        for (split, group), entries in groups.items()
        for i in range(0, len(entries), shard_size)
    }
    packs = {pack for pack, _ in index.values()}
    loaded = {pack: unpack_arrays(blobs.read(lake_bucket, pack)) for pack in sorted(packs)}
    pixels = {sha: loaded[pack][row] for sha, (pack, row) in index.items() if sha in assignment}
    shard_list = _write_shards(blobs, lake_bucket, prefix, chunks, pixels)
    shard_of = {
        e.sha256: (s["name"], row)
        for s, key in zip(shard_list, sorted(chunks), strict=True)
        for row, e in enumerate(chunks[key])
    }
    dataset = {
        "dataset_version": manifest.dataset_version,
        "layout_id": layout,
        "preprocess": preprocess.__dict__,
        "splits_config": splits.__dict__,
        "labels": {
            "groups": sorted({e.group for e in manifest.accepted}),
            "species": {
                g: sorted({e.species for e in manifest.accepted if e.group == g})
                for g in sorted({e.group for e in manifest.accepted})
            },
        },
        "shards": shard_list,
        "entries": [
            {
                "sha256": e.sha256,
                "key": e.key,
                "species": e.species,
                "group": e.group,
                "cluster": e.cluster,
                "split": assignment[e.sha256],
                "shard": shard_of[e.sha256][0],
                "row": shard_of[e.sha256][1],
            }
            for e in manifest.accepted
        ],
        "counts": counts_by_split(assignment, {e.sha256: e.species for e in manifest.accepted}),
    }
    write_json(blobs, lake_bucket, prefix + "dataset.json", dataset)  # commit marker: written last
    return DatasetResult(manifest.dataset_version, layout, prefix, dataset, preprocessed=fresh, reused=False)
