"""The data assets materialized in-process on the real S3 (SeaweedFS) with a real Dagster instance."""

import shutil

import dagster as dg
import numpy as np
import pytest

from earthsnap_assets.definitions import defs
from earthsnap_assets.defs.manifests import validated_manifest
from earthsnap_assets.defs.raw_images import raw_images, taxonomy
from earthsnap_assets.defs.splits import dataset_splits
from earthsnap_assets.lake.storage import unpack_arrays
from earthsnap_assets.demo.synthetic import render_image

pytestmark = pytest.mark.stack
ASSETS = [raw_images, taxonomy, validated_manifest, dataset_splits]


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    assert events, f"{asset} was not materialized"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def test_definitions_load_with_the_data_graph_and_job():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_images", "taxonomy", "validated_manifest", "dataset_splits"} <= keys
    assert defs.resolve_job_def("data_pipeline") is not None


def test_data_pipeline_validates_versions_and_splits(lake, small_dataset):
    summary = lake.ingest(small_dataset.root, small_dataset.taxonomy_csv)
    assert summary.uploaded > small_dataset.good_images and not summary.failed
    result = lake.materialize(ASSETS)
    manifest = _metadata(result, "validated_manifest")
    assert manifest["accepted"] == small_dataset.good_images
    rejected = {row.split(" | ")[0].lstrip("| ") for row in manifest["rejections"].splitlines()[2:]}
    expected = {f"images/{path}" for path in small_dataset.bad_files}
    assert expected - {f"images/{p}" for p, r in small_dataset.bad_files.items() if r == "duplicate"} <= rejected
    store, version = lake.store, manifest["dataset_version"]
    for name in ("manifest.json", "accepted.jsonl", "rejected.jsonl", "qa_report.json"):
        assert store.exists(store.lake_bucket, f"manifests/{version}/{name}")
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["rejection_rate_below_threshold"] and checks["every_species_has_minimum_images"]
    splits = _metadata(result, "dataset_splits")
    assert splits["dataset_version"] == version
    assert splits["train_images"] + splits["val_images"] + splits["test_images"] == manifest["accepted"]
    dataset = store.read(store.lake_bucket, splits["dataset_uri"].split("/", 3)[3])
    assert b'"entries"' in dataset and splits["shards"] == 3 * 4  # one shard per split and group


def test_rerun_is_incremental_and_deterministic(lake, small_dataset, tmp_path):
    lake.ingest(small_dataset.root, small_dataset.taxonomy_csv)
    first = _metadata(lake.materialize(ASSETS), "validated_manifest")
    again = lake.materialize(ASSETS)
    assert _metadata(again, "validated_manifest")["dataset_version"] == first["dataset_version"]
    assert _metadata(again, "validated_manifest")["decoded_this_run"] == 0
    assert _metadata(again, "dataset_splits")["reused_existing_layout"] is True

    species = next(iter(small_dataset.species))
    extra = tmp_path / "extra"
    shutil.copytree(small_dataset.root, extra)
    render_image(species, np.random.default_rng(123), (400, 300)).save(extra / species / "new-photo.jpg")
    lake.ingest(extra, small_dataset.taxonomy_csv)
    grown = lake.materialize(ASSETS)
    meta = _metadata(grown, "validated_manifest")
    assert meta["decoded_this_run"] == 1 and meta["accepted"] == first["accepted"] + 1
    assert meta["dataset_version"] != first["dataset_version"]
    assert _metadata(grown, "dataset_splits")["preprocessed_this_run"] == 1
    store = lake.store
    assert store.exists(store.lake_bucket, f"manifests/{first['dataset_version']}/manifest.json")


def test_too_many_rejections_fail_the_blocking_check_and_stop_the_splits(lake, small_dataset):
    lake.ingest(small_dataset.root, small_dataset.taxonomy_csv)
    config = {"ops": {"validated_manifest": {"config": {"max_rejection_rate": 0.0}}}}
    result = lake.materialize(ASSETS, run_config=config, raise_on_error=False)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["rejection_rate_below_threshold"] is False
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "validated_manifest" in materialized and "dataset_splits" not in materialized


def test_a_broken_taxonomy_fails_with_the_line_and_keeps_stored_data(lake, small_dataset, tmp_path):
    lake.ingest(small_dataset.root, small_dataset.taxonomy_csv)
    version = _metadata(lake.materialize(ASSETS), "validated_manifest")["dataset_version"]
    bad = small_dataset.taxonomy_csv.read_text() + f"{next(iter(small_dataset.species))},other-group,x\n"
    lake.store.write(lake.store.raw_bucket, "taxonomy.csv", bad.encode())
    result = lake.materialize(ASSETS, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "species in two groups" in str(failure.event_specific_data.error) and "line" in str(
        failure.event_specific_data.error
    )
    store = lake.store
    assert store.exists(store.lake_bucket, f"manifests/{version}/accepted.jsonl")


def test_shards_are_readable_arrays_of_the_configured_size(lake, small_dataset):
    lake.ingest(small_dataset.root, small_dataset.taxonomy_csv)
    config = {"ops": {"dataset_splits": {"config": {"image_size": 32}}}}
    splits = _metadata(lake.materialize(ASSETS, run_config=config), "dataset_splits")
    store = lake.store
    prefix = splits["dataset_uri"].split("/", 3)[3].rsplit("/", 1)[0]
    keys = [k for k in store.list_keys(store.lake_bucket, prefix + "/shards/") if k.endswith(".npy")]
    arrays = [unpack_arrays(store.read(store.lake_bucket, k)) for k in keys]
    assert all(a.dtype == np.uint8 and a.shape[1:] == (32, 32, 3) for a in arrays)
    assert sum(len(a) for a in arrays) == splits["dagster/row_count"]
