"""The parent's training data: a bounded, per-group balanced sample of every group, built by the data side.

The parent only routes a photo to its group, so it learns from a sample of every group (stratified over
the group's species), never from all 10^7 photos. Each group's share is a *chunk* (its rows and their
pixels, copied out of the group's shards) named by the group's training index and the sample settings:
a group that did not change reuses its chunk, so a run costs the groups that changed.

Rows are chosen by a seeded hash of their content, so adding photos changes the sample a little, not
wholesale. The parent does not retrain for every small change: the sample in use (*committed*) moves to
the newest one only when groups were added or removed, or when more than `retrain_share` of its rows
would change; otherwise the committed sample (and its data version) stay as they are.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from earthsnap_assets.hashing import fingerprint
from earthsnap_assets.lake import paths
from earthsnap_assets.lake.heads import commit_head, load_head
from earthsnap_assets.lake.layouts import INDEX_SCHEMA, counts_of, read_shard
from earthsnap_assets.lake.splits import SPLITS
from earthsnap_assets.lake.storage import VersionedBlobs, pack_arrays
from earthsnap_assets.lake.tables import put_content_addressed, read_table, table_bytes


@dataclass(frozen=True)
class SampleConfig:
    train_per_group: int = 1000
    eval_per_group: int = 200  # each of val and test
    seed: int = 0
    retrain_share: float = 0.1  # the parent's sample moves on when more than this share of it changed

    def per_split(self) -> dict[str, int]:
        return {"train": self.train_per_group, "val": self.eval_per_group, "test": self.eval_per_group}

    def fingerprint(self) -> str:
        return fingerprint({"n": self.per_split(), "seed": self.seed, "sample": 1})


@dataclass(frozen=True)
class SampleResult:
    layout: str
    committed: dict  # digest, index, dataset_version, groups, labels, counts
    candidate_digest: str
    changed_share: float
    moved: bool
    reason: str
    reused_groups: list[str] = field(default_factory=list)
    built_groups: list[str] = field(default_factory=list)
    seconds: float = 0.0


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def ranks(shas: list[str], seed: int) -> np.ndarray:
    """A seeded pseudo-random rank per photo from its sha256 (splitmix64 of its first 64 bits), in numpy:
    a content hash already is random, and a group of 10^5 photos is ranked without a Python hash each."""
    if not shas:
        return np.zeros(0, np.uint64)
    x = np.frombuffer(bytes.fromhex("".join(s[:16] for s in shas)), dtype=">u8").astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ (np.uint64(seed) * _GOLDEN)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def choose(rows: pa.Table, per_split: dict[str, int], seed: int) -> pa.Table:
    """Up to n rows per split, spread evenly over species; missing quota filled by the next-ranked rows.

    Columnar: only the chosen rows (bounded by the sample size) ever leave Arrow.
    """
    shas = rows["sha256"].to_pylist()
    rank, sha = ranks(shas, seed), np.asarray(shas, dtype=object)
    split = np.asarray(rows["split"].to_pylist(), dtype=object)
    species = np.asarray(rows["species"].to_pylist(), dtype=object)
    chosen: list[np.ndarray] = []
    for name, n in per_split.items():
        pool = np.flatnonzero(split == name)
        pool = pool[np.lexsort((sha[pool], rank[pool]))]
        if not len(pool) or n <= 0:
            continue
        _, codes = np.unique(species[pool], return_inverse=True)
        quota = math.ceil(n / (codes.max() + 1))
        order = np.argsort(codes, kind="stable")  # per species, in rank order
        starts = np.searchsorted(codes[order], codes[order], side="left")
        within = np.empty(len(pool), np.int64)
        within[order] = np.arange(len(pool)) - starts
        picked = pool[within < quota][:n]  # pool is in rank order, so this keeps the best-ranked
        rest = pool[within >= quota][: n - len(picked)]
        chosen += [picked, rest]
    index = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    taken = rows.take(pa.array(index, pa.int64()))
    return taken.sort_by([("split", "ascending"), ("species", "ascending"), ("sha256", "ascending")])


def _chunk(blobs: VersionedBlobs, bucket: str, layout: str, group: str, index_key: str, config: SampleConfig) -> str:
    """The group's share: chosen rows' pixels copied into one content-addressed array, and its rows in
    `<name>.parquet`, named by the group's index and the settings so an unchanged group finds it again."""
    name = paths.sample_chunk(layout, group, fingerprint({"index": index_key, "sample": config.fingerprint()}, 24))
    if blobs.exists(bucket, name + ".parquet"):
        return name
    rows = choose(read_table(blobs, bucket, index_key), config.per_split(), config.seed).to_pylist()
    shards = {key: read_shard(blobs, bucket, key) for key in sorted({r["shard"] for r in rows})}
    size = next(iter(shards.values())).shape[1] if shards else 0
    pixels = np.stack([shards[r["shard"]][r["row"]] for r in rows]) if rows else np.zeros((0, size, size, 3), np.uint8)
    shard = put_content_addressed(
        blobs, bucket, lambda d: paths.sample_chunk(layout, group, d) + ".npy", pack_arrays(pixels)
    )
    table = pa.Table.from_pylist([{**r, "shard": shard, "row": i} for i, r in enumerate(rows)], schema=INDEX_SCHEMA)
    blobs.write(bucket, name + ".parquet", table_bytes(table))  # written last: its presence means complete
    return name


def _changed_share(blobs: VersionedBlobs, bucket: str, committed: dict | None, candidate: pa.Table) -> float:
    if not committed:
        return 1.0
    before = set(read_table(blobs, bucket, committed["index"], columns=["sha256"])["sha256"].to_pylist())
    after = set(candidate["sha256"].to_pylist())
    return len(before ^ after) / max(1, len(before | after))


def build_sample(
    blobs: VersionedBlobs,
    bucket: str,
    layout: str,
    groups: dict[str, str],
    dataset_version: str,
    labels: dict[str, list[str]],
    config: SampleConfig,
) -> SampleResult:
    """Sample every group (`groups`: group -> its training index key); decide if the parent's sample moves."""
    started = time.perf_counter()
    head = load_head(blobs, bucket, paths.sample_head(layout))
    previous = head.get("candidate") or {}
    chunks, reused, built = {}, [], []
    for group, index_key in sorted(groups.items()):
        if (
            previous.get("groups", {}).get(group, {}).get("index") == index_key
            and previous.get("config") == config.fingerprint()
        ):
            chunks[group] = previous["groups"][group]["chunk"]
            reused.append(group)
        else:
            chunks[group] = _chunk(blobs, bucket, layout, group, index_key, config)
            built.append(group)
    table = pa.concat_tables(
        [read_table(blobs, bucket, chunks[g] + ".parquet") for g in sorted(chunks)] or [INDEX_SCHEMA.empty_table()]
    )
    digest = fingerprint({"chunks": chunks}, 24)
    index_key = put_content_addressed(blobs, bucket, lambda _d: paths.sample_index(layout, digest), table_bytes(table))
    candidate = {
        "digest": digest,
        "index": index_key,
        "dataset_version": dataset_version,
        "config": config.fingerprint(),
        "groups": {g: {"index": groups[g], "chunk": chunks[g]} for g in sorted(groups)},
        "labels": {g: labels[g] for g in sorted(groups)},
        "counts": counts_of(table),
    }
    committed = head.get("committed")
    share = _changed_share(blobs, bucket, committed, table)
    if committed is None:
        moved, reason = True, "first sample"
    elif sorted(committed["groups"]) != sorted(groups):
        moved, reason = True, f"groups changed: {sorted(set(committed['groups']) ^ set(groups))}"
    elif committed["labels"] != candidate["labels"]:
        moved, reason = True, "species of some group changed"
    elif share > config.retrain_share:
        moved, reason = True, f"{share:.1%} of the sample changed (> {config.retrain_share:.0%})"
    else:
        moved, reason = (
            False,
            f"{share:.1%} of the sample changed (<= {config.retrain_share:.0%}): the parent keeps its sample",
        )
    if moved:
        committed = candidate
    commit_head(blobs, bucket, head, {"committed": committed, "candidate": candidate})
    return SampleResult(layout, committed, digest, share, moved, reason, reused, built, time.perf_counter() - started)


def sample_splits(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    return {s: sum(counts.get(s, {}).values()) for s in SPLITS}
