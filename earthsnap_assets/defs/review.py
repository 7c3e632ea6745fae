"""The review queue: a day's doubtful answers go to people in Label Studio; their labels come back as raw photos.

`review_queue[day]` selects from the day's prediction log and feedback (`review/selection.py`) and creates
the tasks (yesterday's, daily at 00:30 UTC); `review_labels` collects finished reviews every 5 minutes and
writes accepted labels to the raw bucket, where change capture sees them like any upload and that group's
chain retrains. Both are schedules rather than automation conditions: they follow the clock and people, not
data versions, and they stay out of the automation sensor's evaluations.
"""

from datetime import timedelta

import dagster as dg
from pydantic import Field

from earthsnap_assets.defs.partitions import production_day
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.reports import markdown_table
from earthsnap_assets.resources.label_studio import LabelStudio
from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.review.client import ReviewUnavailable
from earthsnap_assets.review.labels import OUTCOMES, collect_labels
from earthsnap_assets.review.queue import queue_day
from earthsnap_assets.review.selection import SelectionRules
from earthsnap_assets.settings import Settings

LABELS_CRON = "*/5 * * * *"
QUEUE_CRON = "30 0 * * *"  # yesterday's log is complete (UTC days)
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


class ReviewQueueConfig(dg.Config):
    threshold: float = Field(0.5, description="answers less probable than this go to review (low-confidence)")
    max_per_group: int = Field(50, description="new tasks per species group and day at most")


@dg.asset(group_name="review", kinds={"s3"}, partitions_def=production_day)
def review_queue(
    context: dg.AssetExecutionContext,
    config: ReviewQueueConfig,
    store: ObjectStore,
    label_studio: LabelStudio,
    taxonomy: Taxonomy,
) -> dg.MaterializeResult:
    """Photos of one day worth a person's time (corrections, env disagreement, back-off, low confidence) as
    Label Studio tasks with the model's guess pre-selected; fails when Label Studio is unreachable."""
    rules = SelectionRules(threshold=config.threshold, max_per_group=config.max_per_group)
    try:
        result = queue_day(
            context.partition_key,
            store,
            label_studio.client(),
            taxonomy,
            rules=rules,
            region=Settings.from_env().region,
        )
    except ReviewUnavailable as exc:
        raise dg.Failure(str(exc)) from exc
    if result.unknown_groups:
        context.log.warning(f"candidates of groups not in the taxonomy (not queued): {dict(result.unknown_groups)}")
    rows = [(t.group, t.reason, t.sha256[:12], f"[task {t.task_id}]({t.url})") for t in result.tasks]
    return dg.MaterializeResult(
        metadata={
            "predictions": result.predictions,
            "tasks_created": len(result.tasks),
            "by_reason": dg.MetadataValue.json(result.by_reason()),
            "by_group": dg.MetadataValue.json(result.by_group()),
            "missing_photos": result.missing_photos,
            "task_urls": dg.MetadataValue.json([t.url for t in result.tasks][:500]),
            "tasks": dg.MetadataValue.md(markdown_table(["group", "reason", "sha256", "task"], rows, limit=200)),
        }
    )


@dg.asset(group_name="review", kinds={"s3"})
def review_labels(
    context: dg.AssetExecutionContext, store: ObjectStore, label_studio: LabelStudio, taxonomy: Taxonomy
) -> dg.MaterializeResult:
    """Finished reviews: accepted species labels written once to the raw bucket (`images/<species>/review-*`,
    provenance in the object metadata); unsure, rejected and skipped answers recorded under `review/<g>/outcomes/`."""
    try:
        result = collect_labels(store, label_studio.client(), taxonomy)
    except ReviewUnavailable as exc:
        raise dg.Failure(str(exc)) from exc
    context.log.info(f"collected {dict(result.counts)}; wrote {len(result.raw_keys)} raw photos")
    return dg.MaterializeResult(
        metadata={
            **{outcome: result.counts.get(outcome, 0) for outcome in OUTCOMES},
            "by_group": dg.MetadataValue.json({g: dict(c) for g, c in sorted(result.by_group.items())}),
            "raw_keys_written": dg.MetadataValue.json(result.raw_keys[:500]),
        }
    )


review_queue_job = dg.define_asset_job(
    "review_queue_job", selection=["review_queue"], description="Queue one day (partitioned like the asset)."
)
review_labels_job = dg.define_asset_job("review_labels_job", selection=["review_labels"])


@dg.schedule(
    job=review_queue_job,
    cron_schedule=QUEUE_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def review_queue_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Yesterday's doubtful answers to Label Studio (a run that finds Label Studio down fails: rerun the day)."""
    day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    return dg.RunRequest(run_key=day, partition_key=day)


@dg.schedule(
    job=review_labels_job,
    cron_schedule=LABELS_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def review_labels_every_5_minutes(
    context: dg.ScheduleEvaluationContext, label_studio: LabelStudio
) -> dg.RunRequest | dg.SkipReason:
    """Collect finished reviews; a tick skips (with the reason) while Label Studio is unreachable: the next
    tick collects what was missed, so nothing is lost and no failed run is made every 5 minutes. One
    collection at a time: a tick skips while the previous run is still going."""
    running = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=review_labels_job.name, statuses=ACTIVE), limit=1
    )
    if running:
        return dg.SkipReason(f"run {running[0].run_id} is still collecting")
    try:
        label_studio.client().check()
    except ReviewUnavailable as exc:
        return dg.SkipReason(str(exc))
    return dg.RunRequest()
