"""Registered model versions in MLflow, pending a person's approval, with the automated gate's verdict."""

import dagster as dg

from earthsnap_assets.defs.automation import retrain_on_data_change
from earthsnap_assets.defs.partitions import species_group
from earthsnap_assets.defs.settings import ChildGateConfig, GateConfig
from earthsnap_assets.pipeline.registration import register
from earthsnap_assets.refs import DatasetRef, EvaluationRef, ModelRef
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry

GATE_CHECK = "gate"
GATE_DESCRIPTION = (
    "The registered version passed the automated gate (minimum accuracy, no regression against production); "
    "a failed gate is a red check, and the version cannot be approved."
)
RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
"""A registration that meets a registry outage fails clearly (bounded: `registry/limits.py`) and is tried
again after about 30 s, 60 s and 120 s; registration is idempotent up to the version number."""


def _gate_check(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(GATE_CHECK, asset=asset, blocking=True, description=GATE_DESCRIPTION)


def _register(
    registry: MlflowRegistry,
    model: ModelRef,
    evaluation: EvaluationRef,
    config: GateConfig,
    group_species: dict[str, list[str]] | None = None,
):
    if model.single_species:
        yield dg.Output(
            {"registered": False, "reason": "one-species group: no network"}, metadata={"registered": False}
        )
        yield dg.AssetCheckResult(
            check_name=GATE_CHECK, passed=True, metadata={"reason": "one-species group: nothing to gate"}
        )
        return
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
    yield dg.Output(value, metadata=metadata)
    yield dg.AssetCheckResult(
        check_name=GATE_CHECK,
        passed=version.gate.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"registered_model": version.name, "version": version.version, "reason": version.gate.reason},
    )


@dg.asset(
    group_name="registry",
    kinds={"mlflow"},
    automation_condition=retrain_on_data_change(),
    check_specs=[_gate_check("registered_parent")],
    retry_policy=RETRY,
)
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
    yield from _register(registry, parent_model, parent_evaluation, config, group_species)


@dg.asset(
    group_name="registry",
    partitions_def=species_group,
    kinds={"mlflow"},
    automation_condition=retrain_on_data_change(),
    check_specs=[_gate_check("registered_child")],
    retry_policy=RETRY,
)
def registered_child(
    config: ChildGateConfig, registry: MlflowRegistry, child_model: ModelRef, child_evaluation: EvaluationRef
):
    """A new version of `earthsnap-child-<group>`, tagged `approval=pending` and with its gate result."""
    yield from _register(registry, child_model, child_evaluation, config)
