"""Intake of one species group: new raw objects in, QA'd and preprocessed, appended to the object table.

What to look at comes from the group's change log (events since the last run), or from a listing of the
group's species folders when the group is new to intake, when species joined the group, or when a full
relisting is asked for. Each object that changed is read once and decoded once: per-object QA and the
model's pixels come from the same decode (`ml.quality.inspect_and_preprocess`). Work follows the number of
changed objects; memory the size of the group.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.changes import latest_per_key, pending_batches, read_events
from earthsnap_assets.lake.heads import commit_head
from earthsnap_assets.lake.objects import (
    DELETED,
    OK,
    REJECTED,
    GroupObjects,
    load_objects,
    row_digest,
    rows_table,
    write_segment,
)
from earthsnap_assets.lake.parallel import map_objects
from earthsnap_assets.lake.storage import VersionedBlobs, pack_arrays
from earthsnap_assets.lake.tables import put_content_addressed
from earthsnap_assets.ml.preprocessing import PreprocessConfig
from earthsnap_assets.ml.quality import ImageCheck, QualityRules, inspect_and_preprocess

logger = logging.getLogger(__name__)
_MASK = (1 << 128) - 1
# Each run's segment stays listed in the head's `log` (compaction does not touch it), so the global checks
# read exactly the rows added since they last looked; a consumer further behind than this reads everything.
LOG_LENGTH = 256


@dataclass(frozen=True)
class IntakeConfig:
    rules: QualityRules
    preprocess: PreprocessConfig
    workers: int = 8
    relist: bool = False  # list every species folder of the group: one group's reconciliation
    compact_segments: int = 16  # fold the object table into one segment past this many
    pack_rows: int = 4096  # pixels per pack file (64 px: 48 MiB)


@dataclass(frozen=True)
class IntakeResult:
    group: str
    state_hash: str
    counts: dict[str, int]
    decoded: int
    deleted: int
    events: int
    listed_species: list[str]
    removed_species: list[str]
    rejected_by_reason: dict[str, int]
    committed: bool
    segments: int
    seconds: float = 0.0
    rejected_examples: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class _Plan:
    """What this run must do per key: fetch (read + QA + preprocess) or delete."""

    fetch: set[str] = field(default_factory=set)
    delete: set[str] = field(default_factory=set)


def _plan(
    blobs: VersionedBlobs,
    raw_bucket: str,
    objects: GroupObjects,
    species: list[str],
    events: dict,
    listed_species: list[str],
    force: bool,
) -> _Plan:
    plan = _Plan()
    current = objects.row_index()
    live = {k for k, (_, verdict, _) in current.items() if verdict != DELETED}
    wanted = set(species)
    listed: dict[str, str] = {}
    for name in listed_species:
        listed |= {o.key: o.etag for o in blobs.list_objects(raw_bucket, paths.species_prefix(name))}
    for key, etag in listed.items():
        if force or key not in live or current[key][0] != etag:
            plan.fetch.add(key)
    listed_set = set(listed_species)
    for key in live:
        name = paths.species_of(key)
        if name not in wanted or (name in listed_set and key not in listed):
            plan.delete.add(key)  # species left the group, or the object is gone from its folder
    for key, event in events.items():
        name = paths.species_of(key)
        if name not in wanted or name in listed_set:
            continue  # another group's now, or the listing (newer than any pending event) decided
        if event.op == "put" and (key not in live or event.etag is None or current[key][0] != event.etag):
            plan.fetch.add(key)
        elif event.op == "delete" and key in live:
            plan.delete.add(key)
    plan.fetch -= plan.delete
    return plan


def _inspect(
    fetched: tuple[bytes, str] | None, key: str, rules: QualityRules, preprocess: PreprocessConfig
) -> tuple[str | None, ImageCheck | None, np.ndarray | None]:
    if fetched is None:
        return None, None, None  # deleted between the event and this run
    data, etag = fetched
    check, pixels = inspect_and_preprocess(data, key, rules, preprocess)
    return etag, check, pixels


def _row(key: str, etag: str, check: ImageCheck, group: str, previous: dict, now: int) -> dict:
    return {
        "key": key,
        "etag": etag,
        "size": check.size,
        "sha256": check.sha256,
        "replaced_sha256": previous.get("sha256") if previous.get("verdict") == OK else None,
        "dhash": int(check.dhash, 16) if check.dhash else None,
        "width": check.width,
        "height": check.height,
        "format": check.format,
        "mode": check.mode,
        "verdict": OK if check.ok else REJECTED,
        "reason": check.reason,
        "detail": check.detail,
        "species": paths.species_of(key),
        "group": group,
        "pixels": None,
        "pixel_row": None,
        "first_seen_ns": previous.get("first_seen_ns") or now,
        "seen_ns": now,
    }


def _tombstone(row: dict, now: int) -> dict:
    """A deletion: the row as it was (its sha256 tells the global checks which copy is gone)."""
    return {
        **row,
        "verdict": DELETED,
        "replaced_sha256": row["sha256"] if row["verdict"] == OK else None,
        "seen_ns": now,
    }


def _write_packs(
    blobs: VersionedBlobs,
    bucket: str,
    group: str,
    preprocess: str,
    rows: list[dict],
    pixels: dict[str, np.ndarray],
    size: int,
) -> None:
    """Store the pixels of ok rows in packs and point each row at its pack and row."""
    ok = [r for r in rows if r["verdict"] == OK and r["key"] in pixels]
    for start in range(0, len(ok), size):
        chunk = ok[start : start + size]
        data = pack_arrays(np.stack([pixels[r["key"]] for r in chunk]))
        key = put_content_addressed(blobs, bucket, lambda d: paths.pixel_pack(preprocess, group, d) + ".npy", data)
        for index, row in enumerate(chunk):
            row["pixels"], row["pixel_row"] = key, index


def _state_sum(objects: GroupObjects, head_sum: str | None, new_rows: list[dict]) -> int:
    """Update the state sum in O(new rows): minus superseded live rows, plus new live rows."""
    total = int(head_sum or "0", 16)
    changed = {r["key"] for r in new_rows}
    if changed:
        old = objects.state.filter(pa.compute.is_in(objects.state["key"], pa.array(sorted(changed))))
        for key, etag, verdict, seen in zip(
            old["key"].to_pylist(),
            old["etag"].to_pylist(),
            old["verdict"].to_pylist(),
            old["seen_ns"].to_pylist(),
            strict=True,
        ):
            if verdict != DELETED:
                total = (total - row_digest(key, etag or "", verdict, seen)) & _MASK
    for row in new_rows:
        if row["verdict"] != DELETED:
            total = (total + row_digest(row["key"], row["etag"] or "", row["verdict"], row["seen_ns"])) & _MASK
    return total


def intake_group(
    blobs: VersionedBlobs,
    raw_bucket: str,
    lake_bucket: str,
    group: str,
    species: list[str],
    config: IntakeConfig,
    clock: Callable[[], int] = time.time_ns,
) -> IntakeResult:
    """Bring `group`'s object table up to date with the raw bucket; commit it with one conditional write."""
    started = time.perf_counter()
    objects = load_objects(blobs, lake_bucket, group)
    head = objects.head
    rules_fp, preprocess_fp = config.rules.object_fingerprint(), config.preprocess.fingerprint()
    force = head.exists and (head.get("rules") != rules_fp or head.get("preprocess") != preprocess_fp)
    everything = config.relist or force or not head.exists
    known = set(head.get("species", []))
    listed_species = sorted(species) if everything else sorted(set(species) - known)
    removed_species = sorted(known - set(species))
    batches = pending_batches(blobs, lake_bucket, group, head.get("watermark"))
    events = latest_per_key(read_events(blobs, lake_bucket, batches))
    plan = _plan(blobs, raw_bucket, objects, species, events, listed_species, force)

    now = clock()
    current = {r["key"]: r for r in objects.state.to_pylist()} if plan.fetch or plan.delete else {}
    new_rows: list[dict] = []
    pixels: dict[str, np.ndarray] = {}
    work = partial(_inspect, rules=config.rules, preprocess=config.preprocess)
    fetch = partial(blobs.read_versioned, raw_bucket)
    decoded = 0
    for key, (etag, check, array) in map_objects(sorted(plan.fetch), fetch, work, workers=config.workers):
        previous = current.get(key, {})
        if check is None:
            if previous and previous["verdict"] != DELETED:
                new_rows.append(_tombstone(previous, now))
            continue
        decoded += 1
        new_rows.append(_row(key, etag or "", check, group, previous, now))
        if array is not None:
            pixels[key] = array
    for key in sorted(plan.delete):
        new_rows.append(_tombstone(current[key], now))
    _write_packs(blobs, lake_bucket, group, preprocess_fp, new_rows, pixels, config.pack_rows)

    segments = list(head.get("segments", []))
    log = list(head.get("log", []))
    if new_rows:
        segment = write_segment(blobs, lake_bucket, group, rows_table(new_rows))
        segments.append(segment)
        log = [*log, {"seq": log[-1]["seq"] + 1 if log else 1, "segment": segment}][-LOG_LENGTH:]
    total = _state_sum(objects, head.get("state_sum"), new_rows)
    state = objects.state if not new_rows else None
    if len(segments) > config.compact_segments:
        state = _compact_state(blobs, lake_bucket, group, segments)
        segments = [write_segment(blobs, lake_bucket, group, state)]
    counts = _counts(objects, new_rows)
    value = {
        "group": group,
        "segments": segments,
        "log": log,
        "watermark": batches[-1] if batches else head.get("watermark"),
        "species": sorted(species),
        "rules": rules_fp,
        "preprocess": preprocess_fp,
        "state_sum": f"{total:032x}",
        "counts": counts,
    }
    committed = commit_head(blobs, lake_bucket, head, value) is not head
    rejected = [r for r in new_rows if r["verdict"] == REJECTED]
    return IntakeResult(
        group=group,
        state_hash=f"{total:032x}",
        counts=counts,
        decoded=decoded,
        deleted=sum(1 for r in new_rows if r["verdict"] == DELETED),
        events=len(events),
        listed_species=listed_species,
        removed_species=removed_species,
        rejected_by_reason=dict(sorted(Counter(r["reason"] for r in rejected).items())),
        committed=committed,
        segments=len(segments),
        seconds=time.perf_counter() - started,
        rejected_examples=[(r["key"], r["reason"], r["detail"] or "") for r in rejected[:100]],
    )


def _compact_state(blobs: VersionedBlobs, bucket: str, group: str, segments: list[str]) -> pa.Table:
    """The live rows of all segments as one table (tombstones dropped: the key is simply absent)."""
    from earthsnap_assets.lake.objects import current_state
    from earthsnap_assets.lake.tables import read_table

    state = current_state([read_table(blobs, bucket, key) for key in segments])
    return state.filter(pa.compute.not_equal(state["verdict"], DELETED))


def _counts(objects: GroupObjects, new_rows: list[dict]) -> dict[str, int]:
    verdicts = dict(zip(objects.state["key"].to_pylist(), objects.state["verdict"].to_pylist(), strict=True))
    verdicts |= {r["key"]: r["verdict"] for r in new_rows}
    counted = Counter(verdicts.values())
    return {"objects": counted[OK] + counted[REJECTED], OK: counted[OK], REJECTED: counted[REJECTED]}
