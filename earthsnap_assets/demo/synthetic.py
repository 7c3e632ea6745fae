"""A synthetic hierarchical photo dataset, written as real image files, for demos and tests.

There is no downloadable nature dataset on an offline machine, so we draw one: each species group is a
drawing family (see `synthetic_draw`), each species a subtle trait inside it, and every photo puts the
subject on a cluttered background with camera effects, so the classifiers learn something real but not
trivial. A sprinkle of bad files exercises data QA; each is recorded with the QA reason it should get.
Everything derives from `SyntheticSpec.seed`: the same spec writes byte-identical files.
"""

from __future__ import annotations

import csv
import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from earthsnap_assets.demo.synthetic_draw import FAMILIES, draw_subject, hsv, lookup

TAXONOMY_FILE = "taxonomy.csv"
UNKNOWN_SPECIES = "unknown-species"


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; the default is a few hundred phone-like photos of 4 groups x 3 species."""

    groups: int = 4
    species_per_group: int = 3
    images_per_species: int = 30
    seed: int = 0
    min_side: int = 360
    max_side: int = 1024
    png_share: float = 0.25
    bad_files: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.groups <= len(FAMILIES):
            raise ValueError(f"groups must be 1..{len(FAMILIES)}, got {self.groups}")
        if not 2 <= self.species_per_group <= 4:
            raise ValueError(f"species_per_group must be 2..4, got {self.species_per_group}")
        if self.images_per_species < 2 or not 32 <= self.min_side <= self.max_side:
            raise ValueError("need images_per_species >= 2 and 32 <= min_side <= max_side")


@dataclass(frozen=True)
class SyntheticSummary:
    """What was written: the taxonomy, how many good photos, and every bad file with its QA reason."""

    root: Path
    taxonomy_csv: Path
    species: dict[str, str]
    good_images: int
    bad_files: dict[str, str]


def species_table(spec: SyntheticSpec) -> list[tuple[str, str, str]]:
    """(species, group, common name) rows of the taxonomy, groups in a fixed order."""
    return [
        (slug, group, common)
        for group, family in list(FAMILIES.items())[: spec.groups]
        for slug, common in family.species[: spec.species_per_group]
    ]


# What is behind a subject outdoors, as (hue, saturation, value) ranges: foliage, soil, sky, stone, sand.
SCENERY = (
    ((0.2, 0.4), (0.2, 0.7), (0.15, 0.6)),
    ((0.05, 0.12), (0.2, 0.7), (0.1, 0.55)),
    ((0.55, 0.62), (0.2, 0.5), (0.6, 1.0)),
    ((0.0, 1.0), (0.0, 0.1), (0.35, 0.8)),
    ((0.1, 0.15), (0.2, 0.5), (0.6, 1.0)),
)


def _natural_colour(rng: np.random.Generator) -> np.ndarray:
    hue, sat, val = (rng.uniform(*bounds) for bounds in SCENERY[rng.integers(len(SCENERY))])
    return np.array(hsv(hue, sat, val), dtype=np.float32)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Gradient, mottling and out-of-focus clutter, drawn at 1/4 scale and enlarged (shallow depth of field)."""
    w, h = max(8, size[0] // 4), max(8, size[1] // 4)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = x * np.cos(angle) + y * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    start, end = _natural_colour(rng), _natural_colour(rng)
    pixels = start + (end - start) * ramp[..., None]
    blotches = rng.uniform(0, 255, (int(rng.integers(3, 8)), int(rng.integers(3, 8)))).astype(np.uint8)
    mottling = np.asarray(Image.fromarray(blotches).resize((w, h), Image.BICUBIC), dtype=np.float32)
    pixels += (mottling[..., None] - 127.5) * rng.uniform(0.05, 0.35)
    scene = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(scene)
    for _ in range(rng.integers(0, 12)):  # blurry blobs: leaves, stones, flowers far away
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.03, 0.15) * w
        colour = tuple(int(c) for c in _natural_colour(rng))
        draw.ellipse([cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r], fill=colour)
    if rng.random() < 0.5:
        _grass(draw, rng, (w, h), int(rng.integers(10, 60)), width=max(1, w // 80))
    scene = scene.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3)))
    return scene.resize(size, Image.BILINEAR)


def _grass(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: tuple[int, int], count: int, width: int) -> None:
    """Grass blades rising from the bottom edge."""
    w, h = size
    for _ in range(count):
        x0 = rng.uniform(0, w)
        top = (x0 + rng.normal(0, w * 0.08), h * rng.uniform(0.2, 0.9))
        middle = ((x0 + top[0]) / 2 + rng.normal(0, w * 0.02), (h + top[1]) / 2)
        colour = hsv(rng.uniform(0.18, 0.35), rng.uniform(0.3, 0.8), rng.uniform(0.25, 0.75))
        draw.line([(x0, h), middle, top], fill=colour, width=width, joint="curve")


def _lit(subject: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Directional light and mottling over the subject, so flat drawn fills look like a lit surface."""
    y, x = np.mgrid[-0.5:0.5:8j, -0.5:0.5:8j]
    angle = rng.uniform(0, 2 * np.pi)
    light = 0.84 + rng.uniform(0.1, 0.4) * (x * np.cos(angle) + y * np.sin(angle)) + rng.normal(0, 0.04, x.shape)
    shade = Image.fromarray(np.clip(light * 255, 0, 255).astype(np.uint8)).resize(subject.size, Image.BICUBIC)
    lit = ImageChops.multiply(subject.convert("RGB"), Image.merge("RGB", [shade] * 3))
    lit.putalpha(subject.getchannel("A"))
    return lit


def _place(photo: Image.Image, subject: Image.Image, rng: np.random.Generator, max_tilt: float) -> None:
    """Turn the subject, drop a soft shadow, paste it where (most of) it stays in the frame."""
    subject = _lit(subject.rotate(rng.uniform(-max_tilt, max_tilt), Image.BILINEAR, expand=True), rng)
    w, h = photo.size
    left = int(rng.uniform(-0.15, 0.15) * subject.width + rng.uniform(0, max(1, w - subject.width)))
    top = int(rng.uniform(-0.15, 0.15) * subject.height + rng.uniform(0, max(1, h - subject.height)))
    if w < subject.width or h < subject.height:
        left, top = (w - subject.width) // 2, (h - subject.height) // 2
    alpha = subject.getchannel("A")
    small = alpha.reduce(4).filter(ImageFilter.GaussianBlur(rng.uniform(1, 4)))
    shadow = small.resize(alpha.size, Image.BILINEAR).point(lambda a: int(a * 0.45))
    offset = int(rng.uniform(0.01, 0.05) * subject.width)
    photo.paste((20, 20, 15), (left + offset, top + offset), shadow)
    photo.paste(subject, (left, top), alpha)


def _colour_matrix(rng: np.random.Generator) -> tuple[float, ...]:
    """White balance, saturation, contrast and exposure folded into one 3x4 affine matrix for PIL."""
    gain = 1 + rng.normal(0, 0.06, 3)
    saturation, contrast = rng.uniform(0.65, 1.3), rng.uniform(0.7, 1.25)
    mix = np.full((3, 3), (1 - saturation) / 3) + np.eye(3) * saturation  # rows sum to 1: greys stay grey
    offset = 128 * (1 - contrast) + rng.uniform(-35, 30)
    return tuple(float(v) for v in np.hstack([contrast * mix * gain, np.full((3, 1), offset)]).ravel())


def _camera(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Exposure and colour, sometimes a vignette, sensor grain, sometimes blur: done in PIL for speed."""
    photo = photo.convert("RGB", _colour_matrix(rng))
    w, h = photo.size
    if rng.random() < 0.35:
        y, x = np.mgrid[-1:1:24j, -1:1:32j]
        falloff = 255 * (1 - rng.uniform(0.15, 0.45) * (x * x + y * y) / 2)
        vignette = Image.fromarray(falloff.astype(np.uint8)).resize(photo.size, Image.BILINEAR)
        photo = ImageChops.multiply(photo, Image.merge("RGB", [vignette] * 3))
    grain = rng.standard_normal(((h + 1) // 2, (w + 1) // 2), dtype=np.float32) * rng.uniform(2, 12) + 128
    grain_image = Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8)).resize(photo.size, Image.BILINEAR)
    photo = ImageChops.add(photo, Image.merge("RGB", [grain_image] * 3), 1.0, -128)
    return photo.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.2))) if rng.random() < 0.15 else photo


def render_image(species: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One RGB photo of `species` at `size` (width, height); the same rng state gives the same pixels.

    The subject covers 30-80% of the short side, turned, lit and shadowed on a cluttered background, then
    goes through a simulated camera (exposure, white balance, vignette, grain, sometimes blur).
    """
    family, _ = lookup(species)
    photo = _background(rng, size)
    side = max(8, int(min(size) * rng.uniform(0.3, 0.8)))
    _place(photo, draw_subject(species, rng, side), rng, family.max_tilt)
    if rng.random() < 0.12:  # a few sharp blades in front of the subject
        _grass(ImageDraw.Draw(photo), rng, size, int(rng.integers(2, 8)), width=max(2, min(size) // 120))
    return _camera(photo, rng)


def _photo_size(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[int, int]:
    """Phone-like aspect ratios, both orientations, short side >= min_side and long side <= max_side."""
    aspect = min(
        float(rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0], p=[0.5, 0.2, 0.15, 0.15])), spec.max_side / spec.min_side
    )
    long_side = int(rng.integers(int(np.ceil(spec.min_side * aspect)), spec.max_side + 1))
    short_side = min(long_side, max(spec.min_side, round(long_side / aspect)))
    return (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)


def _encode(image: Image.Image, rng: np.random.Generator, png_share: float) -> tuple[bytes, str]:
    """JPEG at a varied quality, or PNG for `png_share` of the photos; returns (bytes, extension)."""
    buffer = io.BytesIO()
    if rng.random() < png_share:
        image.save(buffer, "PNG", compress_level=1)
        return buffer.getvalue(), ".png"
    image.save(buffer, "JPEG", quality=int(rng.integers(80, 96)))
    return buffer.getvalue(), ".jpg"


def _photo(spec: SyntheticSpec, species: str, index: int, salt: int = 0) -> tuple[bytes, str]:
    """Photo `index` of `species`: its own seed, so any photo can be made alone and in any order."""
    rng = np.random.default_rng([spec.seed, salt, *species.encode(), index])
    return _encode(render_image(species, rng, _photo_size(rng, spec)), rng, spec.png_share)


def _bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels that compresses to a few kB: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 500) for _ in range(side // 500)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _bad_files(spec: SyntheticSpec, a: str, b: str) -> dict[str, tuple[bytes, str]]:
    """One file per kind of QA failure: relative path -> (content, the reason QA should reject it for).

    Names sort after the good photos (`img_NNNN`), so where QA keeps the first of equal files it keeps
    the good photo. The conflicting pair is a fresh photo under two species: both copies are bad.
    """
    jpeg, _ = _photo(replace(spec, png_share=0.0), a, 0, salt=1)
    conflict, ext = _photo(spec, b, 0, salt=2)
    gif, bmp, tiny = io.BytesIO(), io.BytesIO(), io.BytesIO()
    small = render_image(a, np.random.default_rng([spec.seed, 3]), (160, 120))
    small.convert("P", palette=Image.Palette.ADAPTIVE).save(gif, "GIF")
    small.save(bmp, "BMP")
    small.resize((20, 20), Image.BICUBIC).save(tiny, "JPEG", quality=90)
    return {
        f"{a}/img_9001.jpg": (jpeg[: len(jpeg) // 2], "corrupt"),
        f"{a}/img_9002.jpg": (b"", "empty"),
        f"{b}/img_9003.jpg": (b"Field notes: remember to upload the photos from the meadow walk.\n", "not_an_image"),
        f"{a}/img_9004{ext}": (conflict, "conflicting_labels"),
        f"{b}/img_9004{ext}": (conflict, "conflicting_labels"),
        f"{b}/img_9005.jpg": (tiny.getvalue(), "too_small"),
        f"{UNKNOWN_SPECIES}/img_0000.jpg": (jpeg, "unknown_species"),
        f"{a}/img_9006.jpg": (gif.getvalue(), "format_not_allowed"),
        f"{b}/img_9007.bmp": (bmp.getvalue(), "bad_extension"),
        f"{a}/img_9008.png": (_bomb_png(), "too_many_pixels"),
    }


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _taxonomy_csv(rows: list[tuple[str, str, str]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["species", "group", "common_name"])
    writer.writerows(rows)
    return text.getvalue().encode()


def generate_dataset(root: Path, spec: SyntheticSpec = SyntheticSpec()) -> SyntheticSummary:
    """Write `root/<species>/img_NNNN.jpg|png`, `root/taxonomy.csv` and, if asked, the bad files.

    `root` must be empty or missing, so files of another spec never mix into the tree.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; generate into a fresh directory")
    rows = species_table(spec)
    _write(root / TAXONOMY_FILE, _taxonomy_csv(rows))
    jobs = [(slug, index) for slug, _, _ in rows for index in range(spec.images_per_species)]
    first: dict[str, tuple[bytes, str]] = {}
    # PIL and numpy release the GIL in their heavy loops, so threads use every core; order stays fixed.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for (slug, index), (data, ext) in zip(jobs, pool.map(lambda job: _photo(spec, *job), jobs), strict=True):
            first.setdefault(slug, (data, ext))
            _write(root / slug / f"img_{index:04d}{ext}", data)
    bad: dict[str, tuple[bytes, str]] = {}
    if spec.bad_files:
        a, b = rows[0][0], rows[1][0]
        bad = _bad_files(spec, a, b)
        bad[f"{a}/img_9000{first[a][1]}"] = (first[a][0], "duplicate")
        for relative, (data, _) in bad.items():
            _write(root / relative, data)
    return SyntheticSummary(
        root=root,
        taxonomy_csv=root / TAXONOMY_FILE,
        species={slug: group for slug, group, _ in rows},
        good_images=len(rows) * spec.images_per_species,
        bad_files={relative: reason for relative, (_, reason) in sorted(bad.items())},
    )
