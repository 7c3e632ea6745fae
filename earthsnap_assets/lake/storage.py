"""The storage seam of pure code: anything with these verbs (S3, a dict in a test) is a lake.

Besides plain reads and writes, the lake needs two things S3 has had since 2024 and SeaweedFS supports:
*conditional writes* (`If-Match` / `If-None-Match` on PUT), so that a small head object can be moved
from one committed state to the next without a lock server (a writer that lost the race gets
`ConcurrentUpdate` and retries), and listings that start after a key, so a consumer of an append-only
log lists only what is new.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np


class ConcurrentUpdate(RuntimeError):
    """A conditional write lost: the object changed (or appeared) since it was read."""


@dataclass(frozen=True)
class StoredObject:
    """One listed object: what a listing knows without reading the body."""

    key: str
    etag: str
    size: int
    last_modified: datetime


class Blobs(Protocol):
    def read(self, bucket: str, key: str) -> bytes: ...

    def write(self, bucket: str, key: str, data: bytes) -> None: ...

    def exists(self, bucket: str, key: str) -> bool: ...

    def list_keys(self, bucket: str, prefix: str, start_after: str = "") -> list[str]: ...


class VersionedBlobs(Blobs, Protocol):
    """Blobs with the verbs that commits and garbage collection need."""

    def read_versioned(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        """(body, ETag) or None when the object does not exist."""
        ...

    def write_if(self, bucket: str, key: str, data: bytes, expected_etag: str | None) -> str:
        """Write only if the object still has `expected_etag` (None: only if it does not exist yet).

        Returns the new ETag; raises `ConcurrentUpdate` when the precondition does not hold.
        """
        ...

    def list_objects(self, bucket: str, prefix: str, start_after: str = "") -> list[StoredObject]: ...

    def delete_many(self, bucket: str, keys: list[str]) -> None: ...


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class MemoryBlobs:
    """A dict-backed lake for unit tests and benchmarks of pure code, with S3's conditional-write semantics."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.modified: dict[tuple[str, str], datetime] = {}
        self.reads = 0
        self.writes = 0

    def read(self, bucket: str, key: str) -> bytes:
        self.reads += 1
        return self.objects[(bucket, key)]

    def write(self, bucket: str, key: str, data: bytes) -> None:
        self.writes += 1
        self.objects[(bucket, key)] = bytes(data)
        self.modified[(bucket, key)] = datetime.now(UTC)

    def exists(self, bucket: str, key: str) -> bool:
        return (bucket, key) in self.objects

    def list_keys(self, bucket: str, prefix: str, start_after: str = "") -> list[str]:
        return sorted(k for b, k in self.objects if b == bucket and k.startswith(prefix) and k > start_after)

    def read_versioned(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        data = self.objects.get((bucket, key))
        return None if data is None else (self.read(bucket, key), md5_hex(data))

    def write_if(self, bucket: str, key: str, data: bytes, expected_etag: str | None) -> str:
        current = self.objects.get((bucket, key))
        if (current is None) != (expected_etag is None) or (current is not None and md5_hex(current) != expected_etag):
            raise ConcurrentUpdate(f"{bucket}/{key} changed since it was read")
        self.write(bucket, key, data)
        return md5_hex(data)

    def list_objects(self, bucket: str, prefix: str, start_after: str = "") -> list[StoredObject]:
        return [
            StoredObject(
                k, md5_hex(self.objects[(bucket, k)]), len(self.objects[(bucket, k)]), self.modified[(bucket, k)]
            )
            for k in self.list_keys(bucket, prefix, start_after)
        ]

    def delete_many(self, bucket: str, keys: list[str]) -> None:
        for key in keys:
            self.objects.pop((bucket, key), None)
            self.modified.pop((bucket, key), None)


def read_json(blobs: Blobs, bucket: str, key: str, default: Any = None) -> Any:
    """JSON (gzip if the key ends in .gz) or `default` when the object does not exist."""
    if not blobs.exists(bucket, key):
        return default
    data = blobs.read(bucket, key)
    return json.loads(gzip.decompress(data) if key.endswith(".gz") else data)


def json_bytes(value: Any, gz: bool = False) -> bytes:
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return gzip.compress(data, mtime=0) if gz else data


def write_json(blobs: Blobs, bucket: str, key: str, value: Any) -> None:
    blobs.write(bucket, key, json_bytes(value, key.endswith(".gz")))


def pack_arrays(array: np.ndarray) -> bytes:
    """One .npy blob: a shard is a single contiguous uint8 array, loaded with one read, no decoding."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def unpack_arrays(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
