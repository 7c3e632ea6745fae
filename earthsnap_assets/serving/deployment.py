"""Which bundle answers now: a poller follows the alias and swaps in a fully loaded bundle when it moves.

The swap is one reference assignment (atomic in Python): a request reads `current` once and keeps that
bundle to the end, so requests in flight during a swap finish on the old bundle and none fail. A bundle
that cannot be loaded leaves the old one serving; the same versions are retried after `retry_failed_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.serving.config import ServeConfig, alias_for
from earthsnap_assets.serving.models import LoadedModels, NotDeployable, load, resolve

log = logging.getLogger(__name__)


class Deployment:
    """The `LoadedModels` of one environment's alias, kept current by a background poller."""

    def __init__(self, env: str, registry: MlflowRegistry, config: ServeConfig) -> None:
        self.env = env
        self.alias = alias_for(env)
        self.registry = registry
        self.config = config
        self.problem: str | None = "models not loaded yet"
        self.reloads = 0
        self._current: LoadedModels | None = None
        self._failed: tuple[Mapping[str, str], float] | None = None
        self._client: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> LoadedModels | None:
        """The bundle to answer with; read it once per request."""
        return self._current

    def start(self) -> None:
        """Poll in the background from now on; the first poll loads the initial bundle."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"earthsnap-models-{self.env}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def refresh(self) -> bool:
        """One poll: load and swap in the alias's versions if they differ from the current ones."""
        if self._client is None:
            self._client = self.registry.client
        resolved = resolve(self._client, self.config, self.alias)
        if resolved is None:
            self._report(f"{self.config.parent_name} has no alias {self.alias!r}")
            return False
        current = self._current
        if current is not None and dict(current.versions) == dict(resolved.versions):
            return False
        if self._recently_failed(resolved.versions):
            return False
        try:
            bundle = load(self.registry, resolved, self.env, self.alias)
        except Exception:
            self._failed = (dict(resolved.versions), time.monotonic())
            raise
        self._current = bundle
        self._failed, self.problem = None, None
        self.reloads += 1
        log.info("%s now serves %s", self.env, dict(bundle.versions))
        return True

    def _recently_failed(self, versions: Mapping[str, str]) -> bool:
        """These versions failed to load within `retry_failed_s`: do not download them again yet."""
        if self._failed is None or self._failed[0] != dict(versions):
            return False
        return time.monotonic() - self._failed[1] < self.config.retry_failed_s

    def _report(self, problem: str, exc_info: bool = False) -> None:
        """Log a problem once, not every poll; /ready and /models show it."""
        if problem != self.problem:
            log.warning("%s: %s", self.env, problem, exc_info=exc_info)
        self.problem = problem

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except NotDeployable as exc:
                self._report(f"alias {self.alias!r} is not deployable: {exc}")
            except Exception as exc:
                self._report(f"polling or loading models failed: {exc}", exc_info=True)
            self._stop.wait(self.config.poll_interval_s)
