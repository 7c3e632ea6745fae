"""A day's report from a synthetic prediction log in a memory lake: drift, back-off, inputs, feedback."""

import json

import pytest

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.storage import MemoryBlobs, json_bytes
from earthsnap_assets.monitoring.daily import INPUT_SAMPLE, day_report, read_day
from earthsnap_assets.monitoring.records import PREDICTION_SCHEMA
from earthsnap_assets.monitoring.reference import MissingReference, build_reference, load_reference
from earthsnap_assets_tests.monitoring.synthetic_log import (
    DATASET_VERSION,
    TRAIN,
    rows,
    verdict,
    write_feedback,
    write_predictions,
    write_version,
)

BUCKET = "lake"
DAY = "2026-03-10"


@pytest.fixture
def blobs() -> MemoryBlobs:
    blobs = MemoryBlobs()
    write_version(blobs, BUCKET)
    return blobs


def test_reference_is_read_from_the_version_manifest_once_and_cached(blobs):
    reference = load_reference(blobs, BUCKET, DATASET_VERSION)
    assert reference.species == TRAIN and reference.groups == {"birds": 400, "flowers": 400, "insects": 200}
    cached = json.loads(blobs.read(BUCKET, paths.monitoring_reference(DATASET_VERSION)))
    assert cached["species"] == TRAIN
    reads = blobs.reads
    assert load_reference(blobs, BUCKET, DATASET_VERSION) == reference
    assert blobs.reads == reads + 1  # the cache only, not the manifest and its reports
    with pytest.raises(MissingReference):
        build_reference(blobs, BUCKET, "dv-unknown")


def test_a_day_drawn_from_training_shows_no_drift(blobs):
    write_predictions(blobs, BUCKET, DAY, rows(DAY, 2000, seed=1))
    report = day_report(blobs, BUCKET, "production", DAY)
    assert report.volume == 2000 and report.dataset_versions == {DATASET_VERSION: 2000}
    assert report.psi_group < 0.02 and report.psi_species < 0.02
    assert report.groups["chi_square"]["p_value"] > 0.01
    assert 0 < report.groups["psi_null_p95"] < 0.05 and 0 < report.species["psi_null_p95"] < 0.05
    assert report.groups["expected"] == {"birds": 0.4, "flowers": 0.4, "insects": 0.2}
    assert all(v < 0.05 for v in report.species["per_group_psi"].values())
    assert set(report.species["per_group_psi"]) == set(TRAIN)
    assert 0.02 < report.back_off_rate < 0.08
    assert report.version_of("earthsnap-parent") == "1" and report.version_of("earthsnap-other") is None
    assert set(report.latency_ms) == {"p50", "p95", "p99"}
    assert report.latency_ms["p50"] < report.latency_ms["p95"] < report.latency_ms["p99"]
    assert sum(b["count"] for b in report.confidence["histogram"]) == 2000
    json.dumps(report.to_json())  # serialisable as is


def test_a_day_concentrated_on_one_group_drifts(blobs):
    write_predictions(blobs, BUCKET, DAY, rows(DAY, 1000, only_group="insects", back_off=0.6))
    report = day_report(blobs, BUCKET, "production", DAY)
    assert report.psi_group > 1.0 and report.psi_species > 1.0
    assert report.psi_group > 100 * report.groups["psi_null_p95"]
    assert report.groups["chi_square"]["p_value"] < 1e-10
    assert list(report.groups["predicted"]) == ["insects"]
    assert report.back_off_rate > 0.5


def test_unknown_groups_and_missing_references_are_reported_not_hidden(blobs):
    drawn = rows(DAY, 400, seed=2)
    for row in drawn[:200]:
        row["dataset_version"] = "dv-gone"
    write_predictions(blobs, BUCKET, DAY, drawn)
    report = day_report(blobs, BUCKET, "production", DAY)
    assert report.reference_missing == ["dv-gone"]
    assert sum(report.groups["predicted"].values()) == 200  # compared: the rows of the known version only
    assert report.psi_group is not None


def test_no_reference_at_all_leaves_drift_undefined(blobs):
    drawn = rows(DAY, 100)
    for row in drawn:
        row["dataset_version"] = "dv-gone"
    write_predictions(blobs, BUCKET, DAY, drawn)
    report = day_report(blobs, BUCKET, "production", DAY)
    assert report.psi_group is None and report.psi_species is None and report.reference_missing == ["dv-gone"]


def test_an_empty_day_has_volume_zero_and_no_rates(blobs):
    report = day_report(blobs, BUCKET, "production", DAY)
    assert report.volume == 0 and report.back_off_rate is None and report.latency_ms == {}
    assert report.feedback["accuracy"] is None


def test_only_the_days_prefix_is_read(blobs):
    write_predictions(blobs, BUCKET, DAY, rows(DAY, 50))
    write_predictions(blobs, BUCKET, "2026-03-11", rows("2026-03-11", 70, seed=5))
    write_predictions(blobs, BUCKET, DAY, rows(DAY, 30, env="staging", seed=6))
    table = read_day(blobs, BUCKET, paths.predictions_prefix("production", DAY), PREDICTION_SCHEMA, ["request_id"])
    assert table.num_rows == 50 and table.column_names == ["request_id"]
    assert day_report(blobs, BUCKET, "staging", DAY).volume == 30


def test_input_drift_against_the_previous_week(blobs):
    for back in range(1, 4):
        day = f"2026-03-0{9 - back + 1}"
        write_predictions(blobs, BUCKET, day, rows(day, 300, seed=back))
    write_predictions(blobs, BUCKET, DAY, rows(DAY, 500, seed=10, brightness=0.25))
    report = day_report(blobs, BUCKET, "production", DAY)
    assert report.baseline_days == ["2026-03-09", "2026-03-08", "2026-03-07"]
    brightness, width = report.inputs["brightness"], report.inputs["width"]
    assert brightness["baseline_n"] == 900 and brightness["n"] == 500
    assert brightness["ks"]["p_value"] < 1e-10 and brightness["psi"] > 1.0
    assert width["ks"]["p_value"] > 0.001 and width["psi"] < 0.1
    assert len(report.inputs_sample["width"]) == 500 <= INPUT_SAMPLE


def test_baseline_prefers_the_previous_reports_sample_over_the_log(blobs):
    previous = "2026-03-09"
    write_predictions(blobs, BUCKET, previous, rows(previous, 300))
    stored = day_report(blobs, BUCKET, "production", previous).to_json()
    stored["inputs_sample"] = {f: [1.0, 2.0] for f in stored["inputs_sample"]}  # marks where values came from
    blobs.write(BUCKET, paths.monitoring_report("production", previous), json_bytes(stored))
    write_predictions(blobs, BUCKET, DAY, rows(DAY, 100))
    report = day_report(blobs, BUCKET, "production", DAY)
    assert report.baseline_days == [previous] and report.inputs["width"]["baseline_n"] == 2


def test_feedback_accuracy_on_a_known_join(blobs):
    drawn = rows(DAY, 20, back_off=0.0)
    write_predictions(blobs, BUCKET, DAY, drawn)
    next_day = "2026-03-11"
    wrong = "wasp" if drawn[3]["species"] != "wasp" else "ant"
    write_feedback(
        blobs,
        BUCKET,
        "production",
        DAY,
        [
            verdict(drawn[0], DAY),
            verdict(drawn[1], DAY),
            verdict(drawn[2], DAY, "robin" if drawn[2]["species"] != "robin" else "wren"),
            verdict(drawn[3], DAY, minute=1),  # confirmed first, then corrected: the later one counts
            verdict(drawn[3], DAY, wrong, minute=5),
            {**verdict(drawn[4], DAY), "request_id": "not-a-request-of-this-day"},
        ],
    )
    write_feedback(blobs, BUCKET, "production", next_day, [verdict(drawn[5], next_day)])
    write_feedback(blobs, BUCKET, "production", "2026-03-12", [verdict(drawn[6], "2026-03-12")])  # too late
    feedback = day_report(blobs, BUCKET, "production", DAY).feedback
    assert (feedback["count"], feedback["correct"], feedback["unmatched"]) == (5, 3, 1)
    assert feedback["accuracy"] == pytest.approx(0.6)
    assert {(c["predicted"], c["actual"]) for c in feedback["confusion"]} == {
        (drawn[2]["species"], "robin" if drawn[2]["species"] != "robin" else "wren"),
        (drawn[3]["species"], wrong),
    }
    assert feedback["days"] == [DAY, next_day]


def test_a_mid_day_deploy_is_compared_with_the_mix_of_both_versions(blobs):
    other = {"birds": {"robin": 100, "wren": 100}, "flowers": {"daisy": 100, "rose": 100}}  # no insects
    write_version(blobs, BUCKET, other, "dv-newer")
    before = rows(DAY, 300, seed=1, models={"earthsnap-parent": "1", "earthsnap-child-birds": "4"})
    after = rows(DAY, 500, seed=2, train=other, models={"earthsnap-parent": "2"})
    for row in after:
        row["dataset_version"] = "dv-newer"
    write_predictions(blobs, BUCKET, DAY, before + after)
    report = day_report(blobs, BUCKET, "production", DAY)
    assert report.dataset_versions == {DATASET_VERSION: 300, "dv-newer": 500}
    assert report.model_versions == {"earthsnap-parent": {"1": 300, "2": 500}, "earthsnap-child-birds": {"4": 300}}
    assert report.version_of("earthsnap-parent") == "2"
    # 3/8 of the day under the old version (insects 20%), 5/8 under the new one (no insects)
    assert report.groups["expected"]["insects"] == pytest.approx(0.375 * 0.2)
    assert report.groups["expected"]["birds"] == pytest.approx(0.375 * 0.4 + 0.625 * 0.5)
    assert report.psi_group < 0.05


def test_stage_test_traffic_is_left_out_of_the_day(blobs):
    app = rows(DAY, 500, seed=3)
    golden = [
        {**r, "request_id": f"st-{i}", "traffic": "stage-test", "level": "group"}
        for i, r in enumerate(rows(DAY, 300, seed=4, only_group="insects"))
    ]
    write_predictions(blobs, BUCKET, DAY, app + golden)
    report = day_report(blobs, BUCKET, "production", DAY)
    assert report.volume == 500  # the 300 golden photos of every deploy are not the app's users
    assert report.back_off_rate < 0.1 and report.psi_group < 0.05
