"""Global checks over every group's new photos, in one pass: the fan-in between intake and the manifests.

Exact copies and labelling conflicts need every copy of some bytes, and near-duplicates every photo that
looks alike, whatever group they are in. One run takes the new rows of *all* groups that changed since
the last run (read from the object tables' new segments: O(dN)), and

1. updates the *content table* (every QA-passed object: sha256, group, key, species, dHash, verdict,
   cluster, split), hash-bucketed by sha256, each bucket a base file plus small delta files, so a commit
   writes the rows it changed, not the table (`ContentTable`): the verdict of a copy is a function of all
   copies of its bytes (one species: the smallest key is kept, the others are duplicates; several
   species: every copy is a labelling conflict);
2. probes the dHashes of the newly accepted rows against every accepted dHash (12 bytes per photo in
   memory, no strings) and among themselves, in numpy;
3. gives each new near-duplicate cluster a split: the split of a look-alike already assigned (in any
   group), else the one its species lacks most (per-group, per-species counts kept with the table);
4. writes per group a *delta* of its manifest rows (`checks/<g>/...`), which `validated_manifest[g]`
   applies to its previous segment.

Everything is committed by one conditional write of the head: two runs at once cannot both win.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.heads import Head, commit_head, load_head
from earthsnap_assets.lake.near_duplicates import components, pairs_within, probe
from earthsnap_assets.lake.objects import DELETED, OK, current_state
from earthsnap_assets.lake.objects import SCHEMA as OBJECT_SCHEMA
from earthsnap_assets.lake.segments import (
    ACCEPTED,
    DELTA_SCHEMA,
    REJECTED,
    REMOVE,
    RESET,
    UPDATE,
    UPSERT,
)
from earthsnap_assets.lake.splits import SPLITS, SplitConfig, SplitItem, fill_quotas
from earthsnap_assets.lake.storage import ConcurrentUpdate, VersionedBlobs
from earthsnap_assets.lake.tables import concat, content_digest, put_content_addressed, read_table, table_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")

CONTENT_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("group", pa.string()),
        ("key", pa.string()),
        ("species", pa.string()),
        ("etag", pa.string()),
        ("seen_ns", pa.int64()),
        ("dhash", pa.uint64()),
        ("accepted", pa.bool_()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("cluster", pa.string()),
        ("split", pa.string()),
        ("near_duplicate_of", pa.string()),
        ("near_duplicate_species", pa.string()),
    ]
)


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


@dataclass(frozen=True)
class ChecksConfig:
    """What the checks decide by: near-duplicate distance and split fractions (and the index's shape)."""

    near_duplicate_bits: int
    splits: SplitConfig
    buckets: int = 256

    def fingerprint(self) -> str:
        from earthsnap_assets.hashing import fingerprint

        return fingerprint({"bits": self.near_duplicate_bits, "splits": self.splits.fingerprint(), "checks": 1})


@dataclass(frozen=True)
class ChecksResult:
    groups: dict[str, int]  # group -> delta rows written for it
    new_rows: int
    buckets_read: int
    buckets_written: int
    probed: int
    compared_with: int
    reset: bool
    seconds: float = 0.0
    deltas: dict[str, str] = field(default_factory=dict)  # group -> delta file


def _bucket_of(sha: str, buckets: int) -> int:
    return int(sha[:8], 16) % buckets


def bucket_name(number: int) -> str:
    return f"{number:05d}"


# --- what changed in each group ---------------------------------------------------------------------------


@dataclass
class _GroupChange:
    group: str
    state: str  # the object table state this change brings the checks to
    log_seq: int  # the last intake segment read
    rows: dict[str, dict]  # key -> latest object row (tombstones included)
    full: bool  # the whole table was read: keys absent from it are gone


def _group_change(blobs: VersionedBlobs, bucket: str, group: str, checked: dict, reset: bool) -> _GroupChange | None:
    """The object rows of `group` written since the checks last looked: O(new rows) from the intake log."""
    head = load_head(blobs, bucket, paths.objects_head(group))
    if not head.exists or (not reset and head.get("state_sum") == checked.get("state")):
        return None
    log, seen = head.get("log", []), int(checked.get("log_seq", 0))
    incremental = not reset and "log_seq" in checked and bool(log) and log[0]["seq"] <= seen + 1
    # far behind (or the log was trimmed): the whole current table
    keys = [entry["segment"] for entry in log if entry["seq"] > seen] if incremental else head.get("segments", [])
    table = current_state([read_table(blobs, bucket, k) for k in keys]) if keys else OBJECT_SCHEMA.empty_table()
    rows = {r["key"]: r for r in table.to_pylist()}
    last = log[-1]["seq"] if log else 0
    return _GroupChange(
        group, head.get("state_sum"), last, rows, full=reset or (not incremental and "state" in checked)
    )


# --- the content table -----------------------------------------------------------------------------------


# A delta row that removes its (group, key) from the bucket.
DELTA_CONTENT_SCHEMA = CONTENT_SCHEMA.append(pa.field("gone", pa.bool_()))
# Deltas reach a quarter of their base: the bucket is rewritten as one base (each row is rewritten a
# bounded number of times as the table grows, so a commit costs O(new rows) amortised).
COMPACT_SHARE = 0.25


def _schema(columns: list[str]) -> pa.Schema:
    return pa.schema([DELTA_CONTENT_SCHEMA.field(c) for c in columns])


def _ident_key(group: str, key: str) -> str:
    return f"{group}\t{key}"


def _overlay(table: pa.Table, delta: pa.Table) -> pa.Table:
    """`table` with the rows of `delta` in place of its rows of the same (group, key); `gone` rows remove."""
    kept = table.filter(pc.invert(pc.is_in(_idents(table), _idents(delta))))
    rows = delta.filter(pc.invert(pc.fill_null(delta["gone"], False))) if "gone" in delta.column_names else delta
    return pa.concat_tables([kept, rows.select(table.column_names).cast(kept.schema)])


class ContentTable:
    """The head's sha256 buckets, each a sorted base file and a few delta files (newer rows win).

    A run stages the rows it changes per bucket in memory (O(new rows)) and, when it commits, writes one
    delta per touched bucket: never the table. A bucket's deltas merge as they pile up (a new delta
    absorbs the last one while that is at most twice its size, so a bucket holds O(log) deltas), and into
    the base when they reach `COMPACT_SHARE` of it. Reading a bucket reads its base and deltas.
    """

    def __init__(self, blobs: VersionedBlobs, bucket: str, files: dict[str, list[dict]], buckets: int) -> None:
        self.blobs, self.bucket, self.buckets = blobs, bucket, buckets
        self.reads = self.writes = 0
        self.files = {name: self._entries(entries) for name, entries in files.items()}
        self.pending: dict[int, dict[str, dict]] = {}  # number -> ident -> row ({"gone": True, ...}: removed)

    def _entries(self, entries: str | list[dict]) -> list[dict]:
        """A bucket's files; a lake written before deltas existed names one base file (its rows counted once,
        from the Parquet footer, and recorded in the new form at the next commit)."""
        if isinstance(entries, str):
            self.reads += 1
            return [{"key": entries, "rows": read_table(self.blobs, self.bucket, entries, columns=["key"]).num_rows}]
        return [dict(e) for e in entries]

    def load(self, number: int, columns: list[str] | None = None) -> pa.Table:
        """The bucket as of this run (staged changes included), `columns` of it."""
        wanted = CONTENT_SCHEMA.names if columns is None else columns
        need = list(dict.fromkeys([*wanted, "group", "key"]))
        table = _schema(need).empty_table()
        for position, entry in enumerate(self.files.get(bucket_name(number), [])):
            self.reads += 1
            part = read_table(self.blobs, self.bucket, entry["key"], columns=need + (["gone"] if position else []))
            table = part.cast(_schema(need)) if position == 0 else _overlay(table, part)
        staged = self.pending.get(number)
        if staged:
            table = _overlay(table, pa.Table.from_pylist(list(staged.values()), schema=_schema([*need, "gone"])))
        return table.select(wanted)

    def stage(self, number: int, rows: Iterable[dict] = (), removed: Iterable[tuple[str, str]] = ()) -> None:
        """Rows that replace (or enter) the bucket and (group, key) entries that leave it, written at flush."""
        staged = self.pending.setdefault(number, {})
        for group, key in removed:
            staged[_ident_key(group, key)] = {"group": group, "key": key, "gone": True}
        for row in rows:
            staged[_ident_key(row["group"], row["key"])] = {**row, "gone": False}

    def flush(self) -> None:
        """Write the staged changes: one delta per touched bucket (merged with small ones), or a new base."""
        for number, staged in sorted(self.pending.items()):
            name = bucket_name(number)
            entries = self.files.get(name, [])
            delta = pa.Table.from_pylist(list(staged.values()), schema=DELTA_CONTENT_SCHEMA)
            delta_rows = sum(e["rows"] for e in entries[1:]) + delta.num_rows
            if not entries or delta_rows >= COMPACT_SHARE * entries[0]["rows"]:
                self._write_base(number, name)
                continue
            while len(entries) > 1 and entries[-1]["rows"] <= 2 * delta.num_rows:
                self.reads += 1
                older = read_table(self.blobs, self.bucket, entries.pop()["key"]).cast(DELTA_CONTENT_SCHEMA)
                newer = pc.is_in(_idents(older), _idents(delta))
                delta = pa.concat_tables([older.filter(pc.invert(newer)), delta])
            self.files[name] = [*entries, self._write(number, delta, DELTA_CONTENT_SCHEMA)]
        self.pending.clear()

    def _write_base(self, number: int, name: str) -> None:
        merged = self.load(number)
        if merged.num_rows:
            self.files[name] = [self._write(number, merged, CONTENT_SCHEMA)]
        else:
            self.files.pop(name, None)

    def _write(self, number: int, table: pa.Table, schema: pa.Schema) -> dict:
        self.writes += 1
        table = table.sort_by([("sha256", "ascending"), ("group", "ascending"), ("key", "ascending")])
        data = table_bytes(table.cast(schema))
        key = put_content_addressed(self.blobs, self.bucket, lambda d: paths.content_bucket(number, d), data)
        return {"key": key, "rows": table.num_rows}


def _copies(rows: list[dict]) -> dict[str, list[Copy]]:
    found: dict[str, list[Copy]] = defaultdict(list)
    for r in rows:
        found[r["sha256"]].append(Copy(r["sha256"], r["group"], r["key"], r["species"]))
    return found


@dataclass
class _Outcome:
    """What pass 1 decided: verdicts, rows whose acceptance went or came, rows of others whose verdict moved."""

    rows: dict[tuple[str, str], dict] = field(default_factory=dict)  # (group, key) -> content row now
    verdicts: dict[tuple[str, str], Verdict] = field(default_factory=dict)
    lost: list[dict] = field(default_factory=list)  # accepted entries that went (their split counts go)
    arriving: list[dict] = field(default_factory=list)  # rows accepted now that need a cluster and split
    updated: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))  # unchanged rows, new verdict


CARRIED = ("cluster", "split", "near_duplicate_of", "near_duplicate_species")


def _ident(row: dict) -> tuple[str, str]:
    return row["group"], row["key"]


def _pass_verdicts(
    table: ContentTable, changes: list[_GroupChange], removed: set[tuple[str, str, str]], added: list[dict]
) -> _Outcome:
    """Update every touched bucket: drop removed entries, enter new ones, recompute verdicts of touched shas.

    The same bytes under the same key keep their cluster and split; accepted entries that go (or change
    content, or stop being accepted) are reported as lost, so the split counts stay right.
    """
    outcome = _Outcome()
    by_bucket: dict[int, list[dict]] = defaultdict(list)
    for row in added:
        by_bucket[_bucket_of(row["sha256"], table.buckets)].append(row)
    gone_by_bucket: dict[int, set[tuple[str, str]]] = defaultdict(set)
    for group, key, sha in removed:
        gone_by_bucket[_bucket_of(sha, table.buckets)].add((group, key))
    changed = {(c.group, k) for c in changes for k in c.rows}
    for number in sorted(set(by_bucket) | set(gone_by_bucket)):
        # the identity columns find the rows a change touches; whole rows are decoded only where there are
        # some (same files, same order), so a bucket of new bytes costs three columns, not fourteen
        ids = table.load(number, columns=["sha256", "group", "key"])
        arriving = {_ident(r): r for r in by_bucket.get(number, [])}
        drop = gone_by_bucket.get(number, set()) | set(arriving)
        dropped = pc.is_in(_idents(ids), pa.array(sorted(f"{g}\t{k}" for g, k in drop), pa.string()))
        dropped_shas = set(ids.filter(dropped)["sha256"].to_pylist())
        touched = dropped_shas | {r["sha256"] for r in arriving.values()}
        hit = pc.or_(pc.is_in(ids["sha256"], pa.array(sorted(touched), pa.string())), dropped)
        # only rows sharing bytes with a change go through Python; the rest of the bucket stays as it is
        current = {}
        if pc.any(hit).as_py():
            current = {_ident(r): r for r in table.load(number).filter(hit).to_pylist()}
        rows = [dict(r) for i, r in current.items() if i not in drop] + list(arriving.values())
        members = _copies(rows)
        for row in rows:
            ident = _ident(row)
            before = current.get(ident)
            verdict = copy_verdicts(members[row["sha256"]])[ident]
            carry = bool(before and before["accepted"] and before["sha256"] == row["sha256"] and verdict.accepted)
            row.update(accepted=verdict.accepted, reason=verdict.reason, detail=verdict.detail)
            if carry:
                row.update({f: before[f] for f in CARRIED})
            else:
                row.update(dict.fromkeys(CARRIED))
                if verdict.accepted:
                    outcome.arriving.append(row)
                if before and before["accepted"]:
                    outcome.lost.append(before)
            outcome.verdicts[ident], outcome.rows[ident] = verdict, row
            was = (before["accepted"], before["reason"]) if before else None
            if ident not in changed and was != (row["accepted"], row["reason"]):
                outcome.updated[row["group"]].append(row)
        for ident in drop - {_ident(r) for r in rows}:  # went, or moved to another bucket (other content)
            before = current.get(ident)
            if before and before["accepted"]:
                outcome.lost.append(before)
        table.stage(number, rows, removed=drop - {_ident(r) for r in rows})
    return outcome


def _idents(table: pa.Table) -> pa.Array:
    """ "group<TAB>key" of every row, to match row identities in one vectorised step."""
    return pc.binary_join_element_wise(table["group"], table["key"], "\t")


def _accepted_hashes(table: ContentTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dhash, bucket, row) of every accepted row that has its split: 12 bytes a photo, no strings kept.

    Rows accepted in this run have no split yet (pass 1 cleared it), so they are left out here and
    compared with each other separately.
    """
    hashes, buckets, rows = [], [], []
    for number in range(table.buckets):
        part = table.load(number, columns=["dhash", "accepted", "split"])
        if part.num_rows == 0:
            continue
        usable = pc.and_(pc.fill_null(part["accepted"], False), pc.is_valid(part["split"]))
        index = np.flatnonzero(usable.to_numpy(zero_copy_only=False))
        hashes.append(part["dhash"].to_numpy(zero_copy_only=False)[index].astype(np.uint64))
        buckets.append(np.full(len(index), number, np.int32))
        rows.append(index.astype(np.int64))
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(buckets), np.concatenate(rows)


# Existing look-alikes kept per arriving photo, nearest first: they decide its cluster and split (all
# members of a cluster share one), and a flat or blank photo may resemble thousands.
MAX_LOOKALIKES = 16


def _neighbours(table: ContentTable, arriving: list[dict], bits: int) -> tuple[dict[int, list[dict]], int]:
    """The nearest existing accepted look-alikes of each arriving row (by position in `arriving`)."""
    hashes, buckets, rows = _accepted_hashes(table)
    new = np.array([r["dhash"] or 0 for r in arriving], dtype=np.uint64)
    a, b, distance = probe(new, hashes, bits)
    order = np.lexsort((b, distance, a))  # per arriving row, nearest first (ties: table order)
    a, b, distance = a[order], b[order], distance[order]
    keep = np.arange(len(a)) - np.searchsorted(a, a, side="left") < MAX_LOOKALIKES
    a, b, distance = a[keep], b[keep], distance[keep]
    found: dict[int, list[dict]] = defaultdict(list)
    for number in np.unique(buckets[b]).tolist():
        mine = np.flatnonzero(buckets[b] == number)
        part = table.load(number, columns=["key", "group", "species", "cluster", "split"])
        details = part.take(pa.array(rows[b[mine]])).to_pylist()
        for i, d, detail in zip(a[mine].tolist(), distance[mine].tolist(), details, strict=True):
            found[i].append({**detail, "distance": d})
    return found, len(hashes)


def _assign(
    arriving: list[dict], linked: dict[int, list[dict]], counts: dict[str, dict[str, Counter]], config: ChecksConfig
) -> None:
    """Cluster and split of each arriving row (in place); `counts` (group -> species -> split) is updated."""
    hashes = np.array([r["dhash"] or 0 for r in arriving], dtype=np.uint64)
    a, b = pairs_within(hashes, config.near_duplicate_bits)
    roots = components(len(arriving), a, b)
    units: dict[int, list[int]] = defaultdict(list)
    for index, root in enumerate(roots.tolist()):
        units[root].append(index)
    fresh: dict[str, list[tuple[str, list[SplitItem]]]] = defaultdict(list)
    totals: dict[str, Counter] = defaultdict(Counter)
    for group, per_species in counts.items():
        for species, per_split in per_species.items():
            totals[group][species] += sum(per_split.values())
    for row in arriving:
        totals[row["group"]][row["species"]] += 1
    for members in units.values():
        neighbours = [n for i in members for n in linked.get(i, [])]
        cluster = min([arriving[i]["sha256"] for i in members] + [n["cluster"] for n in neighbours if n["cluster"]])
        for i in members:
            closest = min(linked.get(i, []), key=lambda n: (n["distance"], n["key"]), default=None)
            arriving[i].update(
                cluster=cluster,
                near_duplicate_of=closest["key"] if closest else None,
                near_duplicate_species=closest["species"] if closest else None,
            )
        inherited = Counter(n["split"] for n in neighbours if n["split"] in SPLITS)
        if inherited:  # a look-alike has a split already, in whatever group: join it
            split = min(inherited, key=lambda s: (-inherited[s], SPLITS.index(s)))
            for i in members:
                arriving[i]["split"] = split
                counts[arriving[i]["group"]][arriving[i]["species"]][split] += 1
        else:  # stratified per group: a unit spans groups only through look-alikes, handled above
            by_group: dict[str, list[SplitItem]] = defaultdict(list)
            for i in members:
                by_group[arriving[i]["group"]].append(SplitItem(arriving[i]["sha256"], arriving[i]["species"], cluster))
            for group, items in by_group.items():
                fresh[group].append((cluster, items))
    by_sha = {(r["group"], r["sha256"]): r for r in arriving}
    for group, units_of_group in sorted(fresh.items()):
        current = defaultdict(Counter, {s: Counter(c) for s, c in counts[group].items()})
        for sha, split in fill_quotas(units_of_group, current, totals[group], config.splits).items():
            by_sha[(group, sha)]["split"] = split
        counts[group] = current


def _store_assignments(table: ContentTable, arriving: list[dict]) -> None:
    """Pass 2: stage clusters and splits of the arriving rows into their buckets."""
    for row in arriving:
        table.stage(_bucket_of(row["sha256"], table.buckets), [row])


# --- deltas for the group manifests ---------------------------------------------------------------------


def _segment_row(obj: dict, content: dict | None, verdict: Verdict | None) -> dict:
    """A manifest row for an object row, with its verdict from the checks (or from per-object QA)."""
    qa_ok = obj["verdict"] == OK
    row = {
        f: obj[f]
        for f in (
            "key",
            "etag",
            "seen_ns",
            "sha256",
            "dhash",
            "size",
            "format",
            "width",
            "height",
            "species",
            "group",
            "pixels",
            "pixel_row",
        )
    }
    row |= {"qa_ok": qa_ok, "cluster": None, "split": None, "near_duplicate_of": None, "near_duplicate_species": None}
    if not qa_ok:
        return row | {"verdict": REJECTED, "reason": obj["reason"], "detail": obj["detail"]}
    verdict = verdict or Verdict(True)
    row |= {"verdict": ACCEPTED if verdict.accepted else REJECTED, "reason": verdict.reason, "detail": verdict.detail}
    if content is not None and verdict.accepted:
        row |= {f: content[f] for f in ("cluster", "split", "near_duplicate_of", "near_duplicate_species")}
    return row


def _verdict_row(content: dict) -> dict:
    return {
        "key": content["key"],
        "group": content["group"],
        "verdict": ACCEPTED if content["accepted"] else REJECTED,
        "reason": content["reason"],
        "detail": content["detail"],
        **{f: content[f] for f in ("cluster", "split", "near_duplicate_of", "near_duplicate_species")},
    }


def _write_delta(blobs: VersionedBlobs, bucket: str, group: str, seq: int, rows: list[dict]) -> str:
    table = pa.Table.from_pylist(rows, schema=DELTA_SCHEMA)
    data = table_bytes(table)
    key = paths.check_delta(group, seq, content_digest(data, 16))
    if not blobs.exists(bucket, key):
        blobs.write(bucket, key, data)
    return key


# --- one run ---------------------------------------------------------------------------------------------


def _split_counts(checked: dict) -> dict[str, dict[str, Counter]]:
    """group -> species -> split -> accepted rows, as kept with the table (nested defaults for new keys)."""
    counts: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for group, state in checked.items():
        for species, per_split in state.get("splits", {}).items():
            counts[group][species].update(per_split)
    return counts


# New rows held at once by one commit: bounds memory when a whole dataset arrives at once (a first build,
# new rules); the rest follows in further commits of the same run.
MAX_ROWS_PER_COMMIT = 200_000


def check_groups(
    blobs: VersionedBlobs,
    bucket: str,
    groups: list[str],
    config: ChecksConfig,
    clock: Callable[[], int] = time.time_ns,
    max_rows: int = MAX_ROWS_PER_COMMIT,
) -> ChecksResult:
    """Bring the content table up to date with the object tables of `groups`, in commits of at most
    `max_rows` new rows (each one conditional write, retried if another run committed first)."""
    started = time.perf_counter()
    results: list[ChecksResult] = []
    pending: list[str] | None = sorted(groups)
    while pending is not None:
        batch = pending
        result, rest = with_retries(lambda batch=batch: _check(blobs, bucket, batch, config, max_rows))
        results.append(result)
        pending = rest or None
    return _merged(results, time.perf_counter() - started)


def _merged(results: list[ChecksResult], seconds: float) -> ChecksResult:
    groups: dict[str, int] = {}
    deltas: dict[str, str] = {}
    for r in results:
        for group, rows in r.groups.items():
            groups[group] = groups.get(group, 0) + rows
        deltas |= r.deltas
    return ChecksResult(
        groups=groups,
        new_rows=sum(r.new_rows for r in results),
        buckets_read=sum(r.buckets_read for r in results),
        buckets_written=sum(r.buckets_written for r in results),
        probed=sum(r.probed for r in results),
        compared_with=max((r.compared_with for r in results), default=0),
        reset=any(r.reset for r in results),
        seconds=seconds,
        deltas=deltas,
    )


def _load_changes(
    blobs: VersionedBlobs, bucket: str, groups: list[str], checked: dict, max_rows: int
) -> tuple[list[_GroupChange], list[str]]:
    """Changes of the first groups up to `max_rows` new rows (at least one group); the groups left over."""
    changes, rows = [], 0
    for index, group in enumerate(groups):
        if changes and rows >= max_rows:
            return changes, groups[index:]
        state = checked.get(group, {})
        change = _group_change(blobs, bucket, group, state, bool(state.get("reset")))
        if change is not None:
            changes.append(change)
            rows += len(change.rows)
    return changes, []


def _check(
    blobs: VersionedBlobs, bucket: str, groups: list[str], config: ChecksConfig, max_rows: int
) -> tuple[ChecksResult, list[str]]:
    started = time.perf_counter()
    head = load_head(blobs, bucket, paths.CONTENT_HEAD)
    reset = head.exists and head.get("config") != config.fingerprint()
    files = {} if reset else head.get("files", {})
    checked = dict(head.get("groups", {}))
    if reset:  # other rules: every group is checked again from its whole table (delta numbers go on)
        checked = {g: {"seq": v.get("seq", 0), "reset": True} for g, v in checked.items()}
        groups = sorted(set(groups) | set(checked))
    buckets = config.buckets if reset or not head.exists else int(head.get("buckets", config.buckets))
    table = ContentTable(blobs, bucket, files, buckets)
    changes, rest = _load_changes(blobs, bucket, sorted(groups), checked, max_rows)
    if not changes:
        if reset:  # nothing left to read, but the new rules and the reset marks must be committed
            commit_head(blobs, bucket, head, {**_head_value(config, buckets, table, checked)})
        return ChecksResult({}, 0, 0, 0, 0, 0, reset, time.perf_counter() - started), rest

    removed: set[tuple[str, str, str]] = set()
    added: list[dict] = []
    for change in changes:
        if change.full and not checked.get(change.group, {}).get("reset"):  # entries the table has that are gone
            for key, sha in _known_keys(table, change.group).items():
                if key not in change.rows:
                    removed.add((change.group, key, sha))
        for key, row in change.rows.items():
            if row.get("replaced_sha256"):
                removed.add((change.group, key, row["replaced_sha256"]))
            if row["verdict"] == OK:
                added.append(_content_row(row))
    outcome = _pass_verdicts(table, changes, removed, added)
    counts = _split_counts(checked)
    for row in outcome.lost:
        if row["split"]:
            counts[row["group"]][row["species"]][row["split"]] -= 1
    linked, compared = _neighbours(table, outcome.arriving, config.near_duplicate_bits)
    _assign(outcome.arriving, linked, counts, config)
    _store_assignments(table, outcome.arriving)

    deltas: dict[str, str] = {}
    written: dict[str, int] = {}
    for change in changes:
        rows = [{"change": RESET, **_empty_row(change.group)}] if change.full else []
        for key, obj in sorted(change.rows.items()):
            if obj["verdict"] == DELETED:
                rows.append({"change": REMOVE, **_empty_row(change.group), "key": key})
            else:
                ident = (change.group, key)
                rows.append(
                    {"change": UPSERT, **_segment_row(obj, outcome.rows.get(ident), outcome.verdicts.get(ident))}
                )
        rows += [
            {"change": UPDATE, **_empty_row(change.group), **_verdict_row(r)}
            for r in outcome.updated.pop(change.group, [])
        ]
        written[change.group] = len(rows)
        deltas[change.group] = _write_delta(blobs, bucket, change.group, _next_seq(checked, change.group), rows)
        checked[change.group] = _committed(checked.get(change.group, {}), deltas[change.group])
        checked[change.group] |= {"state": change.state, "log_seq": change.log_seq}
    for group, rows in outcome.updated.items():  # groups that did not change themselves, but their verdicts did
        update_rows = [{"change": UPDATE, **_empty_row(group), **_verdict_row(r)} for r in rows]
        written[group] = len(update_rows)
        deltas[group] = _write_delta(blobs, bucket, group, _next_seq(checked, group), update_rows)
        checked[group] = _committed(checked.get(group, {}), deltas[group])
    for group, per_species in counts.items():
        if group in checked:
            checked[group]["splits"] = {s: {k: v for k, v in c.items() if v} for s, c in sorted(per_species.items())}
    table.flush()
    value = _head_value(config, buckets, table, checked)
    commit_head(blobs, bucket, head, value)
    result = ChecksResult(
        groups=written,
        new_rows=sum(len(c.rows) for c in changes),
        buckets_read=table.reads,
        buckets_written=table.writes,
        probed=len(outcome.arriving),
        compared_with=compared,
        reset=reset,
        seconds=time.perf_counter() - started,
        deltas=deltas,
    )
    return result, rest


def _head_value(config: ChecksConfig, buckets: int, table: ContentTable, checked: dict) -> dict:
    return {
        "config": config.fingerprint(),
        "buckets": buckets,
        "files": dict(sorted(table.files.items())),
        "groups": dict(sorted(checked.items())),
    }


def _next_seq(checked: dict, group: str) -> int:
    return int(checked.get(group, {}).get("seq", 0)) + 1


# Deltas a manifest may apply are the ones the head names (a run that lost its commit leaves files behind
# that nobody applies); the last few are kept in the head, far more than a manifest lags behind.
KEPT_DELTAS = 64


def _committed(state: dict, delta: str) -> dict:
    return {**state, "seq": int(state.get("seq", 0)) + 1, "deltas": [*state.get("deltas", []), delta][-KEPT_DELTAS:]}


def committed_deltas(blobs: VersionedBlobs, bucket: str, group: str, after: str | None) -> list[str]:
    """The deltas of `group` committed after `after` (the last one a manifest applied), oldest first."""
    state = content_head(blobs, bucket).get("groups", {}).get(group, {})
    kept = state.get("deltas", [])
    if after and kept and after < kept[0] and int(state.get("seq", 0)) > KEPT_DELTAS:
        raise RuntimeError(
            f"the manifest of {group} is more than {KEPT_DELTAS} deltas behind the global checks: "
            "materialize content_checks with other rules or splits once to rebuild every manifest"
        )
    return [k for k in kept if after is None or k > after]


def _content_row(obj: dict) -> dict:
    return {
        "sha256": obj["sha256"],
        "group": obj["group"],
        "key": obj["key"],
        "species": obj["species"],
        "etag": obj["etag"],
        "seen_ns": obj["seen_ns"],
        "dhash": obj["dhash"],
        "accepted": None,
        "reason": None,
        "detail": None,
        "cluster": None,
        "split": None,
        "near_duplicate_of": None,
        "near_duplicate_species": None,
    }


def _empty_row(group: str) -> dict:
    return {f: None for f in DELTA_SCHEMA.names if f != "change"} | {"group": group, "key": ""}


def _known_keys(table: ContentTable, group: str) -> dict[str, str]:
    """key -> sha256 of the group's entries: a scan of the whole table, only when the checks fell far behind."""
    found = {}
    for number in range(table.buckets):
        part = table.load(number, columns=["group", "key", "sha256"])
        if part.num_rows:
            mine = part.filter(pc.equal(part["group"], group))
            found |= dict(zip(mine["key"].to_pylist(), mine["sha256"].to_pylist(), strict=True))
    return found


def content_head(blobs: VersionedBlobs, bucket: str) -> Head:
    return load_head(blobs, bucket, paths.CONTENT_HEAD)


def concat_content(tables: list[pa.Table]) -> pa.Table:
    return concat(tables, CONTENT_SCHEMA)


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
