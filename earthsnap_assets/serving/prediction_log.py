"""The prediction log (and the feedback log): rows the endpoint hands over, written to the lake as Parquet.

Guarantees, in the order the endpoint relies on them:

* **`record()` never blocks a request and never raises.** It appends a dict to an in-memory list under a
  lock and returns. Two background threads do the rest: the *flusher* (CPU and local disk only) cuts the
  rows into Parquet batches every `flush_interval_s` or `batch_rows` rows, one batch per UTC day of the
  rows; the *uploader* (with a few helper threads, the only ones that talk to the lake) writes them.
* **A lake outage loses no records.** A batch the lake refuses goes to a local *spool* directory, under its
  lake key, and is retried with exponential backoff (`retry_initial_s` .. `retry_max_s`); while the lake
  is known down, new batches go straight to the spool. Batches are also spooled when the in-memory upload
  queue is full (`max_queued` batches: a lake that hangs rather than refuses) or when more than
  `max_pending` rows wait in memory: memory stays bounded, and nothing is ever dropped.
  Spool files are written atomically (temporary name, then rename), so a crash leaves whole files only.
* **At-least-once delivery, exactly-once by name.** A batch's key is fixed when it is cut and ends in the
  digest of its bytes (`paths.predictions_batch(env, day, hhmmss, replica, digest)`), so every retry,
  including a write that succeeded but reported a failure and the re-upload by the next process of a spool
  file whose upload finished just before a crash, rewrites the same object: the lake never holds a row twice.
* **A crashed process's spool is not lost.** The spool of a replica is `<spool root>/<env>-<replica>/`,
  locked (`flock`) while its process lives; at start a writer adopts the spool directories of dead
  replicas of its environment (moving their files into its own) and uploads them first.
* **`close()` flushes**: the rows in memory are cut and written; what the lake still refuses stays in the
  spool for the next start.

The same class writes the feedback log (`FEEDBACK_SCHEMA`, `paths.feedback_batch`); the prediction log also
carries kept request photos (`put`), which take the same queue/spool path as batches. No Dagster here.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from earthsnap_assets.lake.storage import Blobs
from earthsnap_assets.lake.tables import content_digest, table_bytes

log = logging.getLogger(__name__)

KeyOf = Callable[[str, str, str, str, str], str]  # (env, day, hhmmss, replica, digest) -> lake key
_TMP = ".tmp"


_APPS = itertools.count(1)


def replica_name() -> str:
    """`<host>-<pid>`: which endpoint process wrote a row (and names its batches and spool directory).

    A second app in the same process (tests, benchmarks) gets `<host>-<pid>-<n>`: names stay unique, so
    two live apps never share a spool directory.
    """
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-") or "host"
    n = next(_APPS)
    return f"{host}-{os.getpid()}" if n == 1 else f"{host}-{os.getpid()}-{n}"


@dataclass(frozen=True)
class Outgoing:
    """One object bound for the lake: a Parquet batch (`rows` > 0) or a kept photo (`rows` = 0)."""

    key: str
    data: bytes
    rows: int


class Spool:
    """Objects waiting for the lake, on local disk under their lake key (`<dir>/<lake key>`).

    One per replica process, shared by its writers (each handles its own top-level folders). The
    directory is locked while the process lives, so a later process adopts it only once its owner is gone.
    """

    def __init__(self, root: Path | str, env: str, replica: str) -> None:
        self.root = Path(root)
        self.dir = self.root / f"{env}-{replica}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock: IO[str] | None = _lock(self.dir)
        if self._lock is None:
            raise RuntimeError(f"spool {self.dir} is locked by another live process")
        self._remove_temporary(self.dir)
        self.adopted = self._adopt(env)

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") or part.startswith(".") for part in parts):
            raise ValueError(f"not a spoolable lake key: {key!r}")
        return self.dir.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        """Write atomically: a crash leaves the previous state or the whole file, never half of one."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}{_TMP}")
        with temporary.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def remove(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def rows(self, key: str) -> int:
        """Rows of a spooled Parquet batch (its footer only); 0 for anything else."""
        if not key.endswith(".parquet"):
            return 0
        try:
            return pq.read_metadata(self.path(key)).num_rows
        except (OSError, pa.ArrowException):
            return 0

    def keys(self, folders: Iterable[str]) -> list[str]:
        """Spooled lake keys under the given top-level folders, sorted (oldest batch first within a day)."""
        found = []
        for folder in folders:
            base = self.dir / folder
            for path in base.rglob("*") if base.is_dir() else ():
                if path.is_file() and not path.name.startswith("."):
                    found.append(path.relative_to(self.dir).as_posix())
        return sorted(found)

    def close(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _adopt(self, env: str) -> int:
        """Move the files of dead replicas' spools (same root, same environment) into this one."""
        moved = 0
        for sibling in sorted(self.root.glob(f"{env}-*")):
            if sibling == self.dir or not sibling.is_dir():
                continue
            lock = _lock(sibling)
            if lock is None:  # its process is alive: it uploads its own spool
                continue
            try:
                self._remove_temporary(sibling)
                for path in sorted(p for p in sibling.rglob("*") if p.is_file() and not p.name.startswith(".")):
                    target = self.dir / path.relative_to(sibling)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, target)
                    moved += 1
                shutil.rmtree(sibling, ignore_errors=True)
            finally:
                lock.close()
        if moved:
            log.info("adopted %d spooled objects of earlier %s replicas into %s", moved, env, self.dir)
        return moved

    @staticmethod
    def _remove_temporary(folder: Path) -> None:
        """Half-written files of a crash: their content is still in the memory that died, or in a whole file."""
        for path in folder.rglob(f".*{_TMP}"):
            path.unlink(missing_ok=True)


def _lock(folder: Path) -> IO[str] | None:
    """An exclusive lock on `<folder>/.lock`, or None when a live process holds it."""
    handle = (folder / ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@dataclass
class Counters:
    """What `/stats` shows of one writer."""

    written: int = 0  # rows now in the lake
    batches_written: int = 0
    objects_written: int = 0  # kept photos
    spooled: int = 0  # rows that went through the spool (an outage, a full queue)
    objects_spooled: int = 0
    rejected: int = 0  # rows that do not fit the schema (a bug): logged, never written
    failures: int = 0  # lake writes that failed
    last_error: str | None = None


class LogWriter:
    """Rows of one schema -> Parquet batches in the lake, through a bounded buffer, a queue and a spool."""

    def __init__(
        self,
        lake: Blobs,
        bucket: str,
        schema: pa.Schema,
        key_of: KeyOf,
        env: str,
        replica: str,
        spool: Spool,
        *,
        flush_interval_s: float = 5.0,
        batch_rows: int = 5000,
        max_pending: int = 50_000,
        max_queued: int = 8,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        object_folders: tuple[str, ...] = (),
        uploaders: int = 4,
    ) -> None:
        if flush_interval_s <= 0 or batch_rows < 1 or max_pending < batch_rows or min(max_queued, uploaders) < 1:
            raise ValueError("need flush_interval_s > 0, 1 <= batch_rows <= max_pending, max_queued and uploaders >= 1")
        self.lake, self.bucket, self.schema, self.key_of = lake, bucket, schema, key_of
        self.env, self.replica, self.spool = env, replica, spool
        self.flush_interval_s, self.batch_rows, self.max_pending, self.max_queued = (
            flush_interval_s,
            batch_rows,
            max_pending,
            max_queued,
        )
        self.retry_initial_s, self.retry_max_s, self.uploaders = retry_initial_s, retry_max_s, uploaders
        self.folders = (key_of(env, "2000-01-01", "000000", replica, "0").split("/")[0], *object_folders)
        self.counters = Counters()
        self._cond = threading.Condition()
        self._rows: list[dict[str, Any]] = []
        self._overflow: list[list[dict[str, Any]]] = []
        self._objects: list[Outgoing] = []
        self._queue: deque[Outgoing] = deque()
        self._spooled_rows: dict[str, int] = {key: spool.rows(key) for key in spool.keys(self.folders)}
        self._down = False
        self._backoff = retry_initial_s
        self._retry_at = 0.0
        self._turn = False
        self._closing = self._closed = self._flusher_done = False
        self._threads: list[threading.Thread] = []

    # --- the request side: cheap, never raises -------------------------------------------------------------

    def record(self, row: dict[str, Any]) -> None:
        """Hand over one row; returns at once. After `close()` the row goes straight to the spool."""
        try:
            with self._cond:
                if self._closed:
                    late = True
                else:
                    late = False
                    self._rows.append(row)
                    if len(self._rows) >= self.max_pending:  # the flusher fell behind: these go to the spool
                        self._overflow.append(self._rows)
                        self._rows = []
                        self._cond.notify_all()
                    elif len(self._rows) >= self.batch_rows:
                        self._cond.notify_all()
            if late:
                for item in self._batches([row]):
                    self._to_spool(item)
        except Exception:
            log.exception("the %s log could not take a row", self.folders[0])

    def put(self, key: str, data: bytes) -> None:
        """Hand over one object (a kept photo) for `key`; same path as batches, returns at once."""
        try:
            with self._cond:
                closed = self._closed
                if not closed:
                    self._objects.append(Outgoing(key, data, 0))
                    self._cond.notify_all()
            if closed:
                self._to_spool(Outgoing(key, data, 0))
        except Exception:
            log.exception("the %s log could not take object %s", self.folders[0], key)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            in_memory = len(self._rows) + sum(map(len, self._overflow)) + sum(item.rows for item in self._queue)
            in_spool = sum(self._spooled_rows.values())
            return {
                "written": self.counters.written,
                "batches_written": self.counters.batches_written,
                "objects_written": self.counters.objects_written,
                "spooled": self.counters.spooled,
                "objects_spooled": self.counters.objects_spooled,
                "pending": in_memory + in_spool,
                "pending_in_spool": in_spool,
                "spool_files": len(self._spooled_rows),
                "rejected": self.counters.rejected,
                "failures": self.counters.failures,
                "lake_up": not self._down,
                "last_error": self.counters.last_error,
            }

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        name = self.folders[0]
        self._threads = [
            threading.Thread(target=self._flush_loop, name=f"{name}-log-flusher", daemon=True),
            threading.Thread(target=self._upload_loop, name=f"{name}-log-uploader", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is in memory; what the lake does not take within `timeout` stays in the spool."""
        self.start()
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._retry_at = time.monotonic()  # a lake that was down gets one more try before the spool
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):  # a hanging lake: keep its batches on disk
            with self._cond:
                stuck = list(self._queue)
                self._queue.clear()
            for item in stuck:
                self._to_spool(item)
            what = self.folders[0]
            log.warning("the %s log closed with %d objects spooled: the lake did not answer", what, len(stuck))

    # --- flusher: rows -> batches -> queue or spool (never the network) ------------------------------------

    def _flush_loop(self) -> None:
        next_cut = time.monotonic() + self.flush_interval_s
        while True:
            with self._cond:
                while not self._must_cut(next_cut):
                    self._cond.wait(max(0.0, next_cut - time.monotonic()))
                rows, self._rows = self._rows, []
                overflow, self._overflow = self._overflow, []
                objects, self._objects = self._objects, []
                closing = self._closed = self._closing
            next_cut = time.monotonic() + self.flush_interval_s
            for chunk in overflow:
                for item in self._batches(chunk):
                    self._to_spool(item)
            for item in [*objects, *self._batches(rows)]:
                self._dispatch(item)
            if closing:
                with self._cond:
                    self._flusher_done = True
                    self._cond.notify_all()
                return

    def _must_cut(self, next_cut: float) -> bool:
        return (
            self._closing
            or bool(self._overflow or self._objects)
            or len(self._rows) >= self.batch_rows
            or time.monotonic() >= next_cut  # an empty cut costs nothing
        )

    def _batches(self, rows: list[dict[str, Any]]) -> list[Outgoing]:
        """One Parquet batch per UTC day of the rows, named by its first time and the digest of its bytes."""
        by_day: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_day.setdefault(_utc(row["ts"]).date().isoformat(), []).append(row)
        out = []
        for day, day_rows in sorted(by_day.items()):
            table = self._table(day_rows)
            if table.num_rows == 0:
                continue
            data = table_bytes(table)
            first = min(_utc(row["ts"]) for row in day_rows).strftime("%H%M%S")
            key = self.key_of(self.env, day, first, self.replica, content_digest(data))
            out.append(Outgoing(key, data, table.num_rows))
        return out

    def _table(self, rows: list[dict[str, Any]]) -> pa.Table:
        try:
            return pa.Table.from_pylist(rows, schema=self.schema)
        except (pa.ArrowException, TypeError, ValueError, KeyError):
            good = []  # a bad row must not take its batch down with it: find it, log it, keep the others
            for row in rows:
                try:
                    pa.Table.from_pylist([row], schema=self.schema)
                    good.append(row)
                except (pa.ArrowException, TypeError, ValueError, KeyError):
                    log.exception("row does not fit the %s schema, not written: %r", self.folders[0], row)
                    with self._cond:
                        self.counters.rejected += 1
            return pa.Table.from_pylist(good, schema=self.schema)

    def _dispatch(self, item: Outgoing) -> None:
        with self._cond:
            if not self._down and len(self._queue) < self.max_queued:
                self._queue.append(item)
                self._cond.notify_all()
                return
        self._to_spool(item)

    def _to_spool(self, item: Outgoing) -> bool:
        """Whether the spool took it; if not (a full disk), it is kept in memory, in the queue, not dropped."""
        try:
            self.spool.put(item.key, item.data)
        except OSError as exc:
            log.exception("could not spool %s; kept in memory", item.key)
            with self._cond:
                self.counters.last_error = f"spool: {type(exc).__name__}: {exc}"
                self._queue.append(item)
            return False
        with self._cond:
            self._spooled_rows[item.key] = item.rows
            self.counters.spooled += item.rows
            self.counters.objects_spooled += 0 if item.rows else 1
            self._cond.notify_all()
        return True

    # --- uploader: queue and spool -> lake ----------------------------------------------------------------

    def _upload_loop(self) -> None:
        """Queue and spool take turns while both have work, so a backlog drains even under steady traffic."""
        with ThreadPoolExecutor(self.uploaders, thread_name_prefix=f"{self.folders[0]}-log-put") as pool:
            while True:
                task = self._next_task()
                if task is None:
                    return
                if task == "queue":
                    self._upload_queue(pool)
                else:
                    self._drain_spool(pool)

    def _next_task(self) -> str | None:
        with self._cond:
            while True:
                may_try = not self._down or time.monotonic() >= self._retry_at
                spool_ready = bool(self._spooled_rows) and may_try
                if self._queue and spool_ready:
                    self._turn = not self._turn
                    return "spool" if self._turn else "queue"
                if self._queue:
                    return "queue"
                if spool_ready:
                    return "spool"
                if self._flusher_done:
                    return None
                wait = self._retry_at - time.monotonic() if self._spooled_rows else self.flush_interval_s
                self._cond.wait(max(0.01, wait))

    def _upload_queue(self, pool: ThreadPoolExecutor) -> None:
        """The first `uploaders` queued objects, written concurrently; what fails goes to the spool."""
        with self._cond:
            items = list(itertools.islice(self._queue, self.uploaders))
            may_try = not self._down or time.monotonic() >= self._retry_at
        written = list(pool.map(lambda item: self._write(item.key, item.data), items)) if may_try else []
        written += [False] * (len(items) - len(written))
        with self._cond:
            for item, ok in zip(items, written, strict=True):
                with contextlib.suppress(ValueError):
                    self._queue.remove(item)  # close() may have spooled it already
                if ok:
                    self._count_written(item.rows)
        spooled = [self._to_spool(item) for item, ok in zip(items, written, strict=True) if not ok]
        if not all(spooled):  # lake and disk both refuse: the items went back to the queue, do not spin
            time.sleep(min(self._backoff, 1.0))

    def _drain_spool(self, pool: ThreadPoolExecutor) -> None:
        """The oldest spooled objects (by key: day, then time), a few at a time, concurrently."""
        with self._cond:
            keys = sorted(self._spooled_rows)[: self.uploaders * 2]
        for key, outcome in zip(keys, pool.map(self._upload_spooled, keys), strict=True):
            if outcome == "failed":
                continue
            if outcome == "written":
                self.spool.remove(key)
            with self._cond:
                rows = self._spooled_rows.pop(key, 0)
                if outcome == "written":
                    self._count_written(rows)

    def _upload_spooled(self, key: str) -> str:
        try:
            data = self.spool.read(key)
        except FileNotFoundError:  # removed by hand: no longer pending
            return "gone"
        return "written" if self._write(key, data) else "failed"

    def _count_written(self, rows: int) -> None:
        if rows:
            self.counters.written += rows
            self.counters.batches_written += 1
        else:
            self.counters.objects_written += 1

    def _write(self, key: str, data: bytes) -> bool:
        """One lake write; a failure marks the lake down until the next retry time (exponential backoff)."""
        try:
            self.lake.write(self.bucket, key, data)
        except Exception as exc:
            self._mark_down(key, exc)
            return False
        with self._cond:
            if self._down:
                log.info("the lake takes %s writes again", self.folders[0])
            self._down = False
            self._backoff = self.retry_initial_s
        return True

    def _mark_down(self, key: str, exc: Exception) -> None:
        """Back off once per failed try, however many concurrent writes of that try failed."""
        with self._cond:
            self.counters.failures += 1
            self.counters.last_error = f"{type(exc).__name__}: {exc}"[:500]
            if self._down and time.monotonic() < self._retry_at:
                return
            self._backoff = min(self.retry_max_s, self._backoff * 2) if self._down else self.retry_initial_s
            self._down = True
            self._retry_at = time.monotonic() + self._backoff
            backoff = self._backoff
        log.warning("lake write of %s failed (%s); retrying in %.1f s", key, exc, backoff)


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
