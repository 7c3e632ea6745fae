"""Fetch in threads, decode in processes: keeps both cores busy while S3 reads overlap."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from typing import TypeVar

T = TypeVar("T")

# Below this many items a process pool costs more to start than it saves.
MIN_ITEMS_FOR_POOL = 16


def _windows(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def map_objects(
    keys: Sequence[str],
    fetch: Callable[[str], bytes],
    work: Callable[[bytes, str], T],
    *,
    workers: int = 2,
    threads: int = 8,
    window: int = 64,
) -> Iterator[tuple[str, T]]:
    """Yield (key, work(fetch(key), key)) in key order, with bounded memory.

    `work` must be picklable (a module-level function or a functools.partial of one). The next window is
    fetched while the current one is decoded.
    """
    use_pool = workers > 1 and len(keys) >= MIN_ITEMS_FOR_POOL
    context = multiprocessing.get_context("forkserver")
    pool_cm = ProcessPoolExecutor(workers, mp_context=context) if use_pool else nullcontext(None)
    with ThreadPoolExecutor(threads) as io_pool, pool_cm as cpu_pool:
        windows = _windows(keys, window)
        pending: list[Future[bytes]] = [io_pool.submit(fetch, k) for k in windows[0]] if windows else []
        for index, current in enumerate(windows):
            datas = [f.result() for f in pending]
            if index + 1 < len(windows):
                pending = [io_pool.submit(fetch, k) for k in windows[index + 1]]
            yield from zip(current, _run(cpu_pool, work, datas, current), strict=True)


def _run(pool: Executor | None, work: Callable[[bytes, str], T], datas: list[bytes], keys: Sequence[str]):
    if pool is None:
        return [work(d, k) for d, k in zip(datas, keys, strict=True)]
    return list(pool.map(work, datas, keys, chunksize=4))
