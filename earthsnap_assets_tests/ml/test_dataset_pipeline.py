"""Validation + dataset build over an in-memory lake: incrementality, determinism, shard contents."""

import hashlib

import numpy as np
import pytest

from earthsnap_assets.ml.dataset_build import build_dataset
from earthsnap_assets.ml.manifest import RawObject
from earthsnap_assets.ml.preprocessing import PreprocessConfig, load_image_array
from earthsnap_assets.ml.quality import QualityRules
from earthsnap_assets.lake.splits import SplitConfig
from earthsnap_assets.lake.storage import MemoryBlobs, unpack_arrays
from earthsnap_assets.lake.taxonomy import parse_taxonomy
from earthsnap_assets.ml.validation import load_manifest, validate
from earthsnap_assets_tests.ml.training_fixtures import photo

TAXONOMY = parse_taxonomy("species,group\nrose,flowers\ntulip,flowers\nmoth,insects\n")
RULES = QualityRules(min_side=32, min_images_per_species=5)
PREPROCESS = PreprocessConfig(image_size=24)


class Lake:
    def __init__(self) -> None:
        self.blobs = MemoryBlobs()
        self.objects: dict[str, RawObject] = {}

    def put(self, key: str, data: bytes) -> None:
        self.blobs.write("raw", key, data)
        self.objects[key] = RawObject(key, hashlib.md5(data).hexdigest(), len(data))

    def validate(self, rules: QualityRules = RULES):
        return validate(self.blobs, list(self.objects.values()), TAXONOMY, rules, raw_bucket="raw", lake_bucket="lake")

    def build(self, manifest):
        return build_dataset(
            self.blobs, manifest, raw_bucket="raw", lake_bucket="lake", preprocess=PREPROCESS, splits=SplitConfig()
        )


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


def test_rerun_with_no_change_decodes_nothing_and_keeps_the_version(lake):
    first = lake.validate()
    again = lake.validate()
    assert first.decoded == 37 and again.decoded == 0 and again.reused == 37
    assert again.manifest.dataset_version == first.manifest.dataset_version
    assert [r.reason for r in first.manifest.rejected] == ["corrupt"]


def test_small_upload_decodes_only_the_new_objects_and_makes_a_new_version(lake):
    first = lake.validate()
    lake.put("images/moth/new.jpg", photo(5000))
    second = lake.validate()
    assert second.decoded == 1 and second.reused == 37
    assert second.manifest.dataset_version != first.manifest.dataset_version
    # the earlier version's manifest is still there, unchanged
    old = load_manifest(lake.blobs, "lake", first.manifest.dataset_version)
    assert old.files() == first.manifest.files()


def test_changing_a_rule_revalidates_under_a_new_cache(lake):
    lake.validate()
    strict = lake.validate(QualityRules(min_side=130, min_images_per_species=5))
    assert strict.decoded == 37
    assert {r.reason for r in strict.manifest.rejected} == {"too_small"} and not strict.manifest.accepted


def test_dataset_shards_hold_the_preprocessed_pixels_of_each_entry(lake):
    manifest = lake.validate().manifest
    result = lake.build(manifest)
    index = result.index
    assert not result.reused and result.preprocessed == 36
    shards = {s["name"]: unpack_arrays(lake.blobs.read("lake", result.prefix + s["name"])) for s in index["shards"]}
    assert {s["group"] for s in index["shards"]} == {"flowers", "insects"}
    for entry in index["entries"]:
        pixels = shards[entry["shard"]][entry["row"]]
        expected = load_image_array(lake.blobs.read("raw", entry["key"]), PREPROCESS)
        assert pixels.shape == (24, 24, 3) and np.array_equal(pixels, expected)
        assert f"/{entry['split']}/{entry['group']}-" in "/" + entry["shard"]
    assert sum(sum(c.values()) for c in index["counts"].values()) == 36


def test_dataset_build_is_reused_and_new_versions_preprocess_only_new_images(lake):
    first = lake.build(lake.validate().manifest)
    assert lake.build(lake.validate().manifest).reused
    lake.put("images/tulip/late.jpg", photo(7000))
    second = lake.build(lake.validate().manifest)
    assert not second.reused and second.preprocessed == 1
    old_split = {e["sha256"]: e["split"] for e in first.index["entries"]}
    new_split = {e["sha256"]: e["split"] for e in second.index["entries"]}
    assert all(new_split[sha] == split for sha, split in old_split.items())


def test_same_objects_in_a_fresh_lake_give_identical_manifest_and_splits(lake):
    twin = Lake()
    for key in reversed(list(lake.objects)):
        twin.put(key, lake.blobs.read("raw", key))
    a, b = lake.validate().manifest, twin.validate().manifest
    assert a.dataset_version == b.dataset_version and a.files() == b.files()
    assert lake.build(a).index == twin.build(b).index
