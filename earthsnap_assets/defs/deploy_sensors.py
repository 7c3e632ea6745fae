"""The approval sensor: a person's `approval=approved` in MLflow starts the deploy job."""

import dagster as dg

from earthsnap_assets.defs.deployment import deploy_model_version
from earthsnap_assets.registry import names
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry

MODEL_PREFIX = names.DEFAULT_PREFIX


def deployable(registry: MlflowRegistry) -> list[tuple[str, str, str]]:
    """(model, version, approved_at) approved by a person, passed the gate, not in production yet."""
    found = []
    for version in registry.search_versions("tags.approval = 'approved'"):
        tags = version.tags or {}
        waiting = tags.get("deploy_status") != "production"  # a failed deploy is retried by approving again
        if version.name.startswith(MODEL_PREFIX) and tags.get("gate") == "passed" and waiting:
            found.append((version.name, str(version.version), tags.get("approved_at", "")))
    return sorted(found, key=lambda item: (item[0] != names.PARENT, item))  # the parent goes first


@dg.sensor(
    job=deploy_model_version,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Deploys model versions a person approved in MLflow (tag approval=approved) that passed the gate.",
)
def approval_sensor(context: dg.SensorEvaluationContext, registry: MlflowRegistry):
    candidates = deployable(registry)
    if not candidates:
        return dg.SkipReason("no approved, gate-passed version waiting for deployment")
    for model, version, approved_at in candidates:
        context.log.info(f"deploying {model} v{version}")
        yield dg.RunRequest(
            run_key=f"{model}@{version}@{approved_at}",  # one run per approval, however often the sensor ticks
            run_config={"ops": {"check_approved": {"config": {"model": model, "version": version}}}},
            tags={"earthsnap/model": model, "earthsnap/version": version, "earthsnap/deploy": "serial"},
        )
