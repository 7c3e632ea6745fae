"""The object store (S3 or SeaweedFS) as a Dagster resource with a small verb API."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import boto3
import dagster as dg
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import Field

from earthsnap_assets.ml.manifest import RawObject
from earthsnap_assets.settings import Settings


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

    def write(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list_objects(self, bucket: str, prefix: str) -> list[RawObject]:
        """Every object under `prefix`, sorted by key (a full listing: never misses an object)."""
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found.append(RawObject(key=item["Key"], etag=item["ETag"].strip('"'), size=item["Size"]))
        return sorted(found, key=lambda o: o.key)

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        return [o.key for o in self.list_objects(bucket, prefix)]

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
