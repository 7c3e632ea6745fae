"""Production monitoring: one report per UTC day of the prediction log, its checks, its daily schedule.

The statistics are in `monitoring/` (no Dagster); thresholds in `monitoring/thresholds.py` (environment,
read when a check runs). The checks judge the numbers the materialization of the same day recorded, so they
say what the stored report says.

Scheduling: `production_day` has `end_offset=1` (today is a partition, for people looking at a live day),
so Dagster's own "latest partition" helpers (`AutomationCondition.on_cron`, `build_schedule_from_partitioned_job`)
would pick *today*, 15 minutes old. The schedule below asks for the day that has just finished, at 00:15 UTC
(batches flushed late by a replica still land in it). Feedback arriving the next day is read when a day is
materialized again (a backfill over last week's partitions refreshes their accuracy).
"""

import datetime as dt
import json

import dagster as dg
from pydantic import Field

from earthsnap_assets.defs.partitions import production_day
from earthsnap_assets.lake import paths
from earthsnap_assets.monitoring.daily import day_report
from earthsnap_assets.monitoring.summary import confidence_markdown, groups_markdown, log_summary, report_metrics
from earthsnap_assets.monitoring.thresholds import Thresholds
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


def _unjudged(recorded: dict, thresholds: Thresholds) -> str | None:
    """Why a day's drift is not judged: too few predictions for PSI to mean anything (None: it is judged)."""
    if recorded["volume"] < thresholds.min_predictions:
        return f"{recorded['volume']} predictions, fewer than {thresholds.min_predictions}: drift is not judged"
    return None


def _no_reference(recorded: dict) -> str | None:
    if "psi_group" not in recorded:
        return f"no training reference for {recorded.get('reference_missing')}: drift cannot be measured"
    return None


WARN = dg.AssetCheckSeverity.WARN


@dg.asset_check(asset=ASSET, partitions_def=production_day)
def drift(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """WARN when group or class (species) PSI is above EARTHSNAP_MONITOR_WARN_PSI [0.2], or when the day has
    no training reference to compare with; a day under EARTHSNAP_MONITOR_MIN_PREDICTIONS [100] passes unjudged."""
    recorded, thresholds = _recorded(context), Thresholds.from_env()
    psi = {k: recorded[k] for k in ("psi_group", "psi_species") if k in recorded}
    metadata = {**psi, "threshold": thresholds.warn_psi, "volume": recorded["volume"]}
    unjudged = _unjudged(recorded, thresholds)
    if unjudged:
        return dg.AssetCheckResult(passed=True, metadata={**metadata, "judged": False}, description=unjudged)
    missing = _no_reference(recorded)
    if missing:
        return dg.AssetCheckResult(passed=False, severity=WARN, metadata=metadata, description=missing)
    over = {k: round(v, 4) for k, v in psi.items() if v > thresholds.warn_psi}
    description = f"PSI above {thresholds.warn_psi}: {over}" if over else f"PSI within {thresholds.warn_psi}"
    return dg.AssetCheckResult(
        passed=not over, severity=WARN, metadata={**metadata, "judged": True}, description=description
    )


@dg.asset_check(asset=ASSET, partitions_def=production_day)
def back_off_rate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """WARN when more than EARTHSNAP_MONITOR_WARN_BACK_OFF [0.3] of the day's answers backed off to the group."""
    recorded, thresholds = _recorded(context), Thresholds.from_env()
    rate = recorded.get("back_off_rate")
    metadata = {"threshold": thresholds.warn_back_off, "volume": recorded["volume"]}
    if rate is None:
        return dg.AssetCheckResult(passed=True, metadata=metadata, description="no predictions that day")
    passed = rate <= thresholds.warn_back_off
    return dg.AssetCheckResult(
        passed=passed,
        severity=WARN,
        metadata={**metadata, "back_off_rate": rate},
        description=f"back-off rate {rate:.1%} ({'within' if passed else 'above'} {thresholds.warn_back_off:.0%})",
    )


@dg.asset_check(asset=ASSET, partitions_def=production_day, blocking=True)
def drift_blocking(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """ERROR (blocks what depends on the day's monitoring in the same run) when group PSI is above
    EARTHSNAP_MONITOR_BLOCK_PSI; unset, the check is off and passes."""
    recorded, thresholds = _recorded(context), Thresholds.from_env()
    if thresholds.block_psi is None:
        off = "EARTHSNAP_MONITOR_BLOCK_PSI is unset: the check is off"
        return dg.AssetCheckResult(passed=True, metadata={"enabled": False}, description=off)
    metadata = {"enabled": True, "threshold": thresholds.block_psi, "volume": recorded["volume"]}
    reason = _unjudged(recorded, thresholds) or _no_reference(recorded)  # the drift check WARNs about these
    if reason:
        return dg.AssetCheckResult(passed=True, metadata=metadata, description=reason)
    psi = recorded["psi_group"]
    passed = psi <= thresholds.block_psi
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={**metadata, "psi_group": psi},
        description=f"group PSI {psi:.3f} {'within' if passed else 'above'} {thresholds.block_psi}",
    )


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
def monitoring_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """At 00:15 UTC, the day that has just ended (run_key = the day: one run per day, however often it ticks)."""
    day = (context.scheduled_execution_time.astimezone(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    return dg.RunRequest(run_key=day, partition_key=day)
