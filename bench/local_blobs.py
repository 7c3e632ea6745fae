"""A lake in a local directory (`<root>/<bucket>/<key>`), for benchmarks that should measure our steps, not S3.

It has the verbs and the conditional-write semantics of `lake.storage.VersionedBlobs` (ETag = MD5 of the
content, as S3 gives for single-part objects). One writer process at a time, like a benchmark.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from earthsnap_assets.lake.storage import ConcurrentUpdate, StoredObject, md5_hex


class LocalBlobs:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    def read(self, bucket: str, key: str) -> bytes:
        return self._path(bucket, key).read_bytes()

    def write(self, bucket: str, key: str, data: bytes) -> None:
        path = self._path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(path.name + ".tmp")
        temp.write_bytes(data)
        os.replace(temp, path)  # atomic, like an S3 PUT

    def exists(self, bucket: str, key: str) -> bool:
        return self._path(bucket, key).is_file()

    def list_keys(self, bucket: str, prefix: str, start_after: str = "") -> list[str]:
        return [o.key for o in self.list_objects(bucket, prefix, start_after)]

    def read_versioned(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        if not self.exists(bucket, key):
            return None
        data = self.read(bucket, key)
        return data, md5_hex(data)

    def write_if(self, bucket: str, key: str, data: bytes, expected_etag: str | None) -> str:
        current = self.read_versioned(bucket, key)
        if (current is None) != (expected_etag is None) or (current is not None and current[1] != expected_etag):
            raise ConcurrentUpdate(f"{bucket}/{key} changed since it was read")
        self.write(bucket, key, data)
        return md5_hex(data)

    def list_objects(self, bucket: str, prefix: str, start_after: str = "") -> list[StoredObject]:
        base = self.root / bucket
        folder = base / prefix if prefix.endswith("/") else (base / prefix).parent
        if not folder.is_dir():
            return []
        found = []
        for path in folder.rglob("*"):
            key = path.relative_to(base).as_posix()
            if path.is_file() and not key.endswith(".tmp") and key.startswith(prefix) and key > start_after:
                stat = path.stat()
                found.append(StoredObject(key, "", stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC)))
        return sorted(found, key=lambda o: o.key)

    def delete_many(self, bucket: str, keys: list[str]) -> None:
        for key in keys:
            self._path(bucket, key).unlink(missing_ok=True)
