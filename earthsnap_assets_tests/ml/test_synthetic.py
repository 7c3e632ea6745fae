"""The synthetic dataset: deterministic files, the promised layout, honest bad files, a learnable task."""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from earthsnap_assets.ml.synthetic import (
    SyntheticSpec,
    SyntheticSummary,
    generate_dataset,
    render_image,
    species_table,
)

SPEC = SyntheticSpec(groups=4, species_per_group=3, images_per_species=8, seed=3, min_side=120, max_side=320)
SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSummary:
    return generate_dataset(tmp_path_factory.mktemp("synthetic") / "raw", SPEC)


def _good_files(summary: SyntheticSummary) -> list[Path]:
    return [
        p
        for p in sorted(summary.root.rglob("*"))
        if p.is_file() and p != summary.taxonomy_csv and p.relative_to(summary.root).as_posix() not in summary.bad_files
    ]


def test_same_spec_writes_byte_identical_files(dataset: SyntheticSummary, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path / "again", SPEC)
    assert _tree_hashes(again.root) == _tree_hashes(dataset.root)
    other_seed = generate_dataset(tmp_path / "other", replace(SPEC, seed=4))
    assert _tree_hashes(other_seed.root) != _tree_hashes(dataset.root)


def test_refuses_a_non_empty_root(tmp_path: Path) -> None:
    (tmp_path / "stale.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path, SPEC)


def test_layout_and_taxonomy(dataset: SyntheticSummary) -> None:
    with dataset.taxonomy_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["species", "group", "common_name"]
    assert {r["species"]: r["group"] for r in rows} == dataset.species
    assert [(r["species"], r["group"], r["common_name"]) for r in rows] == species_table(SPEC)
    assert set(dataset.species.values()) == {"flowers", "butterflies", "beetles", "ferns"}
    assert all(SLUG.match(s) for s in [*dataset.species, *dataset.species.values()])
    assert all(r["common_name"] for r in rows)
    folders = {p.name for p in dataset.root.iterdir() if p.is_dir()}
    assert folders == {*dataset.species, "unknown-species"}
    for species in dataset.species:
        good = [p for p in _good_files(dataset) if p.parent.name == species]
        assert [p.stem for p in good] == [f"img_{i:04d}" for i in range(SPEC.images_per_species)]


def test_good_images_are_valid_photos_of_mixed_format_size_and_orientation(dataset: SyntheticSummary) -> None:
    good = _good_files(dataset)
    assert len(good) == dataset.good_images == 4 * 3 * SPEC.images_per_species
    formats, orientations, jpeg_tables = set(), set(), set()
    for path in good:
        with Image.open(path) as image:
            image.load()
            assert image.mode == "RGB"
            assert image.format == {".jpg": "JPEG", ".png": "PNG"}[path.suffix]
            assert SPEC.min_side <= min(image.size) and max(image.size) <= SPEC.max_side
            formats.add(image.format)
            orientations.add("landscape" if image.width > image.height else "portrait")
            if image.format == "JPEG":
                jpeg_tables.add(str(image.quantization))
    assert formats == {"JPEG", "PNG"}
    assert {"landscape", "portrait"} <= orientations
    assert len(jpeg_tables) > 3, "JPEG quality should vary"


def test_bad_files_are_what_they_claim(dataset: SyntheticSummary) -> None:
    bad = dataset.bad_files
    assert sorted(bad.values()) == sorted(
        [
            "corrupt",
            "empty",
            "not_an_image",
            "conflicting_labels",
            "conflicting_labels",
            "duplicate",
            "too_small",
            "unknown_species",
            "format_not_allowed",
            "bad_extension",
            "too_many_pixels",
        ]
    )
    by_reason: dict[str, list[Path]] = {}
    for relative, reason in bad.items():
        by_reason.setdefault(reason, []).append(dataset.root / relative)
    good_bytes = {p.read_bytes(): p for p in _good_files(dataset)}

    (corrupt,) = by_reason["corrupt"]
    with Image.open(corrupt) as image, pytest.raises(OSError):
        image.load()
    (empty,) = by_reason["empty"]
    assert empty.suffix == ".jpg" and empty.stat().st_size == 0
    (text,) = by_reason["not_an_image"]
    with pytest.raises(UnidentifiedImageError):
        Image.open(text)
    first, second = by_reason["conflicting_labels"]
    assert first.read_bytes() == second.read_bytes() and first.parent != second.parent
    Image.open(first).load()
    (duplicate,) = by_reason["duplicate"]
    original = good_bytes[duplicate.read_bytes()]
    assert original.parent == duplicate.parent and original.name < duplicate.name  # QA keeps the first key
    (tiny,) = by_reason["too_small"]
    assert Image.open(tiny).size == (20, 20)
    (stranger,) = by_reason["unknown_species"]
    assert stranger.parent.name not in dataset.species
    Image.open(stranger).load()
    (gif,) = by_reason["format_not_allowed"]
    assert gif.suffix == ".jpg" and Image.open(gif).format == "GIF"
    (bmp,) = by_reason["bad_extension"]
    assert bmp.suffix == ".bmp" and Image.open(bmp).format == "BMP"
    (bomb,) = by_reason["too_many_pixels"]
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)


def test_no_bad_files_when_not_asked(tmp_path: Path) -> None:
    spec = SyntheticSpec(groups=4, species_per_group=2, images_per_species=2, min_side=64, max_side=96, bad_files=False)
    summary = generate_dataset(tmp_path, spec)
    assert summary.bad_files == {}
    assert len(_good_files(summary)) == summary.good_images == 16


def test_render_image_is_a_pure_function_of_the_rng() -> None:
    first = render_image("rosa-pentapetala", np.random.default_rng(5), (200, 150))
    again = render_image("rosa-pentapetala", np.random.default_rng(5), (200, 150))
    other = render_image("rosa-pentapetala", np.random.default_rng(6), (200, 150))
    assert first.size == (200, 150) and first.mode == "RGB"
    assert first.tobytes() == again.tobytes() != other.tobytes()
    with pytest.raises(KeyError):
        render_image("no-such-species", np.random.default_rng(0), (64, 64))


def _nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    classes = np.unique(labels)
    centroids = np.stack([features[train & (labels == c)].mean(axis=0) for c in classes])
    distances = ((features[~train, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return float((classes[distances.argmin(axis=1)] == labels[~train]).mean())


def test_task_is_learnable_but_not_trivial() -> None:
    """Nearest centroid on 16x16 pixels: the weakest reasonable classifier, as a probe of the data.

    Measured with 40 photos per species (seeds 0..4): groups 0.xx-0.xx (chance 0.25), species within a
    group 0.xx-0.xx (chance 0.33). The bounds leave margin for seed noise; they fail if groups stop being
    told apart by crude cues, or if a species becomes separable by colour/position alone.
    """
    rows = species_table(SyntheticSpec())
    features, groups, species = [], [], []
    for index, (slug, _, _) in enumerate(rows):
        for i in range(40):
            size = (160, 120) if i % 2 else (120, 160)
            image = render_image(slug, np.random.default_rng([0, index, i]), size).resize((16, 16), Image.BILINEAR)
            features.append(np.asarray(image, dtype=np.float32).ravel() / 255)
            groups.append(index // 3)
            species.append(index)
    x, g, s = np.array(features), np.array(groups), np.array(species)
    train = np.arange(len(x)) % 2 == 0
    assert _nearest_centroid_accuracy(x, g, train) > 0.30
    for group in range(4):
        in_group = g == group
        accuracy = _nearest_centroid_accuracy(x[in_group], s[in_group], train[in_group])
        assert accuracy < 0.75
