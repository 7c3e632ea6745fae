"""Where raw-bucket change events come from: SeaweedFS's filer locally, an SQS queue on AWS."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from earthsnap_assets.lake.events import EventSource, event_source_from_url
from earthsnap_assets.settings import Settings


class RawEvents(dg.ConfigurableResource):
    """Event source of the raw bucket; unset `url` = EARTHSNAP_RAW_EVENTS or the local stack's filer."""

    url: str | None = Field(default=None, description="filer://host:port or an SQS queue URL")
    max_events: int = Field(10_000, description="events drained per sensor tick at most (bounded work per tick)")
    timeout_s: float = Field(20.0, description="how long one drain may take")

    def source(self, bucket: str) -> EventSource:
        return event_source_from_url(self.url or Settings.from_env().raw_events_url, bucket, "")
