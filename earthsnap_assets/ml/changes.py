"""What changed under the raw prefix between two listings, and what must be retrained because of it.

Pure functions (no Dagster, no S3), so the retraining policy is unit-tested exhaustively; the sensors in
`defs/data_sensors.py` only list, store and load snapshots and turn a `RetrainPlan` into run requests.
Changes come from comparing two *full* listings (key -> ETag), never from "keys after the last one seen":
keys arrive in any order, many within one second, and an overwritten key keeps its name and gets a new
ETag; a since-key cursor loses all of those (dagster issue 22892).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from earthsnap_assets.ml.hashing import canonical_json, fingerprint
from earthsnap_assets.ml.manifest import species_of

TAXONOMY_KEY = "taxonomy.csv"
DEFAULT_PREFIX = "images/"


@dataclass(frozen=True)
class Snapshot:
    """The raw data at one moment: image key -> ETag, taxonomy.csv's ETag and its last *valid* mapping.

    The mapping travels with the snapshot so the next plan can tell which groups gained or lost species
    without reading an older taxonomy.csv (S3 keeps only the current one).
    """

    objects: Mapping[str, str] = field(default_factory=dict)
    taxonomy_etag: str | None = None
    species_to_group: Mapping[str, str] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """Same rows and hash as `RawListing.listing_hash`: a run's snapshot tag is raw_images' data version."""
        rows = [[key, etag] for key, etag in sorted(self.objects.items())] + [[TAXONOMY_KEY, self.taxonomy_etag or ""]]
        return fingerprint(rows)

    def to_bytes(self) -> bytes:
        """Gzipped canonical JSON; `mtime=0` so equal snapshots are equal bytes."""
        body = {
            "format": 1,
            "objects": dict(self.objects),
            "taxonomy_etag": self.taxonomy_etag,
            "species_to_group": dict(self.species_to_group),
        }
        return gzip.compress(canonical_json(body), mtime=0)

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        body = json.loads(gzip.decompress(data))
        return cls(body["objects"], body["taxonomy_etag"], body["species_to_group"])


@dataclass(frozen=True)
class Changes:
    """Keys added, overwritten (same key, new ETag) and removed, and whether taxonomy.csv was rewritten."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    taxonomy_changed: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(sorted(self.added + self.changed + self.removed))

    @property
    def empty(self) -> bool:
        return not (self.keys or self.taxonomy_changed)

    def summary(self) -> str:
        text = f"{len(self.added)} added, {len(self.changed)} overwritten, {len(self.removed)} removed"
        return text + (", taxonomy.csv rewritten" if self.taxonomy_changed else "")


def diff(old: Snapshot, new: Snapshot) -> Changes:
    """Compare two full listings key by key; ETags tell overwritten objects apart from untouched ones."""
    return Changes(
        added=tuple(sorted(new.objects.keys() - old.objects.keys())),
        changed=tuple(sorted(k for k in new.objects.keys() & old.objects.keys() if new.objects[k] != old.objects[k])),
        removed=tuple(sorted(old.objects.keys() - new.objects.keys())),
        taxonomy_changed=old.taxonomy_etag != new.taxonomy_etag,
    )


@dataclass(frozen=True)
class GroupChanges:
    """Changed images per species group; folders missing from the taxonomy and off-layout keys on the side."""

    images_per_group: dict[str, int]
    unknown_species: list[str]
    outside_layout: int


def changed_groups(changes: Changes, species_to_group: Mapping[str, str], prefix: str) -> GroupChanges:
    """Map each changed key's species folder to its group; QA rejects the others, so they train nothing."""
    per_group: Counter[str] = Counter()
    unknown: set[str] = set()
    outside = 0
    for key in changes.keys:
        species = species_of(key, prefix)
        if species is None:
            outside += 1
        elif species in species_to_group:
            per_group[species_to_group[species]] += 1
        else:
            unknown.add(species)
    return GroupChanges(dict(sorted(per_group.items())), sorted(unknown), outside)


def counts_per_group(snapshot: Snapshot, prefix: str = DEFAULT_PREFIX) -> dict[str, int]:
    """Images per group under the snapshot's own taxonomy (unknown species and off-layout keys left out)."""
    counts: Counter[str] = Counter()
    for key in snapshot.objects:
        group = snapshot.species_to_group.get(species_of(key, prefix) or "")
        if group is not None:
            counts[group] += 1
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class RetrainPlan:
    """What one change asks for: the data pipeline, these children, the parent, and why."""

    run_data_pipeline: bool
    child_groups: list[str]
    retrain_parent: bool
    reasons: list[str]

    def merge(self, other: RetrainPlan) -> RetrainPlan:
        """Both plans' work: a failed data run's plan is carried into the next successful one's."""
        return RetrainPlan(
            self.run_data_pipeline or other.run_data_pipeline,
            sorted(set(self.child_groups) | set(other.child_groups)),
            self.retrain_parent or other.retrain_parent,
            self.reasons + other.reasons,
        )

    def with_reason(self, reason: str) -> RetrainPlan:
        return RetrainPlan(self.run_data_pipeline, self.child_groups, self.retrain_parent, [reason, *self.reasons])


def _taxonomy_effects(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[set[str], list[str], list[str]]:
    """(children to retrain, reasons that retrain the parent, other reasons) from the taxonomy alone."""
    new_groups, old_groups = set(new.values()), set(old.values())
    children, parent, other = set(new_groups - old_groups), [], []
    if new_groups - old_groups:
        parent.append(f"groups added (new partitions): {sorted(new_groups - old_groups)}")
    if old_groups - new_groups:
        parent.append(f"groups removed: {sorted(old_groups - new_groups)}")
    for species in sorted(old.keys() & new.keys()):
        if old[species] != new[species]:
            children |= {old[species], new[species]} & new_groups
            parent.append(f"species {species} moved from group {old[species]} to {new[species]}")
    for species in sorted(new.keys() - old.keys()):
        if new[species] in old_groups:
            children.add(new[species])
            other.append(f"species {species} added to group {new[species]}")
    for species in sorted(old.keys() - new.keys()):
        if old[species] in new_groups:
            children.add(old[species])
            other.append(f"species {species} removed from group {old[species]}")
    return children, parent, other


def plan_retraining(
    changes: Changes,
    old_taxonomy: Mapping[str, str],
    new_taxonomy: Mapping[str, str],
    old_counts_per_group: Mapping[str, int],
    parent_share_threshold: float = 0.1,
    *,
    prefix: str = DEFAULT_PREFIX,
    new_counts_per_group: Mapping[str, int] | None = None,
) -> RetrainPlan:
    """The retraining policy.

    Any change runs the data pipeline. A child retrains when its group's images or species changed (a new
    group gets a partition and a child). The parent, which only routes to groups, retrains when the groups
    themselves changed (added, removed, a species moved) or when the changed images exceed
    `parent_share_threshold` of all images; below that the group distribution has barely moved. Groups left
    with no image (per `new_counts_per_group`) are skipped: there is nothing to train a child on.
    """
    if changes.empty:
        return RetrainPlan(False, [], False, ["nothing changed"])
    children, parent_reasons, reasons = _taxonomy_effects(old_taxonomy, new_taxonomy)
    under_new = changed_groups(changes, new_taxonomy, prefix)
    under_old = changed_groups(changes, old_taxonomy, prefix)
    children |= set(under_new.images_per_group) | (set(under_old.images_per_group) & set(new_taxonomy.values()))
    reasons += [f"group {g}: {n} images added, overwritten or removed" for g, n in under_new.images_per_group.items()]
    known = {*old_taxonomy, *new_taxonomy}
    touched = sum(1 for key in changes.keys if species_of(key, prefix) in known)
    total = sum(old_counts_per_group.values())
    share = touched / total if total else float(touched > 0)
    if share > parent_share_threshold:
        parent_reasons.append(f"{touched} of {total} images changed ({share:.1%} > {parent_share_threshold:.1%})")
    if under_new.unknown_species:
        reasons.append(f"folders not in taxonomy.csv (QA rejects them): {under_new.unknown_species}")
    if changes.taxonomy_changed and old_taxonomy == new_taxonomy:
        reasons.append("taxonomy.csv rewritten, species -> group unchanged")
    if new_counts_per_group is not None:
        empty = sorted(g for g in children if not new_counts_per_group.get(g))
        children -= set(empty)
        reasons += [f"group {g} has no images: no child to train" for g in empty]
    if not children and not parent_reasons:
        reasons.append("no group's training data changed: nothing to retrain")
    return RetrainPlan(True, sorted(children), bool(parent_reasons), parent_reasons + reasons)
