"""Production monitoring: one report per UTC day of the prediction log, its checks, its daily schedule.

The statistics are in `monitoring/` (no Dagster); what the checks decide and their thresholds in
`monitoring/checks.py` (environment, read when a check runs). The checks judge the numbers the same day's
materialization recorded, so they say what the stored report says.

Scheduling: `production_day` has `end_offset=1` (today is a partition, for people looking at a live day),
so Dagster's own "latest partition" helpers (`AutomationCondition.on_cron`, `build_schedule_from_partitioned_job`)
would pick *today*, 15 minutes old. The schedule below asks, at 00:15 UTC, for the day that has just finished
(batches flushed late by a replica still land in it) and again for the day before it, which by then has its
next day's feedback too (a report joins feedback of its day and the next). A backfill over older partitions
recomputes them the same way.
"""

import datetime as dt
import json

import dagster as dg
from pydantic import Field

from earthsnap_assets.defs.partitions import production_day
from earthsnap_assets.lake import paths
from earthsnap_assets.monitoring.checks import Thresholds, Verdict, judge_back_off, judge_blocking, judge_drift
from earthsnap_assets.monitoring.daily import day_report
from earthsnap_assets.monitoring.summary import confidence_markdown, groups_markdown, log_summary, report_metrics
from earthsnap_assets.registry import names
from earthsnap_assets.registry.client import RegistryClient
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore

ASSET = dg.AssetKey("production_monitoring")


class MonitoringConfig(dg.Config):
    env: str = Field("production", description="serving environment whose prediction log is read")
    model_prefix: str = Field(names.DEFAULT_PREFIX, description="registered models: <prefix>parent is tagged")
    experiment: str = Field(names.MONITORING_EXPERIMENT, description="MLflow experiment of the daily runs")


@dg.asset(group_name="monitoring", partitions_def=production_day, kinds={"s3", "mlflow"})
def production_monitoring(
    context: dg.AssetExecutionContext, config: MonitoringConfig, store: ObjectStore, registry: MlflowRegistry
) -> dg.MaterializeResult:
    """A day of the prediction log against the deployed dataset version's training distribution and the
    previous week: volume, confidence, back-off rate, class and input drift (PSI, chi-square, KS), latency,
    accuracy on user feedback. The report goes to the lake, the summary to MLflow and the parent version."""
    day = context.partition_key
    report = day_report(store, store.lake_bucket, config.env, day)
    key = paths.monitoring_report(config.env, day)
    store.write(store.lake_bucket, key, json.dumps(report.to_json(), sort_keys=True).encode())
    summary = log_summary(
        RegistryClient(registry.tracking_uri, config.experiment), report, names.parent_name(config.model_prefix)
    )
    context.log.info(
        f"{config.env} {day}: {report.volume} predictions, group PSI {report.psi_group}, run {summary.run_id}"
    )
    metadata = {
        **report_metrics(report),
        "volume": report.volume,
        "env": config.env,
        "report": dg.MetadataValue.path(store.uri(store.lake_bucket, key)),
        "top_groups": dg.MetadataValue.md(groups_markdown(report)),
        "confidence_histogram": dg.MetadataValue.md(confidence_markdown(report)),
        "dataset_versions": dg.MetadataValue.json(report.dataset_versions),
        "reference_missing": dg.MetadataValue.json(report.reference_missing),
        "corrections": dg.MetadataValue.json(report.feedback.get("confusion", [])),
        "mlflow_run_id": summary.run_id,
        "parent_version": f"{summary.model}@{summary.version}" if summary.version else "none",
    }
    return dg.MaterializeResult(metadata=metadata)


def _recorded(context: dg.AssetCheckExecutionContext) -> dict[str, object]:
    """The metadata of this partition's latest materialization (what the stored report says)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=ASSET, asset_partitions=[context.partition_key]), limit=1
    ).records
    if not records:
        raise dg.Failure(f"production_monitoring[{context.partition_key}] has no materialization to check")
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def _result(verdict: Verdict, severity: dg.AssetCheckSeverity, metadata: dict) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=verdict.passed,
        severity=severity,
        metadata={**metadata, "judged": verdict.judged},
        description=verdict.description,
    )


def _numbers(recorded: dict, *names: str) -> dict[str, float]:
    return {n: recorded[n] for n in names if n in recorded}


@dg.asset_check(asset=ASSET, partitions_def=production_day)
def drift(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """WARN when group or class (species) PSI is above EARTHSNAP_MONITOR_WARN_PSI [0.2] (and above what
    sampling noise gives that day), or when the day has no training reference to compare with. A day under
    EARTHSNAP_MONITOR_MIN_PREDICTIONS [100] passes unjudged."""
    recorded, thresholds = _recorded(context), Thresholds.from_env()
    metadata = {
        **_numbers(recorded, "volume", "psi_group", "psi_species", "psi_group_null_p95", "psi_species_null_p95"),
        "threshold": thresholds.warn_psi,
    }
    return _result(judge_drift(recorded, thresholds), dg.AssetCheckSeverity.WARN, metadata)


@dg.asset_check(asset=ASSET, partitions_def=production_day)
def back_off_rate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """WARN when more than EARTHSNAP_MONITOR_WARN_BACK_OFF [0.3] of the day's answers backed off to the group."""
    recorded, thresholds = _recorded(context), Thresholds.from_env()
    metadata = {**_numbers(recorded, "volume", "back_off_rate"), "threshold": thresholds.warn_back_off}
    return _result(judge_back_off(recorded, thresholds), dg.AssetCheckSeverity.WARN, metadata)


@dg.asset_check(asset=ASSET, partitions_def=production_day, blocking=True)
def drift_blocking(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """ERROR, blocking what depends on the day's monitoring in the same run, when group PSI is above
    EARTHSNAP_MONITOR_BLOCK_PSI; unset (the default), the check is off and passes."""
    recorded, thresholds = _recorded(context), Thresholds.from_env()
    metadata = {
        **_numbers(recorded, "volume", "psi_group", "psi_group_null_p95"),
        "enabled": thresholds.block_psi is not None,
        **({"threshold": thresholds.block_psi} if thresholds.block_psi is not None else {}),
    }
    return _result(judge_blocking(recorded, thresholds), dg.AssetCheckSeverity.ERROR, metadata)


monitoring_job = dg.define_asset_job(
    "production_monitoring_daily",
    selection=dg.AssetSelection.assets(ASSET),  # with its checks; partitioned like the asset
    description="A day of the prediction log: report, MLflow summary, drift and back-off checks.",
)


@dg.schedule(
    job=monitoring_job,
    cron_schedule="15 0 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,  # reads the log and writes its own report: nothing to fear
)
def monitoring_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """At 00:15 UTC: the day that has just ended, and the day before it settled with its next day's feedback.

    Run keys name the day and the pass, so a tick evaluated twice starts nothing twice."""
    today = context.scheduled_execution_time.astimezone(dt.UTC).date()
    ended, settled = (today - dt.timedelta(days=1)).isoformat(), (today - dt.timedelta(days=2)).isoformat()
    return [
        dg.RunRequest(run_key=f"{ended}:first", partition_key=ended, tags={"earthsnap/monitoring": "first"}),
        dg.RunRequest(run_key=f"{settled}:settled", partition_key=settled, tags={"earthsnap/monitoring": "settled"}),
    ]
