"""The change log: raw-bucket events, routed to the species group they concern, appended per group.

Event sources (`lake/events.py`: SeaweedFS's filer subscription locally, S3 Event Notifications via SQS on
AWS) and the scheduled reconciliation listing all end here: each batch of events becomes one immutable
Parquet file per touched group, named by its first event time and content, so writing the same events twice
(a sensor tick retried before its cursor was committed) writes the same file once. A group's intake lists
only the batches after the last one it consumed (`start_after`), so its work follows the number of new
events, never the size of the bucket.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.events import RawEvent
from earthsnap_assets.lake.storage import Blobs
from earthsnap_assets.lake.tables import content_digest, read_table, table_bytes

OPS = ("put", "delete")

SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("op", pa.string()),
        ("etag", pa.string()),
        ("size", pa.int64()),
        ("ts_ns", pa.int64()),
        ("source", pa.string()),
    ]
)


def events_table(events: Iterable[RawEvent]) -> pa.Table:
    rows = sorted(events, key=lambda e: (e.ts_ns, e.key, e.op))
    for event in rows:
        if event.op not in OPS:
            raise ValueError(f"unknown change-log op {event.op!r} for {event.key}")
    return pa.table(
        {
            "key": [e.key for e in rows],
            "op": [e.op for e in rows],
            "etag": [e.etag for e in rows],
            "size": [e.size for e in rows],
            "ts_ns": [e.ts_ns for e in rows],
            "source": [e.source for e in rows],
        },
        schema=SCHEMA,
    )


def append_batch(blobs: Blobs, bucket: str, group: str, events: list[RawEvent]) -> str | None:
    """Append `events` to `group`'s change log as one file; returns its key (None for no events)."""
    if not events:
        return None
    table = events_table(events)
    data = table_bytes(table)
    key = paths.change_batch_key(group, int(table["ts_ns"][0].as_py()), content_digest(data, 16))
    if not blobs.exists(bucket, key):
        blobs.write(bucket, key, data)
    return key


def pending_batches(blobs: Blobs, bucket: str, group: str, after: str | None) -> list[str]:
    """Batch keys of `group` newer than `after` (the last one consumed), oldest first."""
    return blobs.list_keys(bucket, paths.changes_prefix(group), start_after=after or "")


def read_events(blobs: Blobs, bucket: str, keys: list[str]) -> list[RawEvent]:
    events: list[RawEvent] = []
    for key in keys:
        for row in read_table(blobs, bucket, key).to_pylist():
            events.append(RawEvent(**row))
    return events


def latest_per_key(events: Iterable[RawEvent]) -> dict[str, RawEvent]:
    """What each key ended as: the last event by time (a put after a delete is a put)."""
    latest: dict[str, RawEvent] = {}
    for event in sorted(events, key=lambda e: e.ts_ns):
        latest[event.key] = event
    return latest


@dataclass(frozen=True)
class RoutedEvents:
    """Events per species group; those of no group; and whether taxonomy.csv itself changed."""

    by_group: dict[str, list[RawEvent]]
    unassigned: list[RawEvent]
    taxonomy_changed: bool


def route(events: Iterable[RawEvent], species_to_group: Mapping[str, str]) -> RoutedEvents:
    """Send each event to its species' group, by the folder name (the label) of its key."""
    by_group: dict[str, list[RawEvent]] = defaultdict(list)
    unassigned: list[RawEvent] = []
    taxonomy_changed = False
    for event in events:
        if event.key == paths.TAXONOMY_KEY:
            taxonomy_changed = True
            continue
        if not event.key.startswith(paths.IMAGES_PREFIX):
            continue  # not training data: nothing the platform reads
        group = species_to_group.get(paths.species_of(event.key) or "")
        (by_group[group] if group else unassigned).append(event)
    return RoutedEvents(dict(sorted(by_group.items())), unassigned, taxonomy_changed)
