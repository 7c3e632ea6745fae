"""Registering an evaluated model version in MLflow, with the tags approval and deployment rely on."""

from __future__ import annotations

from dataclasses import dataclass

from earthsnap_assets.ml.gate import GateResult, evaluate_gate
from earthsnap_assets.refs import ModelRef
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.versioning import code_version


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    gate: GateResult
    tags: dict[str, str]


def production_accuracy(registry: MlflowRegistry, name: str) -> float | None:
    """Test accuracy recorded on the version the `production` alias points to, if any."""
    version = registry.alias_version(name, "production")
    if version is None:
        return None
    value = registry.version_tags(name, version).get("test_accuracy")
    return float(value) if value else None


def register(
    registry: MlflowRegistry,
    model: ModelRef,
    metrics: dict[str, float],
    min_accuracy: float,
    tolerance: float,
    extra_tags: dict[str, str] | None = None,
) -> RegisteredVersion:
    """New version of `earthsnap-parent` / `earthsnap-child-<group>`: pending approval, gate result attached."""
    name = model.registered_name
    gate = evaluate_gate(metrics["accuracy"], min_accuracy, production_accuracy(registry, name), tolerance)
    tags = {
        "dataset_version": model.dataset_version,
        "dataset_uri": model.dataset_uri,
        "code_version": code_version(),
        "task": model.task,
        "group": model.group or "",
        "classes": ",".join(model.classes),
        "image_size": str(model.image_size),
        **{f"test_{k}": f"{v:.6f}" for k, v in metrics.items()},
        "gate": gate.tag,
        "gate_reason": gate.reason,
        "approval": "pending",
        **(extra_tags or {}),
    }
    version = registry.register(model.model_uri, name, model.run_id, tags)
    return RegisteredVersion(name, version, gate, tags)
