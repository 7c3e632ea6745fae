"""Reconciliation: a full listing, in its own run, that catches anything an event missed.

Group by group (memory: one group), the species folders are listed and compared with the object table;
objects missing from it, with another ETag, or gone from the bucket become change-log events
(`source="reconciliation"`) for the group's next intake. Events are at-least-once and intake is
idempotent, so reconciling while events are in flight costs nothing but a repeated look.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.changes import append_batch
from earthsnap_assets.lake.events import RawEvent
from earthsnap_assets.lake.objects import DELETED, load_objects
from earthsnap_assets.lake.taxonomy import Taxonomy


@dataclass(frozen=True)
class ReconcileResult:
    listed: int
    groups: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> missing / changed / gone
    unknown_folders: list[str] = field(default_factory=list)
    outside_layout: int = 0
    seconds: float = 0.0

    @property
    def touched(self) -> list[str]:
        return sorted(g for g, c in self.groups.items() if any(c.values()))


def reconcile(
    store, raw_bucket: str, lake_bucket: str, taxonomy: Taxonomy, now_ns: int | None = None
) -> ReconcileResult:
    """Compare every group's species folders with its object table; append the differences as events."""
    started = time.perf_counter()
    now = now_ns or time.time_ns()
    listed_total, outside, found = 0, 0, {}
    for group, species in taxonomy.by_group.items():
        objects = load_objects(store, lake_bucket, group)
        live = {k: e for k, (e, verdict, _) in objects.row_index().items() if verdict != DELETED}
        listed: dict[str, str] = {}
        for name in species:
            for obj in store.list_objects(raw_bucket, paths.species_prefix(name)):
                if paths.species_of(obj.key) is None:
                    outside += 1
                else:
                    listed[obj.key] = obj.etag
        listed_total += len(listed)
        events = [RawEvent(k, "put", e, None, now, "reconciliation") for k, e in listed.items() if k not in live]
        changed = [
            RawEvent(k, "put", e, None, now, "reconciliation") for k, e in listed.items() if k in live and live[k] != e
        ]
        gone = [RawEvent(k, "delete", None, None, now, "reconciliation") for k in live if k not in listed]
        append_batch(store, lake_bucket, group, events + changed + gone)
        found[group] = {"missing": len(events), "changed": len(changed), "gone": len(gone)}
    folder_keys, top_level = store.list_level(raw_bucket, paths.IMAGES_PREFIX)
    folders = {f.removeprefix(paths.IMAGES_PREFIX).rstrip("/") for f in folder_keys}
    return ReconcileResult(
        listed=listed_total,
        groups=found,
        unknown_folders=sorted(folders - set(taxonomy.species_to_group)),
        outside_layout=outside + len(top_level),
        seconds=time.perf_counter() - started,
    )
