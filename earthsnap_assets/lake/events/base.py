"""What every raw-bucket event source delivers: events, a poll's outcome, and the source's contract."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

PUT = "put"
DELETE = "delete"


class EventSourceError(RuntimeError):
    """An event source could not be read. The poll failed: keep the cursor and retry on the next tick."""


@dataclass(frozen=True)
class RawEvent:
    """One change to one object of the raw bucket, as an event source reports it."""

    key: str  # key inside the bucket, e.g. "images/oak/1.jpg" (URL-decoded)
    op: str  # "put" | "delete"
    etag: str | None  # hex ETag without quotes when the source knows it (multipart: "<hex>-<parts>")
    size: int | None
    ts_ns: int  # event time in ns (source clock); orders events of one key
    source: str  # "filer" | "sqs" | "reconciliation"


def _no_ack() -> None:
    """Nothing to acknowledge: the cursor is the whole state of a filer poll."""


@dataclass(frozen=True)
class Poll:
    """What one poll found, where to continue, and how to release it once recorded."""

    events: list[RawEvent]  # in source order, deduplicated
    cursor: str | None  # opaque; pass back next time (None for SQS)
    exhausted: bool  # True when the source had no more events (caught up), False when max_events cut it
    ack: Callable[[], None] = field(default=_no_ack)  # call after the events are durably recorded


class EventSource(Protocol):
    def poll(self, cursor: str | None, *, max_events: int, timeout_s: float) -> Poll: ...


def _check_limits(max_events: int, timeout_s: float) -> None:
    if max_events < 1:
        raise ValueError(f"max_events must be at least 1, got {max_events}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")


def _dedupe(events: Iterable[RawEvent]) -> list[RawEvent]:
    """Drop repeats of an identical event (at-least-once delivery), keeping the first occurrence's place."""
    seen: set[RawEvent] = set()
    out = []
    for event in events:
        if event not in seen:
            seen.add(event)
            out.append(event)
    return out


def _shorten(text: str, limit: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]
