"""Tuning, training, evaluation and registration materialized in-process on the real stack (tiny models)."""

import hashlib

import pytest
from mlflow import MlflowClient

from earthsnap_assets_tests.defs.training_setup import CHILD, TINY
from earthsnap_assets_tests.defs.training_setup import meta as _meta
from earthsnap_assets_tests.defs.training_setup import run as _run
from earthsnap_assets_tests.defs.training_setup import tiny_config as _config

pytestmark = pytest.mark.stack


def test_new_groups_become_partitions_and_everything_trains_and_registers(trained):
    lake, groups, results = trained
    assert "solo" in groups and len(groups) == 5
    parent = _meta(results["parent"], "registered_parent")
    client = MlflowClient(lake.registry.uri)
    version = client.get_model_version("earthsnap-parent", parent["version"])
    assert version.tags["gate"] == "passed" and "approval" in version.tags  # pending until a person decides
    assert version.tags["dataset_version"] == _meta(results["data"]["fan_in"], "dataset_version")["dataset_version"]
    assert float(version.tags["test_accuracy"]) >= 0.0 and version.tags["code_version"]
    assert version.tags["classes"].split(",") == sorted(groups)
    assert sorted(lake.registry.group_species(version.tags)) == sorted(groups)  # the mapping artifact
    assert version.tags["group_species_groups"] == str(len(groups)) and "group_species" not in version.tags

    solo = results["children"]["solo"]
    assert _meta(solo, "child_model", "solo")["single_species"] is True
    assert _meta(solo, "registered_child", "solo")["registered"] is False
    other = next(g for g in groups if g != "solo")
    child = _meta(results["children"][other], "registered_child", other)
    assert child["registered_model"] == f"earthsnap-child-{other}" and child["approval"] == "pending"
    # lineage: the parent started from scratch (CPU preset), every child from the parent's trained backbone
    parent_model = _meta(results["parent"], "parent_model")
    assert version.tags["init_from"] == "scratch" and version.tags["weights_sha256"] == parent_model["weights_sha256"]
    child_model = _meta(results["children"][other], "child_model", other)
    assert child_model["init_from"] == "parent" and child_model["init_sha256"] == parent_model["weights_sha256"]
    assert child_model["init_parent_run_id"] == parent_model["mlflow_run_id"]
    assert child_model["backbone"] == parent_model["backbone"]
    child_tags = client.get_model_version(child["registered_model"], child["version"]).tags
    assert child_tags["init_from"] == "parent" and child_tags["init_sha256"] == parent_model["weights_sha256"]
    stored = lake.store.read_uri(parent_model["weights_uri"])  # the bytes the sha256 names, in the lake
    assert hashlib.sha256(stored).hexdigest() == parent_model["weights_sha256"]
    evaluation = _meta(results["children"][other], "child_evaluation", other)
    assert 0.0 <= evaluation["accuracy"] <= 1.0 and "confusion_matrix" in evaluation

    hierarchy = _meta(results["hierarchy"], "hierarchical_evaluation")
    assert "hierarchical (parent → child)" in hierarchy["comparison"]
    assert hierarchy["routing_errors"] + hierarchy["within_group_errors"] <= 1000
    assert 0.0 <= hierarchy["full_top1_accuracy"] <= 1.0 and hierarchy["mean_groups_expanded"] >= 1.0
    assert hierarchy["routing_cost"]["images"] > 0  # routed vs every child, on the same test photos
    run = client.get_run(hierarchy["mlflow_run_id"])
    assert "hierarchical_top1_accuracy" in run.data.metrics and "flat_top1_accuracy" in run.data.metrics


def test_tuning_trials_are_nested_mlflow_runs(trained):
    lake, _groups, results = trained
    tuning_run = _meta(results["parent"], "parent_hyperparams")["tuning_run_id"]
    client = MlflowClient(lake.registry.uri)
    experiment = client.get_experiment_by_name(lake.registry.experiment)
    nested = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{tuning_run}'")
    assert len(nested) == TINY["trials"]


def test_backfilling_one_group_retrains_only_that_child(trained):
    lake, groups, _results = trained
    other = next(g for g in groups if g != "solo")
    rerun = _run(lake, CHILD, _config(), partition=other)
    materialized = {(e.asset_key.to_user_string(), e.partition) for e in rerun.get_asset_materialization_events()}
    assert materialized == {(name, other) for name in CHILD}  # no other group's child was touched


def test_gate_failure_is_recorded_on_the_version(trained):
    lake, groups, _results = trained
    other = next(g for g in groups if g != "solo")
    rerun = _run(lake, CHILD, _config(min_accuracy=1.01), partition=other, raise_on_error=False)
    assert not rerun.success  # a failed gate fails the step (blocking check): a red partition, never a green one
    meta = _meta(rerun, "registered_child", other)
    assert meta["gate"] == "failed" and "minimum" in meta["gate_reason"]
    tags = MlflowClient(lake.registry.uri).get_model_version(meta["registered_model"], meta["version"]).tags
    assert tags["gate"] == "failed" and tags["approval"] == "pending"
    # the gate is also a blocking asset check on the registered version: red in the Dagster UI, not green
    (check,) = [c for c in rerun.get_asset_check_evaluations() if c.check_name == "gate"]
    assert check.passed is False and check.severity.value == "ERROR" and check.blocking
    assert check.metadata["version"].value == meta["version"] and "minimum" in check.metadata["reason"].value


def test_passing_gate_is_a_green_check_and_registration_retries_after_an_outage(trained):
    from earthsnap_assets.definitions import defs
    from earthsnap_assets.defs.registry import RETRY

    _lake, _groups, results = trained
    (check,) = [c for c in results["parent"].get_asset_check_evaluations() if c.check_name == "gate"]
    assert check.passed is True and check.asset_key.to_user_string() == "registered_parent"
    for name in ("registered_parent", "registered_child"):
        node = defs.resolve_assets_def(name).node_def
        assert node.retry_policy == RETRY and RETRY.max_retries >= 2 and RETRY.delay >= 10


def test_garbage_collection_keeps_what_registered_models_were_trained_on(trained):
    from datetime import timedelta

    from earthsnap_assets.definitions import defs
    from earthsnap_assets.defs.maintenance import registered_data
    from earthsnap_assets.lake.gc import collect_garbage
    from earthsnap_assets.lake.tables import read_table

    lake, _groups, _results = trained
    models = registered_data(lake.registry)
    mine = [m for m in models if m.dataset_uri.startswith(f"s3://{lake.store.lake_bucket}/")]
    assert mine and {m.model for m in mine} >= {"earthsnap-parent"}
    dry = lake.materialize(list(defs.assets), selection=["lake_garbage_collection"])
    assert dry.success
    store = lake.store
    orphan = "datasets/l-orphan/nobody/shards/train/deadbeef.npy"  # what a crashed step could leave behind
    store.write(store.lake_bucket, orphan, b"not referenced by anything")
    result = collect_garbage(store, store.lake_bucket, models, keep_versions=0, min_age=timedelta(0), dry_run=False)
    assert orphan in result.garbage and not store.exists(store.lake_bucket, orphan)
    for model in mine:  # every registered version's training index and its shards are still there
        index_key = model.dataset_uri.removeprefix(f"s3://{store.lake_bucket}/")
        shards = set(read_table(store, store.lake_bucket, index_key)["shard"].to_pylist())
        assert all(store.exists(store.lake_bucket, key) for key in shards), model
