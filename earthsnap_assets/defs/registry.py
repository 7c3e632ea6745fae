"""Registered model versions in MLflow, pending a person's approval, with the automated gate's verdict."""

import dagster as dg

from earthsnap_assets.defs.automation import retrain_on_data_change
from earthsnap_assets.defs.partitions import species_group
from earthsnap_assets.defs.settings import ChildGateConfig, GateConfig
from earthsnap_assets.pipeline.registration import register
from earthsnap_assets.refs import DatasetRef, EvaluationRef, ModelRef
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry


def _register(
    registry: MlflowRegistry,
    model: ModelRef,
    evaluation: EvaluationRef,
    config: GateConfig,
    group_species: dict[str, list[str]] | None = None,
):
    if model.single_species:
        return dg.Output(
            {"registered": False, "reason": "one-species group: no network"}, metadata={"registered": False}
        )
    version = register(
        registry, model, evaluation.metrics, config.min_accuracy, config.tolerance, group_species=group_species
    )
    metadata = {
        "registered_model": version.name,
        "version": version.version,
        "gate": version.gate.tag,
        "gate_reason": version.gate.reason,
        "approval": "pending",
        "dataset_version": model.dataset_version,
        **{k: v for k, v in version.tags.items() if k.startswith("group_species_")},
    }
    value = {"registered": True, "name": version.name, "version": version.version, "gate": version.gate.tag}
    return dg.Output(value, metadata=metadata)


@dg.asset(group_name="registry", kinds={"mlflow"}, automation_condition=retrain_on_data_change())
def registered_parent(
    config: GateConfig,
    registry: MlflowRegistry,
    parent_sample: DatasetRef,
    parent_model: ModelRef,
    parent_evaluation: EvaluationRef,
):
    """A new version of `earthsnap-parent`, tagged `approval=pending` and with its gate result.

    Its group -> species mapping (every species the app knows, so serving knows one-species groups) is an
    artifact of the version's run; the version's tags hold its URI, sha256 and counts.
    """
    group_species = {g: list(species) for g, species in parent_sample.labels.items()}
    return _register(registry, parent_model, parent_evaluation, config, group_species)


@dg.asset(
    group_name="registry",
    partitions_def=species_group,
    kinds={"mlflow"},
    automation_condition=retrain_on_data_change(),
)
def registered_child(
    config: ChildGateConfig, registry: MlflowRegistry, child_model: ModelRef, child_evaluation: EvaluationRef
):
    """A new version of `earthsnap-child-<group>`, tagged `approval=pending` and with its gate result."""
    return _register(registry, child_model, child_evaluation, config)
