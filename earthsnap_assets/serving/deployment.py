"""Which bundle answers now: a poller follows the alias and swaps in a fully built bundle when it moves.

The swap is one reference assignment (atomic in Python): a request reads `current` once and keeps that
bundle to the end, so requests in flight during a swap finish on the old bundle and none fail. A bundle
that cannot be built leaves the old one serving; the same versions are retried after `retry_failed_s`.
Before anything is loaded, every version new to this endpoint must carry the tags of a release at the alias
(`registry/release.py`): an alias moved by hand to an unreleased version is refused, the last good bundle keeps
answering and `/ready` says why, until the alias points at a released version again.
Children are held by one size-bounded cache for all bundles (keyed by name and version) and loaded when
first routed to, on a small loader pool, so a photo waiting for a cold child never holds up the others;
before a swap, the most requested groups' children of the new bundle are loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from earthsnap_assets.ml.model_cache import ModelCache
from earthsnap_assets.registry import names
from earthsnap_assets.registry.client import RegistryVerbs
from earthsnap_assets.serving.config import ServeConfig, alias_for
from earthsnap_assets.serving.models import ChildKey, LoadedModels, RoutingStats, load, load_network
from earthsnap_assets.serving.resolve import NotDeployable, NotReleased, RegistryReader

log = logging.getLogger(__name__)


class Deployment:
    """The `LoadedModels` of one environment's alias, kept current by a background poller."""

    def __init__(self, env: str, registry: RegistryVerbs, config: ServeConfig) -> None:
        self.env = env
        self.alias = alias_for(env)
        self.registry = registry
        self.config = config
        self.reader = RegistryReader(registry, config)
        self.children: ModelCache[ChildKey] = ModelCache(
            self._load_child, max_models=config.cache_max_children, max_bytes=config.cache_max_bytes
        )
        self.routing = RoutingStats()
        self.loader = ThreadPoolExecutor(2, thread_name_prefix=f"earthsnap-children-{env}")  # cold children
        self.problem: str | None = "models not loaded yet"
        self.reloads = 0
        self._current: LoadedModels | None = None
        self._failed: tuple[Mapping[str, str], float, bool] | None = None  # versions, when, refused release
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
        self.loader.shutdown(wait=False, cancel_futures=True)

    def refresh(self) -> bool:
        """One poll: build and swap in the alias's versions if they differ from the current ones."""
        versions = self.reader.versions(self.alias)
        if versions is None:
            self._report(f"{self.config.parent_name} has no alias {self.alias!r}")
            return False
        current = self._current
        if current is not None and dict(current.versions) == versions:
            self.problem = None  # the registry answered and the alias is what we serve: any outage is over
            return False
        if self._recently_failed(versions):
            return False
        try:
            self.reader.verify(self.alias, versions, trusted=current.versions if current is not None else {})
            resolved = self.reader.resolve(versions)
            bundle = load(
                self.registry,
                resolved,
                self.env,
                self.alias,
                cache=self.children,
                config=self.config,
                stats=self.routing,
                loader=self.loader,
                previous=current,
            )
        except Exception as exc:
            self._failed = (versions, time.monotonic(), isinstance(exc, NotReleased))
            raise
        self._preload(bundle)
        self._current = bundle
        self._failed, self.problem = None, None
        self.reloads += 1
        log.info("%s now serves %s (%d children loaded on demand)", self.env, _short(versions), len(bundle.children))
        return True

    def _preload(self, bundle: LoadedModels) -> None:
        """Load the configured and the most requested groups' children before the bundle answers."""
        wanted = [*self.config.preload_groups, *self.routing.most_requested(self.config.preload_most_requested)]
        groups = [g for g in dict.fromkeys(wanted) if g in bundle.children]
        self.children.preload(bundle.child_key(g) for g in groups)

    def _load_child(self, key: ChildKey) -> object:
        name, version = key
        image_size = int(self.reader.tags(name, version).get(names.IMAGE_SIZE, 0)) or self._image_size()
        return load_network(self.registry, name, version, image_size)

    def _image_size(self) -> int:
        current = self._current
        if current is None:
            raise NotDeployable("a child was requested before any bundle was loaded")
        return current.image_size

    def _recently_failed(self, versions: Mapping[str, str]) -> bool:
        """These versions failed within `retry_failed_s` (a refused release: `recheck_refused_s`): not yet again."""
        if self._failed is None or self._failed[0] != dict(versions):
            return False
        wait = self.config.recheck_refused_s if self._failed[2] else self.config.retry_failed_s
        return time.monotonic() - self._failed[1] < wait

    def _report(self, problem: str, exc_info: bool = False) -> None:
        """Log a problem once, not every poll; /ready and /models show it."""
        if problem != self.problem:
            log.warning("%s: %s", self.env, problem, exc_info=exc_info)
        self.problem = problem

    def _still_serving(self) -> str:
        current = self._current
        if current is None:
            return "nothing is served"
        return f"still serving the last good bundle ({_short(current.versions, show=2)})"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except NotReleased as exc:
                self._report(f"{exc}; {self._still_serving()}")
            except NotDeployable as exc:
                self._report(f"alias {self.alias!r} is not deployable: {exc}; {self._still_serving()}")
            except Exception as exc:
                self._report(f"polling or loading models failed: {exc}; {self._still_serving()}", exc_info=True)
            self._stop.wait(self.config.poll_interval_s)


def _short(versions: Mapping[str, str], show: int = 5) -> str:
    """A log-sized view of hundreds of versions."""
    items = [f"{name} v{version}" for name, version in versions.items()]
    return ", ".join(items[:show]) + (f" and {len(items) - show} more" if len(items) > show else "")
