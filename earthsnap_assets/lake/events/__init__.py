"""Change capture for the raw bucket: what changed since a cursor, with bounded work per poll.

Listing the whole raw bucket every sensor tick stops scaling at ~10^5-10^6 objects, so the sensor asks an
*event source* what changed instead. Two sources, one contract (`EventSource.poll`):

- `FilerEventSource` (local stack): SeaweedFS's own metadata-change log, read with `weed filer.meta.tail`
  over a window from just before the cursor up to now; the cursor is a filer timestamp.
- `SqsEventSource` (AWS): an SQS queue fed by S3 Event Notifications (plain, through SNS, or through
  EventBridge); the queue is the cursor, and `Poll.ack` deletes what was recorded.

Both deliver at least once: a poll whose events were not durably recorded is simply repeated (same cursor,
or the SQS messages become visible again), so whoever records events must upsert by key and keep the
event with the highest `ts_ns` per key. What no source covers, by design: history before the sensor first
polled (a cursor of `None` means "from now on") and changes a source can lose (SQS retention, a pruned
filer log, a versioned bucket on the filer). The initial full listing and the scheduled reconciliation
cover those, and report them as `source="reconciliation"`.

Pure parsing (`parse_filer_stream`, `parse_s3_event_message`) is separate from I/O so it is unit-tested
from captured output; the I/O is a subprocess (filer) or a boto3 SQS client (AWS).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from earthsnap_assets.lake.events.base import DELETE, PUT, EventSource, EventSourceError, Poll, RawEvent
from earthsnap_assets.lake.events.filer import FilerEventSource, iter_filer_records, parse_filer_stream
from earthsnap_assets.lake.events.sqs import SqsEventSource, parse_s3_event_message

__all__ = [
    "DELETE",
    "PUT",
    "EventSource",
    "EventSourceError",
    "FilerEventSource",
    "Poll",
    "RawEvent",
    "SqsEventSource",
    "event_source_from_url",
    "iter_filer_records",
    "parse_filer_stream",
    "parse_s3_event_message",
]


def event_source_from_url(url: str, bucket: str, prefix: str = "") -> EventSource:
    """The event source a URL names.

    - `filer://host:port`: the SeaweedFS filer's metadata log (HTTP port; gRPC is port + 10000).
    - `https://sqs.<region>.amazonaws.com/<account>/<queue>` or `sqs://<same without https://>`: the SQS
      queue fed by the bucket's S3 Event Notifications; `sqs+http://host:port/...` for a local SQS.
    """
    parts = urlsplit(url)
    if parts.scheme == "filer":
        if not parts.hostname or not parts.port or parts.path not in ("", "/"):
            raise ValueError(f"a filer event source URL is filer://host:port, got {url!r}")
        return FilerEventSource(parts.netloc, bucket, prefix)
    if parts.scheme in ("sqs", "sqs+https", "sqs+http") and parts.netloc and parts.path.strip("/"):
        scheme = "http" if parts.scheme == "sqs+http" else "https"
        return SqsEventSource(f"{scheme}://{parts.netloc}{parts.path}", bucket, prefix=prefix)
    if parts.scheme == "https" and (parts.hostname or "").startswith("sqs.") and parts.path.strip("/"):
        return SqsEventSource(url, bucket, prefix=prefix)
    raise ValueError(
        f"unknown event source URL {url!r}: expected filer://host:port (SeaweedFS) or an SQS queue URL "
        "(https://sqs.<region>.amazonaws.com/<account>/<queue>, sqs://..., sqs+http://host:port/...)"
    )
