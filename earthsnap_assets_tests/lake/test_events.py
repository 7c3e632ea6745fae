"""Event sources: parsing from captured output, the poll loop with a replayed weed, and the real SeaweedFS.

The SQS source is tested with a small in-memory fake client (`FakeSqs`), in this file only: no SQS server
exists here. Everything about the filer runs the real `weed filer.meta.tail` against the test stack.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import IO, Any

import pytest

from earthsnap_assets.lake.events import (
    DELETE,
    PUT,
    EventSourceError,
    FilerEventSource,
    Poll,
    RawEvent,
    SqsEventSource,
    event_source_from_url,
    iter_filer_records,
    parse_filer_stream,
    parse_s3_event_message,
)
from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.settings import Settings
from earthsnap_assets.stack.ports import free_port

BUCKET = "earthsnap-raw"
ROOT = f"/buckets/{BUCKET}"


# --- filer records, shaped like `weed filer.meta.tail` output (captured from weed 4.48) ------------------


def entry(name: str, content: bytes | None = None, *, etag: str | None = None, directory: bool = False) -> dict:
    """A filer entry; S3 writes store the ETag base64-encoded, and the MD5 (empty for multipart)."""
    if directory:
        return {"name": name, "isDirectory": True, "attributes": {"fileSize": "0", "md5": ""}, "extended": {}}
    md5 = hashlib.md5(content or b"").digest()
    stored = etag if etag is not None else md5.hex()
    return {
        "name": name,
        "isDirectory": False,
        "attributes": {"fileSize": str(len(content or b"")), "md5": "" if "-" in stored else _b64(md5)},
        "extended": {"Seaweed-X-Amz-ETag": _b64(stored.encode()), "Seaweed-X-Amz-Owner": _b64(b"earthsnap")},
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def record(ts: int, directory: str, old: dict | None = None, new: dict | None = None, new_parent: str | None = None):
    """One metadata event: create = new only, overwrite = old+new, delete = old only (newParentPath "")."""
    parent = new_parent if new_parent is not None else (directory if new else "")
    note = {"oldEntry": old, "newEntry": new, "deleteChunks": True, "newParentPath": parent, "signatures": [1]}
    return {"directory": directory, "eventNotification": note, "tsNs": str(ts), "events": [], "logFileRefs": []}


def stream(*records: dict) -> str:
    """As weed prints them: indented JSON objects, one after another, each followed by a newline."""
    return "".join(json.dumps(r, indent=2) + "\n" for r in records)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# One record exactly as weed 4.48 printed it (protojson: two spaces after colons), trimmed of chunk lists.
CAPTURED = textwrap.dedent("""\
    {
      "directory":  "/buckets/earthsnap-raw/images/pine",
      "eventNotification":  {
        "oldEntry":  null,
        "newEntry":  {
          "name":  "big.jpg",
          "isDirectory":  false,
          "chunks":  [],
          "attributes":  {
            "fileSize":  "5242890",
            "mtime":  "1796095068",
            "md5":  "",
            "inode":  "16253994140557779686"
          },
          "extended":  {
            "Seaweed-X-Amz-ETag":  "Mjk4YzlhNWM4MjA1ZWE4ZWVlZjI5NjUyOTkzNjc4YWEtMg==",
            "Seaweed-X-Amz-Owner":  "ZWFydGhzbmFw",
            "X-Seaweedfs-Multipart-Parts-Count":  "Mg=="
          },
          "hardLinkId":  "",
          "remoteEntry":  null
        },
        "deleteChunks":  false,
        "newParentPath":  "/buckets/earthsnap-raw/images/pine",
        "isFromOtherCluster":  false,
        "signatures":  [
          1250746399
        ]
      },
      "tsNs":  "1796095068162623586",
      "events":  [],
      "logFileRefs":  [],
      "flushedTsNs":  "0"
    }
    """)


# --- pure filer parsing -----------------------------------------------------------------------------------


def test_create_overwrite_delete():
    oak = f"{ROOT}/images/oak"
    text = stream(
        record(1, oak, new=entry("1.jpg", b"a")),
        record(2, oak, old=entry("1.jpg", b"a"), new=entry("1.jpg", b"bb")),
        record(3, oak, old=entry("1.jpg", b"bb")),
    )
    assert parse_filer_stream(text, BUCKET) == [
        RawEvent("images/oak/1.jpg", PUT, md5_hex(b"a"), 1, 1, "filer"),
        RawEvent("images/oak/1.jpg", PUT, md5_hex(b"bb"), 2, 2, "filer"),
        RawEvent("images/oak/1.jpg", DELETE, None, None, 3, "filer"),
    ]


def test_rename_is_a_delete_and_a_put_across_and_within_directories():
    text = stream(
        record(5, f"{ROOT}/images/oak", entry("1.jpg", b"x"), entry("1.jpg", b"x"), new_parent=f"{ROOT}/images/elm"),
        record(6, f"{ROOT}/images/elm", entry("1.jpg", b"x"), entry("2.jpg", b"x"), new_parent=f"{ROOT}/images/elm"),
    )
    assert [(e.op, e.key, e.ts_ns) for e in parse_filer_stream(text, BUCKET)] == [
        (DELETE, "images/oak/1.jpg", 5),
        (PUT, "images/elm/1.jpg", 5),
        (DELETE, "images/elm/1.jpg", 6),
        (PUT, "images/elm/2.jpg", 6),
    ]


def test_directories_and_multipart_parts_are_ignored_and_the_completed_upload_is_one_put():
    upload = f"{ROOT}/.uploads/925ca4d3_018d6048"
    final_etag = "298c9a5c8205ea8eeef29652993678aa-2"
    text = stream(
        record(1, ROOT, new=entry("images", directory=True)),
        record(2, f"{ROOT}/images", new=entry("pine", directory=True)),
        record(3, ROOT, new=entry(".uploads", directory=True)),
        record(4, f"{ROOT}/.uploads", new=entry("925ca4d3_018d6048", directory=True)),
        record(5, upload, new=entry("0001_c608.part", b"p" * 100)),
        record(6, upload, new=entry("0002_5569.part", b"q" * 10)),
        record(7, f"{ROOT}/images/pine", new=entry("big.jpg", b"p" * 100 + b"q" * 10, etag=final_etag)),
        record(8, upload, old=entry("0001_c608.part", b"p" * 100)),
        record(9, upload, old=entry("0002_5569.part", b"q" * 10)),
        record(10, f"{ROOT}/.uploads", old=entry("925ca4d3_018d6048", directory=True)),
        record(11, f"{ROOT}/images", old=entry("pine", directory=True)),
    )
    assert parse_filer_stream(text, BUCKET) == [RawEvent("images/pine/big.jpg", PUT, final_etag, 110, 7, "filer")]


def test_captured_weed_output_parses_with_the_multipart_etag():
    assert parse_filer_stream(CAPTURED, BUCKET) == [
        RawEvent(
            "images/pine/big.jpg", PUT, "298c9a5c8205ea8eeef29652993678aa-2", 5242890, 1796095068162623586, "filer"
        )
    ]


def test_etag_falls_back_to_the_md5_attribute_and_else_is_unknown():
    plain = entry("a.jpg", b"hello")
    del plain["extended"]["Seaweed-X-Amz-ETag"]
    bare = {"name": "b.jpg", "isDirectory": False, "attributes": {"fileSize": "3", "md5": ""}}
    events = parse_filer_stream(stream(record(1, f"{ROOT}/x", new=plain), record(2, f"{ROOT}/x", new=bare)), BUCKET)
    assert [(e.key, e.etag, e.size) for e in events] == [("x/a.jpg", md5_hex(b"hello"), 5), ("x/b.jpg", None, 3)]


def test_other_buckets_and_keys_outside_the_prefix_are_ignored():
    text = stream(
        record(1, "/buckets/earthsnap-raw2/images/oak", new=entry("1.jpg", b"a")),
        record(2, f"{ROOT}", new=entry("taxonomy.csv", b"t")),
        record(3, f"{ROOT}/images/oak", new=entry("2.jpg", b"b")),
        record(4, f"{ROOT}/inbox", entry("3.jpg", b"c"), entry("3.jpg", b"c"), new_parent=f"{ROOT}/images/oak"),
    )
    assert [(e.op, e.key) for e in parse_filer_stream(text, BUCKET, "images/")] == [
        (PUT, "images/oak/2.jpg"),
        (PUT, "images/oak/3.jpg"),
    ]
    assert [e.key for e in parse_filer_stream(text, BUCKET)][:1] == ["taxonomy.csv"]


def test_a_batched_record_counts_once_because_weed_prints_its_nested_events_again():
    first, second = record(1, f"{ROOT}/a", new=entry("1.jpg", b"1")), record(2, f"{ROOT}/a", new=entry("2.jpg", b"2"))
    envelope = {**first, "events": [second]}
    assert [e.key for e in parse_filer_stream(stream(envelope, second), BUCKET)] == ["a/1.jpg", "a/2.jpg"]


def test_records_are_found_in_any_chunking_and_in_compact_form():
    records = [record(i, f"{ROOT}/k", new=entry(f"{i}.jpg", "é".encode() * i)) for i in range(1, 6)]
    text = stream(*records)
    assert list(iter_filer_records(text[i : i + 7] for i in range(0, len(text), 7))) == records
    assert list(iter_filer_records("".join(json.dumps(r) + "\n" for r in records))) == records


def test_anything_but_events_on_stdout_is_an_error():
    with pytest.raises(ValueError, match=r"tail 127\.0\.0\.1:1: subscribing"):
        parse_filer_stream(stream(record(1, ROOT)) + "tail 127.0.0.1:1: subscribing filer meta change: ...\n", BUCKET)
    with pytest.raises(ValueError, match="ended inside a record"):
        parse_filer_stream(CAPTURED[:200], BUCKET)


# --- the filer poll loop, with weed replaced by a process that prints captured output ---------------------


class Replay:
    """A launcher that runs a Python process printing `text` (then optionally hanging or failing)."""

    def __init__(self, text: str = "", *, then: str = "", stderr: str = "") -> None:
        self.script = "\n".join(
            [
                "import sys, time",
                f"sys.stderr.write({stderr!r})",
                f"sys.stdout.write({text!r})",
                "sys.stdout.flush()",
                then,
            ]
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.argv: list[Sequence[str]] = []

    def __call__(self, argv: Sequence[str], stderr: IO[bytes]) -> subprocess.Popen[bytes]:
        self.argv.append(argv)
        proc = subprocess.Popen([sys.executable, "-c", self.script], stdout=subprocess.PIPE, stderr=stderr)
        self.procs.append(proc)
        return proc


NOW = 10_000_000_000_000


def replayed(launch: Replay, margin_s: float = 5.0) -> FilerEventSource:
    return FilerEventSource(
        "filer.test:8888", BUCKET, "images/", weed="weed", margin_s=margin_s, launch=launch, clock_ns=lambda: NOW
    )


def puts(*stamps: int) -> str:
    return stream(*(record(ts, f"{ROOT}/images/oak", new=entry(f"{ts}.jpg", b"x")) for ts in stamps))


def test_the_command_replays_from_a_margin_before_the_cursor_up_to_now():
    launch = Replay()
    poll = replayed(launch).poll(str(NOW - 7_000_000_000), max_events=10, timeout_s=10)
    assert launch.argv == [
        [
            "weed",
            "filer.meta.tail",
            "-filer=filer.test:8888",
            f"-pathPrefix={ROOT}/images/",
            "-timeAgo=12000000000ns",
            "-untilTimeAgo=1ns",
        ]
    ]
    assert (poll.events, poll.exhausted, poll.cursor) == ([], True, str(NOW - 5_000_000_000))


def test_no_cursor_starts_now_without_running_weed():
    launch = Replay()
    poll = replayed(launch, margin_s=2).poll(None, max_events=10, timeout_s=10)
    assert (poll.events, poll.cursor, poll.exhausted, launch.argv) == ([], str(NOW - 2_000_000_000), True, [])
    with pytest.raises(ValueError, match="decimal"):
        replayed(launch).poll("yesterday", max_events=10, timeout_s=10)


def test_events_at_or_before_the_cursor_are_dropped_and_a_caught_up_cursor_is_the_newest_record():
    poll = replayed(Replay(puts(NOW - 3, NOW - 2, NOW - 1))).poll(str(NOW - 3), max_events=10, timeout_s=10)
    assert [e.ts_ns for e in poll.events] == [NOW - 2, NOW - 1]
    assert (poll.cursor, poll.exhausted) == (str(NOW - 1), True)


def test_reading_stops_at_max_events_and_weed_is_stopped():
    launch = Replay(puts(*range(1, 6)), then="time.sleep(60)")
    started = time.monotonic()
    poll = replayed(launch).poll("0", max_events=2, timeout_s=30)
    assert time.monotonic() - started < 10
    assert [e.ts_ns for e in poll.events] == [1, 2]
    assert (poll.cursor, poll.exhausted) == ("2", False)
    assert launch.procs[0].poll() is not None


def test_a_rename_is_never_split_across_polls():
    rename = record(2, f"{ROOT}/images/a", entry("1.jpg", b"x"), entry("1.jpg", b"x"), new_parent=f"{ROOT}/images/b")
    poll = replayed(Replay(puts(1) + stream(rename))).poll("0", max_events=2, timeout_s=10)
    assert ([e.ts_ns for e in poll.events], poll.cursor, poll.exhausted) == ([1], "1", False)


def test_a_failing_weed_is_an_error_naming_the_filer():
    with pytest.raises(EventSourceError, match=r"filer\.test:8888.*status 3.*boom"):
        replayed(Replay(puts(1), then="sys.exit(3)", stderr="boom")).poll("0", max_events=10, timeout_s=10)
    with pytest.raises(EventSourceError, match=r"filer\.test:8888.*ended inside a record"):
        replayed(Replay(puts(1)[:-30])).poll("0", max_events=10, timeout_s=10)


def test_a_silent_weed_times_out_as_an_error_and_is_killed():
    launch = Replay(then="time.sleep(60)")
    started = time.monotonic()
    with pytest.raises(EventSourceError, match=r"filer\.test:8888.*within 0\.5 s"):
        replayed(launch).poll("0", max_events=10, timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert launch.procs[0].poll() is not None


def test_weed_starting_later_than_the_margin_is_an_error_and_answering_late_a_warning(caplog):
    """weed computes its window start from -timeAgo with its own clock when it starts: a late start shifts it."""
    clock = iter([NOW, NOW + 6_000_000_000])
    slow = FilerEventSource(
        "filer.test:8888", BUCKET, weed="weed", launch=Replay(puts(1)), clock_ns=lambda: next(clock)
    )
    with pytest.raises(EventSourceError, match=r"filer\.test:8888.*launching weed took 6\.0 s"):
        slow.poll("0", max_events=10, timeout_s=10)
    clock = iter([NOW, NOW, NOW + 6_000_000_000])
    late = FilerEventSource(
        "filer.test:8888", BUCKET, weed="weed", launch=Replay(puts(1)), clock_ns=lambda: next(clock)
    )
    assert [e.ts_ns for e in late.poll("0", max_events=10, timeout_s=10).events] == [1]
    assert "weed answered 6.0 s after" in caplog.text


def test_a_timeout_after_some_events_returns_them_not_exhausted():
    poll = replayed(Replay(puts(1, 2), then="time.sleep(60)")).poll("0", max_events=10, timeout_s=1)
    assert ([e.ts_ns for e in poll.events], poll.cursor, poll.exhausted) == ([1, 2], "2", False)


# --- S3 Event Notifications (SQS) --------------------------------------------------------------------------


def s3_record(name: str, key: str, *, bucket: str = BUCKET, time_: str = "2026-05-01T10:00:00.123Z", seq: str = "0A"):
    obj: dict[str, Any] = {"key": key, "sequencer": seq}
    if name.startswith("ObjectCreated"):
        obj |= {"size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e"}
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": time_,
        "eventName": name,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"}, "object": obj},
    }


def body(*records: dict) -> str:
    return json.dumps({"Records": list(records)})


T0 = 1_777_629_600_123_000_000  # 2026-05-01T10:00:00.123Z


def test_s3_notifications_become_url_decoded_puts_and_deletes():
    events = parse_s3_event_message(
        body(
            s3_record("ObjectCreated:Put", "images/oak/red+flower%2B1.jpg"),
            s3_record("ObjectCreated:CompleteMultipartUpload", "images/oak/%C3%A9t%C3%A9.jpg", seq="0B"),
            s3_record("ObjectRemoved:Delete", "images/oak/old.jpg", time_="2026-05-01T10:00:01Z"),
            s3_record("ObjectRemoved:Delete", "images/oak/x.jpg", bucket="someone-else"),
            s3_record("ObjectTagging:Put", "images/oak/tagged.jpg"),
        ),
        BUCKET,
    )
    etag = "d41d8cd98f00b204e9800998ecf8427e"
    assert events == [
        RawEvent("images/oak/red flower+1.jpg", PUT, etag, 1024, T0, "sqs"),
        RawEvent("images/oak/été.jpg", PUT, etag, 1024, T0, "sqs"),
        RawEvent("images/oak/old.jpg", DELETE, None, None, T0 - 123_000_000 + 1_000_000_000, "sqs"),
    ]


def test_one_keys_events_in_one_millisecond_are_ordered_by_sequencer():
    events = parse_s3_event_message(
        body(
            s3_record("ObjectRemoved:Delete", "images/a.jpg", seq="0055AED6DCD90281E6"),
            s3_record("ObjectCreated:Put", "images/a.jpg", seq="0055AED6DCD90281E5"),
            s3_record("ObjectCreated:Put", "images/b.jpg", seq="0055AED6DCD90281"),  # shorter: right-padded
        ),
        BUCKET,
    )
    assert [(e.key, e.op, e.ts_ns) for e in events] == [
        ("images/b.jpg", PUT, T0),
        ("images/a.jpg", PUT, T0),
        ("images/a.jpg", DELETE, T0 + 1),
    ]


def test_test_events_sns_and_eventbridge_envelopes():
    assert (
        parse_s3_event_message(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET}), BUCKET)
        == []
    )
    via_sns = json.dumps({"Type": "Notification", "Message": body(s3_record("ObjectCreated:Put", "images/a+b.jpg"))})
    assert [e.key for e in parse_s3_event_message(via_sns, BUCKET)] == ["images/a b.jpg"]
    bridge = {
        "version": "0",
        "detail-type": "Object Deleted",
        "source": "aws.s3",
        "time": "2026-05-01T10:00:00Z",
        "detail": {"bucket": {"name": BUCKET}, "object": {"key": "images/a+b:c.jpg", "sequencer": "617f0837b476e463"}},
    }
    assert parse_s3_event_message(bridge, BUCKET) == [
        RawEvent("images/a+b:c.jpg", DELETE, None, None, T0 - 123_000_000, "sqs")
    ]
    with pytest.raises(ValueError, match="not an S3 event"):
        parse_s3_event_message('{"hello": 1}', BUCKET)


class FakeSqs:
    """In-memory SQS for the receive/ack loop (unit tests only): receive hides messages, delete removes them."""

    def __init__(self, bodies: Sequence[str]) -> None:
        self.queue = {f"r{i}": b for i, b in enumerate(bodies)}
        self.in_flight: set[str] = set()
        self.receives: list[int] = []
        self.delete_batches: list[int] = []

    def receive_message(self, *, QueueUrl: str, MaxNumberOfMessages: int, WaitTimeSeconds: int) -> dict:
        assert WaitTimeSeconds == 0 and 1 <= MaxNumberOfMessages <= 10
        self.receives.append(MaxNumberOfMessages)
        visible = [r for r in self.queue if r not in self.in_flight][:MaxNumberOfMessages]
        self.in_flight.update(visible)
        return {"Messages": [{"MessageId": r, "ReceiptHandle": r, "Body": self.queue[r]} for r in visible]}

    def delete_message_batch(self, *, QueueUrl: str, Entries: list[dict]) -> dict:
        self.delete_batches.append(len(Entries))
        for e in Entries:
            del self.queue[e["ReceiptHandle"]]
            self.in_flight.discard(e["ReceiptHandle"])
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def visibility_timeout_passes(self) -> None:
        self.in_flight.clear()


def test_sqs_drains_in_bounded_polls_and_ack_deletes_in_batches_of_ten():
    bodies = [body(s3_record("ObjectCreated:Put", f"images/{i:02d}.jpg", seq=f"{i:04X}")) for i in range(25)]
    fake = FakeSqs([*bodies, body(s3_record("ObjectCreated:Put", "images/z.jpg", bucket="other")), "not json"])
    source = SqsEventSource("https://sqs.eu-west-1.amazonaws.com/123/raw", BUCKET, fake)

    first = source.poll(None, max_events=12, timeout_s=10)
    assert (len(first.events), first.exhausted, first.cursor, fake.receives) == (12, False, None, [10, 2])
    fake.visibility_timeout_passes()  # not acked: delivered again
    again = source.poll(None, max_events=12, timeout_s=10)
    assert again.events == first.events
    again.ack()
    again.ack()
    assert fake.delete_batches == [10, 2]

    rest = source.poll(None, max_events=100, timeout_s=10)
    assert rest.exhausted and [e.key for e in rest.events] == [f"images/{i:02d}.jpg" for i in range(12, 25)]
    rest.ack()
    assert list(fake.queue.values()) == ["not json"]  # left for the dead-letter queue


def test_event_source_from_url():
    assert isinstance(event_source_from_url("filer://127.0.0.1:8888", BUCKET, "images/"), FilerEventSource)
    sqs = event_source_from_url("sqs://sqs.us-east-1.amazonaws.com/123/raw", BUCKET, "images/")
    assert isinstance(sqs, SqsEventSource) and sqs.queue_url == "https://sqs.us-east-1.amazonaws.com/123/raw"
    assert isinstance(event_source_from_url("https://sqs.us-east-1.amazonaws.com/123/raw", BUCKET, ""), SqsEventSource)
    for bad in ("s3://bucket/key", "filer://no-port", "https://example.com/queue", ""):
        with pytest.raises(ValueError, match="event source URL"):
            event_source_from_url(bad, BUCKET, "")


def test_a_filer_that_is_not_there_is_an_error_naming_it():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(EventSourceError, match=address):
        FilerEventSource(address, BUCKET).poll("0", max_events=10, timeout_s=20)


# --- the real SeaweedFS ------------------------------------------------------------------------------------


@pytest.fixture
def store(stack: Settings) -> ObjectStore:
    return ObjectStore()


@pytest.fixture
def bucket(store: ObjectStore) -> str:
    """A fresh bucket per test, so no test sees another's events."""
    name = f"test-raw-{uuid.uuid4().hex[:12]}"
    store.ensure_bucket(name)
    return name


@pytest.fixture
def source(stack: Settings, bucket: str) -> FilerEventSource:
    return FilerEventSource(f"127.0.0.1:{stack.weed_filer_port}", bucket)


def drain(source: FilerEventSource, cursor: str, max_events: int = 1000) -> Iterator[Poll]:
    """Polls from `cursor` until one is exhausted."""
    while True:
        poll = source.poll(cursor, max_events=max_events, timeout_s=20)
        yield poll
        cursor = poll.cursor
        if poll.exhausted:
            return


def head_etag(store: ObjectStore, bucket: str, key: str) -> str:
    return store.client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


@pytest.mark.stack
def test_a_burst_of_200_concurrent_writes_arrives_exactly_once_across_polls(store, bucket, source):
    cursor = source.poll(None, max_events=64, timeout_s=20).cursor
    items = {f"images/sp{i % 7}/{i:03d}.jpg": f"image {i}".encode() for i in range(200)}
    store.upload_many(bucket, items, threads=32)
    listed = store.client.list_objects_v2(Bucket=bucket)["Contents"]
    per_second = Counter(item["LastModified"] for item in listed)
    assert per_second.most_common(1)[0][1] >= 50, per_second  # a since-key/since-mtime cursor would lose these

    polls = list(drain(source, cursor, max_events=64))
    events = [e for p in polls for e in p.events]
    assert [p.exhausted for p in polls] == [False, False, False, True]
    assert [len(p.events) for p in polls] == [64, 64, 64, 8]
    assert all(p.cursor == str(p.events[-1].ts_ns) for p in polls[:-1])
    assert Counter(e.key for e in events) == Counter(list(items))  # 0 missed, 0 duplicated
    assert {(e.op, e.etag, e.size) for e in events if e.key == "images/sp0/000.jpg"} == {(PUT, md5_hex(b"image 0"), 7)}
    assert source.poll(polls[-1].cursor, max_events=64, timeout_s=20).events == []


@pytest.mark.stack
def test_overwrite_delete_and_multipart(store, bucket, source):
    store.write(bucket, "images/oak/1.jpg", b"first")
    store.write(bucket, "images/oak/2.jpg", b"doomed")
    cursor = source.poll("0", max_events=1000, timeout_s=20).cursor

    store.write(bucket, "images/oak/1.jpg", b"second")
    store.client.delete_object(Bucket=bucket, Key="images/oak/2.jpg")
    key = "images/pine/big.jpg"
    upload = store.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = [
        {
            "PartNumber": n,
            "ETag": store.client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n, Body=data)["ETag"],
        }
        for n, data in ((1, b"p" * 5 * 1024 * 1024), (2, b"q" * 1024))
    ]
    store.client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})

    events = [e for p in drain(source, cursor) for e in p.events]
    assert [(e.op, e.key) for e in events] == [(PUT, "images/oak/1.jpg"), (DELETE, "images/oak/2.jpg"), (PUT, key)]
    overwrite, _, multipart = events
    assert overwrite.etag == head_etag(store, bucket, "images/oak/1.jpg") == md5_hex(b"second")
    assert multipart.etag == head_etag(store, bucket, key) and multipart.etag.endswith("-2")
    assert multipart.size == 5 * 1024 * 1024 + 1024


@pytest.mark.stack
def test_no_cursor_returns_nothing_and_a_cursor_that_sees_the_next_write(store, bucket, source):
    store.write(bucket, "images/oak/before.jpg", b"b")
    first = source.poll(None, max_events=64, timeout_s=20)
    assert (first.events, first.exhausted) == ([], True)
    store.write(bucket, "images/oak/after.jpg", b"a")
    # The default cursor starts margin_s (5 s) early, so a write just before the first poll may come again.
    later = [e.key for p in drain(source, first.cursor) for e in p.events]
    assert later[-1:] == ["images/oak/after.jpg"] and set(later) <= {"images/oak/before.jpg", "images/oak/after.jpg"}
