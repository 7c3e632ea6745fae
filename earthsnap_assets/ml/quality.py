"""Per-image QA rules: what makes one stored object acceptable as a training photo.

`inspect_image` looks at one object's bytes alone, so its result can be cached by object identity
(key + ETag) and a re-run decodes only new or changed objects. Rules that need the whole collection
(labels, duplicates) live in `manifest.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from earthsnap_assets.hashing import fingerprint, sha256_bytes
from earthsnap_assets.ml.preprocessing import PreprocessConfig, decode, model_pixels, open_header, to_rgb

EXTENSIONS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


@dataclass(frozen=True)
class QualityRules:
    """Thresholds of data QA; all of them go into the dataset version."""

    min_side: int = 64
    max_pixels: int = 40_000_000
    allowed_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
    min_images_per_species: int = 10
    near_duplicate_bits: int = 3
    max_rejection_rate: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.near_duplicate_bits <= 3:
            raise ValueError("near_duplicate_bits must be 0..3 (banded search is exact below 4 bits)")

    def object_fingerprint(self) -> str:
        """Identity of the rules `inspect_image` applies; names the per-object result cache."""
        per_object = {k: v for k, v in asdict(self).items() if k in ("min_side", "max_pixels", "allowed_formats")}
        return fingerprint({"object_rules": per_object, "rules_code": 2})

    def fingerprint(self) -> str:
        return fingerprint({"rules": asdict(self), "rules_code": 2})


@dataclass(frozen=True)
class ImageCheck:
    """What QA learned about one object; JSON-able so it can be cached in the lake."""

    sha256: str
    size: int
    reason: str | None = None
    detail: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    dhash: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict) -> ImageCheck:
        return cls(**value)


def _reject(data: bytes, reason: str, detail: str, **known: object) -> ImageCheck:
    return ImageCheck(sha256=sha256_bytes(data), size=len(data), reason=reason, detail=detail, **known)


def dhash(image: Image.Image) -> str:
    """64-bit difference hash: robust to resizing, recompression and small colour changes."""
    small = np.asarray(to_rgb(image).convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def inspect_image(data: bytes, key: str, rules: QualityRules) -> ImageCheck:
    """Apply every per-object rule, cheapest first; never decode pixels of an oversized image."""
    return _inspect(data, key, rules, None)[0]


def inspect_and_preprocess(
    data: bytes, key: str, rules: QualityRules, preprocess: PreprocessConfig
) -> tuple[ImageCheck, np.ndarray | None]:
    """QA and the model's pixels from one decode: what intake does for every new object.

    The pixels are exactly `load_image_array(data, preprocess)` (same draft scale, same conversion), the
    function the endpoint calls on an upload, so training and serving see a photo the same way.
    """
    return _inspect(data, key, rules, preprocess)


def _inspect(
    data: bytes, key: str, rules: QualityRules, preprocess: PreprocessConfig | None
) -> tuple[ImageCheck, np.ndarray | None]:
    check = _header_rules(data, key, rules)
    if isinstance(check, ImageCheck):
        return check, None
    header, known = check
    width, height = header.size
    try:
        image = decode(data, min_side=preprocess.image_size if preprocess else 32)
        fingerprint_hash = dhash(image)
        pixels = model_pixels(image, preprocess) if preprocess else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return _reject(data, "corrupt", f"does not decode fully: {exc}", **known), None
    if known["format"] == "JPEG":  # draft decoding may round both sides to one size: read the tag exif_transpose obeyed
        rotated = header.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    else:
        rotated = (image.width < image.height) != (width < height)  # EXIF orientation turned it by 90 degrees
    oriented_w, oriented_h = (height, width) if rotated else (width, height)
    check = ImageCheck(
        sha256=sha256_bytes(data),
        size=len(data),
        format=known["format"],
        mode=known["mode"],
        width=oriented_w,
        height=oriented_h,
        dhash=fingerprint_hash,
    )
    return check, pixels


def _header_rules(data: bytes, key: str, rules: QualityRules) -> ImageCheck | tuple[Image.Image, dict]:
    """The rules a header decides: a rejection, or (header, what it says) for an image worth decoding."""
    if not data:
        return _reject(data, "empty", "zero bytes")
    suffix = PurePosixPath(key).suffix.lower()
    if suffix not in EXTENSIONS:
        return _reject(data, "bad_extension", f"extension {suffix or '(none)'!r} is not one of {sorted(EXTENSIONS)}")
    try:
        header = open_header(data)
    except Image.DecompressionBombError as exc:
        return _reject(data, "too_many_pixels", f"decompression bomb refused before decoding: {exc}")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return _reject(data, "not_an_image", f"cannot identify image content: {exc}")
    fmt, (width, height), mode = header.format, header.size, header.mode
    if fmt == "MPO":  # phone cameras' multi-picture JPEGs: the first picture is an ordinary JPEG
        fmt = "JPEG"
    known = {"format": fmt, "mode": mode, "width": width, "height": height}
    if fmt not in rules.allowed_formats:
        return _reject(data, "format_not_allowed", f"{fmt} is not one of {list(rules.allowed_formats)}", **known)
    if width * height > rules.max_pixels:
        detail = f"{width}x{height} = {width * height} pixels > {rules.max_pixels}; not decoded"
        return _reject(data, "too_many_pixels", detail, **known)
    if min(width, height) < rules.min_side:
        return _reject(data, "too_small", f"{width}x{height}: short side < {rules.min_side}", **known)
    return header, known
