"""Approval -> staging -> stage tests over HTTP -> production, on real endpoints, MLflow and S3."""

import json

import dagster as dg
import httpx
import pytest
from mlflow import MlflowClient

from earthsnap_assets.defs.deploy_sensors import alias_audit_sensor, approval_sensor, audit_aliases
from earthsnap_assets.defs.deployment import deploy_model_version
from earthsnap_assets.deployment.approval import ApprovalError, approve, pending, reject, rollback
from earthsnap_assets.deployment.history import events
from earthsnap_assets.registry import release
from earthsnap_assets.resources.endpoints import Endpoints
from earthsnap_assets.serving.app import create_app
from earthsnap_assets.serving.config import ServeConfig
from earthsnap_assets_tests.defs.training_setup import CHILD, meta, run, tiny_config
from earthsnap_assets_tests.polling import wait_until
from earthsnap_assets_tests.serving.helpers import serving

pytestmark = pytest.mark.stack
RELEASE_KEY = "test-release-key"


@pytest.fixture(scope="module")
def endpoints(trained):
    """Real staging and production endpoints (uvicorn on free ports) following the MLflow aliases."""
    lake = trained[0]
    config = ServeConfig(poll_interval_s=0.5, release_key=RELEASE_KEY)  # signed releases only
    with (
        pytest.MonkeyPatch.context() as patch,
        serving(create_app("staging", lake.registry, config)) as staging,
        serving(create_app("production", lake.registry, config)) as production,
    ):
        patch.setenv("EARTHSNAP_RELEASE_KEY", RELEASE_KEY)  # the deploy job signs what it releases
        yield Endpoints(staging_url=staging, production_url=production)


def _deploy(lake, endpoints, model: str, version: str, **overrides):
    config = {"model": model, "version": version, "wait_seconds": 60, "slo_p95_ms": 5000, "tolerance": 1.0}
    return deploy_model_version.execute_in_process(
        run_config={"ops": {"check_approved": {"config": {**config, **overrides}}}},
        resources={**lake.resources, "endpoints": endpoints},
        instance=lake.instance,
        raise_on_error=False,
    )


def _sensor_requests(lake) -> list[dg.RunRequest]:
    context = dg.build_sensor_context(instance=lake.instance)
    found = approval_sensor(context, registry=lake.registry, store=lake.store)
    return [r for r in found or [] if isinstance(r, dg.RunRequest)]


def _approve_in_ui(lake, model: str, version: str) -> None:
    """What a person does in the MLflow UI: set the tag, nothing else."""
    MlflowClient(lake.registry.uri).set_model_version_tag(model, version, "approval", "approved")


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
    requests = _sensor_requests(lake)
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
        for alias in ("staging", "production"):
            assert tags[f"release_signature_{alias}"] == release.sign(RELEASE_KEY, model, version, alias)
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
    tags = lake.registry.version_tags(model, newer)
    assert tags["stage_test"] == "failed" and tags["deploy_status"] == "deploy_failed"
    assert tags["approval"] == "deploy-failed" and "approved_at" not in tags  # a person decides again
    assert "stage_tests" in tags["deploy_error"] and "p95" in tags["deploy_error"]
    assert not _deploy(lake, endpoints, model, newer).success  # not without a new approval

    approve(lake.registry, lake.store, model, newer, note="slo was a typo")
    assert _deploy(lake, endpoints, model, newer).success
    assert lake.registry.alias_version(model, "production") == newer
    before, after = rollback(lake.registry, lake.store, model)
    assert (before, after) == (newer, first)
    assert lake.registry.alias_version(model, "production") == first
    endpoints.wait_serving("production", model, first, timeout=30)


def test_ui_approval_is_stamped_and_a_failed_deploy_can_be_approved_again_in_the_ui(trained, endpoints):
    lake = trained[0]
    model = "earthsnap-parent"
    version = meta(run(lake, ["registered_parent"], tiny_config()), "registered_parent")["version"]
    assert any(w.model == model and w.version == version and w.approval == "pending" for w in pending(lake.registry))
    _approve_in_ui(lake, model, version)
    (first,) = [
        r
        for r in _sensor_requests(lake)
        if r.tags["earthsnap/version"] == version and r.tags["earthsnap/model"] == model
    ]
    tags = lake.registry.version_tags(model, version)
    assert tags["approval_source"] == "mlflow-ui" and tags["approved_by"] == "unknown (MLflow UI)"
    assert first.run_key == f"{model}@{version}@{tags['approved_at']}"
    approved = [e for e in events(lake.store, lake.store.lake_bucket, model) if e.version == version]
    assert [(e.action, e.detail.get("via")) for e in approved] == [("approved", "mlflow-ui")]
    assert [r.run_key for r in _sensor_requests(lake) if r.run_key == first.run_key] == [first.run_key]  # stable

    assert not _deploy(lake, endpoints, model, version, slo_p95_ms=0.001).success
    assert not [
        r
        for r in _sensor_requests(lake)
        if r.tags["earthsnap/version"] == version and r.tags["earthsnap/model"] == model
    ]
    waiting = {(w.model, w.version): w for w in pending(lake.registry)}
    assert waiting[(model, version)].approval == "deploy-failed" and "p95" in waiting[(model, version)].why

    _approve_in_ui(lake, model, version)  # the same tag, set again: a new approval, a new run key
    (again,) = [
        r
        for r in _sensor_requests(lake)
        if r.tags["earthsnap/version"] == version and r.tags["earthsnap/model"] == model
    ]
    assert again.run_key != first.run_key


def test_approving_a_gate_failed_version_in_the_ui_is_answered_in_mlflow(trained):
    lake, groups, _results = trained
    group = next(g for g in groups if g != "solo")
    failing = run(lake, CHILD, tiny_config(min_accuracy=1.01), partition=group, raise_on_error=False)
    failed = meta(failing, "registered_child", group)
    model, version = failed["registered_model"], failed["version"]
    with pytest.raises(ApprovalError, match="gate"):
        approve(lake.registry, lake.store, model, version)
    _approve_in_ui(lake, model, version)
    assert not [
        r
        for r in _sensor_requests(lake)
        if r.tags["earthsnap/model"] == model and r.tags["earthsnap/version"] == version
    ]
    tags = lake.registry.version_tags(model, version)
    assert tags["approval"] == "refused" and "gate failed" in tags["approval_refused"]
    assert "minimum" in tags["approval_refused"]
    assert [e.action for e in events(lake.store, lake.store.lake_bucket, model) if e.version == version] == [
        "approval_refused"
    ]
    assert any(w.version == version and w.approval == "refused" for w in pending(lake.registry) if w.model == model)


def test_an_alias_moved_by_hand_is_refused_by_the_endpoint_and_recorded(trained, endpoints):
    lake = trained[0]
    model = "earthsnap-parent"
    serving = lake.registry.alias_version(model, "production")
    assert serving is not None and endpoints.served_versions("production")[model] == serving
    cursor, recorded = audit_aliases(lake.registry, lake.store, None)  # first tick: remembers the aliases
    assert recorded == [] and model in json.loads(cursor)
    unreleased = meta(run(lake, ["registered_parent"], tiny_config()), "registered_parent")["version"]

    MlflowClient(lake.registry.uri).set_registered_model_alias(model, "production", unreleased)  # "Add alias"

    def ready() -> dict:
        return httpx.get(f"{endpoints.url('production')}/ready", timeout=5).json()

    wait_until(lambda: ready().get("problem") is not None, timeout=30)
    answer = ready()
    assert answer["ready"] is True and answer["versions"][model] == serving  # the last good bundle answers
    assert "did not release" in answer["problem"] and f"v{unreleased}" in answer["problem"]
    assert "approval=pending" in answer["problem"] and "stage_test=unset" in answer["problem"]
    assert "not signed by the deploy job" in answer["problem"]
    assert endpoints.served_versions("production")[model] == serving

    cursor, (moved,) = audit_aliases(lake.registry, lake.store, cursor)
    assert [e for e in events(lake.store, lake.store.lake_bucket, model) if e.action == "alias_moved"] == [moved]
    assert moved.version == unreleased and moved.detail["alias"] == "production"
    assert moved.detail["from"] == serving and "approval=pending" in moved.detail["released"]

    lake.registry.set_alias(model, "production", serving)  # put back: the endpoint recovers, /ready clears
    wait_until(lambda: ready()["problem"] is None, timeout=30)
    skip = alias_audit_sensor(dg.build_sensor_context(cursor=cursor), registry=lake.registry, store=lake.store)
    assert "recorded 1 alias moves" in skip.skip_message and f"{model}:production" in skip.skip_message
    first_move, back = [e for e in events(lake.store, lake.store.lake_bucket, model) if e.action == "alias_moved"]
    assert first_move == moved and (back.version, back.detail["released"]) == (serving, "yes")
