"""The row shapes of a group's manifest and of the verdict deltas the global checks hand to it."""

from __future__ import annotations

import pyarrow as pa

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
        ("cluster", pa.string()),  # near-duplicate cluster: the smallest sha256 in it when it formed
        ("split", pa.string()),
        ("near_duplicate_of", pa.string()),  # closest look-alike found when the row arrived (key)
        ("near_duplicate_species", pa.string()),
        ("pixels", pa.string()),
        ("pixel_row", pa.int32()),
    ]
)

# What a delta row does to the group's manifest: a full row in, new verdict fields for a row that stays,
# a row out; `reset` (first row of a delta) starts the manifest over (rules changed: all rows follow).
UPSERT, UPDATE, REMOVE, RESET = "upsert", "update", "remove", "reset"
VERDICT_FIELDS = ("verdict", "reason", "detail", "cluster", "split", "near_duplicate_of", "near_duplicate_species")
DELTA_SCHEMA = pa.schema([("change", pa.string()), *SEGMENT_SCHEMA])
