"""Where a model's training starts: scratch, configured pretrained weights, or (children) the parent's backbone.

A child names a group's species from tens of photos each. Starting from the backbone the parent learnt on a
sample of every group, it fine-tunes instead of learning edges and textures again from nothing, and needs
fewer epochs: that matters when hundreds of children retrain. The child then uses the parent's
architecture (weights fit only their own network); what it started from is recorded in MLflow and on the
registered version (`registry/names.py`: init_from, init_source, init_sha256, init_parent_run_id).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from earthsnap_assets.lake import paths
from earthsnap_assets.ml import weights
from earthsnap_assets.ml.weights import Pretrained
from earthsnap_assets.registry import names
from earthsnap_assets.resources.object_store import ObjectStore

log = logging.getLogger(__name__)

WARM_STARTS = ("parent", "weights")  # a child's choice; the parent and the flat baseline use "weights"


@dataclass(frozen=True)
class ParentWeights:
    """What a child needs of the parent's latest materialization (from its Dagster metadata)."""

    weights_uri: str
    backbone: str
    run_id: str


@dataclass(frozen=True)
class StartingPoint:
    pretrained: Pretrained | None
    origin: str  # "scratch" | "weights" | "parent"
    backbone: str | None = None  # the architecture the weights belong to (None: the configured one)
    parent_run_id: str | None = None

    def lineage(self) -> dict[str, str]:
        out = {names.INIT_FROM: self.origin}
        if self.pretrained is not None:
            out |= {names.INIT_SOURCE: self.pretrained.source, names.INIT_SHA256: self.pretrained.sha256}
        if self.parent_run_id:
            out[names.INIT_PARENT_RUN] = self.parent_run_id
        return out


def configured(store: ObjectStore, source: str, allow_download: bool = False) -> StartingPoint:
    """The configured weights source (`none` = scratch)."""
    pretrained = weights.load(source, store.read_uri, allow_download=allow_download)
    return StartingPoint(pretrained, "weights" if pretrained else "scratch")


def for_child(
    store: ObjectStore, warm_start: str, parent: ParentWeights | None, source: str, allow_download: bool = False
) -> StartingPoint:
    """The parent's backbone when asked for and available, else the configured weights."""
    if warm_start not in WARM_STARTS:
        raise ValueError(f"warm_start must be one of {WARM_STARTS}, got {warm_start!r}")
    if warm_start == "parent" and parent is not None and parent.weights_uri:
        pretrained = weights.load(parent.weights_uri, store.read_uri)
        return StartingPoint(pretrained, "parent", parent.backbone, parent.run_id)
    if warm_start == "parent":
        log.warning("no parent weights to warm-start from (parent not trained yet); using %r", source)
    return configured(store, source, allow_download)


def save_trained(store: ObjectStore, state_dict: dict) -> tuple[str, str]:
    """Store a trained state dict in the lake as safetensors; returns (uri, sha256). Same bytes, same key."""
    data = weights.to_bytes(state_dict)
    sha256 = hashlib.sha256(data).hexdigest()
    key = paths.weights_key(sha256)
    if not store.exists(store.lake_bucket, key):
        store.write(store.lake_bucket, key, data)
    return store.uri(store.lake_bucket, key), sha256
