"""Queue one production day for review: select photos, copy them where Label Studio reads, create tasks.

Per group: photos first (content-addressed, so a rerun rewrites nothing), then the project and its lake
storage, then the tasks (one import, pre-annotations included), then a `queued/<sha256>.json` marker per
photo. The markers are what "already queued" means for later days and reruns. A run that dies between
creating tasks and writing markers can queue those photos again on a rerun (a duplicate task, never a
lost one).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa

from earthsnap_assets.hashing import canonical_json
from earthsnap_assets.lake import paths
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.monitoring.records import FEEDBACK_SCHEMA, PREDICTION_SCHEMA, app_traffic
from earthsnap_assets.review import state
from earthsnap_assets.review.client import NewTask, ReviewClient
from earthsnap_assets.review.selection import Candidate, SelectionRules, select_for_review

ENVS = ("production", "staging")

TASKS_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("group", pa.string()),
        ("project_id", pa.int64()),
        ("task_id", pa.int64()),
        ("reason", pa.string()),
        ("reasons", pa.list_(pa.string())),
        ("request_id", pa.string()),
        ("env", pa.string()),
        ("day", pa.string()),
        ("answer", pa.string()),
        ("probability", pa.float64()),
        ("model_version", pa.string()),
        ("queued_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass
class QueuedTask:
    group: str
    sha256: str
    reason: str
    project_id: int
    task_id: int
    url: str


@dataclass
class QueueResult:
    day: str
    predictions: int = 0  # prediction-log rows of the day (every env)
    candidates: int = 0  # photos chosen (after dedupe and the per-group bound)
    tasks: list[QueuedTask] = field(default_factory=list)
    unknown_groups: Counter = field(default_factory=Counter)  # candidates of groups the taxonomy lacks
    missing_photos: int = 0  # kept-photo keys that were not in the lake

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(t.reason for t in self.tasks).items()))

    def by_group(self) -> dict[str, int]:
        return dict(sorted(Counter(t.group for t in self.tasks).items()))


def read_day(
    store, lake_bucket: str, day: str, envs: tuple[str, ...] = ENVS
) -> tuple[pa.Table | None, pa.Table | None]:
    """The day's prediction log and feedback of every env (dN: one day prefix each)."""
    predictions = state.read_tables(
        store, lake_bucket, [paths.predictions_prefix(env, day) for env in envs], PREDICTION_SCHEMA
    )
    feedback = state.read_tables(store, lake_bucket, [paths.feedback_prefix(env, day) for env in envs], FEEDBACK_SCHEMA)
    return (None if predictions is None else app_traffic(predictions)), feedback  # stage tests are not for people


def image_type(data: bytes) -> tuple[str, str] | None:
    """(extension, content type) of a photo from its first bytes; None for a format the raw layout does not take."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg", "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png", "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    return None


def _copy_photo(store, lake_bucket: str, candidate: Candidate) -> bool:
    """Put the kept request photo at `review/photos/<sha256>` (with its content type); False if it is gone."""
    target = paths.review_photo(candidate.sha256)
    if store.exists(lake_bucket, target):
        return True
    if not store.exists(lake_bucket, candidate.photo_key):
        return False
    data = store.read(lake_bucket, candidate.photo_key)
    kind = image_type(data)
    extra = {"ContentType": kind[1]} if kind else {}
    store.client.put_object(Bucket=lake_bucket, Key=target, Body=data, **extra)
    return True


def _percent(p: float | None) -> str:
    return f"{100 * (p or 0.0):.1f}%"


def new_task(candidate: Candidate, lake_bucket: str) -> NewTask:
    """The task data a reviewer sees (and the loop keeps), with the model's best in-group guess pre-selected."""
    top_k = " · ".join(
        f"{e.get('species') or e.get('group')} {_percent(e.get('probability'))}" for e in candidate.top_k
    )
    data = {
        "image": f"s3://{lake_bucket}/{paths.review_photo(candidate.sha256)}",
        "image_sha256": candidate.sha256,
        "request_id": candidate.request_id,
        "env": candidate.env,
        "day": candidate.day,
        "group": candidate.group,
        "reason": candidate.reason,
        "reasons": ",".join(candidate.reasons),
        "model_answer": f"{candidate.answer} ({_percent(candidate.probability)}; {', '.join(candidate.reasons)})",
        "model_top_k": top_k or "-",
        "model_version": candidate.model_version,
    }
    if candidate.user_species:
        data["user_species"] = candidate.user_species
    best = candidate.best_in_group()
    if best is None:
        return NewTask(data)
    return NewTask(data, choice=best[0], score=best[1], model_version=candidate.model_version or "unknown")


def queue_day(
    day: str,
    store,
    client: ReviewClient,
    taxonomy: Taxonomy,
    *,
    rules: SelectionRules | None = None,
    region: str | None = None,
) -> QueueResult:
    """Select the day's photos worth a review and create their Label Studio tasks (idempotent per photo).

    `store` is an `ObjectStore` (its lake bucket holds the log, the photos and the queue state).
    """
    client.check()
    lake_bucket = store.lake_bucket
    predictions, feedback = read_day(store, lake_bucket, day)
    result = QueueResult(day=paths.check_day(day), predictions=0 if predictions is None else predictions.num_rows)

    def is_queued(candidate: Candidate) -> bool:
        if candidate.group not in taxonomy.by_group:
            return False  # counted below, never queued
        return store.exists(lake_bucket, state.queued_key(candidate.group, candidate.sha256))

    candidates = select_for_review(day, predictions, feedback, rules=rules, is_queued=is_queued)
    by_group: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        if candidate.group not in taxonomy.by_group:
            result.unknown_groups[candidate.group] += 1
        elif _copy_photo(store, lake_bucket, candidate):
            by_group.setdefault(candidate.group, []).append(candidate)
        else:
            result.missing_photos += 1
    result.candidates = sum(len(c) for c in by_group.values())
    for group, chosen in sorted(by_group.items()):
        result.tasks += _queue_group(group, chosen, store, client, taxonomy, lake_bucket, region)
    return result


def _queue_group(
    group: str,
    chosen: list[Candidate],
    store,
    client: ReviewClient,
    taxonomy: Taxonomy,
    lake_bucket: str,
    region: str | None,
) -> list[QueuedTask]:
    project_id = client.ensure_project(group, taxonomy.species_in(group))
    client.ensure_storage(project_id, lake_bucket, state.REVIEW_PHOTOS_PREFIX, region)
    task_ids = client.create_tasks(project_id, [new_task(c, lake_bucket) for c in chosen])
    now = datetime.now(UTC)
    rows, queued = [], []
    for candidate, task_id in zip(chosen, task_ids, strict=True):
        row = {
            "sha256": candidate.sha256,
            "group": group,
            "project_id": project_id,
            "task_id": task_id,
            "reason": candidate.reason,
            "reasons": list(candidate.reasons),
            "request_id": candidate.request_id,
            "env": candidate.env,
            "day": candidate.day,
            "answer": candidate.answer,
            "probability": candidate.probability,
            "model_version": candidate.model_version,
            "queued_at": now,
        }
        store.write(lake_bucket, state.queued_key(group, candidate.sha256), canonical_json(row))
        rows.append(row)
        url = client.task_url(project_id, task_id)
        queued.append(QueuedTask(group, candidate.sha256, candidate.reason, project_id, task_id, url))
    data, digest = state.parquet_bytes(rows, TASKS_SCHEMA)
    store.write(lake_bucket, state.tasks_batch_key(group, chosen[0].day, digest, now), data)
    return queued
