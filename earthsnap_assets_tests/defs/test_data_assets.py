"""The data assets materialized in-process on the real S3 (SeaweedFS) with a real Dagster instance."""

import shutil

import dagster as dg
import numpy as np
import pytest

from earthsnap_assets.definitions import defs
from earthsnap_assets.demo.synthetic import render_image
from earthsnap_assets.lake.layouts import read_shard
from earthsnap_assets.lake.manifest import load_segment
from earthsnap_assets.lake.tables import read_table
from earthsnap_assets.lake.versions import verify_version
from earthsnap_assets.resources.dataset import DatasetSettings

pytestmark = pytest.mark.stack
DATA_CHAIN = ["raw_images", "validated_manifest", "dataset_splits"]


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    assert events, f"{asset} was not materialized"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def _materialized(result: dg.ExecuteInProcessResult) -> set[tuple[str, str | None]]:
    return {(e.asset_key.to_user_string(), e.partition) for e in result.get_asset_materialization_events()}


def test_definitions_have_the_partitioned_data_graph_and_its_jobs():
    graph = defs.resolve_asset_graph()
    for name in DATA_CHAIN:
        assert graph.get(dg.AssetKey(name)).partitions_def.name == "species_group"
    for name in ("taxonomy", "dataset_version", "parent_sample"):
        assert graph.get(dg.AssetKey(name)).partitions_def is None  # small fan-ins over the groups
    assert defs.resolve_job_def("data_pipeline").partitions_def.name == "species_group"
    assert defs.resolve_job_def("dataset_release") is not None


def test_every_group_validates_versions_and_splits_its_own_data(lake, small_dataset):
    summary = lake.ingest(small_dataset.root, small_dataset.taxonomy_csv)
    assert summary.uploaded > small_dataset.good_images and not summary.failed
    results = lake.build_data()
    groups = lake.groups()
    assert len(groups) == 4 and all(results[g].success for g in groups)
    assert "unknown-species" in _metadata(results["taxonomy"], "taxonomy")["unknown_species_folders"]
    accepted = sum(_metadata(results[g], "validated_manifest")["accepted"] for g in groups)
    assert accepted == small_dataset.good_images
    store = lake.store
    reasons = {}
    for group in groups:
        _, segment = load_segment(store, store.lake_bucket, group)
        reasons |= {r["key"]: r["reason"] for r in segment.to_pylist() if r["verdict"] == "rejected"}
        checks = {c.check_name: c.passed for c in results[group].get_asset_check_evaluations()}
        assert checks["rejection_rate_below_threshold"] and checks["every_species_has_minimum_images"]
        splits = _metadata(results[group], "dataset_splits")
        manifest = _metadata(results[group], "validated_manifest")
        assert splits["train_images"] + splits["val_images"] + splits["test_images"] == manifest["accepted"]
        assert splits["shards"] == 3  # one shard per split: the group's own
    expected = {f"images/{path}": reason for path, reason in small_dataset.bad_files.items() if "unknown" not in path}
    assert {key: reasons.get(key) for key in expected} == expected
    version = _metadata(results["fan_in"], "dataset_version")
    assert version["accepted"] == small_dataset.good_images and version["groups"] == 4
    assert verify_version(store, store.lake_bucket, version["dataset_version"], lake.dataset.manifest()) == []
    sample = _metadata(results["fan_in"], "parent_sample")
    assert sample["dataset_version"] == version["dataset_version"] and sample["moved_on"] is True
    assert sample["train_images"] > 0 and sample["test_images"] > 0


def test_rerun_is_incremental_deterministic_and_touches_only_the_changed_group(lake, small_dataset, tmp_path):
    lake.ingest(small_dataset.root, small_dataset.taxonomy_csv)
    first = lake.build_data()
    groups = lake.groups()
    again = lake.build_data()
    for group in groups:
        assert _metadata(again["intake"][group], "raw_images")["decoded_this_run"] == 0
        assert _metadata(again[group], "dataset_splits")["reused_existing_layout"] is True
    version = _metadata(first["fan_in"], "dataset_version")["dataset_version"]
    assert _metadata(again["fan_in"], "dataset_version")["dataset_version"] == version

    species = next(iter(small_dataset.species))
    touched = small_dataset.species[species]
    extra = tmp_path / "extra"
    shutil.copytree(small_dataset.root, extra)
    render_image(species, np.random.default_rng(123), (400, 300)).save(extra / species / "new-photo.jpg")
    lake.capture()  # start watching the raw bucket's events
    lake.ingest(extra, small_dataset.taxonomy_csv)
    captured = lake.capture()
    assert captured.events == 1 and list(captured.batches) == [touched]
    grown = lake.build_data()
    for group in groups:
        intake = _metadata(grown["intake"][group], "raw_images")
        manifest = _metadata(grown[group], "validated_manifest")
        if group == touched:
            assert intake["decoded_this_run"] == 1 and manifest["changed_rows"] == 1
            assert manifest["group_version"] != _metadata(first[group], "validated_manifest")["group_version"]
            assert _metadata(grown[group], "dataset_splits")["rows_added"] == 1
        else:
            assert intake["decoded_this_run"] == 0 and manifest["changed_rows"] == 0
            assert manifest["group_version"] == _metadata(first[group], "validated_manifest")["group_version"]
    assert _metadata(grown["fan_in"], "dataset_version")["dataset_version"] != version
    sample = _metadata(grown["fan_in"], "parent_sample")
    assert sample["groups_resampled"] == 1 and sample["groups_reused"] == 3
    assert sample["moved_on"] is False  # one photo is far below the parent's retraining share
    store = lake.store
    assert store.exists(store.lake_bucket, f"versions/{version}/manifest.json")  # the old version stays


def test_too_many_rejections_fail_the_blocking_check_and_stop_the_splits(lake, small_dataset):
    lake.ingest(small_dataset.root, small_dataset.taxonomy_csv)
    lake.dataset = DatasetSettings(**{**lake.dataset.model_dump(), "max_rejection_rate": 0.0})
    results = lake.build_data(raise_on_error=False)
    group = small_dataset.species[next(iter(small_dataset.species))]  # its group holds the bad files
    checks = {c.check_name: c.passed for c in results[group].get_asset_check_evaluations()}
    assert checks["rejection_rate_below_threshold"] is False
    assert ("validated_manifest", group) in _materialized(results[group])
    assert ("dataset_splits", group) not in _materialized(results[group])


def test_a_broken_taxonomy_fails_with_the_line_and_keeps_stored_data(lake, small_dataset):
    lake.ingest(small_dataset.root, small_dataset.taxonomy_csv)
    version = _metadata(lake.build_data()["fan_in"], "dataset_version")["dataset_version"]
    bad = small_dataset.taxonomy_csv.read_text() + f"{next(iter(small_dataset.species))},other-group,x\n"
    lake.store.write(lake.store.raw_bucket, "taxonomy.csv", bad.encode())
    result = lake.materialize(list(defs.assets), selection=["taxonomy"], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "species in two groups" in message and "line" in message
    store = lake.store
    assert store.exists(store.lake_bucket, f"versions/{version}/manifest.json")
    assert lake.groups() == sorted(set(small_dataset.species.values()))  # partitions untouched


def test_shards_hold_arrays_of_the_configured_size(lake, small_dataset):
    lake.ingest(small_dataset.root, small_dataset.taxonomy_csv)
    results = lake.build_data()
    store = lake.store
    group = lake.groups()[0]
    splits = _metadata(results[group], "dataset_splits")
    index = read_table(store, store.lake_bucket, splits["index_uri"].split("/", 3)[3])
    arrays = {key: read_shard(store, store.lake_bucket, key) for key in set(index["shard"].to_pylist())}
    assert all(a.dtype == np.uint8 and a.shape[1:] == (32, 32, 3) for a in arrays.values())
    assert sum(len(a) for a in arrays.values()) == splits["dagster/row_count"]
