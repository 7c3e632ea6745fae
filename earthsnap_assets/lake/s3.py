"""A plain boto3 `Blobs` for processes without Dagster (the serving endpoint).

`resources/object_store.py` is the Dagster resource the pipeline uses; the endpoint must not import
Dagster, and it needs different timeouts: a request log can always wait for the next retry (it spools),
so a lake that is down should fail a write in seconds rather than block the writer for minutes.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from earthsnap_assets.settings import Settings

_MISSING = ("404", "NoSuchKey", "NotFound")


def s3_client(
    settings: Settings, *, connect_timeout: float = 2.0, read_timeout: float = 10.0, attempts: int = 2
) -> Any:
    """A thread-safe boto3 S3 client for the settings' endpoint; creating it opens no connection."""
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path"},
        max_pool_connections=16,
        retries={"max_attempts": attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.access_key or None,
        aws_secret_access_key=settings.secret_key or None,
        region_name=settings.region,
        config=config,
    )


class S3Blobs:
    """The four `Blobs` verbs over one boto3 client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings, **timeouts: Any) -> S3Blobs:
        return cls(s3_client(settings, **timeouts))

    def read(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def write(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise
        return True

    def list_keys(self, bucket: str, prefix: str, start_after: str = "") -> list[str]:
        options = {"StartAfter": start_after} if start_after else {}
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, **options):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return sorted(keys)
