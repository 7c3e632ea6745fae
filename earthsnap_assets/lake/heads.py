"""Heads: the one small object per table that says which immutable files make its current state.

Moving a head is a conditional write (`If-Match` the ETag read before), so two writers of the same group
can never both win: the loser gets `ConcurrentUpdate` and its files stay unreferenced until garbage
collection. Readers only ever see a complete state, because the files a head names are written first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from earthsnap_assets.lake.storage import VersionedBlobs, json_bytes


@dataclass(frozen=True)
class Head:
    """A head as read: its value (None when the table has no state yet) and the ETag to commit against."""

    key: str
    value: dict[str, Any] | None
    etag: str | None

    @property
    def exists(self) -> bool:
        return self.value is not None

    def get(self, name: str, default: Any = None) -> Any:
        return (self.value or {}).get(name, default)


def load_head(blobs: VersionedBlobs, bucket: str, key: str) -> Head:
    found = blobs.read_versioned(bucket, key)
    if found is None:
        return Head(key, None, None)
    data, etag = found
    return Head(key, json.loads(data), etag)


def commit_head(blobs: VersionedBlobs, bucket: str, head: Head, value: dict[str, Any]) -> Head:
    """Move `head` to `value`; raises `ConcurrentUpdate` if someone else moved it since it was loaded."""
    if head.value == value:
        return head
    etag = blobs.write_if(bucket, head.key, json_bytes(value), head.etag)
    return Head(head.key, value, etag)
