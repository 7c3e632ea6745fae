"""Per-object QA (`inspect_image`) on real files: every rejection reason, and odd files that must pass."""

import io
import time

import numpy as np
import pytest
from PIL import Image

from earthsnap_assets.ml.quality import ImageCheck, QualityRules, dhash, inspect_image


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


# --- rejections, one per reason -------------------------------------------------------------------------------


def test_zero_bytes_are_empty(rules):
    check = inspect_image(b"", "images/rose/a.jpg", rules)
    assert (check.reason, check.detail, check.size) == ("empty", "zero bytes", 0)
    assert not check.ok


def test_text_named_jpg_is_not_an_image(rules):
    check = inspect_image(b"species,group\nrose,flowers\n", "images/rose/a.jpg", rules)
    assert check.reason == "not_an_image"
    assert "cannot identify image" in check.detail
    assert check.format is None


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_jpeg_is_corrupt(images, rules, keep):
    data = images.jpeg(300, 200)
    check = inspect_image(data[: int(len(data) * keep)], "images/rose/a.jpg", rules)
    assert check.reason == "corrupt"
    assert "truncated" in check.detail
    assert (check.format, check.width, check.height) == ("JPEG", 300, 200)  # the header was still readable
    assert check.dhash is None


def test_truncated_png_is_corrupt(images, rules):
    data = images.png(300, 200)
    check = inspect_image(data[: len(data) // 2], "images/rose/a.png", rules)
    assert check.reason == "corrupt"
    assert "truncated" in check.detail


def test_decoding_guard_catches_a_normal_decode(images, rules, no_pixel_decoding):
    """Keeps the 'never decoded' tests below honest: the guard does fire when pixels are decoded."""
    data = images.jpeg()
    with no_pixel_decoding(), pytest.raises(AssertionError, match="were decoded"):
        inspect_image(data, "images/rose/a.jpg", rules)


def test_png_claiming_50000_squared_pixels_is_refused_without_decoding(images, rules, no_pixel_decoding):
    data = images.png_claiming(50_000, 50_000)
    assert len(data) < 100
    with no_pixel_decoding():
        started = time.perf_counter()
        check = inspect_image(data, "images/rose/bomb.png", rules)
        elapsed = time.perf_counter() - started
    assert elapsed < 0.5
    assert check.reason == "too_many_pixels"
    assert "2500000000 pixels" in check.detail


def test_jpeg_whose_sof_claims_50000_squared_pixels_is_refused_without_decoding(images, rules, no_pixel_decoding):
    data = images.jpeg_claiming(50_000, 50_000)
    with no_pixel_decoding():
        started = time.perf_counter()
        check = inspect_image(data, "images/rose/bomb.jpg", rules)
        elapsed = time.perf_counter() - started
    assert elapsed < 0.5
    assert check.reason == "too_many_pixels"
    assert "2500000000 pixels" in check.detail


def test_header_over_max_pixels_but_below_pillow_bomb_limit_is_refused_by_the_rule(images, rules, no_pixel_decoding):
    data = images.png_claiming(8000, 6000)
    with no_pixel_decoding():
        check = inspect_image(data, "images/rose/big.png", rules)
    assert check.reason == "too_many_pixels"
    assert check.detail == "8000x6000 = 48000000 pixels > 40000000; not decoded"
    assert (check.width, check.height) == (8000, 6000)


def test_one_pixel_over_max_pixels_is_too_many_and_exactly_max_is_fine(images):
    data = images.jpeg(300, 200)
    over = inspect_image(data, "images/rose/a.jpg", QualityRules(max_pixels=300 * 200 - 1))
    assert over.reason == "too_many_pixels"
    assert "300x200 = 60000 pixels > 59999" in over.detail
    assert inspect_image(data, "images/rose/a.jpg", QualityRules(max_pixels=300 * 200)).ok


@pytest.mark.parametrize(("width", "height"), [(63, 200), (200, 63)])
def test_short_side_below_min_side_is_too_small(images, rules, width, height):
    check = inspect_image(images.jpeg(width, height), "images/rose/a.jpg", rules)
    assert check.reason == "too_small"
    assert check.detail == f"{width}x{height}: short side < 64"


def test_short_side_equal_to_min_side_is_accepted(images, rules):
    assert inspect_image(images.jpeg(64, 200), "images/rose/a.jpg", rules).ok


@pytest.mark.parametrize(("fmt", "key"), [("GIF", "a.png"), ("BMP", "a.jpg"), ("TIFF", "a.jpeg")])
def test_disallowed_format_content_is_rejected_whatever_the_name(images, rules, fmt, key):
    data = images.encode(images.scene(), fmt)
    check = inspect_image(data, f"images/rose/{key}", rules)
    assert check.reason == "format_not_allowed"
    assert check.detail.startswith(f"{fmt} is not one of")
    assert check.format == fmt


def test_format_dropped_from_the_rules_is_not_allowed(images):
    check = inspect_image(images.encode(images.scene(), "WEBP"), "a.webp", QualityRules(allowed_formats=("JPEG",)))
    assert check.reason == "format_not_allowed"
    assert check.detail == "WEBP is not one of ['JPEG']"


@pytest.mark.parametrize("key", ["images/rose/a.gif", "images/rose/a.jpg.txt", "images/rose/README"])
def test_extension_outside_the_allowed_list_is_rejected_before_looking_at_content(images, rules, key):
    check = inspect_image(images.jpeg(), key, rules)
    assert check.reason == "bad_extension"
    assert ".jpg" in check.detail  # names what would have been allowed
    assert check.format is None


def test_extension_check_is_case_insensitive(images, rules):
    assert inspect_image(images.jpeg(), "images/rose/IMG_0001.JPG", rules).ok


# --- acceptances ----------------------------------------------------------------------------------------------


def test_good_jpeg_reports_its_identity(images, rules):
    data = images.jpeg(300, 200)
    check = inspect_image(data, "images/rose/a.jpg", rules)
    assert check.ok
    assert (check.format, check.mode, check.width, check.height, check.size) == ("JPEG", "RGB", 300, 200, len(data))
    assert len(check.sha256) == 64
    assert len(check.dhash) == 16
    assert ImageCheck.from_json(check.to_json()) == check


def test_png_named_jpg_is_accepted_because_content_decides_the_format(images, rules):
    check = inspect_image(images.png(), "images/rose/a.jpg", rules)
    assert check.ok
    assert check.format == "PNG"


def _gray(images):
    return images.scene(300, 200).convert("L")


def _half_transparent(images):
    rgba = images.scene(300, 200).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    return rgba


ODD_BUT_VALID = {  # name -> (build bytes, expected format, expected mode)
    "cmyk_jpeg": (lambda im: im.encode(im.scene().convert("CMYK"), "JPEG"), "JPEG", "CMYK"),
    "gray_jpeg": (lambda im: im.encode(_gray(im), "JPEG"), "JPEG", "L"),
    "gray_png": (lambda im: im.encode(_gray(im), "PNG"), "PNG", "L"),
    "sixteen_bit_png": (
        lambda im: im.encode(Image.fromarray(np.asarray(_gray(im), dtype=np.uint16) * 257), "PNG"),
        "PNG",
        "I;16",
    ),
    "rgba_png": (lambda im: im.encode(_half_transparent(im), "PNG"), "PNG", "RGBA"),
    "palette_png_with_transparency": (
        lambda im: im.encode(im.scene().convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG", transparency=0),
        "PNG",
        "P",
    ),
    "lossy_webp": (lambda im: im.encode(im.scene(), "WEBP", quality=80), "WEBP", "RGB"),
    "lossless_webp": (lambda im: im.encode(_half_transparent(im), "WEBP", lossless=True), "WEBP", "RGBA"),
    "progressive_jpeg": (lambda im: im.encode(im.scene(), "JPEG", progressive=True), "JPEG", "RGB"),
}
EXTENSION = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@pytest.mark.parametrize("name", sorted(ODD_BUT_VALID))
def test_odd_but_valid_files_are_accepted(images, rules, name):
    build, fmt, mode = ODD_BUT_VALID[name]
    check = inspect_image(build(images), f"images/rose/{name}.{EXTENSION[fmt]}", rules)
    assert check.reason is None, check.detail
    assert (check.format, check.mode, check.width, check.height) == (fmt, mode, 300, 200)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_decides_the_reported_width_and_height(images, rules, orientation):
    data = images.jpeg(300, 200, exif=images.exif(orientation))
    check = inspect_image(data, "images/rose/a.jpg", rules)
    assert check.ok
    assert (check.width, check.height) == ((200, 300) if orientation in (5, 6, 7, 8) else (300, 200))


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", "png"), ("WEBP", "webp")])
def test_exif_rotation_is_reported_for_png_and_webp_too(images, rules, fmt, ext):
    data = images.encode(images.scene(300, 200), fmt, exif=images.exif(6))
    check = inspect_image(data, f"images/rose/a.{ext}", rules)
    assert (check.format, check.width, check.height) == (fmt, 200, 300)


@pytest.mark.parametrize(("width", "height"), [(200, 199), (640, 639), (129, 128)])
def test_exif_rotation_of_a_nearly_square_jpeg_still_swaps_width_and_height(images, rules, width, height):
    """Draft decoding rounds both sides to the same size here, so the swap cannot be read off the pixels."""
    data = images.jpeg(width, height, exif=images.exif(6))
    check = inspect_image(data, "images/rose/a.jpg", rules)
    assert (check.width, check.height) == (height, width)


# --- dhash ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_recompressed_and_resized_photo_keeps_its_dhash_within_three_bits(images, rules, seed):
    scene = images.scene(640, 480, seed)
    original = inspect_image(images.encode(scene, "JPEG", quality=95), "a.jpg", rules)
    smaller = inspect_image(images.encode(scene.resize((320, 240)), "JPEG", quality=40), "b.jpg", rules)
    as_png = inspect_image(images.encode(scene.resize((200, 150)), "PNG"), "c.png", rules)
    assert hamming(original.dhash, smaller.dhash) <= 3
    assert hamming(original.dhash, as_png.dhash) <= 3


def test_unrelated_photos_have_distant_dhashes(images, rules):
    hashes = [inspect_image(images.jpeg(320, 240, seed), "a.jpg", rules).dhash for seed in range(10)]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(distances) > 8


def test_dhash_ignores_mode_and_transparency_of_an_opaque_image(images):
    scene = images.scene(320, 240)
    assert dhash(scene) == dhash(scene.convert("RGBA"))
    assert hamming(dhash(scene), dhash(scene.convert("CMYK"))) <= 1


def test_phone_multi_picture_jpeg_is_accepted_as_jpeg(rules):
    first, second = Image.new("RGB", (320, 240), (200, 40, 40)), Image.new("RGB", (320, 240), (40, 200, 40))
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second])
    check = inspect_image(buffer.getvalue(), "images/rose/phone.jpg", rules)
    assert check.ok and check.format == "JPEG" and (check.width, check.height) == (320, 240)
