"""The golden set of a version: held-out test photos of the dataset it was trained on, as raw bytes."""

from __future__ import annotations

from collections import defaultdict

from earthsnap_assets.deployment.stage_tests import GoldenImage
from earthsnap_assets.lake.storage import Blobs, read_json


def golden_set(
    blobs: Blobs, lake_bucket: str, raw_bucket: str, dataset_uri: str, group: str | None, per_species: int
) -> list[GoldenImage]:
    """Up to `per_species` test-split photos per species (of `group` only, for a child), original bytes."""
    key = dataset_uri.removeprefix(f"s3://{lake_bucket}/")
    dataset = read_json(blobs, lake_bucket, key)
    if dataset is None:
        raise FileNotFoundError(f"{dataset_uri} not found: the version's dataset is gone from the lake")
    chosen: dict[str, list[dict]] = defaultdict(list)
    for entry in sorted(dataset["entries"], key=lambda e: e["sha256"]):
        wanted = entry["split"] == "test" and (group is None or entry["group"] == group)
        if wanted and len(chosen[entry["species"]]) < per_species:
            chosen[entry["species"]].append(entry)
    return [
        GoldenImage(blobs.read(raw_bucket, e["key"]), e["species"], e["group"])
        for entries in chosen.values()
        for e in entries
    ]
