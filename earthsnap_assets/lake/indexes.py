"""The global content indexes: exact copies by sha256, near-duplicates by dHash band, across all groups.

Both are hash-bucketed Parquet files under one head (`indexes/head.json`). A group's validation touches
only the buckets its new and removed rows fall into, one bucket in memory at a time, so its cost follows
the change (and at most the index size when a change touches every bucket), never the whole dataset held
at once. The head moves by a conditional write: two groups validating at the same time cannot both commit
a stale view; the loser retries (`with_retries`).

* `sha256` buckets: every QA-passed object of every group (sha256, group, key, species). The verdict of a
  copy is a function of all copies of its bytes: one species -> the smallest key is kept, the others are
  duplicates; several species -> every copy is a labelling conflict.
* `band<k>` buckets (k = 0..3): every *accepted* object with its dHash, cluster and split. A new hash
  probes only the buckets of its own four band values.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.heads import commit_head, load_head
from earthsnap_assets.lake.near_duplicates import BANDS, band_values, probe_bands
from earthsnap_assets.lake.storage import ConcurrentUpdate, VersionedBlobs
from earthsnap_assets.lake.tables import put_content_addressed, read_table, table_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")

SHA_SCHEMA = pa.schema(
    [("sha256", pa.string()), ("group", pa.string()), ("key", pa.string()), ("species", pa.string())]
)
BAND_SCHEMA = pa.schema(
    [
        ("dhash", pa.uint64()),
        ("sha256", pa.string()),
        ("group", pa.string()),
        ("key", pa.string()),
        ("species", pa.string()),
        ("cluster", pa.string()),
        ("split", pa.string()),
    ]
)
NEIGHBOUR_SCHEMA = pa.schema([("probe", pa.int64()), ("distance", pa.int64()), *BAND_SCHEMA])


@dataclass(frozen=True)
class Copy:
    """One QA-passed object holding some bytes."""

    sha256: str
    group: str
    key: str
    species: str


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str | None = None
    detail: str | None = None


def copy_verdicts(copies: Iterable[Copy]) -> dict[tuple[str, str], Verdict]:
    """(group, key) -> verdict, for all copies of one content; independent of arrival order."""
    copies = sorted(copies, key=lambda c: c.key)
    species = sorted({c.species for c in copies})
    if len(species) > 1:
        verdicts = {}
        for c in copies:
            others = ", ".join(o.key for o in copies if o.key != c.key)
            verdicts[(c.group, c.key)] = Verdict(
                False, "conflicting_labels", f"same content under species {species}: {others}"
            )
        return verdicts
    kept = copies[0].key if copies else ""
    return {
        (c.group, c.key): Verdict(True) if c.key == kept else Verdict(False, "duplicate", f"same content as {kept}")
        for c in copies
    }


def _sha_bucket(sha: str, buckets: int) -> int:
    return int(sha[:8], 16) % buckets


def _band_bucket(values: np.ndarray, buckets: int) -> np.ndarray:
    return (values.astype(np.int64) * buckets) >> 16


class IndexTransaction:
    """Reads and rewrites index buckets for one group's change; nothing is visible until `commit`."""

    def __init__(self, blobs: VersionedBlobs, bucket: str, sha_buckets: int = 256, band_buckets: int = 256) -> None:
        if band_buckets & (band_buckets - 1) or not 1 <= band_buckets <= 1 << 16:
            raise ValueError("band_buckets must be a power of two up to 65536")
        self.blobs, self.bucket = blobs, bucket
        self.head = load_head(blobs, bucket, paths.INDEXES_HEAD)
        # The bucket counts of an index are fixed when it is created; a different setting needs a rebuild.
        self.sha_buckets = int(self.head.get("sha_buckets", sha_buckets))
        self.band_buckets = int(self.head.get("band_buckets", band_buckets))
        self.files: dict[str, str] = dict(self.head.get("files", {}))
        self.reads = 0

    # --- bucket files ------------------------------------------------------------------------------------

    def _load(self, name: str, schema: pa.Schema) -> pa.Table:
        key = self.files.get(name)
        if key is None:
            return schema.empty_table()
        self.reads += 1
        return read_table(self.blobs, self.bucket, key).cast(schema)

    def _store(self, kind: str, number: int, table: pa.Table) -> None:
        name = f"{kind}/{number:05d}"
        if table.num_rows == 0:
            self.files.pop(name, None)
            return
        data = table_bytes(table)
        self.files[name] = put_content_addressed(
            self.blobs, self.bucket, lambda digest: paths.index_bucket(kind, number, digest), data
        )

    # --- exact copies ------------------------------------------------------------------------------------

    def update_copies(
        self, group: str, removed_keys: set[str], added: list[Copy], look: set[str] = frozenset()
    ) -> dict[str, tuple[list[Copy], list[Copy]]]:
        """Replace `group`'s entries for the changed keys; sha256 -> (copies before, copies after).

        `removed_keys` are keys of `group` whose previous entries must go (deleted, changed or rejected now),
        with their shas in `look`; `added` are the group's QA-passed rows to (re-)enter.
        """
        touched = set(look) | {c.sha256 for c in added}
        drop = pa.array(sorted(removed_keys | {c.key for c in added}), pa.string())
        by_bucket: dict[int, list[Copy]] = defaultdict(list)
        for copy in added:
            by_bucket[_sha_bucket(copy.sha256, self.sha_buckets)].append(copy)
        result: dict[str, tuple[list[Copy], list[Copy]]] = {}
        for number in sorted({_sha_bucket(s, self.sha_buckets) for s in touched}):
            table = self._load(f"sha256/{number:05d}", SHA_SCHEMA)
            before = _copies_of(table, touched)
            mine = pc.and_(pc.equal(table["group"], group), pc.is_in(table["key"], drop))
            table = table.filter(pc.invert(mine))
            new = pa.Table.from_pylist([c.__dict__ for c in by_bucket.get(number, [])], schema=SHA_SCHEMA)
            table = pa.concat_tables([table, new]).sort_by([("sha256", "ascending"), ("key", "ascending")])
            after = _copies_of(table, touched)
            for sha in (set(before) | set(after)) & touched:
                result[sha] = (before.get(sha, []), after.get(sha, []))
            self._store("sha256", number, table)
        return result

    # --- near-duplicates ---------------------------------------------------------------------------------

    def _band_buckets_of(self, hashes: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
        """(band, bucket) -> indexes of `hashes` whose band value falls into that bucket."""
        found: dict[tuple[int, int], np.ndarray] = {}
        for band in range(BANDS):
            numbers = _band_bucket(band_values(hashes, band), self.band_buckets)
            for number in np.unique(numbers).tolist():
                found[(band, number)] = np.flatnonzero(numbers == number)
        return found

    def neighbours(self, hashes: np.ndarray, max_bits: int, ignore: tuple[str, set[str]] = ("", set())) -> pa.Table:
        """Indexed objects within `max_bits` of each hash: (probe, distance, indexed row), one row per pair.

        `ignore` = (group, shas): that group's own entries for those shas are not neighbours (they are
        the rows being replaced).
        """
        hashes = np.asarray(hashes, np.uint64)
        group, shas = ignore
        parts = [NEIGHBOUR_SCHEMA.empty_table()]
        for (band, number), members in sorted(self._band_buckets_of(hashes).items()):
            table = self._load(f"band{band}/{number:05d}", BAND_SCHEMA)
            if table.num_rows == 0:
                continue
            if shas:
                mine = pc.and_(pc.equal(table["group"], group), pc.is_in(table["sha256"], pa.array(sorted(shas))))
                table = table.filter(pc.invert(mine))
            existing = table["dhash"].to_numpy(zero_copy_only=False)
            a, b, distance = probe_bands(hashes[members], existing, max_bits, [band])
            if len(a):
                found = table.take(pa.array(b))
                found = found.add_column(0, "distance", pa.array(distance, pa.int64()))
                parts.append(found.add_column(0, "probe", pa.array(members[a], pa.int64())))
        table = pa.concat_tables(parts)
        if table.num_rows == 0:
            return table
        # a pair found in two bands is one pair
        keys = [
            f"{p}\t{g}\t{s}"
            for p, g, s in zip(
                table["probe"].to_pylist(), table["group"].to_pylist(), table["sha256"].to_pylist(), strict=True
            )
        ]
        _, first = np.unique(np.array(keys, dtype=object), return_index=True)
        return table.take(pa.array(np.sort(first))).sort_by(
            [("probe", "ascending"), ("distance", "ascending"), ("sha256", "ascending")]
        )

    def replace_bands(self, group: str, removed: pa.Table, added: pa.Table) -> None:
        """Drop `group`'s entries for `removed` (dhash, sha256) rows, enter `added` (BAND_SCHEMA) rows."""
        shas = pa.array(sorted(set(removed["sha256"].to_pylist()) | set(added["sha256"].to_pylist())), pa.string())
        hashes = np.concatenate(
            [removed["dhash"].to_numpy(zero_copy_only=False), added["dhash"].to_numpy(zero_copy_only=False)]
        ).astype(np.uint64)
        added_hashes = added["dhash"].to_numpy(zero_copy_only=False).astype(np.uint64)
        for band in range(BANDS):
            numbers = np.unique(_band_bucket(band_values(hashes, band), self.band_buckets)).tolist()
            add_numbers = _band_bucket(band_values(added_hashes, band), self.band_buckets)
            for number in numbers:
                table = self._load(f"band{band}/{number:05d}", BAND_SCHEMA)
                mine = pc.and_(pc.equal(table["group"], group), pc.is_in(table["sha256"], shas))
                table = table.filter(pc.invert(mine))
                new = added.take(pa.array(np.flatnonzero(add_numbers == number))).cast(BAND_SCHEMA)
                table = pa.concat_tables([table, new]).sort_by([("dhash", "ascending"), ("sha256", "ascending")])
                self._store(f"band{band}", number, table)

    def commit(self) -> None:
        value = {
            "sha_buckets": self.sha_buckets,
            "band_buckets": self.band_buckets,
            "files": dict(sorted(self.files.items())),
        }
        commit_head(self.blobs, self.bucket, self.head, value)


def _copies_of(table: pa.Table, shas: set[str]) -> dict[str, list[Copy]]:
    if table.num_rows == 0:
        return {}
    rows = table.filter(pc.is_in(table["sha256"], pa.array(sorted(shas), pa.string())))
    found: dict[str, list[Copy]] = defaultdict(list)
    for row in rows.to_pylist():
        found[row["sha256"]].append(Copy(**row))
    return found


def with_retries(step: Callable[[], T], attempts: int = 6, base_delay: float = 0.2) -> T:
    """Run `step` (read, compute, conditional commit) again when another writer committed first."""
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except ConcurrentUpdate as exc:
            if attempt == attempts:
                raise ConcurrentUpdate(f"gave up after {attempts} conflicting commits: {exc}") from exc
            delay = base_delay * 2 ** (attempt - 1) * (0.5 + random.random())
            log.info(f"index commit conflicted ({exc}); retrying in {delay:.2f} s")
            time.sleep(delay)
    raise AssertionError("unreachable")
