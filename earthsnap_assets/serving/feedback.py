"""`POST /feedback`: what an app user says about an answer, checked before it is recorded.

A species is accepted only if the taxonomy knows it: the lake's current taxonomy (`paths.TAXONOMY_HEAD`),
read at startup and refreshed in the background, or, while the lake cannot be read, the species of the
deployed models. With neither, feedback is refused (503): a label nobody can check would poison the
review queue and the next training set.

The verdict (confirmed | corrected) is derived when this replica answered the request (a bounded cache of
recent answers); a replica that did not answer it cannot know what was answered, so the caller must say.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.storage import Blobs, read_json
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.monitoring.records import VERDICTS

log = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"[0-9a-f]{32}")  # fullmatch: `$` would let a trailing newline through
_UNANSWERED = object()


class FeedbackError(Exception):
    """A feedback the endpoint refuses: HTTP status + a message (+ extra JSON fields) for the caller."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@dataclass(frozen=True)
class Feedback:
    request_id: str
    species: str
    verdict: str | None


def parse_feedback(body: bytes) -> Feedback:
    """JSON body -> Feedback; malformed JSON is a 400, a wrong or missing field a 422 naming it."""
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeedbackError(400, f"body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise FeedbackError(422, 'body must be a JSON object {"request_id": ..., "species": ..., "verdict": ...}')
    missing = [name for name in ("request_id", "species") if name not in value]
    if missing:
        raise FeedbackError(422, f"missing fields: {missing}")
    request_id, species, verdict = value["request_id"], value["species"], value.get("verdict")
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        message = f"request_id must be the 32 lowercase hex digits that /predict returned, got {request_id!r}"
        raise FeedbackError(422, message)
    if not isinstance(species, str) or not species:
        raise FeedbackError(422, f"species must be a non-empty string, got {species!r}")
    if verdict is not None and verdict not in VERDICTS:
        raise FeedbackError(422, f"verdict must be one of {list(VERDICTS)} (or absent), got {verdict!r}")
    unknown = sorted(set(value) - {"request_id", "species", "verdict"})
    if unknown:
        raise FeedbackError(422, f"unknown fields: {unknown}")
    return Feedback(request_id, species, verdict)


class RecentAnswers:
    """The last `capacity` request ids this replica answered -> the species answered (None: group level).

    Bounded (oldest forgotten first), so memory does not follow traffic; touched on the event loop and by
    nothing else, but locked anyway so a handler moved to a thread stays correct.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._answers: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, request_id: str, species: str | None) -> None:
        if self.capacity < 1:
            return
        with self._lock:
            self._answers[request_id] = species
            if len(self._answers) > self.capacity:
                self._answers.popitem(last=False)

    def get(self, request_id: str) -> object:
        """The species answered (maybe None), or `_UNANSWERED` when this replica does not know the request."""
        with self._lock:
            return self._answers.get(request_id, _UNANSWERED)

    def __len__(self) -> int:
        return len(self._answers)


def decide_verdict(feedback: Feedback, answered: object) -> str:
    """confirmed if the user's species is the one answered, corrected otherwise (a group-level answer named no
    species, so any species is a correction); an explicit verdict must agree."""
    if answered is _UNANSWERED:
        if feedback.verdict is None:
            raise FeedbackError(
                422, "this replica did not answer this request (or forgot it): say verdict confirmed or corrected"
            )
        return feedback.verdict
    derived = "confirmed" if feedback.species == answered else "corrected"
    if feedback.verdict is not None and feedback.verdict != derived:
        what = f"species {answered!r}" if answered is not None else "the group level, no species"
        raise FeedbackError(422, f"verdict {feedback.verdict!r} contradicts the answer ({what}): it is {derived!r}")
    return derived


def read_lake_taxonomy(lake: Blobs, bucket: str) -> Taxonomy | None:
    """The lake's current taxonomy (head -> fingerprinted file), None when none was published yet."""
    head = read_json(lake, bucket, paths.TAXONOMY_HEAD)
    if head is None:
        return None
    return Taxonomy.from_json(json.loads(lake.read(bucket, head["key"])))


class TaxonomySource:
    """species -> group for validation: the lake's taxonomy, refreshed every `refresh_s` in the background.

    A failed refresh keeps the last good taxonomy; `species_to_group()` falls back to `fallback()` (the
    deployed models' species) only when the lake's was never read.
    """

    def __init__(
        self,
        lake: Blobs,
        bucket: str,
        refresh_s: float,
        fallback: Callable[[], Mapping[str, str] | None] = lambda: None,
    ) -> None:
        self.lake, self.bucket, self.refresh_s, self.fallback = lake, bucket, refresh_s, fallback
        self._taxonomy: Taxonomy | None = None
        self.last_error: str | None = None
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        try:
            taxonomy = read_lake_taxonomy(self.lake, self.bucket)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("could not read the lake's taxonomy: %s", self.last_error)
            return False
        if taxonomy is None:
            self.last_error = f"no taxonomy published at {paths.TAXONOMY_HEAD}"
            return False
        self._taxonomy, self.last_error = taxonomy, None
        self.refreshes += 1
        return True

    def species_to_group(self) -> tuple[Mapping[str, str] | None, str]:
        """(species -> group, where it comes from: "lake" | "deployed models" | "none")."""
        if self._taxonomy is not None:
            return self._taxonomy.species_to_group, "lake"
        fallback = self.fallback()
        return (fallback, "deployed models") if fallback else (None, "none")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="taxonomy-refresh", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.refresh_s)

    def as_dict(self) -> dict[str, Any]:
        _, source = self.species_to_group()
        return {"source": source, "refreshes": self.refreshes, "last_error": self.last_error}


def check_species(species: str, known: Mapping[str, str]) -> str:
    """The species' group; 422 naming the closest known names when the taxonomy does not have it."""
    group = known.get(species)
    if group is None:
        close = difflib.get_close_matches(species, list(known), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise FeedbackError(422, f"species {species!r} is not in the taxonomy{hint}", suggestions=close)
    return group
