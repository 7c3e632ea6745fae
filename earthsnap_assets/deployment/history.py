"""Deployment history: who approved which version, what ran in staging and production, and when.

MLflow keeps only the current alias targets, so every approval, alias move and stage test is also
appended to an event log in the lake (`deployments/<model>/events.jsonl`). `history` reads it back;
`rollback` uses it to find the version production pointed to before.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from earthsnap_assets.lake.storage import Blobs


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def actor() -> str:
    """Who acts: EARTHSNAP_USER, else the login name (recorded on approvals and alias moves)."""
    try:
        return os.environ.get("EARTHSNAP_USER") or getpass.getuser()
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class Event:
    model: str
    version: str
    action: str  # approved | rejected | staging | stage_test | production | rollback | deploy_failed
    at: str = field(default_factory=now)
    by: str = field(default_factory=actor)
    detail: dict = field(default_factory=dict)


def _key(model: str) -> str:
    return f"deployments/{model}/events.jsonl"


def record(blobs: Blobs, bucket: str, event: Event) -> None:
    """Append an event (read + rewrite: one writer per model at a time, the deploy job or a person)."""
    key = _key(event.model)
    existing = blobs.read(bucket, key) if blobs.exists(bucket, key) else b""
    blobs.write(bucket, key, existing + json.dumps(asdict(event), sort_keys=True).encode() + b"\n")


def events(blobs: Blobs, bucket: str, model: str) -> list[Event]:
    key = _key(model)
    if not blobs.exists(bucket, key):
        return []
    return [Event(**json.loads(line)) for line in blobs.read(bucket, key).splitlines() if line.strip()]


def production_before(history: list[Event], current: str | None) -> str | None:
    """The version production served before `current`: replay promotions as a stack, rollbacks pop it."""
    stack: list[str] = []
    for event in history:
        if event.action == "production":
            stack.append(event.version)
        elif event.action == "rollback":
            if stack:
                stack.pop()  # the version rolled back from leaves the stack
            if not stack or stack[-1] != event.version:
                stack.append(event.version)
    while stack and stack[-1] == current:
        stack.pop()
    return stack[-1] if stack else None


def history_table(history: list[Event]) -> list[tuple[str, str, str, str, str]]:
    """Rows (when, version, action, by, detail) for `earthsnap history`."""
    rows = []
    for event in history:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(event.detail.items()))
        rows.append((event.at, event.version, event.action, event.by, detail))
    return rows
