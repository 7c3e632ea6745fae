"""The review loop against a real Label Studio: a day's doubtful answers become tasks with the model's guess,
a reviewer's answers come back as raw photos (accepted) or recorded outcomes (unsure, skipped).

The photos, prediction log and feedback are written exactly where the endpoint writes them
(`lake/paths.py`, `monitoring/records.py`); Label Studio reads the photos from the lake over S3.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import httpx
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.resources.label_studio import LabelStudio
from earthsnap_assets.review import state
from earthsnap_assets.review.client import NOT_THIS_GROUP, UNSURE, ReviewClient, label_config, project_title
from earthsnap_assets.review.labels import read_outcomes, review_key
from earthsnap_assets.stack import label_studio, stack_status, stack_up
from earthsnap_assets.stack.ports import free_port
from earthsnap_assets_tests.review.browser import chromium
from earthsnap_assets_tests.review.conftest import ReviewLake
from earthsnap_assets_tests.review.records import (
    DAY,
    feedback,
    feedback_table,
    prediction,
    predictions_table,
    sha,
)

pytestmark = pytest.mark.stack

TAXONOMY_CSV = "species,group\nquercus-robur,trees\nquercus-rubra,trees\nrosa-canina,shrubs\n"
TAXONOMY = Taxonomy({"quercus-robur": "trees", "quercus-rubra": "trees", "rosa-canina": "shrubs"})
COLOURS = {"low": (200, 40, 40), "low2": (40, 200, 40), "backoff": (40, 40, 200), "corrected": (200, 200, 40)}

# The labeling view's photo: loaded and drawn at size, with its natural size and the RGB of its centre pixel.
PHOTO_JS = """(() => {
  const img = [...document.querySelectorAll('[class*=lsf-image] img')].find(
    e => e.complete && e.naturalWidth > 0 && e.getBoundingClientRect().width > 100);
  if (!img) return null;
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = 1;
  const g = canvas.getContext('2d');
  g.drawImage(img, img.naturalWidth / 2, img.naturalHeight / 2, 1, 1, 0, 0, 1, 1);
  return [img.naturalWidth, img.naturalHeight, ...g.getImageData(0, 0, 1, 1).data.slice(0, 3)];
})()"""
# The labels of the checked choices (the pre-annotation shows as a selected radio button).
CHECKED_JS = """(() => {
  const checked = [...document.querySelectorAll('input[type=radio]:checked')];
  return checked.length ? checked.map(e => e.closest('label')?.innerText || e.value).join('|') : null;
})()"""


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 64), colour).save(out, format="JPEG")
    return out.getvalue()


def _write_day(lake: ReviewLake) -> dict[str, dict]:
    """The endpoint's output for one day: kept photos, one prediction batch, one feedback batch."""
    rows = {
        "low": prediction(
            "low", probability=0.35, top_k=[("quercus-robur", "trees", 0.35), ("quercus-rubra", "trees", 0.3)]
        ),
        "low2": prediction("low2", probability=0.3),
        "backoff": prediction(
            "backoff",
            species=None,
            probability=0.8,
            top_k=[("quercus-rubra", "trees", 0.42), ("quercus-robur", "trees", 0.38)],
        ),
        "corrected": prediction("corrected", probability=0.92),
        "confident": prediction("confident", probability=0.97),
        "not-kept": prediction("not-kept", probability=0.1, kept=False),
    }
    store, bucket = lake.store, lake.store.lake_bucket
    for name, colour in COLOURS.items():
        photo = _jpeg(colour)
        store.write(bucket, rows[name]["photo_key"], photo)
    store.write(bucket, rows["confident"]["photo_key"], _jpeg((0, 0, 0)))
    batch = io.BytesIO()
    pq.write_table(predictions_table(list(rows.values())), batch)
    store.write(bucket, paths.predictions_batch("production", DAY, "120000", "test-1", "aaaa"), batch.getvalue())
    batch = io.BytesIO()
    pq.write_table(feedback_table([feedback(rows["corrected"], "rosa-canina", "shrubs")]), batch)
    store.write(bucket, paths.feedback_batch("production", DAY, "121000", "app", "bbbb"), batch.getvalue())
    store.write(store.raw_bucket, paths.TAXONOMY_KEY, TAXONOMY_CSV.encode())
    return rows


@pytest.fixture(scope="module")
def queued(review_lake: ReviewLake, review_client: ReviewClient) -> dict:
    """The day written, the taxonomy parsed, `review_queue[DAY]` materialized once: its metadata by name."""
    rows = _write_day(review_lake)
    review_lake.materialize(["taxonomy"])
    began = time.monotonic()
    result = review_lake.materialize(["review_queue"], partition=DAY)
    metadata = result.asset_materializations_for_node("review_queue")[0].metadata
    tasks = {}
    for name in COLOURS:
        marker = state.queued_key("shrubs" if name == "corrected" else "trees", sha(name))
        tasks[name] = json.loads(review_lake.store.read(review_lake.store.lake_bucket, marker))
    return {"rows": rows, "metadata": metadata, "tasks": tasks, "seconds": time.monotonic() - began}


def test_the_service_is_part_of_the_stack(review_stack) -> None:
    by_name = {s.name: s for s in stack_status(review_stack)}
    service = by_name[label_studio.NAME]
    assert service.healthy and service.url == review_stack.review_url
    again = {s.name: s for s in stack_up(review_stack, dagster=False, review=True)}
    assert again[label_studio.NAME].pid == service.pid  # already healthy: left alone
    assert (review_stack.home / "label-studio" / "label_studio.sqlite3").is_file()  # data in the stack's home


def test_projects_are_found_by_title_and_follow_the_taxonomy(review_client: ReviewClient) -> None:
    first = review_client.ensure_project("ferns", ["dryopteris-filix-mas"])
    assert review_client.ensure_project("ferns", ["dryopteris-filix-mas"]) == first
    assert review_client.review_projects()["ferns"] == first
    updated = review_client.ensure_project("ferns", ["dryopteris-filix-mas", "polypodium-vulgare"])
    assert updated == first
    config = review_client.sdk.projects.get(first).label_config
    assert config == label_config(["dryopteris-filix-mas", "polypodium-vulgare"])
    assert project_title("ferns") == "earthsnap-ferns"


def test_queue_creates_tasks_with_the_models_guess(
    queued: dict, review_client: ReviewClient, review_lake, review_stack
) -> None:
    metadata = queued["metadata"]
    assert metadata["tasks_created"].value == 4  # low, low2, backoff in trees; the correction in shrubs
    assert metadata["by_reason"].value == {"back-off": 1, "correction": 1, "low-confidence": 2}
    assert metadata["by_group"].value == {"shrubs": 1, "trees": 3}
    urls = metadata["task_urls"].value
    task = queued["tasks"]["backoff"]
    assert f"{review_client.url}/projects/{task['project_id']}/data?task={task['task_id']}" in urls
    # the pre-annotation: the model's best species of the group, its probability, the model version
    (pred,) = review_client.predictions(task["task_id"])
    assert pred.model_version == "earthsnap-child-trees:3"
    assert pred.result[0]["value"]["choices"] == ["quercus-rubra"]
    assert pred.score == pytest.approx(0.42)
    # a correction into a group the model did not rank: a task without a guess
    assert review_client.predictions(queued["tasks"]["corrected"]["task_id"]) == []
    stored = {t.id: t.data for t in review_client.sdk.tasks.list(project=task["project_id"], resolve_uri=False)}
    data = stored[task["task_id"]]
    assert data["image"] == f"s3://{review_lake.store.lake_bucket}/{paths.review_photo(sha('backoff'))}"
    assert (data["request_id"], data["day"], data["env"]) == (
        queued["rows"]["backoff"]["request_id"],
        DAY,
        "production",
    )
    # Label Studio serves the photo from the lake, proxied through the project's S3 storage
    resolved = review_client.sdk.tasks.get(str(task["task_id"])).data["image"]
    assert "/resolve/?fileuri=" in resolved
    served = httpx.get(resolved, headers={"Authorization": f"Token {review_stack.review_token}"}, timeout=30)
    assert served.status_code == 200, served.text[:300]
    photo_key = queued["rows"]["backoff"]["photo_key"]
    assert served.content == review_lake.store.read(review_lake.store.lake_bucket, photo_key)
    # a second run of the same day queues nothing new
    again = review_lake.materialize(["review_queue"], partition=DAY)
    assert again.asset_materializations_for_node("review_queue")[0].metadata["tasks_created"].value == 0
    print(f"\nreview_queue materialized in {queued['seconds']:.1f} s")


def test_a_person_sees_the_photo_and_the_guess(queued: dict, review_stack, review_client, tmp_path: Path) -> None:
    """Headless Chromium logs in like a reviewer, opens the task page: the photo loads, the guess is selected."""
    task = queued["tasks"]["backoff"]
    url = review_client.task_url(task["project_id"], task["task_id"])
    began = time.monotonic()
    with chromium(tmp_path / "profile") as page:
        page.goto(f"{review_stack.review_url}/user/login/")
        page.wait_for("!!document.querySelector('input[name=email]')")
        page.evaluate(
            "(() => { const f = document.querySelector('form');"
            f" f.querySelector('input[name=email]').value = {json.dumps(review_stack.review_user)};"
            f" f.querySelector('input[name=password]').value = {json.dumps(review_stack.review_password)};"
            " f.submit(); return true; })()"
        )
        page.wait_for("!location.pathname.startsWith('/user/login')", timeout=30)
        page.goto(url)
        try:
            # the labeling view's image (not the Data Manager's thumbnails): loaded, drawn, and the queued photo
            photo = page.wait_for(PHOTO_JS, timeout=90)
            selected = page.wait_for(CHECKED_JS, timeout=30)
        finally:
            shot = page.screenshot(tmp_path / "task.png")
            print(f"\nscreenshot {shot}")
        text = page.evaluate("document.body.innerText")
    width, height, *rgb = photo
    assert (width, height) == (96, 64)  # the lake photo, decoded by the browser
    assert all(abs(got - want) < 12 for got, want in zip(rgb, COLOURS["backoff"], strict=True)), rgb
    assert "quercus-rubra" in selected  # the model's guess, pre-selected
    assert "Model: trees (80.0%; back-off)" in text  # the answer that backed off to the group, and why
    print(f"browser check in {time.monotonic() - began:.1f} s")


def test_reviewed_labels_flow_back_to_the_raw_bucket(queued: dict, review_lake: ReviewLake, review_client) -> None:
    tasks = queued["tasks"]
    review_client.annotate(tasks["low"]["task_id"], "quercus-rubra")  # the reviewer corrects the model
    review_client.annotate(tasks["corrected"]["task_id"], UNSURE)
    review_client.annotate(tasks["low2"]["task_id"], None, skip=True)
    result = review_lake.materialize(["review_labels"])
    metadata = result.asset_materializations_for_node("review_labels")[0].metadata
    assert (metadata["accepted"].value, metadata["unsure"].value, metadata["skipped"].value) == (1, 1, 1)
    key = review_key("quercus-rubra", sha("low"), "jpg")
    assert metadata["raw_keys_written"].value == [key]
    store = review_lake.store
    head = store.client.head_object(Bucket=store.raw_bucket, Key=key)
    assert head["ContentType"] == "image/jpeg"
    assert head["Metadata"]["source"] == "review"
    assert head["Metadata"]["review-task-id"] == str(tasks["low"]["task_id"])
    assert head["Metadata"]["request-id"] == queued["rows"]["low"]["request_id"]
    assert head["Metadata"]["sha256"] == sha("low")
    assert head["Metadata"]["annotator"] == review_lake.resources["label_studio"].client().check()
    assert store.read(store.raw_bucket, key) == store.read(store.lake_bucket, queued["rows"]["low"]["photo_key"])
    assert key.startswith("images/quercus-rubra/review-") and paths.species_of(key) == "quercus-rubra"
    # nothing is lost: the unsure answer and the skip are recorded with their reason
    shrubs = read_outcomes(store, "shrubs").to_pylist()
    assert [(r["outcome"], r["reason"], r["sha256"]) for r in shrubs] == [("unsure", UNSURE, sha("corrected"))]
    trees = {r["sha256"]: r for r in read_outcomes(store, "trees").to_pylist()}
    assert trees[sha("low")]["raw_key"] == key and trees[sha("low2")]["outcome"] == "skipped"
    # each annotation once: a second collection finds nothing new; a later one only the new answer
    again = review_lake.materialize(["review_labels"]).asset_materializations_for_node("review_labels")[0].metadata
    assert sum(again[o].value for o in ("accepted", "unsure", "rejected", "skipped")) == 0
    review_client.annotate(tasks["backoff"]["task_id"], NOT_THIS_GROUP)
    later = review_lake.materialize(["review_labels"]).asset_materializations_for_node("review_labels")[0].metadata
    assert (later["accepted"].value, later["rejected"].value) == (0, 1)
    assert metadata["raw_keys_written"].value == [key]


def test_a_run_fails_clearly_when_label_studio_is_down(review_lake: ReviewLake, queued: dict) -> None:
    down = LabelStudio(url=f"http://127.0.0.1:{free_port()}", timeout_s=3)
    result = review_lake.materialize(["review_labels"], resources={"label_studio": down}, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "Label Studio at http://127.0.0.1:" in str(failure.event_specific_data.error)


def test_schedules_queue_yesterday_and_collect_while_label_studio_answers(review_stack) -> None:
    from earthsnap_assets.defs.review import review_labels_every_5_minutes, review_queue_daily

    at = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    with dg.build_schedule_context(scheduled_execution_time=at) as context:
        request = review_queue_daily(context)
    assert (request.partition_key, request.run_key) == ("2026-11-30", "2026-11-30")
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(instance, resources={"label_studio": LabelStudio()}) as context:
            assert isinstance(review_labels_every_5_minutes(context), dg.RunRequest)
        down = LabelStudio(url=f"http://127.0.0.1:{free_port()}", timeout_s=3)
        with dg.build_schedule_context(instance, resources={"label_studio": down}) as context:
            skipped = review_labels_every_5_minutes(context)
        assert isinstance(skipped, dg.SkipReason) and "not reachable" in skipped.skip_message
        # one collection at a time
        instance.add_run(
            dg.DagsterRun(job_name="review_labels_job", run_id="a" * 36, status=dg.DagsterRunStatus.STARTED)
        )
        with dg.build_schedule_context(instance, resources={"label_studio": LabelStudio()}) as context:
            busy = review_labels_every_5_minutes(context)
        assert isinstance(busy, dg.SkipReason) and "still collecting" in busy.skip_message


def test_review_status_lists_open_and_finished_tasks(queued: dict, review_stack) -> None:
    from earthsnap_assets.cli import main

    result = CliRunner().invoke(main, ["review", "status"])
    assert result.exit_code == 0, result.output
    trees = next(line for line in result.output.splitlines() if line.startswith("earthsnap-trees "))
    open_, finished = (int(n) for n in trees.split()[1:3])
    assert open_ + finished == 3 and open_ >= 1  # low, low2, backoff; a skipped task stays open
