"""PLACEHOLDER until the event-source module lands: only the event type."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RawEvent:
    """One change to one object of the raw bucket, as an event source reports it."""

    key: str
    op: str
    etag: str | None
    size: int | None
    ts_ns: int
    source: str


class EventSource:  # placeholder
    pass


def event_source_from_url(url: str, bucket: str, prefix: str) -> EventSource:  # placeholder
    raise NotImplementedError
