"""The object table: one row per raw object of a species group and what per-object QA found.

Append-only: each intake run adds one segment (new, changed and deleted objects; a deletion is a
tombstone row), and the group's head lists the segments in order. The current state is the last row of
each key. Compaction folds many segments into one once they pile up; the files it replaces stay until
garbage collection, so a reader holding an older head still finds them.

The state hash is an order-independent sum of per-row digests, so the same objects give the same hash
whatever the history, and an intake run updates it in O(changed rows).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.heads import Head, load_head
from earthsnap_assets.lake.storage import VersionedBlobs
from earthsnap_assets.lake.tables import concat, put_content_addressed, read_table, table_bytes

OK, REJECTED, DELETED = "ok", "rejected", "deleted"

SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("etag", pa.string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("replaced_sha256", pa.string()),  # the key's content before this row (a removed copy to forget)
        ("dhash", pa.uint64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("mode", pa.string()),
        ("verdict", pa.string()),  # per-object QA: ok | rejected | deleted (tombstone)
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("species", pa.string()),
        ("group", pa.string()),
        ("pixels", pa.string()),  # pixel pack (lake key) holding the model's view of an ok object
        ("pixel_row", pa.int32()),
        ("first_seen_ns", pa.int64()),
        ("seen_ns", pa.int64()),  # when this row was written: a newer row of a key supersedes older ones
    ]
)

_MASK = (1 << 128) - 1


def row_digest(key: str, etag: str, verdict: str, seen_ns: int) -> int:
    text = f"{key}\t{etag}\t{verdict}\t{seen_ns}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:16], "big")


def state_sum(rows: pa.Table) -> int:
    """Sum (mod 2^128) of the digests of live rows: equal states have equal sums, whatever the history."""
    live = rows.filter(pc.not_equal(rows["verdict"], DELETED)) if rows.num_rows else rows
    total = 0
    for key, etag, verdict, seen in zip(
        live["key"].to_pylist(),
        live["etag"].to_pylist(),
        live["verdict"].to_pylist(),
        live["seen_ns"].to_pylist(),
        strict=True,
    ):
        total = (total + row_digest(key, etag or "", verdict, seen)) & _MASK
    return total


def current_state(segments: list[pa.Table]) -> pa.Table:
    """The last row of every key across segments in commit order, tombstones included."""
    table = concat(segments, SCHEMA)
    if table.num_rows == 0:
        return table
    order = np.arange(table.num_rows, dtype=np.int64)
    table = table.append_column("_order", pa.array(order))
    last = table.group_by("key", use_threads=False).aggregate([("_order", "max")])
    keep = pc.sort_indices(pc.take(table["key"], last["_order_max"]))
    rows = pc.take(last["_order_max"], keep)
    return table.take(rows).drop_columns(["_order"])


@dataclass
class GroupObjects:
    """A group's object table as committed: its head and its current rows (tombstones included)."""

    group: str
    head: Head
    state: pa.Table = field(repr=False)

    @property
    def live(self) -> pa.Table:
        return self.state.filter(pc.not_equal(self.state["verdict"], DELETED)) if self.state.num_rows else self.state

    def row_index(self) -> dict[str, tuple[str, str, str]]:
        """key -> (etag, verdict, sha256) of the current rows."""
        return {
            k: (e or "", v, s or "")
            for k, e, v, s in zip(
                self.state["key"].to_pylist(),
                self.state["etag"].to_pylist(),
                self.state["verdict"].to_pylist(),
                self.state["sha256"].to_pylist(),
                strict=True,
            )
        }


def load_objects(blobs: VersionedBlobs, bucket: str, group: str) -> GroupObjects:
    head = load_head(blobs, bucket, paths.objects_head(group))
    segments = [read_table(blobs, bucket, key) for key in head.get("segments", [])]
    return GroupObjects(group, head, current_state(segments))


def write_segment(blobs: VersionedBlobs, bucket: str, group: str, rows: pa.Table) -> str:
    return put_content_addressed(
        blobs, bucket, lambda digest: paths.objects_segment(group, digest), table_bytes(rows.cast(SCHEMA))
    )


def empty_rows() -> pa.Table:
    return SCHEMA.empty_table()


def rows_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)
