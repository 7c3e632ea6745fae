"""The golden set of a version: held-out test photos of the data it was trained on, as raw bytes."""

from __future__ import annotations

from collections import defaultdict

from earthsnap_assets.deployment.stage_tests import GoldenImage
from earthsnap_assets.lake.storage import Blobs
from earthsnap_assets.lake.tables import read_table


def golden_set(
    blobs: Blobs, lake_bucket: str, raw_bucket: str, dataset_uri: str, group: str | None, per_species: int
) -> list[GoldenImage]:
    """Up to `per_species` test-split photos per species (of `group` only, for a child), original bytes.

    `dataset_uri` is the training index the version records: a group's layout for a child, the parent's
    sample (test rows of every group) for the parent.
    """
    key = dataset_uri.removeprefix(f"s3://{lake_bucket}/")
    if not blobs.exists(lake_bucket, key):
        raise FileNotFoundError(f"{dataset_uri} not found: the version's training index is gone from the lake")
    rows = read_table(blobs, lake_bucket, key, columns=["sha256", "key", "species", "group", "split"]).to_pylist()
    chosen: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["sha256"]):
        wanted = row["split"] == "test" and (group is None or row["group"] == group)
        if wanted and len(chosen[row["species"]]) < per_species:
            chosen[row["species"]].append(row)
    return [
        GoldenImage(blobs.read(raw_bucket, r["key"]), r["species"], r["group"])
        for members in chosen.values()
        for r in members
    ]
