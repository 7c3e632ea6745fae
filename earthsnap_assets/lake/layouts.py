"""A group's training layout: append-only, content-addressed uint8 shards and the index that reads them.

A layout (`preprocess` + `shard_size`) of a group version is its previous layout plus *delta shards*
holding the pixels of rows that arrived since: shards already written are referenced again, never
rewritten. Rows that left simply drop out of the index. When a split has gathered too many small deltas,
it is compacted into full shards. Pixels come from intake's packs (decoded once, at intake); only a
layout at another resolution decodes again. Memory stays within one group.

Training index columns: sha256, key, species, group, split, shard (lake key), row.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from earthsnap_assets.hashing import fingerprint
from earthsnap_assets.lake import paths
from earthsnap_assets.lake.heads import commit_head, load_head
from earthsnap_assets.lake.manifest import ACCEPTED, load_segment
from earthsnap_assets.lake.parallel import map_objects
from earthsnap_assets.lake.splits import SPLITS
from earthsnap_assets.lake.storage import VersionedBlobs, pack_arrays, unpack_arrays
from earthsnap_assets.lake.tables import content_digest, put_content_addressed, read_table, table_bytes
from earthsnap_assets.ml.preprocessing import PreprocessConfig, load_image_array

INDEX_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("key", pa.string()),
        ("species", pa.string()),
        ("group", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("row", pa.int32()),
    ]
)


@dataclass(frozen=True)
class LayoutConfig:
    preprocess: PreprocessConfig
    shard_size: int = 1024
    max_delta_shards: int = 8  # per split; past this the split is compacted into full shards
    workers: int = 8

    @property
    def layout_id(self) -> str:
        return "l-" + fingerprint({"p": self.preprocess.fingerprint(), "n": self.shard_size}, 12)


@dataclass(frozen=True)
class LayoutResult:
    group: str
    group_version: str
    layout_id: str
    index_key: str
    counts: dict[str, dict[str, int]]
    shards: int
    added_rows: int
    decoded: int
    reused: bool
    compacted: list[str] = field(default_factory=list)
    seconds: float = 0.0


def counts_of(index: pa.Table) -> dict[str, dict[str, int]]:
    """split -> species -> rows."""
    table: dict[str, Counter] = {s: Counter() for s in SPLITS}
    for split, species in zip(index["split"].to_pylist(), index["species"].to_pylist(), strict=True):
        table[split][species] += 1
    return {split: dict(sorted(c.items())) for split, c in table.items()}


def _pixels(
    blobs: VersionedBlobs, raw_bucket: str, lake_bucket: str, rows: list[dict], config: LayoutConfig
) -> tuple[dict[str, np.ndarray], int]:
    """sha256 -> pixels of `rows`: from intake's packs of this preprocessing, else decoded from the raw object."""
    mine = f"pixels/{config.preprocess.fingerprint()}/"
    by_pack: dict[str, list[dict]] = defaultdict(list)
    missing = []
    for row in rows:
        (by_pack[row["pixels"]] if row["pixels"] and row["pixels"].startswith(mine) else missing).append(row)
    found: dict[str, np.ndarray] = {}
    for pack, members in sorted(by_pack.items()):
        array = unpack_arrays(blobs.read(lake_bucket, pack))
        for row in members:
            found[row["sha256"]] = array[row["pixel_row"]]
    decode = partial(_decode, config=config.preprocess)
    keys = {row["key"]: row["sha256"] for row in missing}
    for key, array in map_objects(sorted(keys), partial(blobs.read, raw_bucket), decode, workers=config.workers):
        found[keys[key]] = array
    return found, len(keys)


def _decode(data: bytes, key: str, config: PreprocessConfig) -> np.ndarray:
    return load_image_array(data, config)


def _write_shards(
    blobs: VersionedBlobs,
    bucket: str,
    group: str,
    layout: str,
    rows: list[dict],
    pixels: dict[str, np.ndarray],
    size: int,
) -> list[dict]:
    """Chunks of `size` rows per split as content-addressed shards; returns index rows."""
    out = []
    by_split: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_split[row["split"]].append(row)
    for split, members in sorted(by_split.items()):
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            data = pack_arrays(np.stack([pixels[r["sha256"]] for r in chunk]))
            key = put_content_addressed(blobs, bucket, lambda d, s=split: paths.shard_key(layout, group, s, d), data)
            out += [{**_index_fields(r), "shard": key, "row": i} for i, r in enumerate(chunk)]
    return out


def _index_fields(row: dict) -> dict:
    return {f: row[f] for f in ("sha256", "key", "species", "group", "split")}


def read_shard(blobs: VersionedBlobs, bucket: str, key: str) -> np.ndarray:
    """A shard's pixels, checked against the content hash in its name (a truncated or swapped file fails)."""
    data = blobs.read(bucket, key)
    expected = key.rsplit("/", 1)[-1].removesuffix(".npy")
    if content_digest(data, len(expected)) != expected:
        raise ValueError(f"shard {key} does not match the content hash in its name")
    return unpack_arrays(data)


def _compact(
    blobs: VersionedBlobs, bucket: str, group: str, layout: str, index: list[dict], config: LayoutConfig
) -> tuple[list[dict], list[str]]:
    """Rewrite each split that has more than `max_delta_shards` shards as full shards."""
    compacted = []
    by_split: dict[str, list[dict]] = defaultdict(list)
    for row in index:
        by_split[row["split"]].append(row)
    out: list[dict] = []
    for split in sorted(by_split):
        rows = by_split[split]
        shards = sorted({r["shard"] for r in rows})
        if len(shards) <= config.max_delta_shards:
            out += rows
            continue
        arrays = {key: read_shard(blobs, bucket, key) for key in shards}
        pixels = {r["sha256"]: arrays[r["shard"]][r["row"]] for r in rows}
        ordered = sorted(rows, key=lambda r: (r["species"], r["sha256"]))
        out += _write_shards(blobs, bucket, group, layout, ordered, pixels, config.shard_size)
        compacted.append(split)
    return out, compacted


def build_layout(
    blobs: VersionedBlobs, raw_bucket: str, lake_bucket: str, group: str, config: LayoutConfig
) -> LayoutResult:
    """The group's current manifest as training shards: previous shards kept, new rows in delta shards."""
    started = time.perf_counter()
    manifest, segment = load_segment(blobs, lake_bucket, group)
    layout = config.layout_id
    head = load_head(blobs, lake_bucket, paths.layout_head(layout, group))
    if head.get("group_version") == manifest["group_version"]:
        index = read_table(blobs, lake_bucket, head.get("index"))
        return LayoutResult(
            group,
            manifest["group_version"],
            layout,
            head.get("index"),
            counts_of(index),
            len(set(index["shard"].to_pylist())),
            0,
            0,
            True,
            [],
            time.perf_counter() - started,
        )
    accepted = segment.filter(pc.equal(segment["verdict"], ACCEPTED)).to_pylist()
    wanted = {(r["sha256"], r["split"]) for r in accepted}
    previous = read_table(blobs, lake_bucket, head.get("index")).to_pylist() if head.exists else []
    kept = [r for r in previous if (r["sha256"], r["split"]) in wanted]
    have = {(r["sha256"], r["split"]) for r in kept}
    arriving = sorted(
        (r for r in accepted if (r["sha256"], r["split"]) not in have),
        key=lambda r: (r["split"], r["species"], r["sha256"]),
    )
    pixels, decoded = _pixels(blobs, raw_bucket, lake_bucket, arriving, config)
    index = kept + _write_shards(blobs, lake_bucket, group, layout, arriving, pixels, config.shard_size)
    index, compacted = _compact(blobs, lake_bucket, group, layout, index, config)
    table = pa.Table.from_pylist(sorted(index, key=lambda r: (r["split"], r["shard"], r["row"])), schema=INDEX_SCHEMA)
    index_key = put_content_addressed(
        blobs, lake_bucket, lambda d: paths.layout_index(layout, group, d), table_bytes(table)
    )
    counts = counts_of(table)
    shards = sorted(set(table["shard"].to_pylist()))
    value = {
        "group": group,
        "group_version": manifest["group_version"],
        "layout": layout,
        "index": index_key,
        "image_size": config.preprocess.image_size,
        "shards": shards,
        "counts": counts,
    }
    commit_head(blobs, lake_bucket, head, value)
    return LayoutResult(
        group,
        manifest["group_version"],
        layout,
        index_key,
        counts,
        len(shards),
        len(arriving),
        decoded,
        False,
        compacted,
        time.perf_counter() - started,
    )
