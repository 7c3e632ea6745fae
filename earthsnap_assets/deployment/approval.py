"""A person's decision on a model version, as MLflow version tags (also settable in the MLflow UI)."""

from __future__ import annotations

from earthsnap_assets.deployment.history import Event, actor, events, now, production_before, record
from earthsnap_assets.registry.client import RegistryVerbs
from earthsnap_assets.resources.object_store import ObjectStore


class ApprovalError(ValueError):
    """The decision cannot be taken (unknown version, no previous production version, ...)."""


def _check_exists(registry: RegistryVerbs, model: str, version: str) -> dict[str, str]:
    try:
        return registry.version_tags(model, version)
    except Exception as exc:  # MLflow raises RestException for unknown names/versions
        raise ApprovalError(f"{model} version {version} not found in the MLflow registry: {exc}") from exc


def approve(registry: RegistryVerbs, store: ObjectStore, model: str, version: str, note: str = "") -> dict:
    """Tag the version `approval=approved` (who, when); the approval sensor then deploys it."""
    tags = _check_exists(registry, model, version)
    if tags.get("gate") == "failed":
        raise ApprovalError(f"{model} v{version} failed the automated gate ({tags.get('gate_reason')}); not approvable")
    decision = {"approval": "approved", "approved_by": actor(), "approved_at": now(), "approval_note": note}
    registry.set_version_tags(model, version, decision)
    record(store, store.lake_bucket, Event(model, version, "approved", detail={"note": note} if note else {}))
    return decision


def reject(registry: RegistryVerbs, store: ObjectStore, model: str, version: str, reason: str) -> dict:
    """Tag the version `approval=rejected` with the reason; it will never be deployed."""
    _check_exists(registry, model, version)
    if not reason.strip():
        raise ApprovalError("a rejection needs a reason")
    decision = {"approval": "rejected", "rejected_by": actor(), "rejected_at": now(), "rejection_reason": reason}
    registry.set_version_tags(model, version, decision)
    record(store, store.lake_bucket, Event(model, version, "rejected", detail={"reason": reason}))
    return decision


def rollback(registry: RegistryVerbs, store: ObjectStore, model: str) -> tuple[str | None, str]:
    """Re-point `production` to the version it served before; returns (from, to)."""
    current = registry.alias_version(model, "production")
    previous = production_before(events(store, store.lake_bucket, model), current)
    if previous is None:
        raise ApprovalError(f"{model}: no earlier production version to roll back to (now: {current})")
    registry.set_alias(model, "production", previous)
    record(store, store.lake_bucket, Event(model, previous, "rollback", detail={"from": current or ""}))
    return current, previous
