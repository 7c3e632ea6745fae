"""A memory lake that behaves like the real one: raw writes become change-log events, steps run in order."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

import pyarrow.compute as pc

from earthsnap_assets.lake.changes import append_batch, route
from earthsnap_assets.lake.events import RawEvent
from earthsnap_assets.lake.manifest import load_segment
from earthsnap_assets.lake.pipeline import DataConfig, PreparedData, prepare_dataset
from earthsnap_assets.lake.storage import MemoryBlobs
from earthsnap_assets.lake.taxonomy import Taxonomy, parse_taxonomy
from earthsnap_assets.ml.quality import QualityRules

TAXONOMY = "species,group\nrose,flowers\ntulip,flowers\nmoth,insects\n"
CONFIG = DataConfig(rules=QualityRules(min_side=32, min_images_per_species=2), image_size=24, shard_size=8, workers=2)
_clock = itertools.count(1_000_000)


@dataclass
class Lake:
    """Raw bucket `raw`, lake bucket `lake`; every put/delete is delivered as an event, like the sensor does."""

    taxonomy_text: str = TAXONOMY
    config: DataConfig = CONFIG
    blobs: MemoryBlobs = field(default_factory=MemoryBlobs)

    @property
    def taxonomy(self) -> Taxonomy:
        return parse_taxonomy(self.taxonomy_text)

    def _event(self, key: str, op: str, data: bytes | None = None) -> None:
        etag = hashlib.md5(data).hexdigest() if data is not None else None
        event = RawEvent(key, op, etag, len(data) if data is not None else None, next(_clock), "test")
        for group, events in route([event], self.taxonomy.species_to_group).by_group.items():
            append_batch(self.blobs, "lake", group, events)

    def put(self, key: str, data: bytes) -> Lake:
        self.blobs.write("raw", key, data)
        self._event(key, "put", data)
        return self

    def delete(self, key: str) -> Lake:
        self.blobs.delete_many("raw", [key])
        self._event(key, "delete")
        return self

    def run(self, config: DataConfig | None = None) -> PreparedData:
        return prepare_dataset(self.blobs, "raw", "lake", self.taxonomy, config or self.config)

    def rows(self, group: str) -> dict[str, dict]:
        """The group's current manifest rows by key."""
        _, segment = load_segment(self.blobs, "lake", group)
        return {r["key"]: r for r in segment.to_pylist()}

    def accepted(self, group: str) -> dict[str, dict]:
        _, segment = load_segment(self.blobs, "lake", group)
        return {r["key"]: r for r in segment.filter(pc.equal(segment["verdict"], "accepted")).to_pylist()}
