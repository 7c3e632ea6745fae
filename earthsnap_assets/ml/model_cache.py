"""A size-bounded, thread-safe cache of loaded networks: children load when first needed, the least recent go.

With hundreds of groups a process cannot hold every child, and need not: traffic routes most photos to
a few groups. The cache holds at most `max_models` networks and/or `max_bytes` of their weights, evicting
the least recently used. A key that is not loaded yet is loaded once, however many threads ask for it at
the same time: the first one loads, the others wait for its result (a failed load is not cached, so the
next request tries again). Keys are immutable identities (registered name, version), so a cache shared by
an old and a new deployment never hands one of them the other's weights.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

import torch

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of a network's parameters and buffers: what it costs to keep it loaded."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class CacheStats:
    """Hits, misses and what is resident: `/stats` shows them, benchmarks read them."""

    hits: int = 0
    misses: int = 0  # requests that found the key absent (waiting on another thread's load counts here too)
    loads: int = 0  # loads started: one per miss that was not already loading
    load_failures: int = 0
    evictions: int = 0
    resident: int = 0
    resident_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ModelCache(Generic[K]):
    """`get(key)` returns `loader(key)`'s network, loading it at most once at a time, within the size bounds."""

    def __init__(
        self,
        loader: Callable[[K], torch.nn.Module],
        max_models: int | None = 32,
        max_bytes: int | None = None,
        size_of: Callable[[torch.nn.Module], int] = weight_bytes,
    ) -> None:
        if max_models is not None and max_models < 1:
            raise ValueError("max_models must be at least 1 (or None: no count bound)")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive (or None: no byte bound)")
        self.loader = loader
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.size_of = size_of
        self.stats = CacheStats()
        self._entries: OrderedDict[K, tuple[torch.nn.Module, int]] = OrderedDict()  # oldest use first
        self._loading: dict[K, Future] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: K) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[K]:
        """Resident keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, key: K) -> torch.nn.Module:
        """The network for `key`: from memory, from a load another thread started, or loaded now."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return entry[0]
            self.stats.misses += 1
            pending = self._loading.get(key)
            if pending is None:
                pending = self._loading[key] = Future()
                self.stats.loads += 1
                mine = True
            else:
                mine = False
        if not mine:
            return pending.result()
        try:
            model = self.loader(key)
            size = self.size_of(model)
        except BaseException as exc:
            with self._lock:
                self.stats.load_failures += 1
                del self._loading[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            self._entries[key] = (model, size)
            del self._loading[key]
            self._evict()
        pending.set_result(model)
        return model

    def preload(self, keys: Iterable[K]) -> None:
        """Load `keys`, most important first, evicting what is least recently used (a previous deployment's
        children, typically) but never one of these keys for a later one: it stops at the bounds."""
        loaded: list[K] = []
        for key in keys:
            if self.max_models is not None and len(loaded) >= self.max_models:
                return
            try:
                self.get(key)
            except Exception:
                log.warning("preloading %s failed", key, exc_info=True)
                continue
            loaded.append(key)
            if any(k not in self for k in loaded):  # the byte bound pushed out an earlier, more important key
                return

    def _evict(self) -> None:
        """Drop least recently used entries until both bounds hold; the newest entry always stays."""
        while len(self._entries) > 1 and self._over_bounds():
            key, _ = self._entries.popitem(last=False)
            self.stats.evictions += 1
            log.info("evicted %s from the model cache", key)
        self.stats.resident = len(self._entries)
        self.stats.resident_bytes = sum(size for _, size in self._entries.values())

    def _over_bounds(self) -> bool:
        if self.max_models is not None and len(self._entries) > self.max_models:
            return True
        total = sum(size for _, size in self._entries.values())
        return self.max_bytes is not None and total > self.max_bytes
