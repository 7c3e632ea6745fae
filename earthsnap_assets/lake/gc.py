"""Garbage collection of the lake: delete what no current state, kept version or registered model needs.

Live are: every current head and the files it names (object segments, the pixel packs current rows point
to, unconsumed change-log batches, index buckets, manifest segments, layout indexes and their shards,
the parent's committed and candidate samples); the newest `keep_versions` dataset versions; and every
version, group version, training index or sample that a registered MLflow model version names in its
tags. Everything else under the collectable prefixes that is older than `min_age` (so files a running
step wrote but has not committed yet are safe) is garbage. A dry run lists what would go.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow.compute as pc

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.heads import load_head
from earthsnap_assets.lake.objects import DELETED, load_objects
from earthsnap_assets.lake.storage import VersionedBlobs
from earthsnap_assets.lake.tables import read_table


@dataclass(frozen=True)
class ModelData:
    """What a registered model version says it was trained on (its tags)."""

    model: str
    version: str
    dataset_version: str  # dv-... or gv-...
    dataset_uri: str  # s3://<lake>/<training index key>


@dataclass(frozen=True)
class GcResult:
    dry_run: bool
    live: int
    garbage: list[str]
    garbage_bytes: int
    by_prefix: dict[str, int] = field(default_factory=dict)
    protected_models: int = 0
    kept_versions: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _groups(blobs: VersionedBlobs, bucket: str, prefix: str) -> list[str]:
    """Groups with a head under `prefix` (`objects/`, `manifests/`, `datasets/<layout>/`)."""
    return sorted(
        {k[len(prefix) :].split("/", 1)[0] for k in blobs.list_keys(bucket, prefix) if k.endswith("/head.json")}
    )


def _layouts(blobs: VersionedBlobs, bucket: str) -> list[str]:
    return sorted({k.split("/")[1] for k in blobs.list_keys(bucket, "datasets/") if k.endswith("/head.json")})


def _index_and_shards(blobs: VersionedBlobs, bucket: str, index_key: str) -> set[str]:
    if not index_key or not blobs.exists(bucket, index_key):
        return set()
    return {index_key, *read_table(blobs, bucket, index_key, columns=["shard"])["shard"].unique().to_pylist()}


def _sample_files(blobs: VersionedBlobs, bucket: str, sample: dict) -> set[str]:
    """A sample's index and pixels, and (for the current ones) the per-group chunk rows that find them again."""
    chunks = {c["chunk"] + ".parquet" for c in sample.get("groups", {}).values()}
    return _index_and_shards(blobs, bucket, sample.get("index", "")) | chunks


def _current(blobs: VersionedBlobs, bucket: str) -> set[str]:
    live: set[str] = {paths.TAXONOMY_HEAD, paths.CONTENT_HEAD}
    for group in _groups(blobs, bucket, "objects/"):
        objects = load_objects(blobs, bucket, group)
        live |= {paths.objects_head(group), *objects.head.get("segments", [])}
        live |= {entry["segment"] for entry in objects.head.get("log", [])}  # the global checks read these
        rows = objects.state.filter(pc.not_equal(objects.state["verdict"], DELETED))
        live |= {p for p in rows["pixels"].unique().to_pylist() if p}
        watermark = objects.head.get("watermark") or ""
        live |= set(blobs.list_keys(bucket, paths.changes_prefix(group), start_after=watermark))
    for group in _groups(blobs, bucket, "changes/"):  # batches of groups whose intake never ran
        if not blobs.exists(bucket, paths.objects_head(group)):
            live |= set(blobs.list_keys(bucket, paths.changes_prefix(group)))
    content = load_head(blobs, bucket, paths.CONTENT_HEAD)
    for entries in content.get("files", {}).values():  # bases and deltas (one key: a lake from before deltas)
        live |= {entries} if isinstance(entries, str) else {e["key"] for e in entries}
    for group in _groups(blobs, bucket, "manifests/"):
        head = load_head(blobs, bucket, paths.manifest_head(group))
        live |= {paths.manifest_head(group), head.get("segment"), head.get("report")}
    for state in content.get("groups", {}).values():  # committed deltas (a manifest may not have applied them)
        live |= set(state.get("deltas", []))
    for layout in _layouts(blobs, bucket):
        for group in _groups(blobs, bucket, f"datasets/{layout}/"):
            head = load_head(blobs, bucket, paths.layout_head(layout, group))
            live |= {paths.layout_head(layout, group)} | _index_and_shards(blobs, bucket, head.get("index"))
        sample = load_head(blobs, bucket, paths.sample_head(layout))
        live.add(paths.sample_head(layout))
        for state in ("committed", "candidate"):
            live |= _sample_files(blobs, bucket, sample.get(state) or {})
    head = blobs.list_keys(bucket, "taxonomy/")
    live |= set(head)  # taxonomies are tiny and name what versions meant
    return {k for k in live if k}


def _version_files(blobs: VersionedBlobs, bucket: str, version: str) -> set[str]:
    """A dataset version's manifest, its groups' manifest segments, and its layouts' indexes and shards."""
    key = paths.version_manifest(version)
    if not blobs.exists(bucket, key):
        return set()
    body = json.loads(blobs.read(bucket, key))
    live = {key, body.get("taxonomy", "")}
    for entry in body["groups"].values():
        live |= {entry["segment"], entry["report"]}
    for layout_key in blobs.list_keys(bucket, f"versions/{version}/"):
        live.add(layout_key)
        if layout_key.endswith(".json") and layout_key != key:
            for group in json.loads(blobs.read(bucket, layout_key))["groups"].values():
                live |= _index_and_shards(blobs, bucket, group["index"])
    return live


def _model_files(blobs: VersionedBlobs, bucket: str, model: ModelData) -> set[str]:
    live = set()
    index_key = model.dataset_uri.removeprefix(f"s3://{bucket}/")
    if index_key.startswith("samples/"):
        live |= _sample_files(blobs, bucket, {"index": index_key})
    elif index_key.startswith("datasets/"):
        live |= _index_and_shards(blobs, bucket, index_key)
    if model.dataset_version.startswith("dv-"):
        live |= _version_files(blobs, bucket, model.dataset_version)
    # a child's group version: the segment it came from is named in the version manifests that hold it
    return live


def _newest_versions(blobs: VersionedBlobs, bucket: str, keep: int) -> list[str]:
    manifests = [o for o in blobs.list_objects(bucket, "versions/") if o.key.endswith("/manifest.json")]
    manifests.sort(key=lambda o: o.last_modified, reverse=True)
    return [o.key.split("/")[1] for o in manifests[:keep]]


def collect_garbage(
    blobs: VersionedBlobs,
    bucket: str,
    models: Iterable[ModelData],
    *,
    keep_versions: int = 3,
    min_age: timedelta = timedelta(hours=6),
    dry_run: bool = True,
    now: datetime | None = None,
) -> GcResult:
    """List (and unless `dry_run`, delete) lake files nothing live refers to."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    models = list(models)
    kept = _newest_versions(blobs, bucket, keep_versions)
    live = _current(blobs, bucket)
    for version in kept:
        live |= _version_files(blobs, bucket, version)
    for model in models:
        live |= _model_files(blobs, bucket, model)
    garbage, size = [], 0
    for prefix in paths.COLLECTABLE_PREFIXES:
        for obj in blobs.list_objects(bucket, prefix):
            if obj.key not in live and now - obj.last_modified >= min_age:
                garbage.append(obj.key)
                size += obj.size
    if not dry_run:
        blobs.delete_many(bucket, garbage)
    by_prefix = Counter(k.split("/", 1)[0] + "/" for k in garbage)
    return GcResult(
        dry_run,
        len(live),
        garbage,
        size,
        dict(sorted(by_prefix.items())),
        len(models),
        kept,
        time.perf_counter() - started,
    )
