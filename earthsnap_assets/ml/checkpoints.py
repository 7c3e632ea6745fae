"""Where a training run keeps its progress, so a killed run resumes instead of starting over.

A checkpoint is one `torch.save` blob (model, optimizer, scheduler, history, early-stopping state). In the
lake it is a single object write: S3 replaces an object atomically, so a reader sees the previous
checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Protocol

import torch

from earthsnap_assets.ml.storage import Blobs

log = logging.getLogger(__name__)


class CheckpointStore(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


def to_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> dict[str, Any]:
    """Load on CPU with `weights_only`: a checkpoint holds tensors and plain data, never code."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class LakeCheckpoints:
    """Checkpoints as one object in the lake (`bucket`/`key`), overwritten after every epoch."""

    def __init__(self, blobs: Blobs, bucket: str, key: str) -> None:
        self.blobs, self.bucket, self.key = blobs, bucket, key

    def load(self) -> dict[str, Any] | None:
        if not self.blobs.exists(self.bucket, self.key):
            return None
        return from_bytes(self.blobs.read(self.bucket, self.key))

    def save(self, state: dict[str, Any]) -> None:
        data = to_bytes(state)
        self.blobs.write(self.bucket, self.key, data)
        log.debug("checkpoint of %d bytes written to s3://%s/%s", len(data), self.bucket, self.key)


class MemoryCheckpoints:
    """In-memory store for tests; it still serialises, so a resume sees exactly what the lake would give."""

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        return None if self.data is None else from_bytes(self.data)

    def save(self, state: dict[str, Any]) -> None:
        self.data = to_bytes(state)
        self.saves += 1
