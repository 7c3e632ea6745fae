"""The approval sensor (a person's `approval=approved` in MLflow starts the deploy job) and the alias audit.

Approving in the MLflow UI is first-class: MLflow keeps no author or time for a tag, so the sensor stamps the
approval it first sees (`approved_at`, `approval_source=mlflow-ui`) and records it in the history; an approval
of a version that failed the gate is answered in MLflow itself (`approval=refused`, `approval_refused` = why).
The alias audit records in the history every alias move the deploy job did not make (someone's "Add alias").
"""

from __future__ import annotations

import json

import dagster as dg

from earthsnap_assets.defs.deployment import deploy_model_version
from earthsnap_assets.deployment.history import Event, events, now, record
from earthsnap_assets.registry import names, release
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore

MODEL_PREFIX = names.DEFAULT_PREFIX
UI_SOURCE = "mlflow-ui"
UNKNOWN_UI_USER = "unknown (MLflow UI)"


def approved_versions(registry: MlflowRegistry) -> list[tuple[str, str, dict[str, str]]]:
    """(model, version, tags) tagged approved and not in production yet, the parent first."""
    found = []
    for version in registry.search_versions(f"tags.{names.APPROVAL} = '{release.APPROVED}'"):
        tags = dict(version.tags or {})
        waiting = tags.get(names.DEPLOY_STATUS) != "production"
        if version.name.startswith(MODEL_PREFIX) and waiting:
            found.append((version.name, str(version.version), tags))
    return sorted(found, key=lambda item: (item[0] != names.PARENT, item[0], int(item[1])))


def refuse_gate_failed(registry: MlflowRegistry, store: ObjectStore, model: str, version: str, tags: dict) -> str:
    """Answer an approval of a gate-failed version where the person made it: in the version's tags."""
    reason = f"the automated gate failed ({tags.get(names.GATE_REASON) or tags.get(names.GATE) or 'no gate result'})"
    registry.set_version_tags(model, version, {names.APPROVAL: "refused", names.APPROVAL_REFUSED: reason})
    record(
        store,
        store.lake_bucket,
        Event(model, version, "approval_refused", by="approval-sensor", detail={"why": reason}),
    )
    return reason


def stamp_ui_approval(registry: MlflowRegistry, store: ObjectStore, model: str, version: str, tags: dict) -> dict:
    """An approval made by setting the tag in the MLflow UI: record who (if they said) and when we saw it."""
    stamp = {
        names.APPROVED_AT: now(),
        names.APPROVED_BY: tags.get(names.APPROVED_BY) or UNKNOWN_UI_USER,
        names.APPROVAL_SOURCE: UI_SOURCE,
    }
    registry.set_version_tags(model, version, stamp)
    record(
        store,
        store.lake_bucket,
        Event(
            model,
            version,
            "approved",
            at=stamp[names.APPROVED_AT],
            by=stamp[names.APPROVED_BY],
            detail={"via": UI_SOURCE},
        ),
    )
    return {**tags, **stamp}


def deployable(registry: MlflowRegistry, store: ObjectStore, log=None) -> list[tuple[str, str, str]]:
    """(model, version, approved_at) of approved, gate-passed versions waiting for the deploy job.

    Gate-failed approvals are refused and UI approvals stamped on the way (see the module docstring).
    """
    found = []
    for model, version, tags in approved_versions(registry):
        if tags.get(names.GATE) != release.PASSED:
            reason = refuse_gate_failed(registry, store, model, version, tags)
            if log is not None:
                log.warning(f"refused the approval of {model} v{version}: {reason}")
            continue
        if not tags.get(names.APPROVED_AT):
            tags = stamp_ui_approval(registry, store, model, version, tags)
        found.append((model, version, tags[names.APPROVED_AT]))
    return found


@dg.sensor(
    job=deploy_model_version,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Deploys model versions a person approved in MLflow (tag approval=approved) that passed the gate.",
)
def approval_sensor(context: dg.SensorEvaluationContext, registry: MlflowRegistry, store: ObjectStore):
    candidates = deployable(registry, store, context.log)
    if not candidates:
        return dg.SkipReason("no approved, gate-passed version waiting for deployment")
    for model, version, approved_at in candidates:
        context.log.info(f"deploying {model} v{version} (approved at {approved_at})")
        yield dg.RunRequest(
            run_key=f"{model}@{version}@{approved_at}",  # one run per approval, however often the sensor ticks
            run_config={"ops": {"check_approved": {"config": {"model": model, "version": version}}}},
            tags={"earthsnap/model": model, "earthsnap/version": version, "earthsnap/deploy": "serial"},
        )


def alias_moves(
    before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]
) -> list[tuple[str, str, str | None, str | None]]:
    """(model, alias, from, to) for every alias that changed between two reads of the alias table."""
    moves = []
    for model in sorted(set(before) | set(after)):
        old, new = before.get(model, {}), after.get(model, {})
        for alias in sorted(set(old) | set(new)):
            if old.get(alias) != new.get(alias):
                moves.append((model, alias, old.get(alias), new.get(alias)))
    return moves


def explained(history: list[Event], alias: str, version: str | None) -> bool:
    """Whether the history's latest event for `alias` is the deploy job's (or a rollback's) move to `version`."""
    moves = {"staging": ("staging",), "production": ("production", "rollback")}.get(alias, ())
    for event in reversed(history):
        if event.action in moves or (event.action == "alias_moved" and event.detail.get("alias") == alias):
            return event.version == version and event.action != "alias_moved"
    return False


def audit_aliases(
    registry: MlflowRegistry, store: ObjectStore, cursor: str | None, log=None
) -> tuple[str, list[Event]]:
    """Compare the alias table with the one in `cursor`; record the moves the history does not explain.

    Returns the new cursor and the events recorded. One paged search (aliases come with the registered
    models), whatever the number of groups; the history is read only for models whose aliases moved.
    """
    table = {
        model: {a: v for a, v in aliases.items() if a in names.ALIASES}
        for model, aliases in registry.aliases(MODEL_PREFIX).items()
    }
    recorded: list[Event] = []
    for model, alias, old, new in alias_moves(json.loads(cursor) if cursor else table, table):
        if explained(events(store, store.lake_bucket, model), alias, new):
            continue
        if new:
            why_not = release.refusal(alias, registry.version_tags(model, new), model, new, release.release_key())
        else:
            why_not = "alias removed"
        detail = {"alias": alias, "from": old or "", "to": new or "", "released": why_not or "yes"}
        event = Event(model, new or old or "", "alias_moved", by="unknown (MLflow)", detail=detail)
        record(store, store.lake_bucket, event)
        recorded.append(event)
        if log is not None:
            log.warning(f"{model}: alias {alias!r} moved outside the deploy job, v{old} -> v{new} ({detail})")
    return json.dumps(table, sort_keys=True), recorded


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records in the deployment history every staging/production alias move the deploy job did not make.",
)
def alias_audit_sensor(context: dg.SensorEvaluationContext, registry: MlflowRegistry, store: ObjectStore):
    cursor, recorded = audit_aliases(registry, store, context.cursor, context.log)
    context.update_cursor(cursor)
    if not recorded:
        return dg.SkipReason("no alias moved outside the deploy job")
    moved = ", ".join(f"{e.model}:{e.detail['alias']}" for e in recorded)
    return dg.SkipReason(f"recorded {len(recorded)} alias moves made outside the deploy job: {moved}")
