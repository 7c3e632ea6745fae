"""Registering an evaluated model version in MLflow, with the tags approval and deployment rely on."""

from __future__ import annotations

from dataclasses import dataclass

from earthsnap_assets.ml.gate import GateResult, evaluate_gate
from earthsnap_assets.refs import ModelRef
from earthsnap_assets.registry import names
from earthsnap_assets.registry.client import RegistryVerbs
from earthsnap_assets.versioning import code_version


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    gate: GateResult
    tags: dict[str, str]


def production_accuracy(registry: RegistryVerbs, name: str) -> float | None:
    """Test accuracy recorded on the version the `production` alias points to; None only when there is none.

    A registry that cannot be reached raises: an outage must not read as "nothing in production", which
    would let a worse version through the non-regression gate.
    """
    version = registry.alias_version(name, "production")
    if version is None:
        return None
    value = registry.version_tags(name, version).get(names.TEST_ACCURACY)
    return float(value) if value else None


def weights_tags(model: ModelRef) -> dict[str, str]:
    """Lineage of the weights: what training started from (scratch, pretrained source, parent) and the
    trained state dict's lake URI and sha256."""
    tags = dict(model.lineage)
    if model.weights_uri:
        tags |= {names.WEIGHTS_URI: model.weights_uri, names.WEIGHTS_SHA256: model.weights_sha256}
    return tags


def register(
    registry: RegistryVerbs,
    model: ModelRef,
    metrics: dict[str, float],
    min_accuracy: float,
    tolerance: float,
    extra_tags: dict[str, str] | None = None,
    group_species: dict[str, list[str]] | None = None,
) -> RegisteredVersion:
    """New version of `earthsnap-parent` / `earthsnap-child-<group>`: pending approval, gate result attached.

    The parent passes `group_species` (group -> species): it is stored as an artifact of the model's run
    and the version's tags get its URI, sha256 and counts (see `registry/names.py`), so no tag grows with
    the number of species.
    """
    name = model.registered_name
    gate = evaluate_gate(metrics["accuracy"], min_accuracy, production_accuracy(registry, name), tolerance)
    mapping_tags = registry.log_group_species(model.run_id, group_species) if group_species is not None else {}
    tags = {
        names.DATASET_VERSION: model.dataset_version,
        names.DATASET_URI: model.dataset_uri,
        "code_version": code_version(),
        "task": model.task,
        names.GROUP: model.group or "",
        names.CLASSES: ",".join(model.classes),
        names.IMAGE_SIZE: str(model.image_size),
        **{f"test_{k}": f"{v:.6f}" for k, v in metrics.items()},
        "gate": gate.tag,
        "gate_reason": gate.reason,
        "approval": "pending",
        **weights_tags(model),
        **mapping_tags,
        **(extra_tags or {}),
    }
    version = registry.register(model.model_uri, name, model.run_id, tags)
    return RegisteredVersion(name, version, gate, tags)
