"""Micro-batching: concurrent requests share one forward pass on a single worker thread.

A forward pass of 16 small images costs little more than one of a single image, so under load the
batcher trades at most `max_wait_s` of latency for throughput. It waits only while other requests are
announced (decoding their upload, see `expecting`): a lone request runs at once and pays no wait.
Items are grouped by the model they were submitted with, so during a deployment swap a request still
runs on the bundle it started with. Inside one forward pass, the bundle splits the batch by route: the
parent runs on every item, each routed child once on the items routed to it (`ml/routed.py`). A model
may answer an item with a Future (a photo waiting for a child that is still loading): the item's future
completes when that one does, and the worker goes on with the next batch meanwhile.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from earthsnap_assets.ml.memory import release_freed_memory

log = logging.getLogger(__name__)


class BatchModel(Protocol):
    def predict(self, batch: torch.Tensor) -> list[Any]: ...


@dataclass
class BatchStats:
    """Counters for tests and monitoring: forward passes < items means batching happened."""

    forward_passes: int = 0
    items: int = 0
    largest_batch: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"forward_passes": self.forward_passes, "items": self.items, "largest_batch": self.largest_batch}


class Slot:
    """One announced item's way into the queue (see `MicroBatcher.expecting`); usable once."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self.batcher = batcher
        self.used = False

    def submit(self, model: BatchModel, item: torch.Tensor) -> Future:
        if self.used:
            raise RuntimeError("this slot already submitted its item")
        future = self.batcher._enqueue(model, item, announced=True)
        self.used = True
        return future


class MicroBatcher:
    """Queue of (model, 1 x C x H x W input, future); a worker thread runs them in batches."""

    def __init__(self, max_batch: int = 16, max_wait_s: float = 0.005) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: deque[tuple[BatchModel, torch.Tensor, Future]] = deque()
        self._announced = 0
        self._condition = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="earthsnap-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then end the worker."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @contextlib.contextmanager
    def expecting(self) -> Iterator[Slot]:
        """Announce an item being prepared, so a batch being formed waits (briefly) for it.

        Submit it through the yielded slot: the announcement ends in the same step as the item is queued,
        so the worker never waits for an item that is already in the queue.
        """
        slot = Slot(self)
        with self._condition:
            self._announced += 1
        try:
            yield slot
        finally:
            if not slot.used:
                with self._condition:
                    self._announced -= 1
                    self._condition.notify_all()

    def submit(self, model: BatchModel, item: torch.Tensor) -> Future:
        """Queue one input (1 x C x H x W); the future gets `model.predict(...)`'s answer for it."""
        return self._enqueue(model, item, announced=False)

    def _enqueue(self, model: BatchModel, item: torch.Tensor, announced: bool) -> Future:
        future: Future = Future()
        with self._condition:
            if self._stopping or self._thread is None:
                raise RuntimeError("the batcher is not running")
            self._queue.append((model, item, future))
            self._announced -= 1 if announced else 0
            self._condition.notify_all()
        return future

    def _take(self) -> list[tuple[BatchModel, torch.Tensor, Future]] | None:
        """The next batch: what is queued, plus what announced requests add within `max_wait_s`."""
        with self._condition:
            while not self._queue and not self._stopping:
                self._condition.wait()
            if not self._queue:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while len(self._queue) < self.max_batch and self._announced > 0 and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            count = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            by_model: dict[int, list[tuple[BatchModel, torch.Tensor, Future]]] = {}
            for entry in batch:
                by_model.setdefault(id(entry[0]), []).append(entry)
            for entries in by_model.values():
                self._forward(entries)
            if not self._queue:  # idle: give the batch's freed memory back to the OS (ml/memory.py)
                release_freed_memory()

    def _forward(self, entries: list[tuple[BatchModel, torch.Tensor, Future]]) -> None:
        """One forward pass for items of one model; a failure fails those futures, never the worker."""
        model = entries[0][0]
        try:
            results = model.predict(torch.cat([item for _, item, _ in entries]))
            if len(results) != len(entries):
                raise RuntimeError(f"predict returned {len(results)} results for {len(entries)} inputs")
        except Exception as exc:
            log.exception("forward pass of %d items failed", len(entries))
            for _, _, future in entries:
                future.set_exception(exc)
            return
        self.stats.forward_passes += 1
        self.stats.items += len(entries)
        self.stats.largest_batch = max(self.stats.largest_batch, len(entries))
        for (_, _, future), result in zip(entries, results, strict=True):
            if isinstance(result, Future):  # answered later (the model waits for something): pass it on
                result.add_done_callback(functools.partial(_pass_on, future))
            else:
                future.set_result(result)


def _pass_on(target: Future, source: Future) -> None:
    """Complete `target` as `source` completed."""
    exception = source.exception()
    if exception is not None:
        target.set_exception(exception)
    else:
        target.set_result(source.result())
