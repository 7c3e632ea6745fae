"""S3 Event Notifications through SQS as an event source (AWS): the queue is the cursor, `ack` deletes."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus, urlsplit

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

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# AWS: S3 Event Notifications through SQS
# ---------------------------------------------------------------------------------------------------------

_CREATED = "ObjectCreated:"
# Removal of the current object: delete, delete marker (versioned bucket), and lifecycle expiration
# (event structure 2.3+). Restore, replication, tagging, ACL and storage-class events change no content.
_REMOVED = ("ObjectRemoved:", "LifecycleExpiration:Delete", "LifecycleExpiration:DeleteMarkerCreated")
_EVENTBRIDGE_OPS = {"Object Created": PUT, "Object Deleted": DELETE}


@dataclass(frozen=True)
class _Sequenced:
    """An event with S3's per-key `sequencer` (hex string, compared after right-padding with zeros)."""

    event: RawEvent
    sequencer: str


def _iso_to_ns(text: str) -> int:
    """ISO-8601 ("1970-01-01T00:00:00.000Z") to ns since the epoch, without float rounding."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def _op_of(event_name: str) -> str | None:
    name = event_name.removeprefix("s3:")
    if name.startswith(_CREATED):
        return PUT
    if name.startswith(_REMOVED):
        return DELETE
    return None


def _s3_event(bucket_name: str, obj: Mapping[str, Any], op: str, when: str, bucket: str, key: str) -> _Sequenced | None:
    if bucket_name != bucket:
        return None
    etag = obj.get("eTag") or obj.get("etag")
    size = obj.get("size")
    put = op == PUT
    event = RawEvent(
        key=key,
        op=op,
        etag=str(etag).strip('"') if put and etag else None,
        size=int(size) if put and size is not None else None,
        ts_ns=_iso_to_ns(when),
        source="sqs",
    )
    return _Sequenced(event, str(obj.get("sequencer") or "").upper())


def _notification_records(body: Mapping[str, Any], bucket: str) -> list[_Sequenced]:
    """`Records[]` of an S3 Event Notification; the key is URL-encoded there ("+" for a space)."""
    out = []
    for record in body["Records"]:
        op = _op_of(str(record.get("eventName", "")))
        s3 = record.get("s3") or {}
        if op is None:
            log.debug("ignoring S3 event %s", record.get("eventName"))
            continue
        obj = s3["object"]
        key = unquote_plus(obj["key"])
        found = _s3_event(s3["bucket"]["name"], obj, op, record["eventTime"], bucket, key)
        if found is not None:
            out.append(found)
    return out


def _eventbridge_record(body: Mapping[str, Any], bucket: str) -> list[_Sequenced]:
    """An EventBridge "Object Created"/"Object Deleted" event; its key is not URL-encoded."""
    op = _EVENTBRIDGE_OPS.get(str(body.get("detail-type")))
    if op is None:
        log.debug("ignoring EventBridge event %s", body.get("detail-type"))
        return []
    detail = body["detail"]
    obj = detail["object"]
    found = _s3_event(detail["bucket"]["name"], obj, op, body["time"], bucket, obj["key"])
    return [] if found is None else [found]


def _sequenced_events(body: str | Mapping[str, Any], bucket: str) -> list[_Sequenced]:
    """Events of one SQS message body, whichever envelope it came in; ValueError if it is none of them."""
    try:
        message = json.loads(body) if isinstance(body, str | bytes) else body
        if not isinstance(message, Mapping):
            raise ValueError("not a JSON object")
        if message.get("Type") == "Notification" and "Message" in message:  # through SNS
            return _sequenced_events(message["Message"], bucket)
        if message.get("Event") == "s3:TestEvent":  # sent once when the notification is configured
            return []
        if "Records" in message:
            return _notification_records(message, bucket)
        if message.get("source") == "aws.s3" and "detail" in message:
            return _eventbridge_record(message, bucket)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an S3 event message ({exc!r}): {_shorten(str(body), 500)}") from exc
    raise ValueError(f"not an S3 event message: {_shorten(str(body), 500)}")


def _in_order(items: Sequence[_Sequenced]) -> list[RawEvent]:
    """Order by (eventTime, sequencer); make ts_ns strictly increasing per key in sequencer order.

    eventTime has millisecond resolution, so two changes of one key can share it; S3's `sequencer` is the
    documented per-key order (right-pad the shorter with zeros, compare as strings). Nudging ts_ns by a few
    ns keeps "highest ts_ns per key wins" correct within a poll.
    """
    width = max((len(item.sequencer) for item in items), default=0)

    def order(item: _Sequenced) -> tuple[int, str]:
        return item.event.ts_ns, item.sequencer.ljust(width, "0")

    by_key: dict[str, list[_Sequenced]] = {}
    for item in items:
        by_key.setdefault(item.event.key, []).append(item)
    fixed = []
    for group in by_key.values():
        last = None
        for item in sorted(group, key=lambda item: item.sequencer.ljust(width, "0")):
            ts = item.event.ts_ns if last is None else max(item.event.ts_ns, last + 1)
            fixed.append(_Sequenced(_replace_ts(item.event, ts), item.sequencer))
            last = ts
    return _dedupe(item.event for item in sorted(fixed, key=order))


def _replace_ts(event: RawEvent, ts_ns: int) -> RawEvent:
    return event if event.ts_ns == ts_ns else RawEvent(event.key, event.op, event.etag, event.size, ts_ns, event.source)


def parse_s3_event_message(body: str | Mapping[str, Any], bucket: str, prefix: str = "") -> list[RawEvent]:
    """Object changes in one SQS message body from S3 Event Notifications, keys URL-decoded.

    Accepts the S3 notification itself (`Records[]`), the same wrapped by SNS (`Type: Notification`), and
    EventBridge's "Object Created"/"Object Deleted" events. `s3:TestEvent`, other buckets, keys outside
    `prefix` and non-content events (restore, tagging, ACL, ...) yield nothing. ValueError if the body is
    no S3 event at all.
    """
    items = [item for item in _sequenced_events(body, bucket) if item.event.key.startswith(prefix)]
    return _in_order(items)


class SqsEventSource:
    """Changes of `s3://<bucket>/<prefix>` from an SQS queue fed by S3 Event Notifications.

    A poll receives up to 10 messages at a time without waiting (`WaitTimeSeconds=0`) until `max_events`
    events, an empty receive, or `timeout_s`. The queue is the cursor (`Poll.cursor` is None); `Poll.ack`
    deletes the received messages, so call it only after the events are durably recorded: unacknowledged
    messages reappear after the queue's visibility timeout and are delivered again (set that timeout
    longer than a tick). Notes:

    - an empty short-poll receive samples some SQS servers only, so `exhausted=True` means "nothing seen
      now", not a guarantee; the next tick looks again.
    - S3 delivers at least once and not in order; a poll's events are ordered by (eventTime, sequencer),
      but a newer event of a key may arrive a poll before an older one: keep the highest `ts_ns` per key.
    - a message that is no S3 event is logged and left unacknowledged: with a redrive policy it moves to
      the dead-letter queue; messages about other buckets or ignored event types are acknowledged.
    - on a versioned bucket a delete event may be about a non-current version; the raw bucket is assumed
      unversioned.
    """

    source = "sqs"

    def __init__(
        self,
        queue_url: str,
        bucket: str,
        client: Any = None,
        *,
        prefix: str = "",
        visibility_timeout_s: int | None = None,
    ) -> None:
        self.queue_url = queue_url
        self.bucket = bucket
        self.prefix = prefix
        self.visibility_timeout_s = visibility_timeout_s
        self._client = client

    @property
    def client(self) -> Any:
        """The SQS client given, else one for the queue's region/endpoint, made on first use."""
        if self._client is None:
            self._client = _sqs_client(self.queue_url)
        return self._client

    def poll(self, cursor: str | None, *, max_events: int, timeout_s: float) -> Poll:
        _check_limits(max_events, timeout_s)
        deadline = time.monotonic() + timeout_s
        items: list[_Sequenced] = []
        receipts: list[str] = []
        received = 0
        exhausted = False
        while max(len(items), received) < max_events and time.monotonic() < deadline:
            messages = self._receive(min(10, max_events - max(len(items), received)))
            if not messages:
                exhausted = True
                break
            received += len(messages)
            for message in messages:
                try:
                    found = _sequenced_events(message["Body"], self.bucket)
                except ValueError as exc:
                    log.error(
                        "SQS queue %s: leaving message %s unacknowledged: %s",
                        self.queue_url,
                        message.get("MessageId"),
                        exc,
                    )
                    continue
                items.extend(item for item in found if item.event.key.startswith(self.prefix))
                receipts.append(message["ReceiptHandle"])
        events = _in_order(items)
        log.debug(
            "SQS %s: %d events from %d messages, exhausted=%s", self.queue_url, len(events), len(receipts), exhausted
        )
        return Poll(events, None, exhausted, _Acknowledgement(self, receipts))

    def _receive(self, count: int) -> list[dict[str, Any]]:
        extra = {} if self.visibility_timeout_s is None else {"VisibilityTimeout": self.visibility_timeout_s}
        try:
            response = self.client.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=count, WaitTimeSeconds=0, **extra
            )
        except Exception as exc:
            raise EventSourceError(f"receiving from SQS queue {self.queue_url} failed: {exc}") from exc
        return list(response.get("Messages") or [])

    def delete(self, receipts: Sequence[str]) -> None:
        """Delete received messages, 10 per request (SQS's batch limit); raise if any could not be deleted."""
        failed = []
        for start in range(0, len(receipts), 10):
            entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts[start : start + 10])]
            try:
                response = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except Exception as exc:
                raise EventSourceError(f"deleting messages from SQS queue {self.queue_url} failed: {exc}") from exc
            failed += [f"{f.get('Code')}: {f.get('Message')}" for f in response.get("Failed") or []]
        if failed:
            raise EventSourceError(
                f"{len(failed)} of {len(receipts)} messages could not be deleted from {self.queue_url} "
                f"(they will be delivered again): {failed[:3]}"
            )


class _Acknowledgement:
    """`Poll.ack` for SQS: deletes the poll's messages once; later calls do nothing."""

    def __init__(self, source: SqsEventSource, receipts: list[str]) -> None:
        self._source = source
        self._receipts = receipts
        self._done = False

    def __call__(self) -> None:
        if not self._done:
            self._source.delete(self._receipts)
            self._done = True


_SQS_HOST = re.compile(r"^sqs\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


def _sqs_client(queue_url: str) -> Any:
    """A boto3 SQS client for the queue: the region from an AWS queue host, else the URL's own endpoint."""
    import boto3

    parts = urlsplit(queue_url)
    aws = _SQS_HOST.match(parts.hostname or "")
    if aws:
        return boto3.client("sqs", region_name=aws.group(1))
    return boto3.client("sqs", endpoint_url=f"{parts.scheme}://{parts.netloc}")
