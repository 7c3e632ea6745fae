"""production_monitoring on the real stack: a synthetic prediction log in SeaweedFS, the summary in MLflow."""

import datetime as dt
import json
import uuid

import dagster as dg
import pytest
from mlflow import MlflowClient

from earthsnap_assets.defs.monitoring import (
    back_off_rate,
    drift,
    drift_blocking,
    monitoring_schedule,
    production_monitoring,
)
from earthsnap_assets.lake import paths
from earthsnap_assets.registry import names
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets_tests.monitoring.synthetic_log import (
    DATASET_VERSION,
    rows,
    verdict,
    write_feedback,
    write_predictions,
    write_version,
)
from earthsnap_assets_tests.registry.test_client import failing_server

pytestmark = pytest.mark.stack

DAY = "2026-03-10"
ASSETS = [production_monitoring, drift, back_off_rate, drift_blocking]


@pytest.fixture
def models(lake) -> dict[str, str]:
    """A parent registered under a prefix of its own (the shared MLflow's real models are never touched)."""
    prefix = f"test-{uuid.uuid4().hex[:8]}-earthsnap-"
    client = MlflowClient(lake.registry.uri)
    parent = names.parent_name(prefix)
    client.create_registered_model(parent)
    version = client.create_model_version(parent, source=f"s3://{lake.store.lake_bucket}/models/parent").version
    write_version(lake.store, lake.store.lake_bucket)
    return {"prefix": prefix, "parent": parent, "version": str(version), "experiment": f"monitoring-{prefix}"}


def _materialize(lake, models, day: str = DAY, registry: MlflowRegistry | None = None) -> dg.ExecuteInProcessResult:
    config = {"model_prefix": models["prefix"], "experiment": models["experiment"]}
    resources = {**lake.resources, "registry": registry or lake.registry}
    return dg.materialize(
        ASSETS,
        resources=resources,
        instance=lake.instance,
        partition_key=day,
        run_config={"ops": {"production_monitoring": {"config": config}}},
        raise_on_error=False,
    )


def _checks(result) -> dict[str, tuple[bool, dg.AssetCheckSeverity]]:
    return {e.check_name: (e.passed, e.severity) for e in result.get_asset_check_evaluations()}


def _metadata(result) -> dict:
    [event] = result.asset_materializations_for_node("production_monitoring")
    return {k: v.value for k, v in event.metadata.items()}


def _log(lake, models, day: str, **kwargs) -> list[dict]:
    drawn = rows(day, 800, models={models["parent"]: models["version"]}, **kwargs)
    write_predictions(lake.store, lake.store.lake_bucket, day, drawn)
    return drawn


def test_a_day_like_training_passes_and_is_summarised_in_mlflow(lake, models, monkeypatch):
    monkeypatch.setenv("EARTHSNAP_MONITOR_BLOCK_PSI", "0.5")
    drawn = _log(lake, models, DAY, seed=1)
    answered = [p for p in drawn if p["level"] == "species"]
    corrections = [verdict(p, DAY, "ant" if p["species"] == "wasp" else "wasp") for p in answered[7:10]]
    feedback = [verdict(p, DAY) for p in answered[:7]] + corrections
    write_feedback(lake.store, lake.store.lake_bucket, "production", DAY, feedback)

    result = _materialize(lake, models)
    assert result.success
    checks = _checks(result)
    assert checks == {
        "drift": (True, dg.AssetCheckSeverity.WARN),
        "back_off_rate": (True, dg.AssetCheckSeverity.WARN),
        "drift_blocking": (True, dg.AssetCheckSeverity.ERROR),
    }
    metadata = _metadata(result)
    assert metadata["volume"] == 800 and metadata["psi_group"] < 0.05 and metadata["back_off_rate"] < 0.1
    assert metadata["feedback_count"] == 10 and metadata["feedback_accuracy"] == pytest.approx(0.7)
    assert sum(c["count"] for c in metadata["corrections"]) == 3
    assert metadata["latency_p50_ms"] < metadata["latency_p95_ms"]
    assert "| birds |" in metadata["top_groups"] and "training share" in metadata["top_groups"]
    assert metadata["parent_version"] == f"{models['parent']}@{models['version']}"

    stored = json.loads(lake.store.read(lake.store.lake_bucket, paths.monitoring_report("production", DAY)))
    assert stored["volume"] == 800 and stored["dataset_versions"] == {DATASET_VERSION: 800}
    assert lake.store.exists(lake.store.lake_bucket, paths.monitoring_reference(DATASET_VERSION))

    client = MlflowClient(lake.registry.uri)
    run = client.get_run(metadata["mlflow_run_id"])
    assert run.info.run_name == f"production-{DAY}" and run.info.status == "FINISHED"
    assert run.data.metrics["volume"] == 800 and run.data.metrics["psi_group"] == pytest.approx(metadata["psi_group"])
    assert [a.path for a in client.list_artifacts(run.info.run_id, "monitoring")] == ["monitoring/report.json"]
    tags = client.get_model_version(models["parent"], models["version"]).tags
    assert tags[names.MONITORING_LAST_DAY] == DAY and tags[names.MONITORING_RUN_ID] == run.info.run_id
    assert float(tags[names.MONITORING_PSI_GROUP]) == pytest.approx(metadata["psi_group"], rel=1e-3)
    assert tags[names.MONITORING_VOLUME] == "800"

    older = "2026-03-05"  # a backfill of an older day logs its run but leaves the version's tags on the newest
    _log(lake, models, older, seed=2)
    assert _materialize(lake, models, older).success
    tags = client.get_model_version(models["parent"], models["version"]).tags
    assert tags[names.MONITORING_LAST_DAY] == DAY and tags[names.MONITORING_RUN_ID] == run.info.run_id


def test_a_day_on_one_group_with_many_back_offs_warns_and_can_block(lake, models, monkeypatch):
    _log(lake, models, DAY, only_group="insects", back_off=0.6)
    monkeypatch.delenv("EARTHSNAP_MONITOR_BLOCK_PSI", raising=False)
    quiet = _materialize(lake, models)
    assert quiet.success
    assert _checks(quiet) == {
        "drift": (False, dg.AssetCheckSeverity.WARN),
        "back_off_rate": (False, dg.AssetCheckSeverity.WARN),
        "drift_blocking": (True, dg.AssetCheckSeverity.ERROR),  # off: passes
    }
    assert _metadata(quiet)["psi_group"] > 1.0 and _metadata(quiet)["back_off_rate"] > 0.5

    monkeypatch.setenv("EARTHSNAP_MONITOR_BLOCK_PSI", "0.5")  # read when the check runs, not at import
    blocked = _materialize(lake, models)
    assert _checks(blocked)["drift_blocking"] == (False, dg.AssetCheckSeverity.ERROR)

    monkeypatch.setenv("EARTHSNAP_MONITOR_WARN_PSI", "50")
    monkeypatch.setenv("EARTHSNAP_MONITOR_WARN_BACK_OFF", "0.9")
    relaxed = _checks(_materialize(lake, models))
    assert relaxed["drift"][0] and relaxed["back_off_rate"][0]


def test_a_registry_outage_fails_the_day_after_the_report_is_stored(lake, models, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    _log(lake, models, DAY)
    with failing_server() as url:
        result = _materialize(lake, models, registry=MlflowRegistry(tracking_uri=url))
    assert not result.success
    assert lake.store.exists(lake.store.lake_bucket, paths.monitoring_report("production", DAY))


def test_the_schedule_asks_for_the_day_that_just_ended_and_settles_the_one_before():
    tick = dt.datetime(2026, 3, 11, 0, 15, tzinfo=dt.UTC)
    requests = monitoring_schedule(dg.build_schedule_context(scheduled_execution_time=tick))
    assert [(r.partition_key, r.run_key) for r in requests] == [
        ("2026-03-10", "2026-03-10:first"),
        ("2026-03-09", "2026-03-09:settled"),
    ]
