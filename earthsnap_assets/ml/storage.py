"""The storage seam of pure code: anything with these four verbs (S3, a dict in a test) is a lake."""

from __future__ import annotations

import gzip
import io
import json
from typing import Any, Protocol

import numpy as np


class Blobs(Protocol):
    def read(self, bucket: str, key: str) -> bytes: ...

    def write(self, bucket: str, key: str, data: bytes) -> None: ...

    def exists(self, bucket: str, key: str) -> bool: ...

    def list_keys(self, bucket: str, prefix: str) -> list[str]: ...


class MemoryBlobs:
    """A dict-backed `Blobs` for unit tests and benchmarks of pure code."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.reads = 0
        self.writes = 0

    def read(self, bucket: str, key: str) -> bytes:
        self.reads += 1
        return self.objects[(bucket, key)]

    def write(self, bucket: str, key: str, data: bytes) -> None:
        self.writes += 1
        self.objects[(bucket, key)] = bytes(data)

    def exists(self, bucket: str, key: str) -> bool:
        return (bucket, key) in self.objects

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        return sorted(k for b, k in self.objects if b == bucket and k.startswith(prefix))


def read_json(blobs: Blobs, bucket: str, key: str, default: Any = None) -> Any:
    """JSON (gzip if the key ends in .gz) or `default` when the object does not exist."""
    if not blobs.exists(bucket, key):
        return default
    data = blobs.read(bucket, key)
    return json.loads(gzip.decompress(data) if key.endswith(".gz") else data)


def write_json(blobs: Blobs, bucket: str, key: str, value: Any) -> None:
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    blobs.write(bucket, key, gzip.compress(data, mtime=0) if key.endswith(".gz") else data)


def pack_arrays(array: np.ndarray) -> bytes:
    """One .npy blob: a shard is a single contiguous uint8 array, loaded with one read, no decoding."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def unpack_arrays(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
