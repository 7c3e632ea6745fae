"""Test-split evaluation of each model, and of the hierarchy end to end against the flat baseline."""

import base64

import dagster as dg
from pydantic import Field

from earthsnap_assets.defs.automation import retrain_on_data_change
from earthsnap_assets.defs.partitions import species_group
from earthsnap_assets.ml.evaluate import report_markdown
from earthsnap_assets.ml.routing import RoutingConfig
from earthsnap_assets.pipeline.evaluation import (
    HierarchySettings,
    comparison_markdown,
    evaluate_hierarchy,
    evaluate_model,
    evaluation_batches,
)
from earthsnap_assets.pipeline.tasks import index_of
from earthsnap_assets.refs import DatasetRef, EvaluationRef, ModelRef
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore

DEFAULT_ROUTING = RoutingConfig()


def _evaluate(store, registry, data: DatasetRef, model: ModelRef) -> dg.Output[EvaluationRef]:
    index = index_of(store, data)
    result = evaluate_model(store, registry, index, model)
    headline = result.report.headline()
    metadata = {
        **headline,
        "test_images": result.report.n,
        "per_class": dg.MetadataValue.md(report_markdown(result.report)),
    }
    if result.confusion_png:
        encoded = base64.b64encode(result.confusion_png).decode()
        metadata["confusion_matrix"] = dg.MetadataValue.md(f"![confusion matrix](data:image/png;base64,{encoded})")
        metadata["mlflow_run_id"] = model.run_id
    return dg.Output(EvaluationRef(model.task, model.group, model.run_id, headline), metadata=metadata)


@dg.asset(group_name="evaluation", kinds={"mlflow"}, automation_condition=retrain_on_data_change())
def parent_evaluation(
    store: ObjectStore, registry: MlflowRegistry, parent_sample: DatasetRef, parent_model: ModelRef
) -> dg.Output[EvaluationRef]:
    """Accuracy, top-k, macro-F1, per-class scores, confusion matrix, calibration and latency of the parent."""
    return _evaluate(store, registry, parent_sample, parent_model)


@dg.asset(
    group_name="evaluation",
    partitions_def=species_group,
    kinds={"mlflow"},
    automation_condition=retrain_on_data_change(),
)
def child_evaluation(
    store: ObjectStore, registry: MlflowRegistry, dataset_splits: DatasetRef, child_model: ModelRef
) -> dg.Output[EvaluationRef]:
    """The same report for one group's child model."""
    return _evaluate(store, registry, dataset_splits, child_model)


class HierarchicalEvaluationConfig(dg.Config):
    """Serving's routing (defaults: `ml/routing.py`) and the memory bounds of the streamed evaluation."""

    route_min_groups: int = Field(DEFAULT_ROUTING.min_groups, description="groups a photo always expands")
    route_mass: float = Field(DEFAULT_ROUTING.mass, description="expand groups until their P reaches this")
    route_max_groups: int = Field(DEFAULT_ROUTING.max_groups, description="most groups a photo expands")
    confidence_threshold: float = Field(0.5, description="serving's back-off threshold (group-level answer rate)")
    batch_size: int = Field(256, description="test photos per batch")
    max_children_in_memory: int = Field(64, description="children loaded at once (least recently used go)")
    full_comparison_images: int = Field(2000, description="photos sampled for routed vs full top-1")

    def settings(self) -> HierarchySettings:
        routing = RoutingConfig(self.route_min_groups, self.route_mass, self.route_max_groups)
        return HierarchySettings(
            routing=routing,
            confidence_threshold=self.confidence_threshold,
            max_children_in_memory=self.max_children_in_memory,
            full_comparison_images=self.full_comparison_images,
        )


@dg.asset(group_name="evaluation", kinds={"mlflow"})
def hierarchical_evaluation(
    config: HierarchicalEvaluationConfig,
    store: ObjectStore,
    registry: MlflowRegistry,
    parent_sample: DatasetRef,
    parent_model: ModelRef,
    child_model: dict[str, ModelRef],
    flat_baseline_model: ModelRef,
) -> dg.MaterializeResult:
    """Parent -> routed children on the parent sample's test split (serving's routing), streamed in batches:
    routing vs within-group errors, what routing costs against running every child, and the flat model."""
    index = index_of(store, parent_sample)
    missing = [g for g in index.groups if g not in child_model]
    if missing:
        raise dg.Failure(f"no child model for groups {missing}: materialize child_model for those partitions first")
    stale = [g for g in index.groups if list(child_model[g].classes) != index.species_of(g)]
    if stale:
        raise dg.Failure(f"child models of {stale} were trained on other species than {index.dataset_version} has")
    children = {g: child_model[g] for g in index.groups}
    group_species = {g: index.species_of(g) for g in index.groups}
    batches = evaluation_batches(store, index, config.batch_size)
    evaluation = evaluate_hierarchy(
        batches, group_species, registry, parent_model, children, flat_baseline_model, config.settings()
    )
    comparison = evaluation.comparison
    table = comparison_markdown(comparison)
    with registry.run("hierarchical-evaluation", {"dataset_version": index.dataset_version}) as run_id:
        h, f = comparison["hierarchical"], comparison["flat"]
        registry.log_metrics(run_id, {f"hierarchical_{k}": v for k, v in h.items() if isinstance(v, int | float)})
        registry.log_metrics(run_id, {f"flat_{k}": v for k, v in f.items() if isinstance(v, int | float)})
        cost = {k: v for k, v in comparison["routing_cost"].items() if isinstance(v, int | float)}
        registry.log_metrics(run_id, {f"routing_cost_{k}": v for k, v in cost.items()})
        registry.log_json(run_id, "comparison.json", comparison)
        registry.log_bytes(run_id, "comparison.md", table.encode())
        for path, png in evaluation.plots.items():
            registry.log_bytes(run_id, path, png)
    h, cost = comparison["hierarchical"], comparison["routing_cost"]
    routing_png = base64.b64encode(evaluation.plots["plots/routing_confusion.png"]).decode()
    return dg.MaterializeResult(
        metadata={
            "comparison": dg.MetadataValue.md(table),
            "top1_accuracy": h["top1_accuracy"],
            "top5_accuracy": h["top5_accuracy"],
            "routing_errors": h["routing_errors"],
            "within_group_errors": h["within_group_errors"],
            "mean_groups_expanded": h["mean_groups_expanded"],
            "full_top1_accuracy": cost.get("full_top1_accuracy", 0.0),
            "routed_minus_full_points": cost.get("routed_minus_full_points", 0.0),
            "routing_cost": dg.MetadataValue.json(cost),
            "routing_confusion": dg.MetadataValue.md(f"![routing confusion](data:image/png;base64,{routing_png})"),
            "flat_top1_accuracy": comparison["flat"]["top1_accuracy"],
            "mlflow_run_id": run_id,
            "dataset_version": index.dataset_version,
        }
    )
