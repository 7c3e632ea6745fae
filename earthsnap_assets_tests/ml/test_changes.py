"""Snapshots, diffs and the retraining policy: pure functions, so every rule is checked here."""

import pytest

from earthsnap_assets.ml.changes import (
    Changes,
    RetrainPlan,
    Snapshot,
    changed_groups,
    counts_per_group,
    diff,
    plan_retraining,
)
from earthsnap_assets.ml.manifest import RawObject
from earthsnap_assets.refs import RawListing

TAXONOMY = {"oak": "trees", "pine": "trees", "robin": "birds", "crow": "birds", "carp": "fish"}


def images(**per_species: int) -> dict[str, str]:
    """{key: etag} with n images per species, keys as users upload them."""
    return {f"images/{s}/{i:03d}.jpg": f"etag-{s}-{i}" for s, n in per_species.items() for i in range(n)}


def test_diff_finds_added_overwritten_and_removed_keys_and_taxonomy_rewrites():
    old = Snapshot({"images/oak/a.jpg": "1", "images/oak/b.jpg": "2", "images/oak/c.jpg": "3"}, "t1")
    new = Snapshot({"images/oak/a.jpg": "1", "images/oak/b.jpg": "9", "images/aardvark/z.jpg": "4"}, "t2")
    changes = diff(old, new)
    assert changes == Changes(("images/aardvark/z.jpg",), ("images/oak/b.jpg",), ("images/oak/c.jpg",), True)
    assert changes.summary() == "1 added, 1 overwritten, 1 removed, taxonomy.csv rewritten"
    assert diff(new, new).empty and not changes.empty


def test_snapshot_hash_is_the_raw_listing_hash_and_bytes_round_trip():
    snapshot = Snapshot(images(oak=3, robin=2), "tax-etag", TAXONOMY)
    objects = tuple(RawObject(k, e, 1) for k, e in sorted(snapshot.objects.items()))
    assert snapshot.hash == RawListing("raw", "images/", objects, "taxonomy.csv", "tax-etag").listing_hash
    assert Snapshot.from_bytes(snapshot.to_bytes()) == snapshot
    assert snapshot.to_bytes() == Snapshot(dict(reversed(snapshot.objects.items())), "tax-etag", TAXONOMY).to_bytes()
    assert Snapshot(snapshot.objects, "other").hash != snapshot.hash


def test_changed_groups_maps_folders_and_reports_unknown_species_and_stray_keys():
    changes = Changes(added=("images/oak/1.jpg", "images/crow/2.jpg", "images/yeti/3.jpg", "images/x.jpg"))
    result = changed_groups(changes, TAXONOMY, "images/")
    assert result.images_per_group == {"birds": 1, "trees": 1}
    assert result.unknown_species == ["yeti"] and result.outside_layout == 1
    snapshot = Snapshot({**images(oak=2, carp=1), "images/yeti/1.jpg": "e"}, None, TAXONOMY)
    assert counts_per_group(snapshot) == {"fish": 1, "trees": 2}


def plan(old_objects, new_objects, old_tax=TAXONOMY, new_tax=TAXONOMY, threshold=0.1) -> RetrainPlan:
    """The plan between two states, the way the sensor computes it."""
    old, new = Snapshot(old_objects, "t", old_tax), Snapshot(new_objects, "t" if old_tax == new_tax else "u", new_tax)
    return plan_retraining(
        diff(old, new), old_tax, new_tax, counts_per_group(old), threshold, new_counts_per_group=counts_per_group(new)
    )


BASE = images(oak=10, pine=10, robin=10, crow=10, carp=10)  # 50 images, 3 groups


def test_nothing_changed_runs_nothing():
    assert plan(BASE, BASE) == RetrainPlan(False, [], False, ["nothing changed"])


def test_a_few_new_images_retrain_their_group_child_only():
    result = plan(BASE, {**BASE, "images/robin/new.jpg": "n"})
    assert (result.run_data_pipeline, result.child_groups, result.retrain_parent) == (True, ["birds"], False)
    assert result.reasons == ["group birds: 1 images added, overwritten or removed"]


def test_overwritten_and_removed_images_count_as_changes_of_their_group():
    new = {k: v for k, v in BASE.items() if k != "images/carp/000.jpg"} | {"images/oak/000.jpg": "new-etag"}
    result = plan(BASE, new)
    assert result.child_groups == ["fish", "trees"] and not result.retrain_parent


@pytest.mark.parametrize(("added", "parent"), [(5, False), (6, True)])  # 5/50 is the threshold, not above it
def test_parent_retrains_when_the_changed_share_exceeds_the_threshold(added, parent):
    new = {**BASE, **{f"images/oak/n{i}.jpg": "n" for i in range(added)}}
    result = plan(BASE, new, threshold=0.1)
    assert result.child_groups == ["trees"] and result.retrain_parent is parent
    assert any("6 of 50 images changed (12.0% > 10.0%)" in r for r in result.reasons) is parent


def test_first_data_trains_every_group_and_the_parent():
    result = plan({}, BASE, old_tax={})
    assert result.child_groups == ["birds", "fish", "trees"] and result.retrain_parent
    assert result.reasons[0] == "groups added (new partitions): ['birds', 'fish', 'trees']"


def test_new_group_gets_a_child_and_retrains_the_parent():
    taxonomy = {**TAXONOMY, "bee": "insects"}
    result = plan(BASE, {**BASE, **images(bee=3)}, new_tax=taxonomy)
    assert result.child_groups == ["insects"] and result.retrain_parent


def test_removed_group_retrains_the_parent_and_no_child():
    taxonomy = {s: g for s, g in TAXONOMY.items() if g != "fish"}
    result = plan(BASE, {k: v for k, v in BASE.items() if "/carp/" not in k}, new_tax=taxonomy)
    assert result.child_groups == [] and result.retrain_parent
    assert "groups removed: ['fish']" in result.reasons


def test_species_moved_between_groups_retrains_both_children_and_the_parent():
    result = plan(BASE, BASE, new_tax={**TAXONOMY, "crow": "fish"})
    assert result.child_groups == ["birds", "fish"] and result.retrain_parent
    assert result.reasons[0] == "species crow moved from group birds to fish"


def test_new_species_in_an_existing_group_retrains_that_child_only():
    result = plan(BASE, {**BASE, **images(birch=2)}, new_tax={**TAXONOMY, "birch": "trees"})
    assert result.child_groups == ["trees"] and not result.retrain_parent
    assert "species birch added to group trees" in result.reasons


def test_unknown_folders_and_cosmetic_taxonomy_edits_run_the_data_pipeline_but_train_nothing():
    result = plan(BASE, {**BASE, "images/yeti/1.jpg": "y"})
    assert (result.run_data_pipeline, result.child_groups, result.retrain_parent) == (True, [], False)
    assert result.reasons[0] == "folders not in taxonomy.csv (QA rejects them): ['yeti']"
    cosmetic = plan_retraining(Changes(taxonomy_changed=True), TAXONOMY, TAXONOMY, counts_per_group(Snapshot(BASE)))
    assert cosmetic.run_data_pipeline and not cosmetic.child_groups and not cosmetic.retrain_parent


def test_a_group_left_without_images_is_not_retrained():
    result = plan(BASE, {k: v for k, v in BASE.items() if "/carp/" not in k})
    assert result.child_groups == [] and "group fish has no images: no child to train" in result.reasons


def test_merge_unions_the_work_of_two_plans():
    merged = RetrainPlan(True, ["birds"], False, ["a"]).merge(RetrainPlan(True, ["fish", "birds"], True, ["b"]))
    assert merged == RetrainPlan(True, ["birds", "fish"], True, ["a", "b"])
