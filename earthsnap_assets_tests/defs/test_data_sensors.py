"""The new-data sensors: the raw-data sensor on the real S3 (SeaweedFS), run-status sensors on real runs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import dagster as dg
import pytest

from earthsnap_assets.definitions import defs
from earthsnap_assets.defs.data_sensors import (
    DATA_RUN_TAG,
    EXPECTED_TAG,
    GROUPS_TAG,
    PARENT_TAG,
    hierarchy_after_training_sensor,
    parse_cursor,
    plan_tags,
    raw_data_sensor,
    retrain_after_data_sensor,
    snapshot_key,
)
from earthsnap_assets.ml.changes import RetrainPlan, Snapshot, diff
from earthsnap_assets.resources.object_store import ObjectStore

if TYPE_CHECKING:
    from dagster._core.definitions.sensor_definition import SensorExecutionData

TAXONOMY_CSV = b"species,group\noak,trees\nrobin,birds\n"


def tick(lake, cursor: str | None, store: ObjectStore | None = None) -> dg.SensorResult | dg.SkipReason:
    """One sensor evaluation, as the daemon does it: the cursor is all that survives between ticks."""
    context = dg.build_sensor_context(cursor=cursor, instance=lake.instance, resources={"store": store or lake.store})
    return raw_data_sensor(context)


def stored(lake, cursor: str) -> Snapshot:
    store = lake.store
    return Snapshot.from_bytes(store.read(store.lake_bucket, snapshot_key(parse_cursor(cursor)[1])))


def put(lake, key: str, data: bytes) -> None:
    lake.store.write(lake.store.raw_bucket, key, data)


@pytest.mark.stack
def test_new_objects_make_one_run_request_each_time_whatever_their_key(lake):
    put(lake, "taxonomy.csv", TAXONOMY_CSV)
    put(lake, "images/robin/z.jpg", b"robin")
    first = tick(lake, None)
    assert isinstance(first, dg.SensorResult) and len(first.run_requests) == 1
    assert first.run_requests[0].tags[GROUPS_TAG] == "birds" and first.run_requests[0].tags[PARENT_TAG] == "true"
    assert lake.store.exists(lake.store.lake_bucket, snapshot_key(parse_cursor(first.cursor)[1]))
    put(lake, "images/oak/a.jpg", b"oak")  # sorts before every key seen so far: a since-key cursor skips it
    second = tick(lake, first.cursor)
    assert isinstance(second, dg.SensorResult) and [r.tags[GROUPS_TAG] for r in second.run_requests] == ["trees"]
    assert diff(stored(lake, first.cursor), stored(lake, second.cursor)).added == ("images/oak/a.jpg",)
    assert isinstance(tick(lake, second.cursor), dg.SkipReason)


@pytest.mark.stack
def test_an_overwritten_object_is_a_change(lake):
    put(lake, "taxonomy.csv", TAXONOMY_CSV)
    put(lake, "images/robin/1.jpg", b"first version")
    first = tick(lake, None)
    put(lake, "images/robin/1.jpg", b"second version")
    second = tick(lake, first.cursor)
    assert isinstance(second, dg.SensorResult) and len(second.run_requests) == 1
    assert diff(stored(lake, first.cursor), stored(lake, second.cursor)).changed == ("images/robin/1.jpg",)
    assert second.run_requests[0].run_key != first.run_requests[0].run_key


@pytest.mark.stack
def test_a_burst_of_200_objects_in_the_same_second_is_one_complete_run_request(lake):
    put(lake, "taxonomy.csv", TAXONOMY_CSV)
    before = tick(lake, None)
    burst = {f"images/{'oak' if i % 2 else 'robin'}/{i:03d}.jpg": f"image {i}".encode() for i in range(200)}
    lake.store.upload_many(lake.store.raw_bucket, burst, threads=32)
    pages = lake.store.client.get_paginator("list_objects_v2").paginate(Bucket=lake.store.raw_bucket, Prefix="images/")
    seconds = Counter(item["LastModified"].replace(microsecond=0) for page in pages for item in page["Contents"])
    assert max(seconds.values()) > 1  # many keys share a last-modified second: where since-key sensors lose some
    after = tick(lake, before.cursor)
    assert isinstance(after, dg.SensorResult) and len(after.run_requests) == 1
    assert after.run_requests[0].tags[GROUPS_TAG] == "birds,trees"
    assert set(diff(stored(lake, before.cursor), stored(lake, after.cursor)).added) == set(burst)
    assert isinstance(tick(lake, after.cursor), dg.SkipReason)
    # A tick repeated because its cursor never got committed asks for the same run key: Dagster runs it once.
    assert tick(lake, before.cursor).run_requests[0].run_key == after.run_requests[0].run_key


@pytest.mark.stack
def test_the_cursor_alone_survives_a_restart_and_a_lost_snapshot_means_everything_is_new(lake):
    put(lake, "taxonomy.csv", TAXONOMY_CSV)
    put(lake, "images/oak/1.jpg", b"oak")
    cursor = tick(lake, None).cursor
    assert len(cursor) < 40  # the snapshot lives in the lake, the cursor only names it
    restarted = ObjectStore(raw_bucket_name=lake.store.raw_bucket, lake_bucket_name=lake.store.lake_bucket)
    assert isinstance(tick(lake, cursor, restarted), dg.SkipReason)
    put(lake, "images/robin/1.jpg", b"robin")
    after_restart = tick(lake, cursor, restarted)
    assert [r.tags[GROUPS_TAG] for r in after_restart.run_requests] == ["birds"]
    lake.store.client.delete_object(Bucket=lake.store.lake_bucket, Key=snapshot_key(parse_cursor(cursor)[1]))
    assert tick(lake, cursor).run_requests[0].tags[GROUPS_TAG] == "birds,trees"


@pytest.mark.stack
def test_a_broken_taxonomy_still_runs_the_data_pipeline_and_keeps_the_last_valid_mapping(lake):
    put(lake, "taxonomy.csv", TAXONOMY_CSV)
    cursor = tick(lake, None).cursor
    put(lake, "taxonomy.csv", b"species,group\nOak Tree,trees\n")
    broken = tick(lake, cursor)
    assert len(broken.run_requests) == 1  # the run fails and names the line; the sensor does not hide it
    assert stored(lake, broken.cursor).species_to_group == {"oak": "trees", "robin": "birds"}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def finished_run(instance, job_name: str, tags: dict[str, str], ok: bool = True) -> dg.ExecuteInProcessResult:
    """A real run of a one-op job named like ours, so run storage and tag queries are the real ones."""

    @dg.op(name="step")
    def step() -> None:
        if not ok:
            raise RuntimeError("bad upload")

    @dg.job(name=job_name)
    def job() -> None:
        step()

    return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)


def status_context(instance, name: str, result: dg.ExecuteInProcessResult) -> dg.RunStatusSensorContext:
    return dg.build_run_status_sensor_context(
        sensor_name=name,
        dagster_event=result.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    )


def test_retraining_follows_the_plan_and_carries_over_a_failed_data_run(instance):
    failed = finished_run(instance, "data_pipeline", plan_tags(RetrainPlan(True, ["fish"], False, []), "h1"), ok=False)
    assert not failed.success
    ok = finished_run(instance, "data_pipeline", plan_tags(RetrainPlan(True, ["birds"], True, ["x"]), "h2"))
    result = retrain_after_data_sensor(status_context(instance, "retrain_after_data_sensor", ok))
    requests = {(r.job_name, r.partition_key): r for r in result.run_requests}
    assert set(requests) == {("child_training", "birds"), ("child_training", "fish"), ("parent_training", None)}
    run_id = ok.dagster_run.run_id
    assert requests["child_training", "fish"].run_key == f"{run_id}-child-fish"
    assert all(r.tags == {DATA_RUN_TAG: run_id, EXPECTED_TAG: "3"} for r in requests.values())
    assert result.dynamic_partitions_requests[0].partition_keys == ["birds", "fish"]
    manual = finished_run(instance, "data_pipeline", {})
    assert isinstance(retrain_after_data_sensor(status_context(instance, "retrain", manual)), dg.SkipReason)


def test_hierarchy_report_waits_for_every_training_run_of_the_data_run(instance):
    tags = {DATA_RUN_TAG: "data-1", EXPECTED_TAG: "2"}
    finished_run(instance, "child_training", {**tags, "dagster/partition": "fish"}, ok=False)
    child = finished_run(instance, "child_training", {**tags, "dagster/partition": "birds"})
    waiting = hierarchy_after_training_sensor(status_context(instance, "hierarchy", child))
    assert isinstance(waiting, dg.SkipReason) and "1 of 2" in waiting.skip_message
    parent = finished_run(instance, "parent_training", tags)
    request = hierarchy_after_training_sensor(status_context(instance, "hierarchy", parent))
    assert isinstance(request, dg.RunRequest) and request.run_key == "data-1-hierarchy"


def test_through_the_daemon_path_child_partitions_resolve_from_the_plan(instance):
    """evaluate_tick as the daemon calls it: monitored-job filter, cursor, partition keys of new groups."""

    def evaluate(cursor: str | None) -> SensorExecutionData:
        repository = defs.get_repository_def()
        context = dg.SensorEvaluationContext(
            instance_ref=instance.get_ref(), instance=instance, repository_def=repository, cursor=cursor
        )
        return repository.get_sensor_def("retrain_after_data_sensor").evaluate_tick(context)

    started = evaluate(None)  # a run-status sensor's first tick only sets its cursor
    finished_run(instance, "data_pipeline", plan_tags(RetrainPlan(True, ["insects"], False, []), "h"))
    data = evaluate(started.cursor)
    assert [(r.job_name, r.partition_key) for r in data.run_requests] == [("child_training", "insects")]
    assert data.run_requests[0].tags["dagster/partition"] == "insects"  # a partition not in the instance yet
