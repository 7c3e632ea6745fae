"""New raw data starts the data pipeline; its success starts the retraining its plan asks for.

Three sensors chained by run tags, so each step can fail, be retried or be launched by hand without the
others losing track:
1. `raw_data_sensor` lists the whole raw prefix every tick (a paginated ListObjectsV2, never "since key")
   and diffs it with the previous snapshot, stored in the lake; the cursor holds only `<seq>:<hash>`.
2. `retrain_after_data_sensor` reads the plan from the tags of a successful data run and requests one
   `child_training` run per changed group and `parent_training` if the plan says so.
3. `hierarchy_after_training_sensor` requests `hierarchy_report` once every training run requested for
   that data run has succeeded: the report fails on a missing or stale child, so it must come last.
"""

from __future__ import annotations

import logging

import dagster as dg

from earthsnap_assets.defs.jobs import child_job, data_job, hierarchy_job, parent_job
from earthsnap_assets.defs.partitions import species_group
from earthsnap_assets.defs.raw_images import IMAGES_PREFIX, TAXONOMY_KEY
from earthsnap_assets.ml.changes import RetrainPlan, Snapshot, counts_per_group, diff, plan_retraining
from earthsnap_assets.ml.taxonomy import TaxonomyError, parse_taxonomy
from earthsnap_assets.resources.object_store import ObjectStore

RAW_SENSOR = "raw_data_sensor"
SNAPSHOT_PREFIX = f"sensors/{RAW_SENSOR}/"
PLANNED_BY_TAG = "earthsnap/planned_by"
SNAPSHOT_TAG = "earthsnap/snapshot"
GROUPS_TAG = "earthsnap/changed_groups"
PARENT_TAG = "earthsnap/retrain_parent"
REASONS_TAG = "earthsnap/reasons"
DATA_RUN_TAG = "earthsnap/data_run"
EXPECTED_TAG = "earthsnap/training_runs"
PARTITION_TAG = "dagster/partition"  # set by Dagster on every partitioned run


def snapshot_key(snapshot_hash: str) -> str:
    return f"{SNAPSHOT_PREFIX}snapshot-{snapshot_hash}.json.gz"


def plan_tags(plan: RetrainPlan, snapshot_hash: str) -> dict[str, str]:
    """The plan as run tags (strings), visible in the UI and read back by the run-status sensors."""
    return {
        PLANNED_BY_TAG: RAW_SENSOR,
        SNAPSHOT_TAG: snapshot_hash,
        GROUPS_TAG: ",".join(plan.child_groups),  # group names are slugs: no commas
        PARENT_TAG: str(plan.retrain_parent).lower(),
        REASONS_TAG: "; ".join(plan.reasons)[:1000],
    }


def plan_from_tags(tags: dict[str, str]) -> RetrainPlan:
    groups = [g for g in tags.get(GROUPS_TAG, "").split(",") if g]
    reasons = [r for r in tags.get(REASONS_TAG, "").split("; ") if r]
    return RetrainPlan(True, sorted(groups), tags.get(PARENT_TAG) == "true", reasons)


def parse_cursor(cursor: str | None) -> tuple[int, str | None]:
    """`<seq>:<snapshot hash>` -> (seq, hash); no cursor yet -> (0, None)."""
    if not cursor:
        return 0, None
    seq, _, snapshot_hash = cursor.partition(":")
    return int(seq), snapshot_hash


def load_snapshot(store: ObjectStore, snapshot_hash: str | None, log: logging.Logger) -> Snapshot:
    """The snapshot a cursor names; an empty one before the first tick or if the lake lost it (all is new)."""
    if snapshot_hash is None:
        return Snapshot()
    key = snapshot_key(snapshot_hash)
    if not store.exists(store.lake_bucket, key):
        log.warning(f"s3://{store.lake_bucket}/{key} is gone: every raw object counts as new")
        return Snapshot()
    return Snapshot.from_bytes(store.read(store.lake_bucket, key))


def take_snapshot(store: ObjectStore, previous: Snapshot, log: logging.Logger) -> Snapshot:
    """List everything now; read taxonomy.csv only when its ETag moved.

    An unreadable taxonomy keeps the last valid mapping: the data run is still requested and fails with the
    line number, and the plan after the fix is computed against the taxonomy that models were trained on.
    """
    objects = {o.key: o.etag for o in store.list_objects(store.raw_bucket, IMAGES_PREFIX)}
    listed = store.list_objects(store.raw_bucket, TAXONOMY_KEY)
    etag = next((o.etag for o in listed if o.key == TAXONOMY_KEY), None)
    mapping = dict(previous.species_to_group)
    if etag is not None and etag != previous.taxonomy_etag:
        try:
            mapping = parse_taxonomy(store.read(store.raw_bucket, TAXONOMY_KEY).decode("utf-8")).species_to_group
        except (TaxonomyError, UnicodeDecodeError) as exc:
            log.warning(f"taxonomy.csv unusable, planning with the last valid one: {exc}")
    return Snapshot(objects, etag, mapping)


def build_raw_data_sensor(
    minimum_interval_seconds: int = 30,
    parent_share_threshold: float = 0.1,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """The raw-data sensor with its own polling interval and parent retraining threshold."""

    @dg.sensor(
        name=RAW_SENSOR,
        job=data_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Full listing of the raw prefix vs the last snapshot: any change runs data_pipeline.",
    )
    def raw_data_sensor(context: dg.SensorEvaluationContext, store: ObjectStore) -> dg.SensorResult | dg.SkipReason:
        seq, old_hash = parse_cursor(context.cursor)
        old = load_snapshot(store, old_hash, context.log)
        new = take_snapshot(store, old, context.log)
        changes = diff(old, new)
        if changes.empty:
            return dg.SkipReason(f"no change: {len(new.objects)} objects, snapshot {new.hash}")
        plan = plan_retraining(
            changes,
            old.species_to_group,
            new.species_to_group,
            counts_per_group(old, IMAGES_PREFIX),
            parent_share_threshold,
            prefix=IMAGES_PREFIX,
            new_counts_per_group=counts_per_group(new, IMAGES_PREFIX),
        )
        store.write(store.lake_bucket, snapshot_key(new.hash), new.to_bytes())  # durable before the cursor moves
        context.log.info(f"{changes.summary()}; plan: {plan}")
        # seq in the run key: the same tick repeated is one run, yet a listing that returns to an earlier
        # state (a file removed, then put back) is a new change and gets a new run.
        request = dg.RunRequest(run_key=f"{seq + 1}-{new.hash}", tags=plan_tags(plan, new.hash))
        return dg.SensorResult(run_requests=[request], cursor=f"{seq + 1}:{new.hash}")

    return raw_data_sensor


raw_data_sensor = build_raw_data_sensor()


def pending_plan(instance: dg.DagsterInstance, run: dg.DagsterRun) -> RetrainPlan:
    """This run's plan plus those of planned data runs that failed since the last success: nothing is lost."""
    plan = plan_from_tags(dict(run.tags))
    planned = instance.get_runs(dg.RunsFilter(job_name=data_job.name, tags={PLANNED_BY_TAG: RAW_SENSOR}), limit=200)
    ids = [r.run_id for r in planned]  # newest first
    for older in planned[ids.index(run.run_id) + 1 :] if run.run_id in ids else []:
        if older.status == dg.DagsterRunStatus.SUCCESS:
            break
        if older.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            carried = plan_from_tags(dict(older.tags))
            plan = plan.merge(carried.with_reason(f"carried over from data run {older.run_id} ({older.status.value})"))
    return plan


@dg.run_status_sensor(
    name="retrain_after_data_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[data_job],
    request_jobs=[child_job, parent_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a planned data_pipeline run succeeds: child_training per changed group, parent_training.",
)
def retrain_after_data_sensor(context: dg.RunStatusSensorContext) -> dg.SensorResult | dg.SkipReason:
    run = context.dagster_run
    if run.tags.get(PLANNED_BY_TAG) != RAW_SENSOR:
        return dg.SkipReason(f"data run {run.run_id} was not launched by {RAW_SENSOR}: no retraining plan")
    plan = pending_plan(context.instance, run)
    tags = {DATA_RUN_TAG: run.run_id, EXPECTED_TAG: str(len(plan.child_groups) + plan.retrain_parent)}
    requests = [
        dg.RunRequest(run_key=f"{run.run_id}-child-{g}", job_name=child_job.name, partition_key=g, tags=tags)
        for g in plan.child_groups
    ]
    if plan.retrain_parent:
        requests.append(dg.RunRequest(run_key=f"{run.run_id}-parent", job_name=parent_job.name, tags=tags))
    if not requests:
        return dg.SkipReason(f"nothing to retrain after {run.run_id}: {'; '.join(plan.reasons)}")
    context.log.info(f"retraining after {run.run_id}: {plan.reasons}")
    # The taxonomy asset has added new groups already; adding them here too (idempotent) keeps a child
    # request valid even for a data run whose partitions were deleted since.
    add = [species_group.build_add_request(plan.child_groups)] if plan.child_groups else []
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=add)


@dg.run_status_sensor(
    name="hierarchy_after_training_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[child_job, parent_job],
    request_job=hierarchy_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="hierarchy_report once every training run requested after one data run has succeeded.",
)
def hierarchy_after_training_sensor(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    run = context.dagster_run
    data_run = run.tags.get(DATA_RUN_TAG)
    if data_run is None:
        return dg.SkipReason(f"training run {run.run_id} was not requested after a data run")
    expected = int(run.tags.get(EXPECTED_TAG, "0"))
    succeeded = context.instance.get_runs(
        dg.RunsFilter(tags={DATA_RUN_TAG: data_run}, statuses=[dg.DagsterRunStatus.SUCCESS])
    )
    # One slot per job and partition: a failed child re-executed from the UI fills its slot when it succeeds.
    done = {
        (r.job_name, r.tags.get(PARTITION_TAG)) for r in succeeded if r.job_name in (child_job.name, parent_job.name)
    }
    if len(done) < expected:
        return dg.SkipReason(f"{len(done)} of {expected} training runs after data run {data_run} have succeeded")
    return dg.RunRequest(run_key=f"{data_run}-hierarchy", tags={DATA_RUN_TAG: data_run})
