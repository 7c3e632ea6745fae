"""Collection rules of the manifest (labels, duplicates, clusters) and what its dataset version depends on."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from earthsnap_assets.hashing import sha256_bytes
from earthsnap_assets.ml.manifest import Manifest, RawObject, build_manifest, dataset_version, species_of
from earthsnap_assets.ml.quality import ImageCheck, QualityRules, inspect_image
from earthsnap_assets.lake.taxonomy import parse_taxonomy

TAXONOMY = parse_taxonomy("species,group\nrose,flowers\ntulip,flowers\nmoth,insects\n")
RULES = QualityRules(min_images_per_species=2)
BUCKET, PREFIX = "raw", "images/"


def _good_check(content: bytes, dhash: str | None = None) -> ImageCheck:
    """What QA says about a good photo; unless given, the dhash is random-looking, so far from all others."""
    sha = sha256_bytes(content)
    return ImageCheck(sha, len(content), format="JPEG", mode="RGB", width=300, height=200, dhash=dhash or sha[:16])


class Listing:
    """A raw prefix as listed from S3, with the per-object QA result of every object."""

    def __init__(self) -> None:
        self.objects: dict[str, RawObject] = {}
        self.checks: dict[tuple[str, str], ImageCheck] = {}

    def put(self, key: str, content: bytes, check: ImageCheck | None = None, etag: str | None = None) -> Listing:
        etag = etag or hashlib.md5(content).hexdigest()
        self.objects[key] = RawObject(key, etag, len(content))
        self.checks[(key, etag)] = check or _good_check(content)
        return self

    def reject(self, key: str, content: bytes, reason: str) -> Listing:
        check = ImageCheck(sha256_bytes(content), len(content), reason=reason, detail=f"{reason}: details")
        return self.put(key, content, check)

    def build(self, rules: QualityRules = RULES, taxonomy=TAXONOMY, reverse: bool = False) -> Manifest:
        objects = sorted(self.objects.values(), key=lambda o: o.key, reverse=reverse)
        return build_manifest(objects, self.checks, taxonomy, rules, BUCKET, PREFIX)


def _rejection(manifest: Manifest, key: str):
    (found,) = [r for r in manifest.rejected if r.key == key]
    return found


def _accepted_keys(manifest: Manifest) -> list[str]:
    return [e.key for e in manifest.accepted]


@pytest.fixture
def listing() -> Listing:
    return (
        Listing()
        .put("images/rose/1.jpg", b"rose one")
        .put("images/rose/2.jpg", b"rose two")
        .put("images/tulip/1.jpg", b"tulip one")
        .put("images/tulip/2.jpg", b"tulip two")
        .put("images/moth/1.jpg", b"moth one")
        .put("images/moth/2.jpg", b"moth two")
    )


# --- layout and labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "species"),
    [
        ("images/rose/a.jpg", "rose"),
        ("images/rose.jpg", None),
        ("images/rose/sub/a.jpg", None),
        ("photos/rose/a.jpg", None),
        ("images/", None),
    ],
)
def test_species_is_the_folder_directly_under_the_prefix(key, species):
    assert species_of(key, PREFIX) == species


def test_good_images_are_accepted_with_label_group_and_uri(listing):
    manifest = listing.build()
    assert manifest.rejected == []
    (entry,) = [e for e in manifest.accepted if e.key == "images/moth/1.jpg"]
    assert (entry.species, entry.group, entry.uri) == ("moth", "insects", "s3://raw/images/moth/1.jpg")
    assert (entry.sha256, entry.size, entry.format) == (sha256_bytes(b"moth one"), len(b"moth one"), "JPEG")
    assert entry.cluster == entry.sha256  # alone in its cluster


def test_unknown_species_folder_is_rejected(listing):
    manifest = listing.put("images/daisy/1.jpg", b"daisy").build()
    rejection = _rejection(manifest, "images/daisy/1.jpg")
    assert rejection.reason == "unknown_species"
    assert "'daisy'" in rejection.detail
    assert "images/daisy/1.jpg" not in _accepted_keys(manifest)


@pytest.mark.parametrize("key", ["images/rose.jpg", "images/rose/2024/a.jpg", "uploads/rose/a.jpg"])
def test_key_outside_the_species_layout_is_bad_layout(listing, key):
    rejection = _rejection(listing.put(key, b"stray").build(), key)
    assert rejection.reason == "bad_layout"
    assert rejection.detail == "not under images/<species>/<file>"
    assert rejection.uri == f"s3://raw/{key}"


def test_per_object_rejection_keeps_its_reason_and_detail(listing):
    manifest = listing.reject("images/rose/3.jpg", b"half a jpeg", "corrupt").build()
    rejection = _rejection(manifest, "images/rose/3.jpg")
    assert (rejection.reason, rejection.detail) == ("corrupt", "corrupt: details")


# --- duplicates and clusters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_exact_duplicate_in_one_species_keeps_the_first_key(listing, reverse):
    manifest = listing.put("images/rose/0-copy.jpg", b"rose two").build(reverse=reverse)
    assert "images/rose/0-copy.jpg" in _accepted_keys(manifest)
    assert "images/rose/2.jpg" not in _accepted_keys(manifest)
    rejection = _rejection(manifest, "images/rose/2.jpg")
    assert (rejection.reason, rejection.detail) == ("duplicate", "same content as images/rose/0-copy.jpg")


def test_same_bytes_under_two_species_rejects_every_copy(listing):
    manifest = listing.put("images/rose/3.jpg", b"ambiguous").put("images/tulip/3.jpg", b"ambiguous").build()
    accepted = _accepted_keys(manifest)
    for key, other in [("images/rose/3.jpg", "images/tulip/3.jpg"), ("images/tulip/3.jpg", "images/rose/3.jpg")]:
        assert key not in accepted
        rejection = _rejection(manifest, key)
        assert rejection.reason == "conflicting_labels"
        assert other in rejection.detail
        assert "['rose', 'tulip']" in rejection.detail


def test_conflict_wins_over_duplicate_when_one_species_has_the_bytes_twice(listing):
    listing.put("images/rose/3.jpg", b"ambiguous").put("images/rose/4.jpg", b"ambiguous")
    manifest = listing.put("images/moth/3.jpg", b"ambiguous").build()
    for key in ["images/rose/3.jpg", "images/rose/4.jpg", "images/moth/3.jpg"]:
        assert _rejection(manifest, key).reason == "conflicting_labels"


def test_near_duplicate_photos_share_a_cluster(images):
    """Real files: one scene saved twice (other size and quality) plus an unrelated scene."""
    scene = images.scene(640, 480, seed=0)
    files = {
        "images/rose/original.jpg": images.encode(scene, "JPEG", quality=95),
        "images/rose/resaved.jpg": images.encode(scene.resize((320, 240)), "JPEG", quality=40),
        "images/rose/other.jpg": images.jpeg(640, 480, seed=1),
        "images/tulip/lookalike.png": images.encode(scene.resize((400, 300)), "PNG"),
    }
    listing = Listing()
    for key, data in files.items():
        listing.put(key, data, inspect_image(data, key, RULES))
    manifest = listing.build()
    cluster = {e.key: e.cluster for e in manifest.accepted}
    twins = ["images/rose/original.jpg", "images/rose/resaved.jpg", "images/tulip/lookalike.png"]
    assert {cluster[key] for key in twins} == {min(sha256_bytes(files[key]) for key in twins)}
    assert cluster["images/rose/other.jpg"] == sha256_bytes(files["images/rose/other.jpg"])
    assert manifest.report["near_duplicate_clusters"] == 1
    assert manifest.report["images_in_near_duplicate_clusters"] == 3
    assert sorted(map(tuple, manifest.report["near_duplicates_across_species"])) == [
        ("images/rose/original.jpg", "images/tulip/lookalike.png"),
        ("images/rose/resaved.jpg", "images/tulip/lookalike.png"),
    ]


# --- dataset version ------------------------------------------------------------------------------------------


def test_version_and_files_do_not_depend_on_listing_order(listing):
    forward, backward = listing.build(), listing.build(reverse=True)
    assert forward.dataset_version == backward.dataset_version
    assert forward.files() == backward.files()


def test_version_changes_when_accepted_content_changes(listing):
    before = listing.build().dataset_version
    assert listing.put("images/rose/1.jpg", b"rose one, edited").build().dataset_version != before


def test_version_changes_when_an_image_moves_to_another_species(listing):
    before = listing.build().dataset_version
    del listing.objects["images/rose/2.jpg"]
    assert listing.put("images/tulip/3.jpg", b"rose two").build().dataset_version != before


def test_version_changes_when_only_the_label_of_an_entry_changes(listing):
    accepted = listing.build().accepted
    relabelled = [dataclasses.replace(e, species="tulip") if e.species == "rose" else e for e in accepted]
    assert dataset_version(relabelled, RULES, TAXONOMY) != dataset_version(accepted, RULES, TAXONOMY)


@pytest.mark.parametrize(
    "change",
    [
        {"min_side": 65},
        {"max_pixels": 1_000_000},
        {"allowed_formats": ("JPEG", "PNG")},
        {"min_images_per_species": 3},
        {"near_duplicate_bits": 2},
        {"max_rejection_rate": 0.1},
    ],
)
def test_version_changes_when_any_rule_changes(listing, change):
    changed = dataclasses.replace(RULES, **change)
    assert listing.build(changed).dataset_version != listing.build().dataset_version


def test_version_changes_when_a_species_changes_group(listing):
    regrouped = parse_taxonomy("species,group\nrose,shrubs\ntulip,flowers\nmoth,insects\n")
    assert listing.build(taxonomy=regrouped).dataset_version != listing.build().dataset_version


@pytest.mark.parametrize(
    "add",
    [
        lambda lst: lst.reject("images/rose/3.jpg", b"not a photo", "not_an_image"),
        lambda lst: lst.put("images/daisy/1.jpg", b"daisy"),
        lambda lst: lst.put("images/rose.jpg", b"stray"),
        lambda lst: lst.put("images/rose/9-copy.jpg", b"rose one"),  # duplicate with a later key
    ],
    ids=["not_an_image", "unknown_species", "bad_layout", "duplicate"],
)
def test_adding_only_a_rejected_file_keeps_the_version(listing, add):
    before = listing.build()
    after = add(listing).build()
    assert len(after.rejected) == len(before.rejected) + 1
    assert after.accepted == before.accepted
    assert after.dataset_version == before.dataset_version


def test_reuploading_the_same_bytes_under_a_new_etag_keeps_the_version(listing):
    before = listing.build().dataset_version
    assert listing.put("images/rose/1.jpg", b"rose one", etag="new-etag").build().dataset_version == before


# --- report and files -----------------------------------------------------------------------------------------


def test_report_counts_what_a_reviewer_needs():
    listing = (
        Listing()
        .put("images/rose/1.jpg", b"r1")
        .put("images/rose/2.jpg", b"r2")
        .put("images/rose/3.jpg", b"r3")
        .put("images/rose/4.jpg", b"r1")  # duplicate
        .put("images/tulip/1.jpg", b"t1")
        .reject("images/tulip/2.jpg", b"t2", "corrupt")
        .put("images/daisy/1.jpg", b"d1")
        .put("images/daisy/2.jpg", b"d2")
        .put("images/readme.jpg", b"x")
    )
    report = listing.build().report
    assert report["rejected_by_reason"] == {"bad_layout": 1, "corrupt": 1, "duplicate": 1, "unknown_species": 2}
    assert (report["objects"], report["accepted"], report["rejected"]) == (9, 4, 5)
    assert report["rejection_rate"] == round(5 / 9, 6)
    assert report["images_per_species"] == {"moth": 0, "rose": 3, "tulip": 1}
    assert report["images_per_group"] == {"flowers": 4}
    assert report["species_below_minimum"] == ["moth", "tulip"]
    assert report["formats"] == {"JPEG": 4}
    assert report["accepted_bytes"] == 8
    assert report["near_duplicate_clusters"] == 0


def test_entries_are_listed_in_key_order(listing):
    manifest = listing.put("images/zebra/1.jpg", b"z").put("images/aardvark/1.jpg", b"a").build(reverse=True)
    assert _accepted_keys(manifest) == sorted(_accepted_keys(manifest))
    assert [r.key for r in manifest.rejected] == ["images/aardvark/1.jpg", "images/zebra/1.jpg"]


def test_files_round_trip_through_from_files(listing):
    manifest = listing.put("images/daisy/1.jpg", b"d").reject("images/rose/3.jpg", b"x", "too_small").build()
    files = manifest.files()
    loaded = Manifest.from_files(files)
    assert loaded.files() == files
    assert loaded.dataset_version == manifest.dataset_version
    assert (loaded.accepted, loaded.rejected) == (manifest.accepted, manifest.rejected)
    assert (loaded.report, loaded.taxonomy, loaded.source) == (manifest.report, manifest.taxonomy, manifest.source)
    assert QualityRules(**{**loaded.rules, "allowed_formats": tuple(loaded.rules["allowed_formats"])}) == RULES


def test_two_builds_from_fresh_listings_give_byte_identical_files():
    contents = {"images/rose/1.jpg": b"r1", "images/moth/1.jpg": b"m1", "images/daisy/1.jpg": b"d1"}

    def build(keys) -> dict[str, bytes]:
        listing = Listing().reject("images/rose/2.jpg", b"x", "corrupt")
        for key in keys:
            listing.put(key, contents[key])
        return listing.build().files()

    assert build(sorted(contents)) == build(sorted(contents, reverse=True))


def test_an_empty_species_folder_name_is_a_layout_error():
    assert species_of("images//x.jpg", "images/") is None
    assert species_of("images/rose/x.jpg", "images/") == "rose"
