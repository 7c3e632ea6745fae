"""The child cache: bounded by count or bytes, least recently used out, one load per cold key under concurrency."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from earthsnap_assets.ml.model_cache import ModelCache, weight_bytes


class Loader:
    """Counts loads per key; each load takes `seconds` (a download) and gives a Linear of `width` outputs."""

    def __init__(self, seconds: float = 0.0, width: int = 4, fail: set[str] | None = None) -> None:
        self.seconds, self.width, self.fail = seconds, width, set(fail or ())
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, key: str) -> torch.nn.Module:
        with self.lock:
            self.calls.append(key)
        time.sleep(self.seconds)
        if key in self.fail:
            raise RuntimeError(f"cannot load {key}")
        return torch.nn.Linear(3, self.width)


def test_concurrent_first_requests_load_a_key_once():
    loader = Loader(seconds=0.3)
    cache = ModelCache(loader, max_models=4)
    start = threading.Barrier(8)

    def get(_: int) -> torch.nn.Module:
        start.wait()
        return cache.get("flowers@1")

    with ThreadPoolExecutor(8) as pool:
        models = list(pool.map(get, range(8)))
    assert loader.calls == ["flowers@1"]
    assert all(m is models[0] for m in models)
    assert (cache.stats.loads, cache.stats.misses + cache.stats.hits) == (1, 8)
    cache.get("flowers@1")
    assert cache.stats.hits >= 1 and loader.calls == ["flowers@1"]


def test_least_recently_used_goes_first_when_the_count_bound_is_reached():
    loader = Loader()
    cache = ModelCache(loader, max_models=2)
    cache.get("a"), cache.get("b"), cache.get("a"), cache.get("c")  # b is the least recently used
    assert cache.keys() == ["a", "c"] and cache.stats.evictions == 1
    assert (cache.stats.resident, cache.stats.resident_bytes) == (2, 2 * weight_bytes(torch.nn.Linear(3, 4)))
    cache.get("b")
    assert loader.calls == ["a", "b", "c", "b"]  # an evicted key loads again


def test_bytes_bound_holds_as_many_as_fit():
    one = weight_bytes(torch.nn.Linear(3, 4))  # 16 floats = 64 bytes
    cache = ModelCache(Loader(), max_models=None, max_bytes=3 * one)
    for key in "abcde":
        cache.get(key)
    assert cache.keys() == ["c", "d", "e"] and cache.stats.resident_bytes == 3 * one


def test_a_failed_load_is_not_cached_and_waiters_see_the_error():
    loader = Loader(seconds=0.2, fail={"broken"})
    cache = ModelCache(loader, max_models=2)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(cache.get, "broken") for _ in range(3)]
    for future in futures:
        with pytest.raises(RuntimeError, match="cannot load broken"):
            future.result()
    assert loader.calls == ["broken"] and cache.stats.load_failures == 1 and "broken" not in cache
    loader.fail.clear()
    assert isinstance(cache.get("broken"), torch.nn.Linear) and loader.calls == ["broken", "broken"]


def test_preload_replaces_old_entries_but_stops_at_the_bound():
    loader = Loader()
    cache = ModelCache(loader, max_models=2)
    cache.get("old-1"), cache.get("old-2")  # a full cache, as after a while of traffic
    cache.preload(["a", "b", "c"])
    assert loader.calls == ["old-1", "old-2", "a", "b"] and cache.keys() == ["a", "b"]
