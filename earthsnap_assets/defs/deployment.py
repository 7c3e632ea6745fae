"""The deploy job: approved version -> staging -> stage tests over HTTP -> production."""

import dagster as dg
from pydantic import Field

from earthsnap_assets.deployment.golden import golden_set
from earthsnap_assets.deployment.history import Event, record
from earthsnap_assets.deployment.stage_tests import run_stage_tests
from earthsnap_assets.registry import names, release
from earthsnap_assets.resources.endpoints import Endpoints
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore


class DeployConfig(dg.Config):
    model: str = Field(description="registered model, e.g. earthsnap-parent or earthsnap-child-flowers")
    version: str
    tolerance: float = Field(0.1, description="stage accuracy may be this much below the version's test accuracy")
    slo_p95_ms: float = Field(1000.0, description="p95 latency SLO of /predict, milliseconds")
    golden_per_species: int = Field(10, description="held-out test photos per species sent to staging")
    wait_seconds: float = Field(120.0, description="how long an endpoint may take to load a new version")


def _mark(registry: MlflowRegistry, store: ObjectStore, target: dict, action: str, **detail) -> None:
    """History first, then the tag: an alias move is recorded before it happens, so the alias audit
    (`defs/deploy_sensors.py`) never mistakes the deploy job's own move for one made by hand."""
    record(store, store.lake_bucket, Event(target["model"], target["version"], action, detail=detail))
    registry.set_version_tags(target["model"], target["version"], {names.DEPLOY_STATUS: action})


def _sign(registry: MlflowRegistry, target: dict, alias: str) -> None:
    """With EARTHSNAP_RELEASE_KEY set, sign the release so endpoints holding the key can tell it from a hand move."""
    key = release.release_key()
    if key is not None:
        signature = release.sign(key, target["model"], target["version"], alias)
        registry.set_version_tags(target["model"], target["version"], {release.signature_tag(alias): signature})


@dg.op
def check_approved(context: dg.OpExecutionContext, config: DeployConfig, registry: MlflowRegistry) -> dict:
    """Only an approved version that passed the gate is ever deployed."""
    tags = registry.version_tags(config.model, config.version)
    if tags.get("approval") != "approved" or tags.get("gate") != "passed":
        state = f"approval={tags.get('approval')}, gate={tags.get('gate')}"
        raise dg.Failure(f"{config.model} v{config.version} is not deployable: {state}")
    context.log.info(f"{config.model} v{config.version} approved by {tags.get('approved_by')}")
    return {**config.model_dump(), "tags": tags}


@dg.op
def deploy_to_staging(
    context: dg.OpExecutionContext, target: dict, registry: MlflowRegistry, store: ObjectStore, endpoints: Endpoints
) -> dict:
    """Point `staging` at the version and wait until the staging endpoint answers with it."""
    if target["model"] != names.PARENT and registry.alias_version(names.PARENT, "staging") is None:
        raise dg.Failure("no earthsnap-parent version is in staging yet: approve and deploy the parent first")
    _mark(registry, store, target, "staging", alias="staging")
    _sign(registry, target, "staging")
    registry.set_alias(target["model"], "staging", target["version"])
    seconds = endpoints.wait_serving("staging", target["model"], target["version"], target["wait_seconds"])
    context.add_output_metadata({"staging_url": endpoints.url("staging"), "reload_seconds": round(seconds, 2)})
    return target


@dg.op
def stage_tests(
    context: dg.OpExecutionContext, target: dict, registry: MlflowRegistry, store: ObjectStore, endpoints: Endpoints
) -> dict:
    """Golden-set accuracy, p95 latency and bad-input probes over HTTP; a failure leaves production as it was."""
    tags = target["tags"]
    group = tags.get("group") or None
    golden = golden_set(
        store, store.lake_bucket, store.raw_bucket, tags["dataset_uri"], group, target["golden_per_species"]
    )
    report = run_stage_tests(
        endpoints.url("staging"),
        golden,
        scope="child" if group else "parent",
        expected_accuracy=float(tags.get("test_accuracy", 0)),
        tolerance=target["tolerance"],
        slo_p95_ms=target["slo_p95_ms"],
        token=endpoints.bearer_token(),
    )
    verdict = "passed" if report.passed else "failed"
    registry.set_version_tags(
        target["model"],
        target["version"],
        {"stage_test": verdict, "stage_accuracy": f"{report.accuracy:.4f}", "stage_p95_ms": f"{report.p95_ms:.1f}"},
    )
    _mark(registry, store, target, "stage_test", result=verdict, accuracy=round(report.accuracy, 4))
    context.add_output_metadata({"stage_test": verdict, **{k: v for k, v in report.to_json().items() if k != "probes"}})
    if not report.passed:  # the failure hook records it and asks for a new approval
        raise dg.Failure(
            f"stage tests failed: {report.reasons}", metadata={"report": dg.MetadataValue.json(report.to_json())}
        )
    return target


@dg.op
def promote_to_production(
    context: dg.OpExecutionContext, target: dict, registry: MlflowRegistry, store: ObjectStore, endpoints: Endpoints
) -> None:
    """Point `production` at the version and wait until the production endpoint answers with it."""
    previous = registry.alias_version(target["model"], "production")
    _mark(registry, store, target, "production", alias="production", previous=previous or "")
    _sign(registry, target, "production")
    registry.set_alias(target["model"], "production", target["version"])
    seconds = endpoints.wait_serving("production", target["model"], target["version"], target["wait_seconds"])
    registry.set_version_tags(target["model"], target["version"], {"deploy_status": "production"})
    context.add_output_metadata({"previous_production": previous or "none", "reload_seconds": round(seconds, 2)})


@dg.failure_hook(required_resource_keys={"registry", "store"})
def deploy_failed(context: dg.HookContext) -> None:
    """Any failed step: record why, and take the approval back so a person decides again.

    `approval=deploy-failed` and no `approved_at`: approving again (MLflow UI or `earthsnap approve`) gets a
    new approval time, hence a new sensor run key; Dagster would skip a repeated one.
    """
    run = context.instance.get_run_by_id(context.run_id)
    target = (run.run_config if run else {}).get("ops", {}).get("check_approved", {}).get("config", {})
    model, version = target.get("model"), target.get("version")
    if not model or not version:
        return
    registry, store = context.resources.registry, context.resources.store
    error = str(getattr(context.op_exception, "description", None) or context.op_exception or "unknown")[:2000]
    record(
        store,
        store.lake_bucket,
        Event(model, version, "deploy_failed", detail={"step": context.op.name, "error": error}),
    )
    tags = registry.version_tags(model, version)
    update = {names.DEPLOY_STATUS: "deploy_failed", names.DEPLOY_ERROR: f"{context.op.name}: {error}"}
    if tags.get(names.APPROVAL) == "approved":
        update[names.APPROVAL] = "deploy-failed"
        registry.delete_version_tag(model, version, names.APPROVED_AT)
    registry.set_version_tags(model, version, update)
    context.log.warning(f"{model} v{version}: deploy failed at {context.op.name}; approve it again to retry")


@dg.job(
    description="Deploy an approved model version: staging, stage tests over HTTP, then production.",
    hooks={deploy_failed},
)
def deploy_model_version() -> None:
    promote_to_production(stage_tests(deploy_to_staging(check_approved())))
