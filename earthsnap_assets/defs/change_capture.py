"""Change capture of the raw bucket: events in, per-group change logs out, never a listing in a tick.

Each tick drains at most `max_events` events from the bucket's event source (SeaweedFS's filer metadata
subscription locally, S3 Event Notifications through SQS on AWS), appends them to the change log of the
group each photo belongs to, and reports `raw_changes[g]` for the touched groups. Declarative automation
then runs each touched group's intake once, however many photos arrived. The cursor moves only after the
events are in the lake. What an event source missed, `raw_reconciliation` finds by a full listing.
"""

import dagster as dg

from earthsnap_assets.lake.capture import capture
from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.resources.raw_events import RawEvents

SENSOR = "raw_change_sensor"


def build_raw_change_sensor(interval_s: int = 15) -> dg.SensorDefinition:
    return dg.SensorDefinition(
        name=SENSOR,
        evaluation_fn=raw_change_tick,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Raw-bucket events -> per-group change logs -> raw_changes[g] (bounded work per tick).",
    )


def raw_change_tick(
    context: dg.SensorEvaluationContext, store: ObjectStore, raw_events: RawEvents
) -> dg.SensorResult | dg.SkipReason:
    source = raw_events.source(store.raw_bucket)
    result = capture(
        source,
        store,
        store.lake_bucket,
        context.cursor,
        max_events=raw_events.max_events,
        timeout_s=raw_events.timeout_s,
    )
    events = [
        dg.AssetMaterialization(
            "raw_changes",
            partition=group,
            metadata={"events": count, "change_log": dg.MetadataValue.path(f"s3://{store.lake_bucket}/{key}")},
        )
        for group, (key, count) in sorted(result.batches.items())
    ]
    if result.taxonomy_changed:
        events.append(dg.AssetMaterialization("taxonomy_csv", metadata={"source": "raw_change_sensor"}))
    if result.unassigned:
        context.log.info(f"{result.unassigned} events for photos of species no group has (yet)")
    summary = f"{result.events} events in {result.seconds:.2f} s; groups {sorted(result.batches)}"
    context.log.info(summary + ("" if result.exhausted else "; more pending (next tick)"))
    if not events:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"no change ({summary})"), cursor=result.cursor)
    return dg.SensorResult(asset_events=events, cursor=result.cursor)


raw_change_sensor = build_raw_change_sensor()
