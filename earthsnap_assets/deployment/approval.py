"""A person's decision on a model version, as MLflow version tags (also settable in the MLflow UI)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from earthsnap_assets.deployment.history import Event, actor, events, now, production_before, record
from earthsnap_assets.registry import names
from earthsnap_assets.registry.client import RegistryVerbs, is_missing
from earthsnap_assets.resources.object_store import ObjectStore


class ApprovalError(ValueError):
    """The decision cannot be taken (unknown version, no previous production version, ...)."""


class RegistryUnavailable(RuntimeError):
    """MLflow did not answer (down, timing out, 5xx): nothing was decided, try again."""


def _check_exists(registry: RegistryVerbs, model: str, version: str) -> dict[str, str]:
    """The version's tags; "not found" only when MLflow says so (an outage is left to `_registry_must_answer`)."""
    try:
        return registry.version_tags(model, version)
    except Exception as exc:
        if is_missing(exc):
            raise ApprovalError(f"{model} version {version} not found in the MLflow registry") from exc
        raise


P = ParamSpec("P")
R = TypeVar("R")


def _registry_must_answer(verb: Callable[P, R]) -> Callable[P, R]:
    """A decision verb: any registry failure but "does not exist" becomes `RegistryUnavailable` (nothing decided)."""

    @functools.wraps(verb)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return verb(*args, **kwargs)
        except (ApprovalError, RegistryUnavailable):
            raise
        except Exception as exc:
            if is_missing(exc):
                raise ApprovalError(str(exc)) from exc
            registry = args[0]
            raise RegistryUnavailable(
                f"MLflow at {getattr(registry, 'uri', '?')} did not answer ({type(exc).__name__}: {exc}); "
                "run the command again once it does"
            ) from exc

    return wrapper


WAITING = ("pending", "deploy-failed", "refused")  # approval states that wait for a person


@dataclass(frozen=True)
class Waiting:
    """A version waiting for a person: to approve it (pending), to approve it again (deploy-failed) or to
    notice that its approval was refused (gate failed)."""

    model: str
    version: str
    approval: str
    gate: str
    test_accuracy: str
    production: str  # the version in production now, "-" when none
    why: str  # gate reason, deploy error or refusal


@_registry_must_answer
def pending(registry: RegistryVerbs, prefix: str = names.DEFAULT_PREFIX) -> list[Waiting]:
    """Every version under `prefix` whose approval waits for a person, newest first within each model."""
    found: list[Waiting] = []
    production: dict[str, str | None] = {}
    for state in WAITING:
        for version in registry.search_versions(f"tags.{names.APPROVAL} = '{state}'"):
            if not version.name.startswith(prefix):
                continue
            tags = dict(version.tags or {})
            if version.name not in production:
                production[version.name] = registry.alias_version(version.name, "production")
            why = {
                "pending": tags.get(names.GATE_REASON, ""),
                "deploy-failed": tags.get(names.DEPLOY_ERROR, ""),
                "refused": tags.get(names.APPROVAL_REFUSED, ""),
            }[state]
            found.append(
                Waiting(
                    version.name,
                    str(version.version),
                    state,
                    tags.get(names.GATE, "-"),
                    tags.get(names.TEST_ACCURACY, "-"),
                    production[version.name] or "-",
                    why,
                )
            )
    return sorted(found, key=lambda w: (w.model != names.PARENT, w.model, -int(w.version)))


@_registry_must_answer
def approve(registry: RegistryVerbs, store: ObjectStore, model: str, version: str, note: str = "") -> dict:
    """Tag the version `approval=approved` (who, when); the approval sensor then deploys it."""
    tags = _check_exists(registry, model, version)
    if tags.get("gate") != "passed":
        raise ApprovalError(f"{model} v{version} failed the automated gate ({tags.get('gate_reason')}); not approvable")
    decision = {
        "approval": "approved",
        "approved_by": actor(),
        "approved_at": now(),
        "approval_note": note,
        names.APPROVAL_SOURCE: "cli",
    }
    registry.set_version_tags(model, version, decision)
    record(store, store.lake_bucket, Event(model, version, "approved", detail={"note": note} if note else {}))
    return decision


@_registry_must_answer
def reject(registry: RegistryVerbs, store: ObjectStore, model: str, version: str, reason: str) -> dict:
    """Tag the version `approval=rejected` with the reason; it will never be deployed."""
    _check_exists(registry, model, version)
    if not reason.strip():
        raise ApprovalError("a rejection needs a reason")
    decision = {"approval": "rejected", "rejected_by": actor(), "rejected_at": now(), "rejection_reason": reason}
    registry.set_version_tags(model, version, decision)
    record(store, store.lake_bucket, Event(model, version, "rejected", detail={"reason": reason}))
    return decision


@_registry_must_answer
def rollback(registry: RegistryVerbs, store: ObjectStore, model: str) -> tuple[str | None, str]:
    """Re-point `production` to the version it served before; returns (from, to)."""
    current = registry.alias_version(model, "production")
    previous = production_before(events(store, store.lake_bucket, model), current)
    if previous is None:
        raise ApprovalError(f"{model}: no earlier production version to roll back to (now: {current})")
    registry.set_alias(model, "production", previous)
    record(store, store.lake_bucket, Event(model, previous, "rollback", detail={"from": current or ""}))
    return current, previous
