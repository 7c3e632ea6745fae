"""A species group's validated manifest: every object with its verdict, cluster and split, and its version.

The verdicts come from two places: per-object QA (intake) and the global checks (`lake/content.py`), which
hand each group a *delta* of rows that changed (its own new photos, and its photos whose verdict another
group's upload moved: the same bytes under two species). Validation applies the deltas it has not applied
yet to the previous segment: O(rows of the group), never more. If the global checks have not seen the
group's latest intake yet (a one-group run), they run for this group first, in the same way.

`group_version` is a content hash of the accepted rows (key, sha256, species, split), the rules and the
group's species, so the same objects and history give the same version.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pyarrow as pa

from earthsnap_assets.hashing import fingerprint
from earthsnap_assets.lake import paths
from earthsnap_assets.lake.content import ChecksConfig, check_groups, committed_deltas, content_head
from earthsnap_assets.lake.heads import commit_head, load_head
from earthsnap_assets.lake.segments import (
    ACCEPTED,
    REJECTED,
    REMOVE,
    RESET,
    SEGMENT_SCHEMA,
    UPDATE,
    UPSERT,
    VERDICT_FIELDS,
)
from earthsnap_assets.lake.splits import SPLITS, SplitConfig
from earthsnap_assets.lake.storage import VersionedBlobs
from earthsnap_assets.lake.tables import put_content_addressed, read_table, table_bytes
from earthsnap_assets.ml.quality import QualityRules

__all__ = ["ACCEPTED", "REJECTED", "SEGMENT_SCHEMA", "ManifestConfig", "ManifestResult", "validate_group"]


@dataclass(frozen=True)
class ManifestConfig:
    rules: QualityRules
    splits: SplitConfig
    buckets: int = 256

    def checks(self) -> ChecksConfig:
        return ChecksConfig(self.rules.near_duplicate_bits, self.splits, self.buckets)

    def fingerprint(self) -> str:
        return fingerprint({"rules": self.rules.fingerprint(), "checks": self.checks().fingerprint(), "manifest": 2})


@dataclass(frozen=True)
class ManifestResult:
    group: str
    group_version: str
    segment_key: str
    report_key: str
    report: dict
    changed: int  # delta rows applied
    removed: int
    deltas: int  # delta files applied
    checked_here: bool  # the global checks had not seen this group's intake: they ran for it here
    seconds: float = 0.0


def apply_deltas(rows: dict[str, dict], deltas: list[pa.Table]) -> tuple[dict[str, dict], int, int]:
    """The group's rows after the checks' deltas, in order: (rows, rows changed, rows removed)."""
    rows, changed, removed = dict(rows), 0, 0
    for delta in deltas:
        for row in delta.to_pylist():
            change = row.pop("change")
            if change == RESET:
                rows = {}
            elif change == REMOVE:
                removed += rows.pop(row["key"], None) is not None
            elif change == UPSERT:
                rows[row["key"]] = row
                changed += 1
            elif change == UPDATE and row["key"] in rows:
                rows[row["key"]] |= {f: row[f] for f in VERDICT_FIELDS}
                changed += 1
    return rows, changed, removed


def group_version(group: str, species: list[str], rows: dict[str, dict], config_fingerprint: str) -> str:
    accepted = sorted((k, r["sha256"], r["species"], r["split"]) for k, r in rows.items() if r["verdict"] == ACCEPTED)
    return "gv-" + fingerprint({"group": group, "species": species, "config": config_fingerprint, "rows": accepted})


def report(group: str, species: list[str], table: pa.Table, rules: QualityRules) -> dict:
    """Counts a person reviews before trusting a group version (from the stored columns, no pairwise work)."""
    rows = table.to_pylist()
    accepted = [r for r in rows if r["verdict"] == ACCEPTED]
    rejected = [r for r in rows if r["verdict"] == REJECTED]
    per_species = Counter(r["species"] for r in accepted)
    cluster_sizes = Counter(r["cluster"] for r in accepted)
    cross = [
        [r["key"], r["near_duplicate_of"]]
        for r in accepted
        if r["near_duplicate_of"] and r["near_duplicate_species"] != r["species"]
    ]
    splits: dict[str, Counter] = {s: Counter() for s in SPLITS}
    for r in accepted:
        splits[r["split"]][r["species"]] += 1
    total = len(rows)
    return {
        "group": group,
        "objects": total,
        "accepted": len(accepted),
        "rejected": len(rejected),
        "rejection_rate": round(len(rejected) / total, 6) if total else 0.0,
        "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rejected).items())),
        "images_per_species": {s: per_species.get(s, 0) for s in species},
        "species_below_minimum": sorted(s for s in species if per_species.get(s, 0) < rules.min_images_per_species),
        "near_duplicate_clusters": sum(1 for n in cluster_sizes.values() if n > 1),
        "images_in_near_duplicate_clusters": sum(n for n in cluster_sizes.values() if n > 1),
        "near_duplicates_across_species": cross[:50],
        "near_duplicates_across_species_count": len(cross),
        "splits": {s: dict(sorted(c.items())) for s, c in splits.items()},
        "formats": dict(sorted(Counter(r["format"] for r in accepted).items())),
        "accepted_bytes": sum(r["size"] or 0 for r in accepted),
    }


def _stale(blobs: VersionedBlobs, bucket: str, group: str) -> bool:
    """Has the group's object table moved on since the global checks last looked at it?"""
    objects = load_head(blobs, bucket, paths.objects_head(group))
    checked = content_head(blobs, bucket).get("groups", {}).get(group, {})
    return objects.exists and objects.get("state_sum") != checked.get("state")


def validate_group(
    blobs: VersionedBlobs,
    lake_bucket: str,
    group: str,
    species: list[str],
    config: ManifestConfig,
    clock: Callable[[], int] = time.time_ns,
) -> ManifestResult:
    """Apply the checks' new deltas to the group's manifest; write the new segment and move its head."""
    started = time.perf_counter()
    checked_here = _stale(blobs, lake_bucket, group)
    if checked_here:
        check_groups(blobs, lake_bucket, [group], config.checks(), clock)
    head = load_head(blobs, lake_bucket, paths.manifest_head(group))
    previous = {}
    if head.exists:
        previous = {r["key"]: r for r in read_table(blobs, lake_bucket, head.value["segment"]).to_pylist()}
    keys = committed_deltas(blobs, lake_bucket, group, head.get("delta"))
    rows, changed, removed = apply_deltas(previous, [read_table(blobs, lake_bucket, k) for k in keys])
    table = pa.Table.from_pylist([rows[k] for k in sorted(rows)], schema=SEGMENT_SCHEMA)
    version = group_version(group, sorted(species), rows, config.fingerprint())
    summary = report(group, sorted(species), table, config.rules)
    # Named by content: rejected rows change the segment but not the group version (they are not data).
    segment = put_content_addressed(
        blobs, lake_bucket, lambda d: paths.manifest_file(group, d, "parquet"), table_bytes(table)
    )
    report_key = put_content_addressed(
        blobs,
        lake_bucket,
        lambda d: paths.manifest_file(group, d, "json"),
        json.dumps(summary, indent=2, sort_keys=True).encode(),
    )
    value = {
        "group": group,
        "group_version": version,
        "segment": segment,
        "report": report_key,
        "delta": keys[-1] if keys else head.get("delta"),
        "config": config.fingerprint(),
        "species": sorted(species),
        "rules": asdict(config.rules),
        "splits": asdict(config.splits),
    }
    commit_head(blobs, lake_bucket, head, value)
    return ManifestResult(
        group=group,
        group_version=version,
        segment_key=value["segment"],
        report_key=value["report"],
        report=summary,
        changed=changed,
        removed=removed,
        deltas=len(keys),
        checked_here=checked_here,
        seconds=time.perf_counter() - started,
    )


def load_segment(blobs: VersionedBlobs, bucket: str, group: str) -> tuple[dict, pa.Table]:
    """The group's current manifest head and segment; a clear error before the group was validated."""
    head = load_head(blobs, bucket, paths.manifest_head(group))
    if not head.exists:
        raise FileNotFoundError(
            f"species group {group!r} has no validated manifest yet: materialize validated_manifest[{group}]"
        )
    return head.value, read_table(blobs, bucket, head.value["segment"])
