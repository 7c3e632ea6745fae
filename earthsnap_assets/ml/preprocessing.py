"""Image decoding and resizing: the one preprocessing path shared by QA, shards and the endpoint.

Training shards are built with `load_image_array`, and the serving endpoint calls the same function on
the uploaded bytes, so a photo is seen the same way in training and in production.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps

from earthsnap_assets.hashing import fingerprint

# Formats we can decode with a bounded cost; others are rejected by QA before decoding.
DECODABLE_FORMATS = ("JPEG", "PNG", "WEBP")
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw photos become training pixels; part of the dataset layout id."""

    image_size: int = 64
    resample: str = "bicubic"

    def fingerprint(self) -> str:
        return fingerprint({"preprocess": asdict(self), "pipeline": 1})


def open_header(data: bytes) -> Image.Image:
    """Open an image reading only its header: format, mode and size, no pixel decoding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=None)


def decode(data: bytes, min_side: int | None = None) -> Image.Image:
    """Fully decode an image, at a reduced JPEG scale when `min_side` allows it.

    Draft mode makes libjpeg decode every block at 1/2..1/8 scale: it still reads the whole file (a
    truncated JPEG fails), at a fraction of the cost of a full-size decode. EXIF orientation is applied.
    """
    image = open_header(data)
    if min_side and image.format == "JPEG":
        width, height = image.size
        scale = max(1, min(width, height) // min_side)
        image.draft("RGB", (max(1, width // scale), max(1, height // scale)))
    image.load()
    return ImageOps.exif_transpose(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any decodable mode to 8-bit RGB without surprises.

    16-bit PNGs are scaled (PIL's convert would clip them to white), transparency is composited on white
    (what a viewer shows), CMYK and palette images go through PIL's conversions.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image, dtype=np.float64)
        # I;16* hold 16-bit samples whatever their values (a dark file may not exceed 255); plain "I" may be 8-bit.
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def resize_center_crop(image: Image.Image, size: int, resample: str = "bicubic") -> Image.Image:
    """Scale the short side to `size`, then crop the centre square: no distortion of the subject."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    method = Image.Resampling[resample.upper()]
    resized = image.resize((new_w, new_h), method, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return resized.crop((left, top, left + size, top + size))


def model_pixels(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """A decoded image -> `image_size` x `image_size` x 3 uint8 array (the model's view of it)."""
    return np.asarray(resize_center_crop(to_rgb(image), config.image_size, config.resample), dtype=np.uint8)


def load_image_array(data: bytes, config: PreprocessConfig | None = None) -> np.ndarray:
    """Bytes of a photo -> the model's pixels: the one preprocessing path of training and serving."""
    config = config or PreprocessConfig()
    return model_pixels(decode(data, min_side=config.image_size), config)
