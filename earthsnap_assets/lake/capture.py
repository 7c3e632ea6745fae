"""Change capture: drain a bounded batch of raw-bucket events into the per-group change logs.

Work per call follows the number of new events (at most `max_events`), never the number of objects in
the bucket. Events are routed by the taxonomy the pipeline last accepted; an event for a species no group
has yet is only counted: when the taxonomy gives the species a group, that group's intake lists the
species' folder anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from earthsnap_assets.lake.changes import append_batch, route
from earthsnap_assets.lake.events import EventSource
from earthsnap_assets.lake.storage import VersionedBlobs
from earthsnap_assets.lake.versions import current_taxonomy


@dataclass(frozen=True)
class CaptureResult:
    cursor: str | None
    batches: dict[str, tuple[str, int]] = field(default_factory=dict)  # group -> (change-log key, events)
    unassigned: int = 0
    taxonomy_changed: bool = False
    exhausted: bool = True
    events: int = 0
    seconds: float = 0.0


def capture(
    source: EventSource,
    blobs: VersionedBlobs,
    lake_bucket: str,
    cursor: str | None,
    *,
    max_events: int,
    timeout_s: float,
) -> CaptureResult:
    """One bounded poll: events appended to their groups' change logs before the cursor may move on."""
    started = time.perf_counter()
    poll = source.poll(cursor, max_events=max_events, timeout_s=timeout_s)
    taxonomy = current_taxonomy(blobs, lake_bucket)
    routed = route(poll.events, taxonomy.species_to_group if taxonomy else {})
    batches = {}
    for group, events in routed.by_group.items():
        batches[group] = (append_batch(blobs, lake_bucket, group, events), len(events))
    poll.ack()  # only now may a queue forget them: they are in the lake
    return CaptureResult(
        cursor=poll.cursor,
        batches=batches,
        unassigned=len(routed.unassigned),
        taxonomy_changed=routed.taxonomy_changed,
        exhausted=poll.exhausted,
        events=len(poll.events),
        seconds=time.perf_counter() - started,
    )
