"""The lake's storage verbs: conditional writes, listings after a key, multipart, on memory and on real S3."""

import uuid

import pytest

from earthsnap_assets.lake.heads import commit_head, load_head
from earthsnap_assets.lake.storage import ConcurrentUpdate, MemoryBlobs
from earthsnap_assets.resources import object_store
from earthsnap_assets.resources.object_store import ObjectStore


def _conditional_writes(blobs, bucket: str) -> None:
    blobs.write_if(bucket, "head.json", b"v1", None)
    with pytest.raises(ConcurrentUpdate):
        blobs.write_if(bucket, "head.json", b"v1 again", None)  # only if it does not exist yet
    _, etag = blobs.read_versioned(bucket, "head.json")
    with pytest.raises(ConcurrentUpdate):
        blobs.write_if(bucket, "head.json", b"v2", "0" * 32)  # someone else's ETag
    blobs.write_if(bucket, "head.json", b"v2", etag)
    assert blobs.read(bucket, "head.json") == b"v2"
    assert blobs.read_versioned(bucket, "missing.json") is None
    head = load_head(blobs, bucket, "h.json")
    committed = commit_head(blobs, bucket, head, {"n": 1})
    with pytest.raises(ConcurrentUpdate):
        commit_head(blobs, bucket, head, {"n": 2})  # a stale head cannot move it
    commit_head(blobs, bucket, committed, {"n": 2})
    for key in ("log/001", "log/002", "log/003"):
        blobs.write(bucket, key, b"x")
    assert blobs.list_keys(bucket, "log/", start_after="log/001") == ["log/002", "log/003"]


def test_memory_blobs_behave_like_s3_for_conditional_writes():
    _conditional_writes(MemoryBlobs(), "lake")


@pytest.mark.stack
def test_seaweedfs_honours_conditional_writes_and_large_objects_go_up_in_parts(stack, monkeypatch):
    store = ObjectStore(lake_bucket_name=f"test-lake-{uuid.uuid4().hex[:8]}")
    store.ensure_bucket(store.lake_bucket)
    _conditional_writes(store, store.lake_bucket)
    monkeypatch.setattr(object_store, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    data = bytes(range(256)) * (6 * 1024 * 1024 // 256)
    store.write(store.lake_bucket, "big.bin", data)
    assert store.read(store.lake_bucket, "big.bin") == data
    assert store.list_objects(store.lake_bucket, "big.bin")[0].etag.endswith("-2")  # two parts
    store.delete_many(store.lake_bucket, ["big.bin", "log/001", "not-there"])
    assert not store.exists(store.lake_bucket, "big.bin")
