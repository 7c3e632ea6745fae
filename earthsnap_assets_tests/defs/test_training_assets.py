"""Tuning, training, evaluation and registration materialized in-process on the real stack (tiny models)."""

import json
import shutil

import dagster as dg
import pytest
from mlflow import MlflowClient

from earthsnap_assets.definitions import defs
from earthsnap_assets_tests.defs.conftest import fresh_lake

pytestmark = pytest.mark.stack

TINY = {
    "backbone_choices": ["test_convnext"],
    "epoch_choices": [1, 2],
    "trials": 2,
    "seconds": 60,
    "subset_per_class": 8,
    "batch_size": 16,
    "patience": 2,
}
TRAIN = {"batch_size": 16, "patience": 2}
DATA = {"image_size": 32}
PARENT = ["parent_hyperparams", "parent_model", "parent_evaluation", "registered_parent", "flat_baseline_model"]
CHILD = ["child_hyperparams", "child_model", "child_evaluation", "registered_child"]
DATA_ASSETS = ["raw_images", "taxonomy", "validated_manifest", "dataset_splits"]


def _config(min_accuracy: float = 0.0) -> dict:
    ops = {
        "dataset_splits": {"config": DATA},
        "parent_hyperparams": {"config": TINY},
        "child_hyperparams": {"config": TINY},
        "parent_model": {"config": TRAIN},
        "child_model": {"config": TRAIN},
        "flat_baseline_model": {"config": TRAIN},
        "registered_parent": {"config": {"min_accuracy": min_accuracy}},
        "registered_child": {"config": {"min_accuracy": min_accuracy}},
    }
    return {"ops": ops}


def _meta(result, asset: str, partition: str | None = None) -> dict:
    events = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset and (partition is None or e.partition == partition)
    ]
    assert events, f"{asset} [{partition}] was not materialized"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def _run(lake, names: list[str], config: dict, partition: str | None = None):
    assets = list(defs.assets)
    selection = dg.AssetSelection.assets(*names)
    return dg.materialize(
        assets,
        selection=selection,
        partition_key=partition,
        resources={**lake.resources, "registry": lake.registry},
        instance=lake.instance,
        run_config={"ops": {k: v for k, v in config["ops"].items() if k in names}},
    )


@pytest.fixture(scope="module")
def lake_for_training(stack):
    with fresh_lake() as buckets:
        yield buckets


@pytest.fixture(scope="module")
def trained(lake_for_training, small_dataset, tmp_path_factory):
    """Data with one one-species group (`solo`), then parent, flat baseline and every child trained."""
    lake = lake_for_training
    root = tmp_path_factory.mktemp("training") / "data"
    shutil.copytree(small_dataset.root, root)
    rows = small_dataset.taxonomy_csv.read_text().splitlines()
    solo_species = rows[-1].split(",")[0]
    rows[-1] = f"{solo_species},solo,{rows[-1].split(',', 2)[2]}"
    (root / "taxonomy.csv").write_text("\n".join(rows) + "\n")
    lake.ingest(root, root / "taxonomy.csv")
    config = _config()
    results = {"data": _run(lake, DATA_ASSETS, config)}
    groups = lake.instance.get_dynamic_partitions("species_group")
    results["parent"] = _run(lake, PARENT, config)
    results["children"] = {g: _run(lake, CHILD, config, partition=g) for g in groups}
    results["hierarchy"] = _run(lake, ["hierarchical_evaluation"], config)
    return lake, groups, results


def test_new_groups_become_partitions_and_everything_trains_and_registers(trained):
    lake, groups, results = trained
    assert "solo" in groups and len(groups) == 5
    parent = _meta(results["parent"], "registered_parent")
    client = MlflowClient(lake.registry.uri)
    version = client.get_model_version("earthsnap-parent", parent["version"])
    assert version.tags["approval"] == "pending" and version.tags["gate"] == "passed"
    assert version.tags["dataset_version"] == _meta(results["data"], "validated_manifest")["dataset_version"]
    assert float(version.tags["test_accuracy"]) >= 0.0 and version.tags["code_version"]
    assert version.tags["classes"].split(",") == sorted(groups)
    assert sorted(json.loads(version.tags["group_species"])) == sorted(groups)

    solo = results["children"]["solo"]
    assert _meta(solo, "child_model", "solo")["single_species"] is True
    assert _meta(solo, "registered_child", "solo")["registered"] is False
    other = next(g for g in groups if g != "solo")
    child = _meta(results["children"][other], "registered_child", other)
    assert child["registered_model"] == f"earthsnap-child-{other}" and child["approval"] == "pending"
    evaluation = _meta(results["children"][other], "child_evaluation", other)
    assert 0.0 <= evaluation["accuracy"] <= 1.0 and "confusion_matrix" in evaluation

    hierarchy = _meta(results["hierarchy"], "hierarchical_evaluation")
    assert "hierarchical (parent → child)" in hierarchy["comparison"]
    assert hierarchy["routing_errors"] + hierarchy["within_group_errors"] <= 1000
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
    rerun = _run(lake, CHILD, _config(min_accuracy=1.01), partition=other)
    meta = _meta(rerun, "registered_child", other)
    assert meta["gate"] == "failed" and "minimum" in meta["gate_reason"]
    tags = MlflowClient(lake.registry.uri).get_model_version(meta["registered_model"], meta["version"]).tags
    assert tags["gate"] == "failed" and tags["approval"] == "pending"
