"""A species group's validated manifest: every object with its verdict, cluster and split, and its version.

Validation applies the collection rules on top of per-object QA: exact copies and labelling conflicts
through the global sha256 index, near-duplicate clusters through the global band index (so a look-alike in
another group is still found), and stable, stratified splits. Only rows that changed since the group's
previous manifest probe the indexes; unchanged rows keep their verdict, cluster and split. The result is
one Parquet segment per group version: `group_version` is a content hash of the accepted rows (key, sha256,
species, split), the rules and the group's species, so the same objects and history give the same version.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from earthsnap_assets.hashing import fingerprint
from earthsnap_assets.lake import paths
from earthsnap_assets.lake.changes import append_batch
from earthsnap_assets.lake.events import RawEvent
from earthsnap_assets.lake.heads import commit_head, load_head
from earthsnap_assets.lake.indexes import BAND_SCHEMA, Copy, IndexTransaction, Verdict, copy_verdicts, with_retries
from earthsnap_assets.lake.near_duplicates import components, pairs_within
from earthsnap_assets.lake.objects import DELETED, OK, load_objects
from earthsnap_assets.lake.splits import SPLITS, SplitConfig, SplitItem, fill_quotas
from earthsnap_assets.lake.storage import VersionedBlobs, json_bytes
from earthsnap_assets.lake.tables import read_table, table_bytes
from earthsnap_assets.ml.quality import QualityRules

ACCEPTED, REJECTED = "accepted", "rejected"

SEGMENT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("etag", pa.string()),
        ("seen_ns", pa.int64()),
        ("sha256", pa.string()),
        ("dhash", pa.uint64()),
        ("size", pa.int64()),
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("species", pa.string()),
        ("group", pa.string()),
        ("qa_ok", pa.bool_()),  # passed the per-object rules
        ("verdict", pa.string()),  # accepted | rejected (after the collection rules)
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("cluster", pa.string()),  # near-duplicate cluster: the smallest sha256 in it (accepted rows)
        ("split", pa.string()),
        ("near_duplicate_of", pa.string()),  # closest look-alike found when the row arrived (key)
        ("near_duplicate_species", pa.string()),
        ("pixels", pa.string()),
        ("pixel_row", pa.int32()),
    ]
)


@dataclass(frozen=True)
class ManifestConfig:
    rules: QualityRules
    splits: SplitConfig
    sha_buckets: int = 256
    band_buckets: int = 256

    def fingerprint(self) -> str:
        return fingerprint({"rules": self.rules.fingerprint(), "splits": self.splits.fingerprint(), "manifest": 1})


@dataclass(frozen=True)
class ManifestResult:
    group: str
    group_version: str
    segment_key: str
    report_key: str
    report: dict
    changed: int
    removed: int
    revalidate: dict[str, list[str]] = field(default_factory=dict)  # other groups whose verdicts moved
    seconds: float = 0.0
    index_reads: int = 0


def _by_key(table: pa.Table) -> dict[str, dict]:
    return {row["key"]: row for row in table.to_pylist()}


def _changes(live: dict[str, dict], previous: dict[str, dict], everything: bool) -> tuple[set[str], set[str]]:
    """Keys new or changed since the previous manifest (other ETag, or a newer row: a revalidation), and removed."""
    if everything:
        return set(live), set(previous) - set(live)
    changed = {
        k
        for k, row in live.items()
        if k not in previous or (previous[k]["etag"], previous[k]["seen_ns"]) != (row["etag"], row["seen_ns"])
    }
    return changed, set(previous) - set(live)


@dataclass
class _Draft:
    """The group's rows being decided in one attempt (an index conflict starts a new draft)."""

    rows: dict[str, dict]
    revalidate: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def _exact_copies(
    txn: IndexTransaction,
    group: str,
    live: dict[str, dict],
    previous: dict[str, dict],
    changed: set[str],
    removed: set[str],
) -> _Draft:
    """Verdicts from the sha256 index: rows whose content was touched get a fresh verdict, others keep theirs."""
    gone = {k for k in changed | removed if k in previous and previous[k]["qa_ok"]}
    added = [Copy(live[k]["sha256"], group, k, live[k]["species"]) for k in sorted(changed) if live[k]["verdict"] == OK]
    look = {previous[k]["sha256"] for k in gone}
    copies = txn.update_copies(group, gone, added, look)
    after: dict[tuple[str, str], Verdict] = {}
    draft = _Draft(rows={})
    for before_copies, after_copies in copies.values():
        new = copy_verdicts(after_copies)
        old = copy_verdicts(before_copies)
        after |= new
        for (other, key), verdict in new.items():
            if other != group and old.get((other, key)) != verdict:
                draft.revalidate[other].add(key)
        for other, key in old.keys() - new.keys():
            if other != group:
                draft.revalidate[other].add(key)
    touched = set(copies)
    for key, row in live.items():
        qa_ok = row["verdict"] == OK
        base = {**_segment_fields(row), "qa_ok": qa_ok}
        if not qa_ok:
            draft.rows[key] = {**base, "verdict": REJECTED, "reason": row["reason"], "detail": row["detail"]}
        elif key in changed or row["sha256"] in touched:
            verdict = after[(group, key)]
            state = ACCEPTED if verdict.accepted else REJECTED
            draft.rows[key] = {**base, "verdict": state, "reason": verdict.reason, "detail": verdict.detail}
        else:
            old = previous[key]
            draft.rows[key] = {**base, **{f: old[f] for f in ("verdict", "reason", "detail", "cluster", "split")}}
            draft.rows[key] |= {f: old[f] for f in ("near_duplicate_of", "near_duplicate_species")}
    return draft


def _segment_fields(row: dict) -> dict:
    fields = ("key", "etag", "seen_ns", "sha256", "dhash", "size", "format", "width", "height", "species", "group")
    return {f: row[f] for f in fields} | {"pixels": row["pixels"], "pixel_row": row["pixel_row"]}


def _clusters_and_splits(
    txn: IndexTransaction,
    group: str,
    draft: _Draft,
    previous: dict[str, dict],
    changed: set[str],
    config: ManifestConfig,
) -> tuple[pa.Table, pa.Table]:
    """Cluster and split of every newly accepted row; returns the band-index rows to drop and to add."""
    rows = draft.rows
    kept = {
        k
        for k, r in rows.items()
        if r["verdict"] == ACCEPTED and k not in changed and previous.get(k, {}).get("verdict") == ACCEPTED
    }
    arriving = sorted(k for k, r in rows.items() if r["verdict"] == ACCEPTED and k not in kept)
    leaving = [previous[k] for k in previous if previous[k]["verdict"] == ACCEPTED and k not in kept]
    removed = pa.Table.from_pylist(
        [{"dhash": r["dhash"] or 0, "sha256": r["sha256"]} for r in leaving],
        schema=pa.schema([BAND_SCHEMA.field("dhash"), BAND_SCHEMA.field("sha256")]),
    )
    hashes = np.array([rows[k]["dhash"] or 0 for k in arriving], dtype=np.uint64)
    ignore = {r["sha256"] for r in leaving} | {rows[k]["sha256"] for k in arriving}
    found = txn.neighbours(hashes, config.rules.near_duplicate_bits, ignore=(group, ignore))
    linked: dict[int, list[dict]] = defaultdict(list)
    for row in found.to_pylist():
        linked[row["probe"]].append(row)
    a, b = pairs_within(hashes, config.rules.near_duplicate_bits)
    roots = components(len(arriving), a, b)
    members: dict[int, list[int]] = defaultdict(list)
    for index, root in enumerate(roots.tolist()):
        members[root].append(index)

    current: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    for key, row in rows.items():
        if row["verdict"] == ACCEPTED:
            totals[row["species"]] += 1
            if key in kept:
                current[row["species"]][row["split"]] += 1
    fresh: list[tuple[str, list[SplitItem]]] = []
    for indexes in members.values():
        neighbours = [n for i in indexes for n in linked[i]]
        names = [rows[arriving[i]]["sha256"] for i in indexes] + [n["cluster"] for n in neighbours]
        cluster = min(names)
        items = [SplitItem(rows[arriving[i]]["sha256"], rows[arriving[i]]["species"], cluster) for i in indexes]
        for i in indexes:
            row = rows[arriving[i]]
            row["cluster"] = cluster
            closest = min(linked[i], key=lambda n: (n["distance"], n["key"]), default=None)
            row["near_duplicate_of"] = closest["key"] if closest else None
            row["near_duplicate_species"] = closest["species"] if closest else None
        inherited = Counter(n["split"] for n in neighbours if n["split"] in SPLITS)
        if inherited:  # a look-alike is in a split already: join it, in whatever group it is
            split = min(inherited, key=lambda s: (-inherited[s], SPLITS.index(s)))
            for i in indexes:
                rows[arriving[i]]["split"] = split
                current[rows[arriving[i]]["species"]][split] += 1
        else:
            fresh.append((cluster, items))
    by_sha = {rows[k]["sha256"]: k for k in arriving}
    for sha, split in fill_quotas(fresh, current, totals, config.splits).items():
        rows[by_sha[sha]]["split"] = split
    added = pa.Table.from_pylist([{f: rows[k][f] for f in BAND_SCHEMA.names} for k in arriving], schema=BAND_SCHEMA)
    return removed, added


def _version(group: str, species: list[str], rows: dict[str, dict], config: ManifestConfig) -> str:
    accepted = sorted((k, r["sha256"], r["species"], r["split"]) for k, r in rows.items() if r["verdict"] == ACCEPTED)
    return "gv-" + fingerprint({"group": group, "species": species, "config": config.fingerprint(), "rows": accepted})


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


def _revalidation_events(draft: _Draft, group: str, now: int) -> dict[str, list[RawEvent]]:
    return {
        other: [RawEvent(key, "revalidate", None, None, now, f"revalidate:{group}") for key in sorted(keys)]
        for other, keys in sorted(draft.revalidate.items())
    }


def validate_group(
    blobs: VersionedBlobs,
    lake_bucket: str,
    group: str,
    species: list[str],
    config: ManifestConfig,
    clock: Callable[[], int] = time.time_ns,
) -> ManifestResult:
    """Bring `group`'s manifest up to date with its object table; commit indexes, then the manifest head."""
    started = time.perf_counter()
    objects = load_objects(blobs, lake_bucket, group)
    live = {k: r for k, r in _by_key(objects.state).items() if r["verdict"] != DELETED}
    head = load_head(blobs, lake_bucket, paths.manifest_head(group))
    previous = _by_key(read_table(blobs, lake_bucket, head.get("segment"))) if head.exists else {}
    # Other rules or split fractions: every row is decided again (splits included); a new species alone is not.
    everything = head.get("config") != config.fingerprint()
    changed, removed = _changes(live, previous, everything)

    def attempt() -> tuple[_Draft, int]:
        txn = IndexTransaction(blobs, lake_bucket, config.sha_buckets, config.band_buckets)
        draft = _exact_copies(txn, group, live, previous, changed, removed)
        drop, add = _clusters_and_splits(txn, group, draft, previous, changed, config)
        txn.replace_bands(group, drop, add)
        # Other groups learn of verdicts this change moved before the index shows it: a repeated event is
        # harmless, a lost one would leave their manifest stale.
        for other, events in _revalidation_events(draft, group, clock()).items():
            append_batch(blobs, lake_bucket, other, events)
        txn.commit()
        return draft, txn.reads

    draft, reads = with_retries(attempt)
    table = pa.Table.from_pylist([draft.rows[k] for k in sorted(draft.rows)], schema=SEGMENT_SCHEMA)
    version = _version(group, sorted(species), draft.rows, config)
    summary = report(group, sorted(species), table, config.rules)
    prefix = paths.manifest_prefix(group, version)
    blobs.write(lake_bucket, prefix + "segment.parquet", table_bytes(table))
    blobs.write(lake_bucket, prefix + "qa_report.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    value = {
        "group": group,
        "group_version": version,
        "segment": prefix + "segment.parquet",
        "report": prefix + "qa_report.json",
        "config": config.fingerprint(),
        "species": sorted(species),
        "rules": asdict(config.rules),
        "splits": asdict(config.splits),
        "objects_state": objects.head.get("state_sum"),
    }
    commit_head(blobs, lake_bucket, head, value)
    return ManifestResult(
        group=group,
        group_version=version,
        segment_key=value["segment"],
        report_key=value["report"],
        report=summary,
        changed=len(changed),
        removed=len(removed),
        revalidate={g: sorted(keys) for g, keys in draft.revalidate.items()},
        seconds=time.perf_counter() - started,
        index_reads=reads,
    )


def load_segment(blobs: VersionedBlobs, bucket: str, group: str) -> tuple[dict, pa.Table]:
    """The group's current manifest head and segment; a clear error before the group was validated."""
    head = load_head(blobs, bucket, paths.manifest_head(group))
    if not head.exists:
        raise FileNotFoundError(
            f"species group {group!r} has no validated manifest yet: materialize validated_manifest[{group}]"
        )
    return head.value, read_table(blobs, bucket, head.value["segment"])


def manifest_bytes(value: dict) -> bytes:
    return json_bytes(value)
