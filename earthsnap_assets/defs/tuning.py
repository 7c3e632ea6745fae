"""Hyperparameter search for the parent and for each group's child (short trials on a subset)."""

import dagster as dg

from earthsnap_assets.defs.automation import retrain_on_data_change
from earthsnap_assets.defs.compute import GPU_OP_TAGS, GPU_POOL
from earthsnap_assets.defs.partitions import species_group
from earthsnap_assets.defs.settings import ChildTuningConfig, TuningConfig
from earthsnap_assets.defs.training import PARENT_MODEL, starting_point
from earthsnap_assets.pipeline.tasks import index_of
from earthsnap_assets.pipeline.training import run_tuning
from earthsnap_assets.refs import DatasetRef
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore


def _tune(context, store, registry, data: DatasetRef, kind: str, group: str | None, config: TuningConfig):
    index = index_of(store, data)
    start = starting_point(context, store, config, kind, index, group)
    space, budget, base = config.space(), config.budget(), config.base()
    best = run_tuning(store, registry, index, kind, group, space, budget, base, config.subset(), start)
    metadata = {k: v for k, v in best.items() if isinstance(v, int | float | str | bool)}
    return dg.Output(best, metadata={**metadata, "dataset_version": data.data_version})


@dg.asset(
    group_name="training",
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    kinds={"optuna", "mlflow"},
    automation_condition=retrain_on_data_change(),
)
def parent_hyperparams(
    context: dg.AssetExecutionContext,
    config: TuningConfig,
    store: ObjectStore,
    registry: MlflowRegistry,
    parent_sample: DatasetRef,
):
    """Best backbone / learning rate / weight decay / epochs for the parent (routes photos to groups)."""
    return _tune(context, store, registry, parent_sample, "parent", None, config)


@dg.asset(
    group_name="training",
    partitions_def=species_group,
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    kinds={"optuna", "mlflow"},
    deps=[PARENT_MODEL],
    automation_condition=retrain_on_data_change(ignore=PARENT_MODEL),
)
def child_hyperparams(
    context: dg.AssetExecutionContext,
    config: ChildTuningConfig,
    store: ObjectStore,
    registry: MlflowRegistry,
    dataset_splits: DatasetRef,
):
    """Best hyperparameters of one group's child model, trials starting where its training will (the
    parent's backbone by default); a one-species group needs none."""
    return _tune(context, store, registry, dataset_splits, "child", context.partition_key, config)
