"""Which photos of a day go to review: each reason, dedupe by photo, already queued, the per-group bound."""

from __future__ import annotations

from earthsnap_assets.review.selection import (
    BACK_OFF,
    CORRECTION,
    DISAGREEMENT,
    LOW_CONFIDENCE,
    SelectionRules,
    select_for_review,
)
from earthsnap_assets_tests.review.records import DAY, feedback, feedback_table, prediction, predictions_table, sha


def _by_sha(candidates):
    return {c.sha256: c for c in candidates}


def test_each_reason_and_nothing_for_a_confident_answer() -> None:
    confident = prediction("confident", probability=0.95)
    low = prediction("low", probability=0.3, top_k=[("quercus-robur", "trees", 0.3), ("quercus-rubra", "trees", 0.2)])
    backed_off = prediction("backoff", species=None, probability=0.8, top_k=[("quercus-robur", "trees", 0.4)])
    corrected = prediction("corrected", probability=0.9)
    staging = prediction("disagree", env="staging", species="quercus-rubra", probability=0.9)
    production = prediction("disagree", env="production", species="quercus-robur", probability=0.9)
    rows = [confident, low, backed_off, corrected, staging, production]
    found = _by_sha(
        select_for_review(
            DAY,
            predictions_table(rows),
            feedback_table(
                [
                    feedback(corrected, "rosa-canina", "shrubs"),
                    feedback(confident, "quercus-robur", "trees", "confirmed"),
                ]
            ),
        )
    )
    assert sha("confident") not in found  # a confirmation is no reason
    assert found[sha("low")].reasons == (LOW_CONFIDENCE,)
    assert found[sha("low")].best_in_group() == ("quercus-robur", 0.3)
    assert found[sha("backoff")].reasons == (BACK_OFF,)
    assert found[sha("backoff")].answer == "trees"
    # a correction is reviewed in the group of the species the user gave
    assert found[sha("corrected")].reason == CORRECTION
    assert (found[sha("corrected")].group, found[sha("corrected")].user_species) == ("shrubs", "rosa-canina")
    assert found[sha("corrected")].best_in_group() is None  # the model ranked nothing of that group
    # one candidate for the photo both envs answered, taken from production, with its model version
    disagreement = found[sha("disagree")]
    assert (disagreement.reason, disagreement.env) == (DISAGREEMENT, "production")
    assert disagreement.model_version == "earthsnap-child-trees:3"
    assert len(found) == 4
    # ranked by reason priority
    reasons = [
        c.reason
        for c in select_for_review(
            DAY, predictions_table(rows), feedback_table([feedback(corrected, "rosa-canina", "shrubs")])
        )
    ]
    assert reasons == [CORRECTION, DISAGREEMENT, BACK_OFF, LOW_CONFIDENCE]


def test_only_kept_photos_deduplicated_by_sha256() -> None:
    rows = [
        prediction("a", probability=0.2),
        prediction("a", probability=0.1),  # same photo sent twice: one candidate
        prediction("not-kept", probability=0.1, kept=False),
    ]
    found = select_for_review(DAY, predictions_table(rows))
    assert [c.sha256 for c in found] == [sha("a")]
    assert found[0].photo_key.endswith(sha("a"))


def test_bounded_per_group_least_confident_first_skipping_queued() -> None:
    rows = [prediction(f"t{i}", probability=0.1 + i / 100) for i in range(10)]
    rows += [prediction(f"s{i}", group="shrubs", species="rosa-canina", probability=0.2) for i in range(2)]
    queued = {sha("t0")}
    found = select_for_review(
        DAY,
        predictions_table(rows),
        rules=SelectionRules(threshold=0.5, max_per_group=3),
        is_queued=lambda c: c.sha256 in queued,
    )
    trees = [c.sha256 for c in found if c.group == "trees"]
    assert trees == [sha("t1"), sha("t2"), sha("t3")]  # t0 was queued before; the bound counts new ones
    assert sum(c.group == "shrubs" for c in found) == 2


def test_threshold_and_empty_inputs() -> None:
    rows = [prediction("p", probability=0.6)]
    assert select_for_review(DAY, predictions_table(rows), rules=SelectionRules(threshold=0.5)) == []
    assert [c.reason for c in select_for_review(DAY, predictions_table(rows), rules=SelectionRules(threshold=0.7))] == [
        LOW_CONFIDENCE
    ]
    assert select_for_review(DAY, None, None) == []


def test_the_stage_tests_golden_photos_never_reach_the_queue() -> None:
    from earthsnap_assets.lake import paths
    from earthsnap_assets.lake.storage import MemoryBlobs
    from earthsnap_assets.lake.tables import write_table
    from earthsnap_assets.review.queue import read_day

    blobs = MemoryBlobs()
    app = prediction("app-photo", species=None)  # backed off to the group: a review candidate
    golden = {**prediction("golden-photo", species=None), "traffic": "stage-test"}
    key = paths.predictions_batch("production", DAY, "120000", "r1", "d1")
    write_table(blobs, "lake", key, predictions_table([app, golden]))
    predictions, _ = read_day(blobs, "lake", DAY)
    assert predictions.column("image_sha256").to_pylist() == [sha("app-photo")]
    chosen = select_for_review(DAY, predictions, None, rules=SelectionRules())
    assert [c.sha256 for c in chosen] == [sha("app-photo")]
