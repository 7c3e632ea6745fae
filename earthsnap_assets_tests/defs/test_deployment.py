"""Approval -> staging -> stage tests over HTTP -> production, on real endpoints, MLflow and S3."""

import dagster as dg
import pytest
from mlflow import MlflowClient

from earthsnap_assets.defs.deploy_sensors import approval_sensor
from earthsnap_assets.defs.deployment import deploy_model_version
from earthsnap_assets.deployment.approval import ApprovalError, approve, reject, rollback
from earthsnap_assets.deployment.history import events
from earthsnap_assets.resources.endpoints import Endpoints
from earthsnap_assets.serving.app import create_app
from earthsnap_assets.serving.config import ServeConfig
from earthsnap_assets_tests.defs.training_setup import meta, run, tiny_config
from earthsnap_assets_tests.serving.helpers import serving

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def endpoints(trained):
    """Real staging and production endpoints (uvicorn on free ports) following the MLflow aliases."""
    lake = trained[0]
    config = ServeConfig(poll_interval_s=0.5)
    with (
        serving(create_app("staging", lake.registry, config)) as staging,
        serving(create_app("production", lake.registry, config)) as production,
    ):
        yield Endpoints(staging_url=staging, production_url=production)


def _deploy(lake, endpoints, model: str, version: str, **overrides):
    config = {"model": model, "version": version, "wait_seconds": 60, "slo_p95_ms": 5000, "tolerance": 1.0}
    return deploy_model_version.execute_in_process(
        run_config={"ops": {"check_approved": {"config": {**config, **overrides}}}},
        resources={**lake.resources, "endpoints": endpoints},
        instance=lake.instance,
        raise_on_error=False,
    )


def _versions(results) -> dict[str, str]:
    parent = meta(results["parent"], "registered_parent")
    found = {parent["registered_model"]: parent["version"]}
    for group, result in results["children"].items():
        child = meta(result, "registered_child", group)
        if "registered_model" in child:
            found[child["registered_model"]] = child["version"]
    return found


def test_unapproved_or_rejected_versions_are_never_deployed(trained, endpoints):
    lake, _groups, results = trained
    model, version = next((m, v) for m, v in _versions(results).items() if m != "earthsnap-parent")
    result = _deploy(lake, endpoints, model, version)
    assert not result.success and lake.registry.alias_version(model, "staging") is None
    reject(lake.registry, lake.store, model, version, reason="blurry test photos")
    assert MlflowClient(lake.registry.uri).get_model_version(model, version).tags["approval"] == "rejected"
    with pytest.raises(ApprovalError, match="reason"):
        reject(lake.registry, lake.store, model, version, reason=" ")


def test_approval_sensor_requests_one_deploy_per_approval(trained):
    lake, _groups, results = trained
    model, version = sorted(_versions(results).items())[-1]
    approve(lake.registry, lake.store, model, version)
    context = dg.build_sensor_context(instance=lake.instance, resources={"registry": lake.registry})
    requests = [r for r in approval_sensor(context, registry=lake.registry) if isinstance(r, dg.RunRequest)]
    mine = [r for r in requests if r.tags["earthsnap/model"] == model and r.tags["earthsnap/version"] == version]
    assert len(mine) == 1 and mine[0].run_key.startswith(f"{model}@{version}@")


def test_approve_stage_and_promote_every_model_then_predict(trained, endpoints):
    lake, _groups, results = trained
    # the parent first: until a group's child is deployed, the endpoints answer that group at group level
    for model, version in sorted(_versions(results).items(), key=lambda kv: kv[0] != "earthsnap-parent"):
        approve(lake.registry, lake.store, model, version, note="looks good")
        result = _deploy(lake, endpoints, model, version)
        assert result.success, model
        assert lake.registry.alias_version(model, "production") == version
        tags = lake.registry.version_tags(model, version)
        assert tags["stage_test"] == "passed" and tags["deploy_status"] == "production"
        assert endpoints.served_versions("production")[model] == version
        actions = [e.action for e in events(lake.store, lake.store.lake_bucket, model) if e.version == version]
        assert actions[-4:] == ["approved", "staging", "stage_test", "production"]


def test_failed_stage_test_leaves_production_untouched_and_rollback_restores(trained, endpoints):
    lake = trained[0]
    model = "earthsnap-parent"
    first = lake.registry.alias_version(model, "production")
    assert first is not None, "runs after the promotion test"
    newer = meta(run(lake, ["registered_parent"], tiny_config()), "registered_parent")["version"]
    approve(lake.registry, lake.store, model, newer)
    failing = _deploy(lake, endpoints, model, newer, slo_p95_ms=0.001)
    assert not failing.success
    assert lake.registry.alias_version(model, "production") == first
    assert lake.registry.version_tags(model, newer)["stage_test"] == "failed"

    assert _deploy(lake, endpoints, model, newer).success
    assert lake.registry.alias_version(model, "production") == newer
    before, after = rollback(lake.registry, lake.store, model)
    assert (before, after) == (newer, first)
    assert lake.registry.alias_version(model, "production") == first
    endpoints.wait_serving("production", model, first, timeout=30)
