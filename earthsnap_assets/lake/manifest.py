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
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc

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


def _keys(table: pa.Table) -> pa.Array:
    return table["key"].combine_chunks() if table.num_rows else pa.array([], pa.string())


def apply_deltas(previous: pa.Table, deltas: list[pa.Table]) -> tuple[pa.Table, int, int]:
    """The group's rows after the checks' deltas, in order: (rows, rows changed, rows removed).

    Columnar: the unchanged rows of the group never leave Arrow; only rows whose verdict another group's
    upload moved (`update`, a handful) go through Python.
    """
    table, changed, removed = previous.cast(SEGMENT_SCHEMA), 0, 0
    for delta in deltas:
        change = delta["change"]
        if delta.num_rows and change[0].as_py() == RESET:
            table = SEGMENT_SCHEMA.empty_table()
        upserts = delta.filter(pc.equal(change, UPSERT)).drop_columns(["change"]).cast(SEGMENT_SCHEMA)
        gone = delta.filter(pc.equal(change, REMOVE))["key"]
        removed += pc.sum(pc.is_in(_keys(table), gone)).as_py() or 0
        replaced = pa.concat_arrays([_keys(upserts), gone.combine_chunks()])
        table = pa.concat_tables([table.filter(pc.invert(pc.is_in(_keys(table), replaced))), upserts])
        updates = {r["key"]: r for r in delta.filter(pc.equal(change, UPDATE)).to_pylist()}
        if updates:
            hit = pc.is_in(_keys(table), pa.array(sorted(updates), pa.string()))
            moved = [r | {f: updates[r["key"]][f] for f in VERDICT_FIELDS} for r in table.filter(hit).to_pylist()]
            table = pa.concat_tables([table.filter(pc.invert(hit)), pa.Table.from_pylist(moved, schema=SEGMENT_SCHEMA)])
            changed += len(moved)
        changed += upserts.num_rows
    return table.take(pc.sort_indices(table, [("key", "ascending")])), changed, removed


def _accepted(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table["verdict"], ACCEPTED))


def group_version(group: str, species: list[str], table: pa.Table, config_fingerprint: str) -> str:
    """Content hash of the accepted rows (key, sha256, species, split), the rules and the group's species."""
    accepted = _accepted(table).select(["key", "sha256", "species", "split"])
    accepted = accepted.take(pc.sort_indices(accepted, [("key", "ascending")]))
    rows = [list(r.values()) for r in accepted.to_pylist()]
    return "gv-" + fingerprint({"group": group, "species": species, "config": config_fingerprint, "rows": rows})


def _counts(column: pa.ChunkedArray) -> dict:
    return {c["values"]: c["counts"] for c in pc.value_counts(column).to_pylist()} if len(column) else {}


def report(group: str, species: list[str], table: pa.Table, rules: QualityRules) -> dict:
    """Counts a person reviews before trusting a group version (from the stored columns, no pairwise work)."""
    accepted = _accepted(table)
    rejected = table.filter(pc.equal(table["verdict"], REJECTED))
    per_species = _counts(accepted["species"])
    cluster_sizes = _counts(accepted["cluster"])
    across = accepted.filter(
        pc.and_(
            pc.is_valid(accepted["near_duplicate_of"]),
            pc.not_equal(accepted["near_duplicate_species"], accepted["species"]),
        )
    )
    cross = [[r["key"], r["near_duplicate_of"]] for r in across.select(["key", "near_duplicate_of"]).to_pylist()]
    splits: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    if accepted.num_rows:
        for row in accepted.group_by(["split", "species"]).aggregate([("key", "count")]).to_pylist():
            splits[row["split"]][row["species"]] = row["key_count"]
    total = table.num_rows
    return {
        "group": group,
        "objects": total,
        "accepted": accepted.num_rows,
        "rejected": rejected.num_rows,
        "rejection_rate": round(rejected.num_rows / total, 6) if total else 0.0,
        "rejected_by_reason": dict(sorted(_counts(rejected["reason"]).items())),
        "images_per_species": {s: per_species.get(s, 0) for s in species},
        "species_below_minimum": sorted(s for s in species if per_species.get(s, 0) < rules.min_images_per_species),
        "near_duplicate_clusters": sum(1 for n in cluster_sizes.values() if n > 1),
        "images_in_near_duplicate_clusters": sum(n for n in cluster_sizes.values() if n > 1),
        "near_duplicates_across_species": cross[:50],
        "near_duplicates_across_species_count": len(cross),
        "splits": {s: dict(sorted(c.items())) for s, c in splits.items()},
        "formats": dict(sorted(_counts(accepted["format"]).items())),
        "accepted_bytes": pc.sum(accepted["size"]).as_py() or 0,
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
    previous = read_table(blobs, lake_bucket, head.value["segment"]) if head.exists else SEGMENT_SCHEMA.empty_table()
    keys = committed_deltas(blobs, lake_bucket, group, head.get("delta"))
    table, changed, removed = apply_deltas(previous, [read_table(blobs, lake_bucket, k) for k in keys])
    version = group_version(group, sorted(species), table, config.fingerprint())
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
