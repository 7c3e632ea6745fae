"""Full training: the parent (groups), one child per species group, and the flat baseline."""

import dagster as dg

from earthsnap_assets.defs.automation import retrain_on_data_change
from earthsnap_assets.defs.compute import GPU_OP_TAGS, GPU_POOL
from earthsnap_assets.defs.partitions import species_group
from earthsnap_assets.defs.settings import ChildTrainingConfig, TrainingConfig
from earthsnap_assets.pipeline.starting_weights import ParentWeights, StartingPoint, configured, for_child
from earthsnap_assets.pipeline.tasks import index_of
from earthsnap_assets.pipeline.training import run_training, single_species
from earthsnap_assets.refs import DatasetRef, ModelRef
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore

PARENT_MODEL = dg.AssetKey("parent_model")


def parent_weights(instance: dg.DagsterInstance) -> ParentWeights | None:
    """The parent a child warm-starts from: its latest materialization (a declared dependency of the child,
    so the UI's lineage shows it), read from that event's metadata."""
    event = instance.get_latest_materialization_event(PARENT_MODEL)
    if event is None or event.asset_materialization is None:
        return None
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    if not meta.get("weights_uri"):
        return None
    return ParentWeights(str(meta["weights_uri"]), str(meta.get("backbone")), str(meta.get("mlflow_run_id", "")))


def starting_point(
    context, store: ObjectStore, config: TrainingConfig, kind: str, index, group
) -> StartingPoint | None:
    """Where training starts; None for a one-species group, which trains nothing (no weights are read)."""
    if single_species(index, kind, group):
        return None
    if kind == "child":
        parent = parent_weights(context.instance) if config.warm_start == "parent" else None
        return for_child(store, config.warm_start, parent, config.weights_source(), config.allow_download)
    return configured(store, config.weights_source(), config.allow_download)


def _train(context, store, registry, data: DatasetRef, kind, group, params: dict, config: TrainingConfig):
    index = index_of(store, data)
    per_class = config.per_class if kind == "parent" else None
    start = starting_point(context, store, config, kind, index, group)
    model = run_training(store, registry, index, kind, group, params, config.base(), per_class, start)
    metadata = {
        "dataset_version": model.dataset_version,
        "classes": dg.MetadataValue.json(list(model.classes)),
        "single_species": model.single_species,
    }
    if not model.single_species:
        metadata |= {
            "model_uri": model.model_uri,
            "mlflow_run_id": model.run_id,
            "val_accuracy": model.val_accuracy,
            "parameters": model.parameter_count,
            "train_seconds": round(model.train_seconds, 2),
            "backbone": model.params.get("backbone"),
            "resumed_from_epoch": str(model.params.get("resumed_from_epoch")),
            "weights_uri": model.weights_uri,
            "weights_sha256": model.weights_sha256,
            **dict(model.lineage),
        }
    return dg.Output(model, metadata=metadata)


@dg.asset(
    group_name="training",
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    kinds={"pytorch", "mlflow"},
    automation_condition=retrain_on_data_change(),
)
def parent_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    store: ObjectStore,
    registry: MlflowRegistry,
    parent_sample: DatasetRef,
    parent_hyperparams: dict,
) -> dg.Output[ModelRef]:
    """Routes a photo to its species group; trained on the data side's balanced sample of every group."""
    return _train(context, store, registry, parent_sample, "parent", None, parent_hyperparams, config)


@dg.asset(
    group_name="training",
    partitions_def=species_group,
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    kinds={"pytorch", "mlflow"},
    deps=[PARENT_MODEL],
    automation_condition=retrain_on_data_change(ignore=PARENT_MODEL),
)
def child_model(
    context: dg.AssetExecutionContext,
    config: ChildTrainingConfig,
    store: ObjectStore,
    registry: MlflowRegistry,
    dataset_splits: DatasetRef,
    child_hyperparams: dict,
) -> dg.Output[ModelRef]:
    """Names the species inside one group; a one-species group gets no network (P = 1). Starts from the
    parent's trained backbone (`warm_start`); a new parent does not retrain every child by itself."""
    group = context.partition_key
    return _train(context, store, registry, dataset_splits, "child", group, child_hyperparams, config)


@dg.asset(group_name="training", pool=GPU_POOL, op_tags=GPU_OP_TAGS, kinds={"pytorch", "mlflow"})
def flat_baseline_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    store: ObjectStore,
    registry: MlflowRegistry,
    parent_sample: DatasetRef,
    parent_hyperparams: dict,
) -> dg.Output[ModelRef]:
    """One network over every species with the parent's budget and data: what the hierarchy is measured against."""
    return _train(context, store, registry, parent_sample, "flat", None, parent_hyperparams, config)
