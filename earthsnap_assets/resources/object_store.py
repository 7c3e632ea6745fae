"""The object store (S3 or SeaweedFS) as a Dagster resource with a small verb API."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import boto3
import dagster as dg
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import Field

from earthsnap_assets.lake.storage import ConcurrentUpdate, StoredObject
from earthsnap_assets.settings import Settings

# Objects above this go up in parts: one PUT is capped at 5 GB on S3, and parts retry on their own.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
_MISSING = ("404", "NoSuchKey", "NotFound")


@lru_cache(maxsize=8)
def _client(endpoint: str | None, access_key: str, secret_key: str, region: str):
    """One thread-safe client per endpoint and process, created on first use (never at import)."""
    config = Config(
        s3={"addressing_style": "path"},
        max_pool_connections=32,
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None,
        region_name=region,
        config=config,
    )


class ObjectStore(dg.ConfigurableResource):
    """S3-compatible storage. Unset fields fall back to `Settings.from_env()` at run time."""

    endpoint_url: str | None = Field(default=None, description="S3 endpoint; None = EARTHSNAP_S3_ENDPOINT")
    access_key: str | None = Field(default=None, description="None = EARTHSNAP_S3_ACCESS_KEY")
    secret_key: str | None = Field(default=None, description="None = EARTHSNAP_S3_SECRET_KEY")
    region: str | None = None
    raw_bucket_name: str | None = Field(default=None, description="None = EARTHSNAP_RAW_BUCKET")
    lake_bucket_name: str | None = Field(default=None, description="None = EARTHSNAP_LAKE_BUCKET")

    @property
    def settings(self) -> Settings:
        return Settings.from_env()

    @property
    def raw_bucket(self) -> str:
        return self.raw_bucket_name or self.settings.raw_bucket

    @property
    def lake_bucket(self) -> str:
        return self.lake_bucket_name or self.settings.lake_bucket

    @property
    def client(self):
        s = self.settings
        endpoint = self.endpoint_url or s.s3_endpoint
        return _client(
            endpoint, self.access_key or s.access_key, self.secret_key or s.secret_key, self.region or s.region
        )

    def uri(self, bucket: str, key: str) -> str:
        return f"s3://{bucket}/{key}"

    def read(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def read_uri(self, uri: str) -> bytes:
        """The object an `s3://bucket/key` URI names (weights, artifacts referenced by URI)."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not uri.startswith("s3://") or not bucket or not key:
            raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
        return self.read(bucket, key)

    def write(self, bucket: str, key: str, data: bytes) -> None:
        if len(data) > MULTIPART_THRESHOLD:
            config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)
            self.client.upload_fileobj(io.BytesIO(data), bucket, key, Config=config)
        else:
            self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def read_versioned(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        """(body, ETag) of one GET, or None when the object does not exist."""
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise
        return response["Body"].read(), response["ETag"].strip('"')

    def write_if(self, bucket: str, key: str, data: bytes, expected_etag: str | None) -> str:
        """S3 conditional PUT: If-Match the ETag read before, or If-None-Match for a first write."""
        condition = {"IfNoneMatch": "*"} if expected_etag is None else {"IfMatch": f'"{expected_etag}"'}
        try:
            response = self.client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise ConcurrentUpdate(f"s3://{bucket}/{key} changed since it was read") from exc
            raise
        return response["ETag"].strip('"')

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise
        return True

    def list_objects(self, bucket: str, prefix: str, start_after: str = "") -> list[StoredObject]:
        """Every object under `prefix` (after `start_after`), sorted by key: a full listing never misses one."""
        found = []
        paginate = self.client.get_paginator("list_objects_v2").paginate
        options = {"StartAfter": start_after} if start_after else {}
        for page in paginate(Bucket=bucket, Prefix=prefix, **options):
            for item in page.get("Contents", []):
                found.append(StoredObject(item["Key"], item["ETag"].strip('"'), item["Size"], item["LastModified"]))
        return sorted(found, key=lambda o: o.key)

    def list_keys(self, bucket: str, prefix: str, start_after: str = "") -> list[str]:
        return [o.key for o in self.list_objects(bucket, prefix, start_after)]

    def list_level(self, bucket: str, prefix: str) -> tuple[list[str], list[str]]:
        """(folders, keys) one path level under `prefix` (`images/` -> species folders), not their objects."""
        folders, keys = [], []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            folders += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            keys += [item["Key"] for item in page.get("Contents", [])]
        return sorted(folders), sorted(keys)

    def delete_many(self, bucket: str, keys: list[str]) -> None:
        """Delete in batches of 1,000 (S3's limit per request); a key that is already gone is fine."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            response = self.client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            errors = response.get("Errors", [])
            if errors:
                raise RuntimeError(f"deleting from s3://{bucket} failed for {len(errors)} keys: {errors[:3]}")

    def ensure_bucket(self, bucket: str) -> None:
        """Create `bucket` unless it exists (idempotent)."""
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            self.client.create_bucket(Bucket=bucket)

    def upload_many(self, bucket: str, items: dict[str, bytes], threads: int = 16) -> None:
        """Write many small objects concurrently."""
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda kv: self.write(bucket, kv[0], kv[1]), items.items()))
