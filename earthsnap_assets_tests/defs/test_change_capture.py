"""Change capture and retraining, the Dagster way: events -> raw_changes[g] -> automation, on the real stack.

The sensor drains SeaweedFS's filer subscription (a real server), the reconciliation lists the real bucket,
and declarative automation is evaluated by Dagster's own evaluator on a real instance.
"""

from __future__ import annotations

from collections import Counter

import dagster as dg
import numpy as np
import pytest

from earthsnap_assets.definitions import defs
from earthsnap_assets.defs.change_capture import raw_change_sensor
from earthsnap_assets.demo.synthetic import render_image
from earthsnap_assets.lake import paths
from earthsnap_assets.lake.changes import pending_batches, read_events
from earthsnap_assets.resources.raw_events import RawEvents
from earthsnap_assets_tests.defs.training_setup import tiny_config

pytestmark = pytest.mark.stack
TAXONOMY_CSV = b"species,group\noak,trees\nbirch,trees\nrobin,birds\nwren,birds\n"


def tick(lake, cursor: str | None) -> dg.SensorResult:
    """One sensor evaluation as the daemon does it; its asset events are recorded like the daemon does."""
    with dg.build_sensor_context(cursor=cursor, instance=lake.instance, resources=lake.resources) as context:
        result = raw_change_sensor(context)
    for event in result.asset_events:
        lake.instance.report_runless_asset_event(event)
    return result


def photo(species: str, seed: int) -> bytes:
    import io

    buffer = io.BytesIO()
    render_image(species, np.random.default_rng(seed), (200, 150)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def logged(lake, group: str) -> list:
    store = lake.store
    return read_events(store, store.lake_bucket, pending_batches(store, store.lake_bucket, group, None))


def test_a_burst_of_200_uploads_in_one_second_is_captured_once_each_in_bounded_ticks(lake):
    lake.store.write(lake.store.raw_bucket, "taxonomy.csv", TAXONOMY_CSV)
    lake.materialize(list(defs.assets), selection=["taxonomy"])
    first = tick(lake, None)  # starts watching
    burst = {f"images/{'oak' if i % 2 else 'robin'}/{i:03d}.jpg": f"photo {i}".encode() for i in range(200)}
    lake.store.upload_many(lake.store.raw_bucket, burst, threads=32)
    pages = lake.store.client.get_paginator("list_objects_v2").paginate(Bucket=lake.store.raw_bucket, Prefix="images/")
    seconds = Counter(item["LastModified"].replace(microsecond=0) for page in pages for item in page["Contents"])
    assert max(seconds.values()) > 1  # many keys share a last-modified second: where since-key listings lose some
    cursor, ticks, reported = first.cursor, 0, Counter()
    while True:
        resources = {**lake.resources, "raw_events": RawEvents(max_events=64)}
        with dg.build_sensor_context(cursor=cursor, instance=lake.instance, resources=resources) as context:
            result = raw_change_sensor(context)
        ticks += 1
        reported.update(e.partition for e in result.asset_events if e.partition)
        if result.cursor == cursor or not result.asset_events:
            break
        cursor = result.cursor
    assert ticks >= 4  # 200 events at 64 per tick: bounded work per tick
    keys = Counter(e.key for group in ("trees", "birds") for e in logged(lake, group))
    assert set(keys) == set(burst) and max(keys.values()) == 1  # 0 missed, 0 duplicated
    assert set(reported) == {"trees", "birds"}
    assert isinstance(tick(lake, cursor).skip_reason, dg.SkipReason)  # nothing new: the tick skips


def test_events_dropped_on_the_way_are_recovered_by_the_reconciliation(lake):
    store = lake.store
    store.write(store.raw_bucket, "taxonomy.csv", TAXONOMY_CSV)
    for i in range(12):
        store.write(store.raw_bucket, f"images/oak/{i:02d}.jpg", photo("rosa-pentapetala", i))
    lake.build_data()
    tick(lake, None)
    for i in range(3):  # uploaded while the sensor is down: the cursor below skips them, as a lost event would
        store.write(store.raw_bucket, f"images/birch/late-{i}.jpg", photo("rosa-pentapetala", 100 + i))
    tick(lake, None)  # a new cursor past the uploads: their events are lost
    assert not logged(lake, "trees")
    assert _metadata(lake.build_data()["intake"]["trees"], "raw_images")["decoded_this_run"] == 0  # nothing told intake
    reconciled = lake.materialize(list(defs.assets), selection=["raw_reconciliation"])
    meta = _metadata(reconciled, "raw_reconciliation")
    assert meta["groups_with_differences"] == 1 and meta["listed_objects"] == 15
    reported = [e for e in reconciled.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
    assert ("raw_changes", "trees") in {(e.asset_key.to_user_string(), e.partition) for e in reported}
    after = lake.build_data()
    assert _metadata(after["intake"]["trees"], "raw_images")["decoded_this_run"] == 3
    assert _metadata(after["trees"], "validated_manifest")["accepted"] == 15


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    assert events, f"{asset} was not materialized"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def requested(result) -> set[tuple[str, str | None]]:
    found = set()
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        for partition in result.get_requested_partitions(key):
            found.add((key.to_user_string(), partition))
    return found


TRAINING = {
    "child_hyperparams",
    "child_model",
    "child_evaluation",
    "registered_child",
    "parent_hyperparams",
    "parent_model",
    "parent_evaluation",
    "registered_parent",
}


def test_one_groups_upload_reruns_only_that_groups_partitions_and_retrains_only_its_child(lake):
    store = lake.store
    store.write(store.raw_bucket, "taxonomy.csv", TAXONOMY_CSV)
    drawn = {
        "oak": "rosa-pentapetala",
        "birch": "lilium-hexastella",
        "robin": "coccinella-rotunda",
        "wren": "carabus-lineatus",
    }
    for n, (species, drawing) in enumerate(drawn.items()):
        for i in range(12):
            store.write(store.raw_bucket, f"images/{species}/{i:02d}.jpg", photo(drawing, 100 * n + i))
    lake.build_data()
    for key in sorted(TRAINING):  # models exist already: record them as the training runs would have
        partitions = lake.groups() if key.startswith(("child", "registered_child")) else [None]
        for partition in partitions:
            lake.instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=lake.instance)
    assert not requested(quiet) & {(k, p) for k in TRAINING for p in (None, "trees", "birds")}

    cursor = tick(lake, None).cursor
    for i in range(20):  # a burst of uploads into one group: one intake run of that group
        store.write(store.raw_bucket, f"images/wren/new-{i:02d}.jpg", photo("carabus-lineatus", 900 + i))
    tick(lake, cursor)
    intake = dg.evaluate_automation_conditions(defs=defs, instance=lake.instance, cursor=quiet.cursor)
    assert requested(intake) == {("raw_images", "birds")}  # only the touched group; training waits for data

    run = lake.materialize(list(defs.assets), selection=["raw_images"], partition="birds")
    assert _metadata(run, "raw_images")["decoded_this_run"] == 20
    checks = dg.evaluate_automation_conditions(defs=defs, instance=lake.instance, cursor=intake.cursor)
    assert requested(checks) == {("content_checks", None)}  # one run of the global checks, for all groups

    checked = lake.materialize(list(defs.assets), selection=["content_checks"])
    assert _metadata(checked, "content_checks")["groups_changed"] == 1
    data = dg.evaluate_automation_conditions(defs=defs, instance=lake.instance, cursor=checks.cursor)
    chain = {("validated_manifest", "birds"), ("dataset_splits", "birds")}
    assert requested(data) == chain

    lake.materialize(list(defs.assets), selection=[k for k, _ in chain], partition="birds")
    after_data = dg.evaluate_automation_conditions(defs=defs, instance=lake.instance, cursor=data.cursor)
    child = {(k, "birds") for k in ("child_hyperparams", "child_model", "child_evaluation", "registered_child")}
    assert requested(after_data) == child | {("dataset_version", None), ("parent_sample", None)}

    lake.materialize(list(defs.assets), selection=["dataset_version", "parent_sample"])
    after_fan_in = dg.evaluate_automation_conditions(defs=defs, instance=lake.instance, cursor=after_data.cursor)
    # 20 new photos move the parent's sample by more than 10%: the parent retrains too (and only then)
    parent = {(k, None) for k in ("parent_hyperparams", "parent_model", "parent_evaluation", "registered_parent")}
    assert requested(after_fan_in) - child == parent
    config = tiny_config()["ops"]
    trained = lake.materialize(
        list(defs.assets),
        run_config={"ops": {k: config[k] for k, _ in child if k in config}},
        selection=[k for k, _ in child],
        partition="birds",
    )
    assert trained.success and {p for _, p in _materialized_keys(trained)} == {"birds"}

    # a new parent (children warm-start from it) is not a reason to retrain hundreds of children
    new_parent = dg.AssetMaterialization("parent_model", tags={"dagster/data_version": "parent-v2"})
    lake.instance.report_runless_asset_event(new_parent)
    after_parent = dg.evaluate_automation_conditions(defs=defs, instance=lake.instance, cursor=after_fan_in.cursor)
    assert not {k for k, _ in requested(after_parent)} & {"child_hyperparams", "child_model"}


def _materialized_keys(result) -> set[tuple[str, str | None]]:
    return {(e.asset_key.to_user_string(), e.partition) for e in result.get_asset_materialization_events()}


def test_the_automation_sensor_and_the_change_sensor_are_part_of_the_definitions():
    sensors = {s.name for s in defs.sensors}
    assert {"raw_change_sensor", "earthsnap_automation", "approval_sensor"} <= sensors
    assert paths.UNASSIGNED == "_unassigned"
