"""Preprocessing: odd-but-valid files become the right RGB pixels, at the right size, the same way every time."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from earthsnap_assets.ml.preprocessing import PreprocessConfig, decode, load_image_array, resize_center_crop, to_rgb

WHITE, RED = (255, 255, 255), (255, 0, 0)


def _rgb(data: bytes) -> np.ndarray:
    """Full-size decode + conversion, no resizing: the pixels exactly as preprocessing sees them."""
    return np.asarray(to_rgb(decode(data)))


# --- shapes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [(200, 400, 64), (400, 200, 64), (64, 64, 64), (64, 90, 224), (6000, 4000, 64), (4000, 6000, 224)],
    ids=["portrait", "landscape", "tiny", "tiny-upscaled", "huge-landscape", "huge-portrait"],
)
def test_any_allowed_size_becomes_a_square_uint8_rgb_array(images, width, height, size):
    array = load_image_array(images.jpeg(width, height, quality=80), PreprocessConfig(image_size=size))
    assert array.shape == (size, size, 3)
    assert array.dtype == np.uint8


def test_default_config_gives_64_pixel_squares(images):
    assert load_image_array(images.png(300, 200)).shape == (64, 64, 3)


def test_centre_crop_keeps_the_middle_of_a_wide_image():
    image = Image.new("RGB", (300, 100), RED)
    ImageDraw.Draw(image).rectangle([100, 0, 199, 99], fill=WHITE)  # white middle third
    crop = np.asarray(resize_center_crop(image, 50))
    assert crop.shape == (50, 50, 3)
    assert (crop[:, 5:45] == 255).all()


# --- draft decoding and determinism ---------------------------------------------------------------------------


def test_jpeg_is_decoded_at_reduced_scale_but_never_below_the_target_size(images):
    data = images.jpeg(4000, 3000, quality=80)
    drafted = decode(data, min_side=64)
    assert drafted.size == (500, 375)  # libjpeg's 1/8 scale
    assert min(decode(data, min_side=224).size) >= 224


@pytest.mark.parametrize(("width", "height"), [(2000, 1500), (1500, 2000), (640, 480)])
@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize(("grain", "limit"), [(0.0, 1.5), (25.0, 6.0)], ids=["smooth", "grainy"])
def test_draft_decode_gives_nearly_the_pixels_of_a_full_decode(images, width, height, size, grain, limit):
    """Measured mean |diff| (0..255 scale): smooth 0.11..0.42, grainy 0.51..3.9 (640x480 -> 224, 1/2 draft)."""
    data = images.encode(images.scene(width, height, seed=3, grain=grain), "JPEG", quality=90)
    fast = load_image_array(data, PreprocessConfig(image_size=size)).astype(np.int16)
    full = np.asarray(resize_center_crop(to_rgb(decode(data)), size), dtype=np.int16)
    assert np.abs(fast - full).mean() < limit


def test_same_bytes_always_give_the_identical_array(images):
    data = images.jpeg(1200, 900, seed=5)
    first = load_image_array(data, PreprocessConfig(image_size=96))
    second = load_image_array(bytes(data), PreprocessConfig(image_size=96))
    assert np.array_equal(first, second)


def test_resampling_method_is_part_of_the_config(images):
    data = images.jpeg(640, 480)
    bicubic = load_image_array(data, PreprocessConfig(resample="bicubic"))
    nearest = load_image_array(data, PreprocessConfig(resample="nearest"))
    assert not np.array_equal(bicubic, nearest)
    assert PreprocessConfig(resample="bicubic").fingerprint() != PreprocessConfig(resample="nearest").fingerprint()


# --- odd-but-valid files --------------------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_the_right_rgb_colour(images):
    data = images.encode(Image.new("CMYK", (100, 80), (255, 0, 0, 0)), "JPEG", quality=95)  # pure cyan ink
    pixels = _rgb(data)
    assert pixels.shape == (80, 100, 3)
    assert np.abs(pixels.astype(int) - (0, 255, 255)).max() <= 3


@pytest.mark.parametrize(("value", "expected"), [(32768, 128), (65535, 255), (0, 0), (16384, 64)])
def test_sixteen_bit_png_is_scaled_to_eight_bits_not_clipped(images, value, expected):
    data = images.encode(Image.fromarray(np.full((80, 100), value, dtype=np.uint16)), "PNG")
    assert decode(data).mode == "I;16"
    pixels = _rgb(data)
    assert pixels.shape == (80, 100, 3)
    assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_dark_sixteen_bit_png_stays_dark(images):
    """A 16-bit file whose brightest pixel is 255/65535 is nearly black, however little of the range it uses."""
    gradient = np.tile(np.arange(0, 256, dtype=np.uint16), (80, 1))
    pixels = _rgb(images.encode(Image.fromarray(gradient), "PNG"))
    assert pixels.max() <= 1


def test_sixteen_bit_png_keeps_its_gradient(images):
    gradient = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    pixels = _rgb(images.encode(Image.fromarray(gradient), "PNG"))[0, :, 0].astype(int)
    assert np.abs(pixels - np.arange(256)).max() <= 1


def test_rgba_png_transparent_pixels_become_white_and_opaque_ones_keep_their_colour(images):
    image = Image.new("RGBA", (100, 80), (0, 0, 255, 0))  # fully transparent blue
    ImageDraw.Draw(image).rectangle([0, 0, 49, 79], fill=(255, 0, 0, 255))  # opaque red left half
    ImageDraw.Draw(image).rectangle([50, 0, 99, 39], fill=(0, 0, 0, 128))  # half-transparent black top right
    pixels = _rgb(images.encode(image, "PNG"))
    assert tuple(pixels[40, 10]) == RED
    assert tuple(pixels[60, 75]) == WHITE
    assert np.abs(pixels[20, 75].astype(int) - 127).max() <= 1  # black at alpha 128 over white


def test_palette_png_transparent_index_becomes_white(images):
    image = Image.new("P", (100, 80), 0)
    image.putpalette([0, 0, 255, *RED] + [0, 0, 0] * 254)  # index 0 blue (transparent), index 1 red
    ImageDraw.Draw(image).rectangle([0, 0, 49, 79], fill=1)
    data = images.encode(image, "PNG", transparency=0)
    pixels = _rgb(data)
    assert tuple(pixels[40, 10]) == RED
    assert tuple(pixels[40, 90]) == WHITE


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_grayscale_becomes_three_equal_channels(images, fmt):
    gray = Image.fromarray(np.tile(np.arange(0, 256, 2, dtype=np.uint8), (64, 1)), mode="L")
    pixels = _rgb(images.encode(gray, fmt, **({"quality": 95} if fmt == "JPEG" else {})))
    assert pixels.shape == (64, 128, 3)
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    assert np.abs(pixels[..., 0].astype(int) - np.asarray(gray)).mean() < 2


@pytest.mark.parametrize("lossless", [True, False])
def test_webp_is_decoded(images, lossless):
    scene = images.scene(300, 200)
    pixels = _rgb(images.encode(scene, "WEBP", lossless=lossless, quality=90))
    assert pixels.shape == (200, 300, 3)
    assert np.abs(pixels.astype(int) - np.asarray(scene)).mean() < (0.01 if lossless else 3)


def _marked(images, exif: bytes | None = None) -> bytes:
    """300x200 white photo with a red top-left quadrant, optionally with an EXIF block."""
    image = Image.new("RGB", (300, 200), WHITE)
    ImageDraw.Draw(image).rectangle([0, 0, 149, 99], fill=RED)
    return images.encode(image, "JPEG", quality=95, **({"exif": exif} if exif else {}))


def _quadrants_that_are_red(array: np.ndarray) -> set[str]:
    half = array.shape[0] // 2
    centres = {"top-left": (half // 2, half // 2), "top-right": (half // 2, half + half // 2)}
    centres |= {"bottom-left": (half + half // 2, half // 2), "bottom-right": (half + half // 2, half + half // 2)}
    return {name for name, (y, x) in centres.items() if array[y, x, 0] > 200 and array[y, x, 1] < 60}


def test_unrotated_marker_stays_top_left(images):
    assert _quadrants_that_are_red(load_image_array(_marked(images))) == {"top-left"}


def test_exif_orientation_6_turns_the_picture_clockwise(images):
    data = _marked(images, exif=images.exif(6))
    assert _rgb(data).shape == (300, 200, 3)  # stored 300 wide, shown 200 wide
    # Shown 200x300: the red block (stored top-left) is now top-right; the centre crop keeps it there.
    assert _quadrants_that_are_red(load_image_array(data)) == {"top-right"}


def test_exif_orientation_3_turns_the_picture_upside_down(images):
    data = _marked(images, exif=images.exif(3))
    assert _quadrants_that_are_red(load_image_array(data)) == {"bottom-right"}
