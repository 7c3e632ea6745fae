"""Dataset versions: a small fan-in over the groups, O(G), never over the images.

`dataset_version` = hash of (rules, taxonomy, every group's `group_version`). Its manifest lists each
group's manifest segment, which holds every object with its verdict and split, so a version can be
recreated (and checked) exactly from the lake. The training layout of a version (each group's index) is
recorded next to it, so a registered model's data can be found, and kept, by garbage collection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from earthsnap_assets.hashing import fingerprint
from earthsnap_assets.lake import paths
from earthsnap_assets.lake.heads import load_head
from earthsnap_assets.lake.manifest import ManifestConfig, group_version
from earthsnap_assets.lake.storage import VersionedBlobs, json_bytes, read_json
from earthsnap_assets.lake.tables import read_table
from earthsnap_assets.lake.taxonomy import Taxonomy


class IncompleteVersion(RuntimeError):
    """Some groups of the taxonomy have no validated manifest (or one made under other rules)."""


@dataclass(frozen=True)
class VersionResult:
    dataset_version: str
    manifest_key: str
    groups: dict[str, dict]
    totals: dict[str, int]
    created: bool


def save_taxonomy(blobs: VersionedBlobs, bucket: str, taxonomy: Taxonomy) -> str:
    """Store the parsed taxonomy by fingerprint and make it current (read by the change sensor)."""
    key = paths.taxonomy_key(taxonomy.fingerprint())
    if not blobs.exists(bucket, key):
        blobs.write(bucket, key, taxonomy.to_bytes())
    blobs.write(bucket, paths.TAXONOMY_HEAD, json_bytes({"fingerprint": taxonomy.fingerprint(), "key": key}))
    return key


def current_taxonomy(blobs: VersionedBlobs, bucket: str) -> Taxonomy | None:
    head = read_json(blobs, bucket, paths.TAXONOMY_HEAD)
    return None if head is None else Taxonomy.from_json(json.loads(blobs.read(bucket, head["key"])))


def build_version(blobs: VersionedBlobs, bucket: str, taxonomy: Taxonomy, config: ManifestConfig) -> VersionResult:
    """The dataset version of the groups' current manifests; written once, reused when it exists."""
    heads = {g: load_head(blobs, bucket, paths.manifest_head(g)) for g in taxonomy.groups}
    missing = sorted(g for g, h in heads.items() if not h.exists)
    if missing:
        raise IncompleteVersion(
            f"groups without a validated manifest: {missing}; materialize validated_manifest for them"
        )
    stale = sorted(g for g, h in heads.items() if h.get("config") != config.fingerprint())
    if stale:
        raise IncompleteVersion(f"groups validated under other rules or splits: {stale}; materialize them again")
    groups = {}
    for group, head in heads.items():
        report = json.loads(blobs.read(bucket, head.value["report"]))
        groups[group] = {
            "group_version": head.value["group_version"],
            "segment": head.value["segment"],
            "report": head.value["report"],
            "accepted": report["accepted"],
            "rejected": report["rejected"],
        }
    taxonomy_key = save_taxonomy(blobs, bucket, taxonomy)
    version = "dv-" + fingerprint(
        {
            "config": config.fingerprint(),
            "taxonomy": taxonomy.fingerprint(),
            "groups": {g: v["group_version"] for g, v in groups.items()},
        }
    )
    totals = {"groups": len(groups), **{k: sum(v[k] for v in groups.values()) for k in ("accepted", "rejected")}}
    key = paths.version_manifest(version)
    created = not blobs.exists(bucket, key)
    if created:
        body = {
            "dataset_version": version,
            "config": config.fingerprint(),
            "taxonomy": taxonomy_key,
            "groups": groups,
            "totals": totals,
        }
        blobs.write(bucket, key, json.dumps(body, indent=2, sort_keys=True).encode())
    return VersionResult(version, key, groups, totals, created)


def verify_version(blobs: VersionedBlobs, bucket: str, dataset_version: str, config: ManifestConfig) -> list[str]:
    """Recompute a version from its stored manifest segments; the problems found (empty: it is exact)."""
    body = json.loads(blobs.read(bucket, paths.version_manifest(dataset_version)))
    taxonomy = Taxonomy.from_json(json.loads(blobs.read(bucket, body["taxonomy"])))
    problems = []
    for group, entry in body["groups"].items():
        segment = read_table(blobs, bucket, entry["segment"])
        recomputed = group_version(group, taxonomy.species_in(group), segment, config.fingerprint())
        if recomputed != entry["group_version"]:
            problems.append(f"{group}: segment gives {recomputed}, manifest says {entry['group_version']}")
    groups = {g: v["group_version"] for g, v in body["groups"].items()}
    again = "dv-" + fingerprint({"config": config.fingerprint(), "taxonomy": taxonomy.fingerprint(), "groups": groups})
    if again != dataset_version:
        problems.append(f"group versions give {again}, not {dataset_version}")
    return problems


def record_layout(
    blobs: VersionedBlobs, bucket: str, dataset_version: str, layout: str, groups: dict[str, dict]
) -> str:
    """Which training index of every group a version's layout is (what training and GC look up)."""
    key = paths.version_layout(dataset_version, layout)
    blobs.write(
        bucket,
        key,
        json.dumps(
            {"dataset_version": dataset_version, "layout": layout, "groups": groups}, indent=2, sort_keys=True
        ).encode(),
    )
    return key
