"""The two serving endpoints of the stack (`earthsnap serve --env staging|production`) as services."""

from __future__ import annotations

import sys
import urllib.request
from dataclasses import dataclass

from earthsnap_assets.settings import Settings
from earthsnap_assets.stack.process import ManagedProcess, Port, find_executable


@dataclass(frozen=True)
class ServingService:
    """One environment's endpoint; healthy = the process answers /health (models may load later)."""

    env: str
    START_TIMEOUT: float = 90.0
    STOP_TIMEOUT: float = 10.0

    @property
    def NAME(self) -> str:
        return f"serve-{self.env}"

    def url(self, settings: Settings) -> str:
        return settings.endpoint_url(self.env)

    def ports(self, settings: Settings) -> list[Port]:
        port = settings.endpoint_port(self.env)
        return [Port(port, f"{self.env} endpoint", f"EARTHSNAP_{self.env.upper()}_PORT")]

    def launch(self, settings: Settings) -> ManagedProcess:
        exe = find_executable("earthsnap")
        prefix = [exe] if exe else [sys.executable, "-m", "earthsnap_assets.cli"]
        command = [*prefix, "serve", "--env", self.env, "--port", str(settings.endpoint_port(self.env))]
        proc = ManagedProcess(self.NAME, settings.home)
        proc.start(command, env={**settings.env, "PYTHONUNBUFFERED": "1"}, cwd=settings.home)
        return proc

    def healthy(self, settings: Settings) -> bool:
        try:
            port = settings.endpoint_port(self.env)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                return response.status == 200
        except Exception:
            return False

    def after_healthy(self, settings: Settings) -> None:
        """Nothing to do: the endpoint loads models when its alias exists."""

    def after_stop(self, settings: Settings) -> None:
        """Nothing to clean up."""


STAGING = ServingService("staging")
PRODUCTION = ServingService("production")
