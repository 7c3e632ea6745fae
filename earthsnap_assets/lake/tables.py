"""Parquet in the lake: immutable, content-addressed files written once and read by any engine.

Tables are plain Parquet (pyarrow) rather than Delta Lake or Iceberg: every group has exactly one writer
at a time (its Dagster partition run) and commits by moving one small head object with an S3 conditional
write (`lake/heads.py`), which is all the transaction support these tables need. The files stay readable
by DuckDB, Spark or Athena without our code.
"""

from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.parquet as pq

from earthsnap_assets.lake.storage import Blobs


def table_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", write_statistics=True)
    return buffer.getvalue()


def content_digest(data: bytes, length: int = 24) -> str:
    return hashlib.sha256(data).hexdigest()[:length]


def read_table(blobs: Blobs, bucket: str, key: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(blobs.read(bucket, key)), columns=columns)


def write_table(blobs: Blobs, bucket: str, key: str, table: pa.Table) -> None:
    blobs.write(bucket, key, table_bytes(table))


def put_content_addressed(blobs: Blobs, bucket: str, key_of, data: bytes) -> str:
    """Write `data` under the key `key_of(digest)` names; an identical file already there is not rewritten."""
    key = key_of(content_digest(data))
    if not blobs.exists(bucket, key):
        blobs.write(bucket, key, data)
    return key


def concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """Tables of one schema as one (an empty list gives an empty table of that schema)."""
    tables = [t.cast(schema) if t.schema != schema else t for t in tables]
    return pa.concat_tables(tables) if tables else schema.empty_table()
