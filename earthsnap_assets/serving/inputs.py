"""Upload -> model input, refusing every bad upload with a 4xx and a message (never a 500).

The per-image rules are data QA's (`QualityRules`), checked here on the header alone: `inspect_image`
also fully decodes and hashes the photo for the training manifest, which would double the decoding cost
of every request, and `preprocess_bytes` decodes it fully anyway (its failures become a 422 here). A
decompression bomb is refused from its header and never decoded.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from email.message import Message

import torch
from PIL import Image, UnidentifiedImageError
from starlette.requests import Request

from earthsnap_assets.ml.preprocessing import PreprocessConfig, load_image_array, open_header
from earthsnap_assets.ml.quality import QualityRules
from earthsnap_assets.ml.transforms import to_model_input


class InputError(Exception):
    """A request the endpoint refuses: HTTP status + a message for the caller."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


async def read_body(request: Request, max_bytes: int, timeout_s: float | None = None) -> bytes:
    """The whole body, refused (413) from Content-Length before reading or as soon as the count passes it.

    The whole body must arrive within `timeout_s` of the first read (408 otherwise): a total, not a per-chunk
    timeout, so a client trickling a byte at a time cannot hold the request open either.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if _integer(declared) is None:
            raise InputError(400, f"invalid Content-Length {declared!r}")
        if int(declared) > max_bytes:
            raise InputError(413, f"body of {declared} bytes is larger than the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                total += len(chunk)
                if total > max_bytes:
                    raise InputError(413, f"body is larger than the limit of {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise InputError(408, f"body not received within {timeout_s:g} s ({total} bytes arrived)") from exc
    return b"".join(chunks)


def _header_params(name: str, value: str) -> Message:
    message = Message()
    message[name] = value
    return message


def multipart_file(body: bytes, content_type: str, field: str = "file") -> bytes:
    """The content of the single `field` part of a multipart/form-data body; 400 for any other shape."""
    boundary = _header_params("content-type", content_type).get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise InputError(400, "multipart body without a boundary parameter")
    delimiter = b"--" + boundary.encode("latin-1")
    pieces = body.split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise InputError(400, "malformed multipart body: no closing boundary")
    found: list[bytes] = []
    for piece in pieces[1:-1]:
        head, separator, content = piece.partition(b"\r\n\r\n")
        if not separator or not head.startswith(b"\r\n") or not content.endswith(b"\r\n"):
            raise InputError(400, "malformed multipart part")
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = _header_params("content-disposition", headers.get("content-disposition", ""))
        if disposition.get_param("name", header="content-disposition") == field:
            found.append(content[:-2])
    if len(found) != 1:
        raise InputError(400, f"multipart body must have exactly one {field!r} field, found {len(found)}")
    return found[0]


def image_bytes(body: bytes, content_type: str) -> bytes:
    """The photo of a request: the raw body, or the `file` field of a multipart form."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        body = multipart_file(body, content_type)
    elif kind.startswith("multipart/"):
        raise InputError(400, f"unsupported body {kind}: send the image raw or as multipart/form-data 'file'")
    if not body:
        raise InputError(400, "empty body: send the image bytes, or multipart/form-data with a 'file' field")
    return body


def check_header(data: bytes, rules: QualityRules) -> tuple[int, int]:
    """QA's per-image rules from the header only: format, pixel count (bombs), short side; (width, height)."""
    try:
        header = open_header(data)
    except Image.DecompressionBombError as exc:
        raise InputError(413, f"too many pixels, refused before decoding: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(415, "not an image (cannot identify its content)") from exc
    fmt = "JPEG" if header.format == "MPO" else header.format
    width, height = header.size
    if fmt not in rules.allowed_formats:
        raise InputError(415, f"image format {fmt} is not one of {list(rules.allowed_formats)}")
    if width * height > rules.max_pixels:
        message = f"{width}x{height} = {width * height} pixels is more than {rules.max_pixels}; not decoded"
        raise InputError(413, message)
    if min(width, height) < rules.min_side:
        raise InputError(422, f"image is {width}x{height}: its short side is below {rules.min_side} pixels")
    return width, height


# Peak memory of `load_image_array` (decode, conversion to 8-bit RGB, resize) per decoded pixel, by Pillow
# mode, measured on 3000x3000 images (ru_maxrss): I;16 28 (float64 scaling), RGBA and P 20, RGB 8 (PNG) to
# 10 (WebP), L 5; JPEG decodes at reduced scale (draft), counted at that scale. Unknown modes: the worst.
DECODE_BYTES_PER_PIXEL = {
    "1": 5,
    "L": 5,
    "P": 21,
    "RGB": 10,
    "YCbCr": 10,
    "CMYK": 12,
    "LA": 21,
    "PA": 21,
    "La": 21,
    "RGBA": 21,
    "RGBa": 21,
    "I;16": 28,
    "I;16B": 28,
    "I;16L": 28,
    "I;16N": 28,
    "I": 32,
    "F": 32,
}
WORST_BYTES_PER_PIXEL = 32


def decode_cost(data: bytes, image_size: int) -> tuple[int, int, str]:
    """Estimated peak bytes of decoding and preprocessing `data`, from its header only; (bytes, pixels, mode)."""
    header = open_header(data)
    width, height = header.size
    if header.format in ("JPEG", "MPO"):  # as `preprocessing.decode` asks libjpeg for a reduced scale
        scale = max(1, min(width, height) // image_size)
        header.draft("RGB", (max(1, width // scale), max(1, height // scale)))
        width, height = header.size
    per_pixel = DECODE_BYTES_PER_PIXEL.get(header.mode, WORST_BYTES_PER_PIXEL)
    return width * height * per_pixel, width * height, header.mode


def check_decode_cost(data: bytes, image_size: int, max_decode_bytes: int) -> None:
    """413 for an image whose decoding would cost more than `max_decode_bytes` (call after `check_header`)."""
    cost, pixels, mode = decode_cost(data, image_size)
    if cost > max_decode_bytes:
        message = (
            f"decoding this {mode} image ({pixels} pixels) would need about {cost // 2**20} MiB, more than the "
            f"limit of {max_decode_bytes // 2**20} MiB; not decoded"
        )
        raise InputError(413, message)


@dataclass(frozen=True)
class Prepared:
    """A checked upload as the model and the prediction log see it."""

    pixels: torch.Tensor  # 1 x 3 x S x S model input
    width: int  # of the upload, from its header (not decoded twice)
    height: int
    brightness: float  # mean of the model input's pixels in [0, 1], before normalisation
    sha256: str  # of the uploaded bytes


def prepare(data: bytes, image_size: int, rules: QualityRules, max_decode_bytes: int | None = None) -> Prepared:
    """Checked upload -> 1 x 3 x S x S input via training's eval transform (runs on a worker thread).

    `to_model_input(load_image_array(...))` is `preprocess_bytes`, split so the brightness is read off the
    uint8 pixels before normalisation (the log's input-drift signal, for the cost of one mean).
    """
    width, height = check_header(data, rules)
    if max_decode_bytes is not None:
        check_decode_cost(data, image_size, max_decode_bytes)
    try:
        array = load_image_array(data, PreprocessConfig(image_size=image_size))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(422, f"image does not decode: {exc}") from exc
    brightness = float(array.mean()) / 255.0
    pixels = to_model_input(array)[None]
    return Prepared(pixels, width, height, brightness, hashlib.sha256(data).hexdigest())


def top_k_param(raw: str | None, default: int, most: int) -> int:
    """`?top_k=`: an integer within [1, most]."""
    if raw is None:
        return default
    value = _integer(raw)
    if value is None or not 1 <= value <= most:
        raise InputError(400, f"top_k must be an integer from 1 to {most}, got {raw!r}")
    return value


def _integer(raw: str) -> int | None:
    """A non-negative decimal integer, or None (no signs, no unicode digits)."""
    text = raw.strip()
    return int(text) if text.isascii() and text.isdigit() else None
