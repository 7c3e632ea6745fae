"""Label Studio through its official SDK: one project per species group, tasks with the model's guess.

A project `earthsnap-<group>` shows the photo, the model's answer and one choice per species of the group,
plus UNSURE and NOT_THIS_GROUP. Each task carries the model's best in-group species as a pre-annotation
(a Label Studio *prediction*: score and model version), so a reviewer confirms with one click or picks
another species. Photos are `s3://<lake>/review/photos/<sha256>` URIs that Label Studio resolves through
the project's S3 source storage (see `stack/label_studio.py` for why the server holds the S3 settings).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from xml.sax.saxutils import quoteattr

from earthsnap_assets.lake.paths import check_group

UNSURE = "unsure"
NOT_THIS_GROUP = "not-this-group"
FROM_NAME = "species"  # the Choices control
TO_NAME = "image"  # the Image object (and the task data key holding the photo URI)
TITLE_PREFIX = "earthsnap-"

logger = logging.getLogger(__name__)


class ReviewUnavailable(RuntimeError):
    """Label Studio could not be reached or refused the platform's token."""


def project_title(group: str) -> str:
    return f"{TITLE_PREFIX}{check_group(group)}"


def label_config(species: Sequence[str]) -> str:
    """The labeling view: photo, the model's answer, one radio choice per species, then unsure / not this group."""
    if not species:
        raise ValueError("a review project needs at least one species")
    choices = "\n".join(f"    <Choice value={quoteattr(s)}/>" for s in [*species, UNSURE, NOT_THIS_GROUP])
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true"/>\n'
        '  <Header value="Model: $model_answer"/>\n'
        '  <Text name="model_top_k" value="$model_top_k"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single-radio" required="true" showInline="false">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>"
    )


@dataclass(frozen=True)
class NewTask:
    """A task to create: its data (shown and kept) and the model's pre-annotation (None: no in-group guess)."""

    data: dict[str, Any]
    choice: str | None = None
    score: float | None = None
    model_version: str = ""

    def payload(self) -> dict[str, Any]:
        task: dict[str, Any] = {"data": self.data}
        if self.choice is not None:
            result = {
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "choices",
                "value": {"choices": [self.choice]},
                "score": self.score,
            }
            task["predictions"] = [{"model_version": self.model_version, "score": self.score, "result": [result]}]
        return task


@dataclass(frozen=True)
class Annotation:
    """One submitted (or skipped) annotation of a review task."""

    id: int
    task_id: int
    project_id: int
    choice: str | None  # the species (or UNSURE / NOT_THIS_GROUP) picked; None when skipped or empty
    cancelled: bool  # the reviewer pressed Skip
    annotator: str
    created_at: datetime
    task_data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AnnotatedPage:
    annotations: list[Annotation]
    newest_update: datetime | None  # the newest task `updated_at` seen (the next cursor), None if no task


def _parse_time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _choice(result: Sequence[dict[str, Any]]) -> str | None:
    for item in result or []:
        if item.get("from_name") == FROM_NAME and item.get("type") == "choices":
            picked = (item.get("value") or {}).get("choices") or []
            if picked:
                return str(picked[0])
    return None


class ReviewClient:
    """A thin wrapper over `label_studio_sdk.LabelStudio` with the few verbs the review loop needs."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self._ls = LabelStudio(base_url=self.url, api_key=token, timeout=timeout)
        self._users: dict[int, str] = {}

    @property
    def sdk(self) -> Any:
        """The SDK client itself, for what this wrapper does not cover (tests annotate through it)."""
        return self._ls

    def check(self) -> str:
        """The token's user (email); ReviewUnavailable naming the URL when Label Studio is down or refuses it."""
        try:
            return self._ls.users.whoami().email or ""
        except Exception as exc:
            raise ReviewUnavailable(
                f"Label Studio at {self.url} is not reachable or refused the token "
                f"(EARTHSNAP_REVIEW_URL / EARTHSNAP_REVIEW_TOKEN; locally `earthsnap stack up --review`): {exc}"
            ) from exc

    # --- projects and storage ---------------------------------------------------------------------------

    def find_project(self, group: str) -> int | None:
        title = project_title(group)
        for project in self._ls.projects.list(title=title):  # `title` filters by substring: match exactly
            if project.title == title:
                return int(project.id)
        return None

    def ensure_project(self, group: str, species: Sequence[str]) -> int:
        """The group's project id, created with its labeling view if missing; a changed species list updates it."""
        config = label_config(species)
        found = self.find_project(group)
        if found is None:
            project = self._ls.projects.create(
                title=project_title(group),
                label_config=config,
                description=f"earthsnap review queue of species group {group}: pick the species, or unsure.",
                show_skip_button=True,
                maximum_annotations=1,
            )
            return int(project.id)
        if self._ls.projects.get(found).label_config != config:
            try:
                self._ls.projects.update(found, label_config=config)
            except Exception as exc:  # e.g. a species left the group but annotations still use it
                logger.warning(f"{project_title(group)}: labeling view not updated to {len(species)} species: {exc}")
        return found

    def ensure_storage(self, project_id: int, bucket: str, prefix: str, region: str | None = None) -> int:
        """An S3 source storage that lets the project show `s3://bucket/prefix...` photos (proxied, never synced).

        Label Studio checks that `prefix` holds at least one object when the storage is created.
        """
        for storage in self._ls.import_storage.s3.list(project=project_id):
            if storage.bucket == bucket and (storage.prefix or "") == prefix:
                return int(storage.id)
        storage = self._ls.import_storage.s3.create(
            project=project_id,
            title=f"lake {bucket}/{prefix}",
            bucket=bucket,
            prefix=prefix,
            region_name=region,
            presign=False,
            use_blob_urls=True,
            synchronizable=False,
        )
        return int(storage.id)

    # --- tasks ------------------------------------------------------------------------------------------

    def create_tasks(self, project_id: int, tasks: Sequence[NewTask]) -> list[int]:
        """Create tasks with their pre-annotations in one import; their ids, in order."""
        if not tasks:
            return []
        response = self._ls.projects.import_tasks(
            project_id, request=[t.payload() for t in tasks], return_task_ids=True
        )
        ids = getattr(response, "task_ids", None)
        if ids is None or len(ids) != len(tasks):
            raise RuntimeError(f"Label Studio imported {ids!r} for {len(tasks)} tasks (expected one id per task)")
        # An import pins the project to the first model version it saw, and the labeling view then hides every
        # other version's predictions: tasks queued before a new deployment would lose their pre-annotation.
        if self._ls.projects.get(project_id).model_version:
            self._ls.projects.update(project_id, model_version="")
        return [int(i) for i in ids]

    def task_url(self, project_id: int, task_id: int) -> str:
        """Where a person opens the task in Label Studio's UI."""
        return f"{self.url}/projects/{project_id}/data?task={task_id}"

    def project_url(self, project_id: int) -> str:
        return f"{self.url}/projects/{project_id}/data"

    def predictions(self, task_id: int) -> list[Any]:
        return list(self._ls.predictions.list(task=task_id))

    def annotate(self, task_id: int, choice: str | None, *, skip: bool = False) -> int:
        """Submit an annotation as the token's user would in the UI (tests, scripts); its id."""
        result = (
            []
            if choice is None
            else [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [choice]}}]
        )
        return int(self._ls.annotations.create(id=task_id, result=result, was_cancelled=skip).id)

    def _annotator(self, user_id: Any) -> str:
        if user_id is None:
            return ""
        uid = int(user_id["id"] if isinstance(user_id, dict) else user_id)
        if uid not in self._users:
            try:
                self._users[uid] = self._ls.users.get(uid).email or str(uid)
            except Exception:
                self._users[uid] = str(uid)
        return self._users[uid]

    def annotated_since(self, project_id: int, after: datetime | None, overlap: timedelta) -> AnnotatedPage:
        """Annotations of tasks updated after `after - overlap` (all annotated tasks when `after` is None)."""
        query: dict[str, Any] = {"ordering": ["tasks:updated_at"]}
        if after is not None:
            since = (after - overlap).isoformat().replace("+00:00", "Z")
            query["filters"] = {
                "conjunction": "and",
                "items": [
                    {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": since}
                ],
            }
        found: list[Annotation] = []
        newest: datetime | None = None
        for task in self._iter_tasks(project_id, query):
            updated = _parse_time(task.updated_at)
            newest = updated if newest is None or updated > newest else newest
            for item in task.annotations or []:
                item = item if isinstance(item, dict) else item.dict()
                found.append(
                    Annotation(
                        id=int(item["id"]),
                        task_id=int(task.id),
                        project_id=project_id,
                        choice=_choice(item.get("result") or []),
                        cancelled=bool(item.get("was_cancelled")),
                        annotator=self._annotator(item.get("completed_by")),
                        created_at=_parse_time(item["created_at"]),
                        task_data=dict(task.data or {}),
                    )
                )
        return AnnotatedPage(sorted(found, key=lambda a: a.id), newest)

    def _iter_tasks(self, project_id: int, query: dict[str, Any]) -> Iterator[Any]:
        yield from self._ls.tasks.list(project=project_id, fields="all", only_annotated=True, query=json.dumps(query))

    def counts(self, project_id: int) -> dict[str, int]:
        """Tasks in the project, finished (labeled) and open."""
        project = self._ls.projects.get(project_id)
        total = int(project.task_number or 0)
        finished = int(project.finished_task_number or 0)
        return {"tasks": total, "finished": finished, "open": total - finished}

    def review_projects(self) -> dict[str, int]:
        """Every earthsnap review project: group -> project id."""
        return {
            p.title.removeprefix(TITLE_PREFIX): int(p.id)
            for p in self._ls.projects.list()
            if p.title and p.title.startswith(TITLE_PREFIX)
        }
