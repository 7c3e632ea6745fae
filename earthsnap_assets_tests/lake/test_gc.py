"""Garbage collection never deletes what a registered model or a current state needs, and does delete the rest."""

from datetime import UTC, datetime, timedelta

import numpy as np

from earthsnap_assets.lake.gc import ModelData, collect_garbage
from earthsnap_assets.ml.data import child_task, load_split, parent_task
from earthsnap_assets.pipeline.tasks import index_of
from earthsnap_assets_tests.lake.harness import Lake
from earthsnap_assets_tests.ml.training_fixtures import photo


def _grow(lake: Lake, tag: str, n: int = 6):
    for i in range(n):
        lake.put(f"images/moth/{tag}-{i}.jpg", photo(ord(tag) * 100 + i))
        lake.put(f"images/rose/{tag}-{i}.jpg", photo(ord(tag) * 100 + 50 + i))
    return lake.run()


def _models(prepared) -> list[ModelData]:
    child = prepared.group_refs["insects"]
    parent = prepared.sample_ref
    return [
        ModelData("earthsnap-parent", "1", parent.data_version, parent.uri),
        ModelData("earthsnap-child-insects", "1", child.data_version, child.uri),
    ]


def _readable(lake: Lake, prepared) -> None:
    parent = index_of(lake.blobs, prepared.sample_ref)
    child = index_of(lake.blobs, prepared.group_refs["insects"])
    for split in ("train", "val", "test"):
        assert len(load_split(lake.blobs, "lake", parent, split, parent_task(parent))) > 0
        assert len(load_split(lake.blobs, "lake", child, split, child_task(child, "insects"))) > 0


def test_gc_keeps_registered_and_current_data_and_deletes_what_nothing_needs():
    lake = Lake()
    first = _grow(lake, "a")
    registered = _models(first)
    for tag in ("b", "c", "d"):
        latest = _grow(lake, tag)
    later = datetime.now(UTC) + timedelta(days=1)
    dry = collect_garbage(lake.blobs, "lake", registered, keep_versions=1, min_age=timedelta(hours=6), now=later)
    assert dry.garbage and dry.dry_run
    before = set(lake.blobs.objects)
    assert set(lake.blobs.objects) == before  # a dry run deletes nothing
    young = collect_garbage(lake.blobs, "lake", registered, keep_versions=1, dry_run=False)
    assert young.garbage == []  # everything was written just now: a running step's files are safe

    done = collect_garbage(
        lake.blobs, "lake", registered, keep_versions=1, min_age=timedelta(hours=6), dry_run=False, now=later
    )
    assert set(done.garbage) == set(dry.garbage) and done.by_prefix.get("changes/", 0) > 0
    assert all(("lake", key) not in lake.blobs.objects for key in done.garbage)
    _readable(lake, first)  # what the registered models were trained on is all still there
    _readable(lake, latest)  # and so is the current state
    assert lake.run().version.dataset_version == latest.version.dataset_version  # nothing current was lost
    middle_only = {k for k in dry.garbage if k.startswith("versions/")}
    assert middle_only and not any(first.version.dataset_version in k for k in middle_only)


def test_without_registered_models_an_old_version_is_collected():
    lake = Lake()
    first = _grow(lake, "a")
    _grow(lake, "b")
    later = datetime.now(UTC) + timedelta(days=1)
    result = collect_garbage(lake.blobs, "lake", [], keep_versions=1, min_age=timedelta(0), dry_run=False, now=later)
    assert f"versions/{first.version.dataset_version}/manifest.json" in result.garbage
    assert np.isfinite(result.garbage_bytes) and result.garbage_bytes > 0
