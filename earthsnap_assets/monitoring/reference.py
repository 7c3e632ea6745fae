"""The drift reference of a dataset version: its train-split counts per group and per species.

Read from what the lake already records, never from the images: `versions/<v>/manifest.json` lists each
group's QA report (`manifests/<g>/<h>.json`), whose `splits.train` holds images per species. That is one
small JSON per group (O(G)), done once per dataset version and cached under `paths.monitoring_reference`.

The counts are the data's distribution (what the children learn from, and what the taxonomy's photos look
like). The parent itself trains on a balanced sample (`lake/sample.py`), so a prediction share differing from
these counts is a change of *traffic* against the collected data, which is what monitoring watches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.storage import Blobs, json_bytes, read_json


class MissingReference(LookupError):
    """The dataset version has no manifest in the lake (unknown, or garbage-collected)."""


@dataclass(frozen=True)
class Reference:
    dataset_version: str
    species: dict[str, dict[str, int]]  # group -> species -> train images

    @property
    def groups(self) -> dict[str, int]:
        return {g: sum(per.values()) for g, per in self.species.items()}

    @property
    def flat_species(self) -> dict[str, int]:
        return {s: n for per in self.species.values() for s, n in per.items()}

    def to_json(self) -> dict:
        return {"dataset_version": self.dataset_version, "species": self.species}

    @classmethod
    def from_json(cls, value: dict) -> Reference:
        return cls(value["dataset_version"], {g: dict(per) for g, per in value["species"].items()})


def build_reference(blobs: Blobs, bucket: str, dataset_version: str) -> Reference:
    """Train counts from the version's manifest and its groups' QA reports (no cache involved)."""
    manifest = read_json(blobs, bucket, paths.version_manifest(dataset_version))
    if manifest is None:
        raise MissingReference(f"no {paths.version_manifest(dataset_version)} in s3://{bucket}")
    species = {}
    for group, entry in sorted(manifest["groups"].items()):
        report = json.loads(blobs.read(bucket, entry["report"]))
        species[group] = {s: int(n) for s, n in sorted(report["splits"].get("train", {}).items())}
    return Reference(dataset_version, species)


def load_reference(blobs: Blobs, bucket: str, dataset_version: str) -> Reference:
    """The cached reference, computed and stored on first use (a version's counts never change)."""
    key = paths.monitoring_reference(dataset_version)
    cached = read_json(blobs, bucket, key)
    if cached is not None:
        return Reference.from_json(cached)
    reference = build_reference(blobs, bucket, dataset_version)
    blobs.write(bucket, key, json_bytes(reference.to_json()))
    return reference


def mixture(references: dict[str, Reference], rows: dict[str, int]) -> tuple[dict[str, float], dict[str, dict]]:
    """Expected group and per-group species shares when each dataset version's rows follow its reference.

    A day that changed deployment mid-way is compared with the row-weighted mix of both versions' data.
    Returns (group -> expected share, group -> species -> expected share within the group).
    """
    total = sum(rows[v] for v in references)
    groups: dict[str, float] = {}
    within: dict[str, dict[str, float]] = {}
    for version, reference in references.items():
        weight = rows[version] / total if total else 1.0 / len(references)
        group_counts = reference.groups
        n = sum(group_counts.values())
        for group, count in group_counts.items():
            groups[group] = groups.get(group, 0.0) + weight * (count / n if n else 0.0)
            per = within.setdefault(group, {})
            for species, k in reference.species[group].items():
                per[species] = per.get(species, 0.0) + weight * (k / count if count else 0.0)
    return groups, within
