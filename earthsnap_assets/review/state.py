"""The review queue's state in the lake, under `paths.review_prefix(group)` (one module names every key).

review/photos/<sha256>                         the photo Label Studio shows (copied from the kept request photo)
review/<g>/queued/<sha256>.json                one per photo sent to review: its task, reason and answer
review/<g>/tasks/day=<day>/<hhmmss>-<h>.parquet  the tasks one queue run created (for analysis)
review/<g>/labels/<sha256>.json                the label written back to the raw bucket (written once)
review/<g>/outcomes/<hhmmss>-<h>.parquet       every collected annotation: accepted, unsure, rejected, skipped
review/<g>/cursor.json                         where collecting annotations of the group's project resumes
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from earthsnap_assets.hashing import fingerprint
from earthsnap_assets.lake import paths

REVIEW_PHOTOS_PREFIX = "review/photos/"


def queued_key(group: str, sha256: str) -> str:
    return f"{paths.review_prefix(group)}queued/{sha256}.json"


def tasks_batch_key(group: str, day: str, digest: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%H%M%S")
    return f"{paths.review_prefix(group)}tasks/day={paths.check_day(day)}/{stamp}-{digest}.parquet"


def label_key(group: str, sha256: str) -> str:
    return f"{paths.review_prefix(group)}labels/{sha256}.json"


def outcomes_prefix(group: str) -> str:
    return f"{paths.review_prefix(group)}outcomes/"


def outcomes_batch_key(group: str, digest: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    return f"{outcomes_prefix(group)}{stamp}-{digest}.parquet"


def cursor_key(group: str) -> str:
    return f"{paths.review_prefix(group)}cursor.json"


def parquet_bytes(rows: list[dict], schema: pa.Schema) -> tuple[bytes, str]:
    """A Parquet file of `rows` and a short digest of its content (names batches, so a rewrite is the same key)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue(), fingerprint(rows)[:16]


def read_tables(store, bucket: str, prefixes: list[str], schema: pa.Schema | None = None) -> pa.Table | None:
    """Every Parquet batch under `prefixes` as one table (None when there is none)."""
    tables = []
    for prefix in prefixes:
        for key in store.list_keys(bucket, prefix):
            if key.endswith(".parquet"):
                tables.append(pq.read_table(io.BytesIO(store.read(bucket, key))))
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="default")
    return table.select(schema.names) if schema is not None else table
