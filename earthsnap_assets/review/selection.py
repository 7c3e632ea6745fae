"""Which photos of one production day are worth a person's time (pure: tables in, candidates out).

Reasons, most telling first (a photo with several keeps them all, and is ranked by the first):
  correction     an app user said the answer was wrong and gave another species
  disagreement   staging and production answered the same photo (sha256) with different species
  back-off       the answer backed off to the group: the child was unsure between its species
  low-confidence the answer's probability is under the threshold

Only rows whose photo was kept (`photo_key`) qualify; a photo is chosen once (by sha256), never again once
queued (`is_queued`), and at most `max_per_group` per group and day, least confident first within a reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from earthsnap_assets.registry.names import child_name, parent_name

CORRECTION = "correction"
DISAGREEMENT = "disagreement"
BACK_OFF = "back-off"
LOW_CONFIDENCE = "low-confidence"
REASONS = (CORRECTION, DISAGREEMENT, BACK_OFF, LOW_CONFIDENCE)  # priority order


@dataclass(frozen=True)
class SelectionRules:
    threshold: float = 0.5  # answers less probable than this are worth a look
    max_per_group: int = 50  # new tasks per group and day: what reviewers can finish, not what the log holds
    envs: tuple[str, ...] = ("production", "staging")  # whose row represents a photo seen in both (first wins)


@dataclass(frozen=True)
class Candidate:
    """A photo chosen for review, in the group whose project shows it."""

    sha256: str
    group: str
    reason: str  # the first of `reasons`
    reasons: tuple[str, ...]
    request_id: str
    env: str
    day: str
    photo_key: str
    answer: str  # the model's answer: a species, or the group when it backed off
    probability: float
    top_k: tuple[dict[str, Any], ...]  # as answered: species, group, probability
    model_version: str  # `<registered name>:<version>` that answered in this group ("" if unknown)
    user_species: str | None = None  # what the user said, for a correction
    detail: dict[str, Any] = field(default_factory=dict)

    def best_in_group(self) -> tuple[str, float] | None:
        """The model's most probable species of this group (the pre-annotation), if it ranked any."""
        inside = [e for e in self.top_k if e.get("group") == self.group and e.get("species")]
        if not inside:
            return None
        best = max(inside, key=lambda e: e.get("probability") or 0.0)
        return str(best["species"]), float(best.get("probability") or 0.0)


def _rows(table: pa.Table | None) -> list[dict[str, Any]]:
    return [] if table is None or table.num_rows == 0 else table.to_pylist()


def _model_version(row: dict[str, Any], group: str) -> str:
    versions = dict(row.get("model_versions") or [])
    for name in (child_name(group), parent_name()):
        if name in versions:
            return f"{name}:{versions[name]}"
    return ""


def select_for_review(
    day: str,
    predictions: pa.Table | None,
    feedback: pa.Table | None = None,
    *,
    rules: SelectionRules | None = None,
    is_queued: Callable[[Candidate], bool] = lambda candidate: False,
) -> list[Candidate]:
    """Candidates of one day (PREDICTION_SCHEMA and FEEDBACK_SCHEMA rows of every env), bounded per group."""
    rules = rules or SelectionRules()
    rows = [r for r in _rows(predictions) if r.get("photo_key") and r.get("image_sha256")]
    by_request = {r["request_id"]: r for r in rows}
    rank = {env: i for i, env in enumerate(rules.envs)}

    # one row per photo: the first env in `rules.envs`, then the earliest answer
    by_sha: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_sha[row["image_sha256"]].append(row)
    corrections: dict[str, dict[str, Any]] = {}
    for fb in _rows(feedback):
        row = by_request.get(fb.get("request_id"))
        if row is not None and fb.get("verdict") == "corrected" and fb.get("species") and fb.get("group"):
            corrections.setdefault(row["image_sha256"], fb)

    found: list[Candidate] = []
    for sha, seen in by_sha.items():
        seen.sort(key=lambda r: (rank.get(r.get("env"), len(rank)), r.get("ts") or 0))
        row = seen[0]
        reasons = []
        correction = corrections.get(sha)
        if correction is not None:
            reasons.append(CORRECTION)
        answers = {env: {r.get("species") or r.get("group") for r in seen if r.get("env") == env} for env in rank}
        if all(answers.values()) and len(set().union(*answers.values())) > 1:
            reasons.append(DISAGREEMENT)
        if row.get("level") == "group":
            reasons.append(BACK_OFF)
        probability = float(row.get("probability") or 0.0)
        if probability < rules.threshold:
            reasons.append(LOW_CONFIDENCE)
        if not reasons:
            continue
        group = correction["group"] if correction is not None else row["group"]
        found.append(
            Candidate(
                sha256=sha,
                group=group,
                reason=reasons[0],
                reasons=tuple(reasons),
                request_id=row["request_id"],
                env=row["env"],
                day=day,
                photo_key=row["photo_key"],
                answer=row.get("species") or row["group"],
                probability=probability,
                top_k=tuple(dict(e) for e in row.get("top_k") or []),
                model_version=_model_version(row, group),
                user_species=correction["species"] if correction is not None else None,
                detail={"answers": {env: sorted(a for a in v if a) for env, v in answers.items() if v}},
            )
        )
    found.sort(key=lambda c: (REASONS.index(c.reason), c.probability, c.sha256))
    return _bounded(found, rules.max_per_group, is_queued)


def _bounded(ranked: Iterable[Candidate], limit: int, is_queued: Callable[[Candidate], bool]) -> list[Candidate]:
    """At most `limit` per group in rank order, skipping photos already queued (checked only while needed)."""
    taken: dict[str, int] = defaultdict(int)
    chosen = []
    for candidate in ranked:
        if taken[candidate.group] >= limit or is_queued(candidate):
            continue
        taken[candidate.group] += 1
        chosen.append(candidate)
    return chosen
