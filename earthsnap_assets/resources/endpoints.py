"""The serving endpoints (staging, production) as a resource: where they are, what they serve, the token they need."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import dagster as dg
from pydantic import Field

from earthsnap_assets.serving.auth import CLIENT_TOKEN_ENV, bearer_headers, client_token
from earthsnap_assets.settings import Settings


class Endpoints(dg.ConfigurableResource):
    """Base URLs of the two serving environments; unset = EARTHSNAP_STAGING_URL / EARTHSNAP_PRODUCTION_URL.

    `token` is the bearer token sent to endpoints that require one (`serving/auth.py`); unset =
    EARTHSNAP_SERVE_TOKEN; neither: requests go without (endpoints with auth off).
    """

    staging_url: str | None = Field(default=None)
    production_url: str | None = Field(default=None)
    token: str | None = Field(default=None, description=f"bearer token; unset = {CLIENT_TOKEN_ENV}")

    def url(self, env: str) -> str:
        settings = Settings.from_env()
        configured = {"staging": self.staging_url, "production": self.production_url}
        if env not in configured:
            raise ValueError(f"unknown environment {env!r} (staging or production)")
        return (configured[env] or settings.endpoint_url(env)).rstrip("/")

    def bearer_token(self) -> str | None:
        """The token clients of the endpoints send (None: no Authorization header)."""
        return self.token or client_token()

    def served_versions(self, env: str) -> dict[str, str]:
        """{registered model: version} the endpoint answers with now ({} when it has nothing loaded).

        A refused token (401/403) raises at once: waiting would not make it valid.
        """
        request = urllib.request.Request(f"{self.url(env)}/models", headers=bearer_headers(self.bearer_token()))
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return {k: str(v) for k, v in json.loads(response.read()).get("versions", {}).items()}
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                given = "the configured token" if self.bearer_token() else f"no token ({CLIENT_TOKEN_ENV} unset)"
                raise PermissionError(f"{env} endpoint {self.url(env)} refused {given}: HTTP {error.code}") from error
            return {}
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    def wait_serving(self, env: str, model: str, version: str, timeout: float = 120.0) -> float:
        """Block until `env` answers with `model` at `version`; returns the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.served_versions(env).get(model) == str(version):
                return time.monotonic() - started
            time.sleep(0.5)
        seen = self.served_versions(env)
        raise TimeoutError(
            f"{env} endpoint {self.url(env)} did not serve {model} v{version} in {timeout:.0f} s: {seen}"
        )
