"""Label Studio (the review queue) as a Dagster resource: where it is and the token the platform uses."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from earthsnap_assets.review.client import ReviewClient
from earthsnap_assets.settings import Settings


class LabelStudio(dg.ConfigurableResource):
    """Unset fields come from the environment when a run starts (EARTHSNAP_REVIEW_URL, EARTHSNAP_REVIEW_TOKEN)."""

    url: str | None = Field(default=None, description="None = EARTHSNAP_REVIEW_URL or the local stack's port")
    token: str | None = Field(default=None, description="None = EARTHSNAP_REVIEW_TOKEN")
    timeout_s: float = Field(30.0, description="per request")

    def client(self) -> ReviewClient:
        settings = Settings.from_env()
        return ReviewClient(
            self.url or settings.review_url, self.token or settings.review_token, timeout=self.timeout_s
        )
