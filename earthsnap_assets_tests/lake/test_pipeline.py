"""The data side end to end in a memory lake: incremental per group, global duplicate rules, stable splits."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.layouts import read_shard
from earthsnap_assets.lake.tables import read_table, write_table
from earthsnap_assets.lake.versions import verify_version
from earthsnap_assets.ml.preprocessing import PreprocessConfig, load_image_array
from earthsnap_assets.ml.quality import QualityRules
from earthsnap_assets_tests.lake.harness import CONFIG, Lake
from earthsnap_assets_tests.ml.training_fixtures import photo


def smaller_copy(data: bytes) -> bytes:
    """The same picture resized and recompressed: a near-duplicate, not the same bytes."""
    image = Image.open(io.BytesIO(data))
    out = io.BytesIO()
    image.resize((image.width * 3 // 4, image.height * 3 // 4)).save(out, "JPEG", quality=60)
    return out.getvalue()


@pytest.fixture
def lake() -> Lake:
    lake = Lake()
    seed = 0
    for species in ("rose", "tulip", "moth"):
        for i in range(12):
            seed += 1
            lake.put(f"images/{species}/{i:03d}.jpg", photo(seed))
    lake.put("images/rose/broken.jpg", photo(999)[:2000])
    return lake


def test_rerun_with_no_change_decodes_nothing_and_keeps_every_version(lake):
    first = lake.run()
    again = lake.run()
    assert sum(r.intake.decoded for r in first.groups.values()) == 37
    assert sum(r.intake.decoded for r in again.groups.values()) == 0
    assert again.version.dataset_version == first.version.dataset_version and not again.version.created
    assert all(r.layout.reused for r in again.groups.values())
    assert lake.rows("flowers")["images/rose/broken.jpg"]["reason"] == "corrupt"


def test_an_upload_to_one_group_decodes_only_it_and_leaves_other_groups_untouched(lake):
    first = lake.run()
    lake.put("images/moth/new.jpg", photo(5000))
    second = lake.run()
    assert second.groups["insects"].intake.decoded == 1 and second.groups["flowers"].intake.decoded == 0
    assert second.groups["insects"].manifest.changed == 1 and second.groups["flowers"].manifest.changed == 0
    assert second.groups["flowers"].manifest.group_version == first.groups["flowers"].manifest.group_version
    assert second.groups["insects"].manifest.group_version != first.groups["insects"].manifest.group_version
    assert second.groups["insects"].layout.added_rows == 1
    assert second.version.dataset_version != first.version.dataset_version
    assert second.sample.reused_groups == ["flowers"] and second.sample.built_groups == ["insects"]
    assert lake.blobs.exists("lake", paths.version_manifest(first.version.dataset_version))  # old version kept


def test_existing_images_keep_their_split_when_new_images_arrive(lake):
    lake.run()
    before = {k: r["split"] for k, r in lake.accepted("flowers").items()}
    for i in range(6):
        lake.put(f"images/tulip/late-{i}.jpg", photo(7000 + i))
    lake.run()
    after = {k: r["split"] for k, r in lake.accepted("flowers").items()}
    assert {k: after[k] for k in before} == before
    new = [after[f"images/tulip/late-{i}.jpg"] for i in range(6)]
    assert set(new) <= {"train", "val", "test"} and "train" in new


def test_changing_a_per_object_rule_checks_every_object_again(lake):
    lake.run()
    strict = replace(CONFIG, rules=QualityRules(min_side=130, min_images_per_species=2))
    result = lake.run(strict)
    assert sum(r.intake.decoded for r in result.groups.values()) == 37
    # 160x120 photos, the broken one included, fail on their header now: no decoding needed to say so
    assert {r["reason"] for r in lake.rows("flowers").values()} == {"too_small"}


def test_shards_hold_exactly_the_preprocessed_pixels_of_each_index_row(lake):
    prepared = lake.run()
    index = read_table(lake.blobs, "lake", prepared.groups["flowers"].layout.index_key).to_pylist()
    assert len(index) == 24 and {r["species"] for r in index} == {"rose", "tulip"}
    for row in index:
        pixels = read_shard(lake.blobs, "lake", row["shard"])[row["row"]]
        expected = load_image_array(lake.blobs.read("raw", row["key"]), PreprocessConfig(image_size=24))
        assert pixels.shape == (24, 24, 3) and np.array_equal(pixels, expected)


def test_the_same_objects_in_a_fresh_lake_give_the_same_versions_segments_and_splits(lake):
    twin = Lake()
    for key in reversed(sorted(k for b, k in lake.blobs.objects if b == "raw")):
        twin.put(key, lake.blobs.read("raw", key))
    a, b = lake.run(), twin.run()
    assert a.version.dataset_version == b.version.dataset_version
    for group in ("flowers", "insects"):
        assert a.groups[group].manifest.group_version == b.groups[group].manifest.group_version
        strip = lambda rows: {k: {f: v for f, v in r.items() if f not in ("seen_ns",)} for k, r in rows.items()}  # noqa: E731
        assert strip(lake.rows(group)) == strip(twin.rows(group))
    assert verify_version(lake.blobs, "lake", a.version.dataset_version, CONFIG.manifest()) == []


def test_a_tampered_manifest_segment_no_longer_recreates_its_version(lake):
    prepared = lake.run()
    segment_key = prepared.groups["insects"].manifest.segment_key
    table = read_table(lake.blobs, "lake", segment_key)
    keys = table["key"].to_pylist()
    tampered = table.set_column(table.schema.get_field_index("key"), "key", pa.array([k + "x" for k in keys]))
    write_table(lake.blobs, "lake", segment_key, tampered)
    problems = verify_version(lake.blobs, "lake", prepared.version.dataset_version, CONFIG.manifest())
    assert problems and problems[0].startswith("insects")


def test_exact_duplicate_in_one_species_keeps_the_smallest_key_whatever_the_arrival_order():
    late_first = Lake().put("images/rose/b.jpg", photo(1)).put("images/rose/c.jpg", photo(2))
    late_first.run()
    late_first.put("images/rose/a.jpg", photo(1))  # same bytes, smaller key, arrives later
    late_first.run()
    at_once = (
        Lake().put("images/rose/a.jpg", photo(1)).put("images/rose/b.jpg", photo(1)).put("images/rose/c.jpg", photo(2))
    )
    at_once.run()
    for lake in (late_first, at_once):
        rows = lake.rows("flowers")
        assert rows["images/rose/a.jpg"]["verdict"] == "accepted"
        assert (rows["images/rose/b.jpg"]["reason"], rows["images/rose/b.jpg"]["detail"]) == (
            "duplicate",
            "same content as images/rose/a.jpg",
        )


def test_same_bytes_in_two_groups_is_a_conflict_in_both_and_deleting_one_copy_heals_it(lake):
    first = lake.run()
    lake.put("images/moth/copy.jpg", lake.blobs.read("raw", "images/rose/000.jpg"))
    second = lake.run()
    # flowers did not change, but the checks moved the verdict of its copy: it gets a delta too
    assert set(second.checks.groups) == {"flowers", "insects"} and second.groups["flowers"].intake.decoded == 0
    for group, key in (("insects", "images/moth/copy.jpg"), ("flowers", "images/rose/000.jpg")):
        row = lake.rows(group)[key]
        assert (row["verdict"], row["reason"]) == ("rejected", "conflicting_labels"), group
        assert "rose" in row["detail"] and "moth" in row["detail"]
    lake.delete("images/moth/copy.jpg")
    healed = lake.run()
    assert lake.rows("flowers")["images/rose/000.jpg"]["verdict"] == "accepted"
    assert "images/moth/copy.jpg" not in lake.rows("insects")
    assert healed.version.dataset_version == first.version.dataset_version  # the same data is the same version


def test_a_near_duplicate_in_another_group_joins_the_split_of_its_look_alike(lake):
    lake.run()
    original = lake.accepted("flowers")["images/rose/005.jpg"]
    lake.put("images/moth/look-alike.jpg", smaller_copy(lake.blobs.read("raw", "images/rose/005.jpg")))
    prepared = lake.run()
    row = lake.accepted("insects")["images/moth/look-alike.jpg"]
    assert row["split"] == original["split"] and row["near_duplicate_of"] == "images/rose/005.jpg"
    report = prepared.groups["insects"].manifest.report
    assert report["near_duplicates_across_species"] == [["images/moth/look-alike.jpg", "images/rose/005.jpg"]]


def test_near_duplicates_within_a_group_form_one_cluster_in_one_split():
    lake = Lake()
    base = photo(42)
    lake.put("images/rose/a.jpg", base).put("images/rose/b.jpg", smaller_copy(base))
    for i in range(10):
        lake.put(f"images/rose/other-{i}.jpg", photo(100 + i))
    lake.run()
    rows = lake.accepted("flowers")
    assert rows["images/rose/a.jpg"]["cluster"] == rows["images/rose/b.jpg"]["cluster"]
    assert rows["images/rose/a.jpg"]["split"] == rows["images/rose/b.jpg"]["split"]


def test_a_deleted_photo_leaves_the_manifest_and_the_training_index(lake):
    lake.run()
    lake.delete("images/tulip/003.jpg")
    prepared = lake.run()
    assert prepared.groups["flowers"].intake.deleted == 1
    assert "images/tulip/003.jpg" not in lake.rows("flowers")
    index = read_table(lake.blobs, "lake", prepared.groups["flowers"].layout.index_key)
    assert "images/tulip/003.jpg" not in index["key"].to_pylist()


def test_a_species_that_moves_to_another_group_moves_its_photos(lake):
    lake.run()
    lake.taxonomy_text = "species,group\nrose,flowers\ntulip,insects\nmoth,insects\n"
    prepared = lake.run()
    assert {r["species"] for r in lake.accepted("flowers").values()} == {"rose"}
    assert {r["species"] for r in lake.accepted("insects").values()} == {"tulip", "moth"}
    assert prepared.groups["insects"].intake.listed_species == ["tulip"]  # only the newcomer was listed
    assert prepared.sample.moved and "species" in prepared.sample.reason


def test_many_small_uploads_are_compacted_into_full_shards_with_the_same_pixels():
    lake = Lake()
    for i in range(4):
        lake.put(f"images/moth/{i:03d}.jpg", photo(300 + i))
    config = replace(CONFIG, shard_size=64)
    lake.run(config)
    for round_ in range(12):  # one photo per run: one more delta shard each time
        lake.put(f"images/moth/late-{round_:02d}.jpg", photo(400 + round_))
        prepared = lake.run(config)
    layout = prepared.groups["insects"].layout
    assert layout.shards <= 3 * 8  # bounded per split by max_delta_shards
    index = read_table(lake.blobs, "lake", layout.index_key).to_pylist()
    for row in index:
        expected = load_image_array(lake.blobs.read("raw", row["key"]), PreprocessConfig(image_size=24))
        assert np.array_equal(read_shard(lake.blobs, "lake", row["shard"])[row["row"]], expected)


def test_the_parent_sample_moves_on_only_past_its_share(lake):
    lake.run()
    lake.put("images/rose/one-more.jpg", photo(8000))
    small = lake.run()
    assert not small.sample.moved and small.sample.changed_share <= 0.1
    for i in range(20):
        lake.put(f"images/moth/more-{i}.jpg", photo(8100 + i))
    big = lake.run()
    assert big.sample.moved and big.sample.committed["dataset_version"] == big.version.dataset_version
