"""Collect finished reviews: accepted species labels become raw photos; everything else is recorded.

An annotation that picks a species of the task's group is *accepted*: the photo is written once to the raw
bucket as `images/<species>/review-<sha256[:16]>.<ext>` with its provenance as S3 metadata, where the
change capture picks it up like any upload (and that group retrains). UNSURE, NOT_THIS_GROUP, a species the
group no longer has, a skipped task or a photo that cannot be written are recorded as outcomes with their
reason (Parquet under `review/<g>/outcomes/`), never dropped.

Each group's cursor holds the newest task update seen and the annotations already handled near it: tasks
updated after (cursor - OVERLAP) are listed again, and an annotation is handled once, by its id.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from earthsnap_assets.hashing import canonical_json
from earthsnap_assets.lake import paths
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.review import state
from earthsnap_assets.review.client import NOT_THIS_GROUP, UNSURE, Annotation, ReviewClient
from earthsnap_assets.review.queue import image_type

ACCEPTED, UNSURE_OUTCOME, REJECTED, SKIPPED = "accepted", "unsure", "rejected", "skipped"
OUTCOMES = (ACCEPTED, UNSURE_OUTCOME, REJECTED, SKIPPED)
OVERLAP = timedelta(minutes=5)  # how late an annotation may become visible after it was created
SOURCE = "review"  # raw-object metadata `source`, as the app's uploads carry their own

OUTCOME_SCHEMA = pa.schema(
    [
        ("annotation_id", pa.int64()),
        ("task_id", pa.int64()),
        ("project_id", pa.int64()),
        ("group", pa.string()),
        ("sha256", pa.string()),
        ("request_id", pa.string()),
        ("outcome", pa.string()),  # one of OUTCOMES
        ("reason", pa.string()),  # why: the species written, "unsure", "not-this-group", "skipped", ...
        ("choice", pa.string()),
        ("annotator", pa.string()),
        ("raw_key", pa.string()),  # accepted: the raw-bucket key written (or already there)
        ("annotated_at", pa.timestamp("us", tz="UTC")),
        ("collected_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass
class LabelsResult:
    counts: Counter = field(default_factory=Counter)  # outcome -> annotations
    raw_keys: list[str] = field(default_factory=list)  # raw objects written in this run
    by_group: dict[str, dict[str, int]] = field(default_factory=dict)


def review_key(species: str, sha256: str, ext: str) -> str:
    return f"{paths.species_prefix(species)}review-{sha256[:16]}.{ext}"


def _ascii(value: object) -> str:
    return str(value).encode("ascii", "replace").decode()[:512]


def _classify(annotation: Annotation, species: set[str]) -> tuple[str, str]:
    if annotation.cancelled:
        return SKIPPED, "skipped"
    if annotation.choice is None:
        return REJECTED, "no choice"
    if annotation.choice == UNSURE:
        return UNSURE_OUTCOME, UNSURE
    if annotation.choice == NOT_THIS_GROUP:
        return REJECTED, NOT_THIS_GROUP
    if annotation.choice not in species:
        return REJECTED, f"species {annotation.choice!r} is not in the group (taxonomy changed?)"
    return ACCEPTED, annotation.choice


def _write_label(store, group: str, annotation: Annotation, species: str) -> tuple[str, str, bool]:
    """(outcome, raw key or reason, written now). Written once per photo: a second label is recorded, not applied."""
    sha = str(annotation.task_data.get("image_sha256") or "")
    marker = state.label_key(group, sha) if sha else ""
    if not sha or not store.exists(store.lake_bucket, paths.review_photo(sha)):
        return REJECTED, f"photo review/photos/{sha or '?'} is missing", False
    done = json.loads(store.read(store.lake_bucket, marker)) if store.exists(store.lake_bucket, marker) else None
    if done is not None:
        if done["species"] != species:
            return REJECTED, f"photo already labelled {done['species']} (annotation {done['annotation_id']})", False
        return ACCEPTED, done["raw_key"], False
    data = store.read(store.lake_bucket, paths.review_photo(sha))
    kind = image_type(data)
    if kind is None:
        return REJECTED, "photo is not jpg, png or webp", False
    key = review_key(species, sha, kind[0])
    metadata = {
        "source": SOURCE,
        "review-task-id": str(annotation.task_id),
        "review-annotation-id": str(annotation.id),
        "review-project-id": str(annotation.project_id),
        "annotator": _ascii(annotation.annotator),
        "request-id": _ascii(annotation.task_data.get("request_id", "")),
        "sha256": sha,
    }
    written = True
    if not store.exists(store.raw_bucket, key):
        store.client.put_object(Bucket=store.raw_bucket, Key=key, Body=data, ContentType=kind[1], Metadata=metadata)
    else:
        written = False
    store.write(
        store.lake_bucket,
        marker,
        canonical_json(
            {"species": species, "raw_key": key, "annotation_id": annotation.id, "task_id": annotation.task_id}
        ),
    )
    return ACCEPTED, key, written


def _read_cursor(store, group: str) -> tuple[datetime | None, set[int]]:
    key = state.cursor_key(group)
    if not store.exists(store.lake_bucket, key):
        return None, set()
    value = json.loads(store.read(store.lake_bucket, key))
    after = datetime.fromisoformat(value["updated_after"]) if value.get("updated_after") else None
    return after, set(value.get("recent_ids", []))


def collect_group(
    group: str, project_id: int, store, client: ReviewClient, taxonomy: Taxonomy, result: LabelsResult
) -> None:
    """Handle the group's new annotations, then record them, then move its cursor (in that order)."""
    after, handled = _read_cursor(store, group)
    page = client.annotated_since(project_id, after, OVERLAP)
    floor = None if after is None else after - OVERLAP
    fresh = [a for a in page.annotations if a.id not in handled and (floor is None or a.created_at > floor)]
    species = set(taxonomy.species_in(group))
    now = datetime.now(UTC)
    rows = []
    for annotation in fresh:
        outcome, reason = _classify(annotation, species)
        raw_key = None
        if outcome == ACCEPTED:
            outcome, detail, written = _write_label(store, group, annotation, reason)
            if outcome == ACCEPTED:
                raw_key = detail
                if written:
                    result.raw_keys.append(detail)
            else:
                reason = detail
        result.counts[outcome] += 1
        result.by_group.setdefault(group, Counter())[outcome] += 1
        rows.append(
            {
                "annotation_id": annotation.id,
                "task_id": annotation.task_id,
                "project_id": project_id,
                "group": group,
                "sha256": annotation.task_data.get("image_sha256"),
                "request_id": annotation.task_data.get("request_id"),
                "outcome": outcome,
                "reason": reason,
                "choice": annotation.choice,
                "annotator": annotation.annotator,
                "raw_key": raw_key,
                "annotated_at": annotation.created_at,
                "collected_at": now,
            }
        )
    if rows:
        data, digest = state.parquet_bytes(rows, OUTCOME_SCHEMA)
        store.write(store.lake_bucket, state.outcomes_batch_key(group, digest, now), data)
    newest = max([t for t in (after, page.newest_update) if t is not None], default=None)
    keep_from = None if newest is None else newest - OVERLAP
    done = handled | {a.id for a in fresh}
    recent = sorted(a.id for a in page.annotations if a.id in done and (keep_from is None or a.created_at > keep_from))
    cursor = {"updated_after": newest.isoformat() if newest else None, "recent_ids": recent, "project_id": project_id}
    store.write(store.lake_bucket, state.cursor_key(group), canonical_json(cursor))


def collect_labels(store, client: ReviewClient, taxonomy: Taxonomy) -> LabelsResult:
    """Every review project's new annotations (groups the taxonomy still has), handled once each."""
    client.check()
    result = LabelsResult()
    for group, project_id in sorted(client.review_projects().items()):
        if group in taxonomy.by_group:
            collect_group(group, project_id, store, client, taxonomy, result)
    return result


def read_outcomes(store, group: str) -> pa.Table | None:
    """Every recorded outcome of a group (a rerun after a crash may repeat an annotation: dedupe by its id)."""
    return state.read_tables(store, store.lake_bucket, [state.outcomes_prefix(group)], OUTCOME_SCHEMA)
