"""Data QA as one step: check what is new, reuse what was checked, write the versioned manifest.

Per-object results are cached in the lake under the per-object rules' fingerprint, keyed by key + ETag,
so re-validating after a small upload decodes only the new or changed objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from earthsnap_assets.ml.manifest import Manifest, RawObject, build_manifest
from earthsnap_assets.ml.parallel import map_objects
from earthsnap_assets.ml.quality import ImageCheck, QualityRules, inspect_image
from earthsnap_assets.ml.storage import Blobs, read_json, write_json
from earthsnap_assets.ml.taxonomy import Taxonomy

MANIFESTS = "manifests"


@dataclass(frozen=True)
class ValidationResult:
    manifest: Manifest
    manifest_prefix: str
    decoded: int
    reused: int


def qa_cache_key(rules: QualityRules) -> str:
    return f"cache/qa/{rules.object_fingerprint()}.json.gz"


def manifest_prefix(version: str) -> str:
    return f"{MANIFESTS}/{version}/"


def _inspect(data: bytes, key: str, rules: QualityRules) -> dict:
    return inspect_image(data, key, rules).to_json()


def check_objects(
    blobs: Blobs, bucket: str, objects: Sequence[RawObject], rules: QualityRules, workers: int = 8
) -> dict[tuple[str, str], ImageCheck]:
    """Run the per-object rules over `objects` (fetching from `bucket`) in parallel."""
    etags = {o.key: o.etag for o in objects}
    results = map_objects(
        [o.key for o in objects],
        fetch=partial(blobs.read, bucket),
        work=partial(_inspect, rules=rules),
        workers=workers,
    )
    return {(key, etags[key]): ImageCheck.from_json(value) for key, value in results}


def validate(
    blobs: Blobs,
    objects: Sequence[RawObject],
    taxonomy: Taxonomy,
    rules: QualityRules,
    *,
    raw_bucket: str,
    lake_bucket: str,
    prefix: str = "images/",
    workers: int = 8,
) -> ValidationResult:
    """QA every object under the raw prefix and store the manifest of the resulting dataset version."""
    cache_key = qa_cache_key(rules)
    stored = read_json(blobs, lake_bucket, cache_key, default={})
    cache = {tuple(k.split("\t", 1)): ImageCheck.from_json(v) for k, v in stored.items()}
    todo = [o for o in objects if (o.key, o.etag) not in cache]
    cache.update(check_objects(blobs, raw_bucket, todo, rules, workers=workers))
    if todo:
        current = {(o.key, o.etag) for o in objects}
        write_json(
            blobs,
            lake_bucket,
            cache_key,
            {f"{k}\t{e}": c.to_json() for (k, e), c in cache.items() if (k, e) in current},
        )
    manifest = build_manifest(list(objects), cache, taxonomy, rules, raw_bucket, prefix)
    target = manifest_prefix(manifest.dataset_version)
    for name, data in manifest.files().items():
        blobs.write(lake_bucket, target + name, data)
    return ValidationResult(manifest, target, decoded=len(todo), reused=len(objects) - len(todo))


def load_manifest(blobs: Blobs, lake_bucket: str, version: str) -> Manifest:
    prefix = manifest_prefix(version)
    names = ("manifest.json", "accepted.jsonl", "rejected.jsonl", "qa_report.json")
    return Manifest.from_files({name: blobs.read(lake_bucket, prefix + name) for name in names})
