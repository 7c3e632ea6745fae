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

from earthsnap_assets.lake.storage import Blobs

log = logging.getLogger(__name__)


class CheckpointStore(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class Stateful(Protocol):
    """Model, optimizer, LR scheduler: anything torch can snapshot and restore."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


def save_run(store: CheckpointStore, key: dict[str, Any], parts: dict[str, Stateful], progress: dict) -> None:
    """Snapshot a run: the state of each part, the run's own progress, and the key it is valid for."""
    store.save({"key": key, "progress": progress, "parts": {name: p.state_dict() for name, p in parts.items()}})


def restore_run(store: CheckpointStore | None, key: dict[str, Any], parts: dict[str, Stateful]) -> dict | None:
    """Load the latest snapshot into `parts` and return its progress; None (and no change) when there is none.

    A snapshot made under another key (other hyper-parameters or data) would resume a different run, so
    it is ignored and the run starts over (its first save replaces it).
    """
    state = store.load() if store is not None else None
    if state is None:
        return None
    if state["key"] != key:
        log.warning("ignoring a checkpoint made for another config or data set; training from scratch")
        return None
    for name, part in parts.items():
        part.load_state_dict(state["parts"][name])
    return state["progress"]


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
