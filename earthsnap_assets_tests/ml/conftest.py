"""Image builders for the ML unit tests: real encoded files (good, odd and broken), made in memory."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFile, ImageFilter

from earthsnap_assets.ml.quality import QualityRules

ORIENTATION_TAG = 0x0112
_SOF_MARKERS = {0xC0, 0xC1, 0xC2}


class ImageMaker:
    """Builds image files the way cameras and editors would, so QA and preprocessing see real bytes."""

    @staticmethod
    def scene(width: int = 300, height: int = 200, seed: int = 0, grain: float = 0.0) -> Image.Image:
        """A smooth, photo-like RGB picture (gradient sky, blurred blobs): stable dhash, unlike noise.

        `grain` adds per-pixel Gaussian noise of that standard deviation: fine texture, the worst case of draft
        decoding (libjpeg's DCT scaling and Pillow's bicubic filter average noise differently).
        """
        rng = np.random.default_rng(seed)
        base_w, base_h = 160, max(1, round(160 * height / width))
        yy, xx = np.mgrid[0:base_h, 0:base_w] / max(base_w, base_h)
        c0, c1, c2 = rng.integers(0, 256, (3, 3))
        gradient = c0 + np.multiply.outer(xx, c1 - c0) + np.multiply.outer(yy, c2 - c0)
        image = Image.fromarray(np.clip(gradient, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = int(rng.integers(0, base_w)), int(rng.integers(0, base_h))
            rx, ry = (int(v) for v in rng.integers(8, 50, 2))
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        image = image.filter(ImageFilter.GaussianBlur(1.5)).resize((width, height), Image.Resampling.BICUBIC)
        if grain:
            noisy = np.asarray(image, dtype=np.float64) + rng.normal(0.0, grain, (height, width, 3))
            image = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
        return image

    @staticmethod
    def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    def jpeg(self, width: int = 300, height: int = 200, seed: int = 0, **options: object) -> bytes:
        return self.encode(self.scene(width, height, seed), "JPEG", **{"quality": 90, **options})

    def png(self, width: int = 300, height: int = 200, seed: int = 0) -> bytes:
        return self.encode(self.scene(width, height, seed), "PNG")

    @staticmethod
    def exif(orientation: int) -> bytes:
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = orientation
        return exif.tobytes()

    @staticmethod
    def png_claiming(width: int, height: int) -> bytes:
        """A well-formed PNG whose IHDR claims `width` x `height` RGB pixels, with a 20-byte IDAT."""

        def chunk(kind: bytes, payload: bytes) -> bytes:
            return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b"")
        )

    def jpeg_claiming(self, width: int, height: int) -> bytes:
        """A real 64x48 JPEG whose SOF segment is rewritten to claim `width` x `height` pixels."""
        data = bytearray(self.jpeg(64, 48))
        pos = 2  # after SOI
        while pos + 4 <= len(data):
            marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2 : pos + 4])[0]
            if marker in _SOF_MARKERS:
                data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
                return bytes(data)
            pos += 2 + length
        raise AssertionError("no SOF segment in the JPEG Pillow wrote")


@pytest.fixture
def images() -> ImageMaker:
    return ImageMaker()


@pytest.fixture
def rules() -> QualityRules:
    return QualityRules()


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch):
    """Context manager: inside it, any attempt to decode pixels fails the test (reading headers is fine)."""

    def refuse(self: Image.Image, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"pixels of a {self.format} {self.size} image were decoded")

    @contextlib.contextmanager
    def forbid():
        with monkeypatch.context() as patch:
            patch.setattr(ImageFile.ImageFile, "load", refuse)
            patch.setattr(Image.Image, "load", refuse)
            yield

    return forbid


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core runner spinning threads cost 10x.
    Modules that train ask for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
