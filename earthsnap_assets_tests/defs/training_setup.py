"""Training everything once per test session (tiny models), shared by training and deployment tests."""

import shutil

import dagster as dg

from earthsnap_assets.definitions import defs

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
PARENT = ["parent_hyperparams", "parent_model", "parent_evaluation", "registered_parent", "flat_baseline_model"]
CHILD = ["child_hyperparams", "child_model", "child_evaluation", "registered_child"]


def tiny_config(min_accuracy: float = 0.0) -> dict:
    ops = {
        "parent_hyperparams": {"config": TINY},
        "child_hyperparams": {"config": TINY},
        "parent_model": {"config": TRAIN},
        "child_model": {"config": TRAIN},
        "flat_baseline_model": {"config": TRAIN},
        "registered_parent": {"config": {"min_accuracy": min_accuracy}},
        "registered_child": {"config": {"min_accuracy": min_accuracy}},
    }
    return {"ops": ops}


def meta(result, asset: str, partition: str | None = None) -> dict:
    events = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset and (partition is None or e.partition == partition)
    ]
    assert events, f"{asset} [{partition}] was not materialized"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def run(lake, names: list[str], config: dict, partition: str | None = None, raise_on_error: bool = True):
    assets = list(defs.assets)
    selection = dg.AssetSelection.assets(*names)
    return dg.materialize(
        assets,
        selection=selection,
        partition_key=partition,
        resources=lake.resources,
        instance=lake.instance,
        run_config={"ops": {k: v for k, v in config["ops"].items() if k in names}},
        raise_on_error=raise_on_error,
    )


def train_everything(lake, small_dataset, root):
    """Data with one one-species group (`solo`), then parent, flat baseline and every child trained."""
    shutil.copytree(small_dataset.root, root)
    rows = small_dataset.taxonomy_csv.read_text().splitlines()
    solo_species = rows[-1].split(",")[0]
    rows[-1] = f"{solo_species},solo,{rows[-1].split(',', 2)[2]}"
    (root / "taxonomy.csv").write_text("\n".join(rows) + "\n")
    lake.ingest(root, root / "taxonomy.csv")
    config = tiny_config()
    results = {"data": lake.build_data()}
    groups = lake.groups()
    results["parent"] = run(lake, PARENT, config)
    results["children"] = {g: run(lake, CHILD, config, partition=g) for g in groups}
    results["hierarchy"] = run(lake, ["hierarchical_evaluation"], config)
    return lake, groups, results
