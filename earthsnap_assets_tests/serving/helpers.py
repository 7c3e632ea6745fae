"""Tiny registered models with known outputs, test photos, and a real uvicorn server on a free port.

The models look only at an image's mean colour (logits = W · mean + b), so a test picks the answer by the
photo's colour: the parent routes red -> birds, green -> flowers, blue -> insects.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import requests
import torch
from PIL import Image

from earthsnap_assets.registry import release
from earthsnap_assets.registry.client import RegistryClient
from earthsnap_assets.serving.config import ServeConfig
from earthsnap_assets.serving.local import serving_in_thread
from earthsnap_assets.stack.ports import free_port
from earthsnap_assets_tests.polling import wait_until

__all__ = ["free_port", "wait_until"]  # re-exported for the serving tests

# Run first in a subprocess, it makes `import dagster` fail as it would in an image without the orchestrator.
WITHOUT_DAGSTER = """
import sys

class NoDagster:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "dagster" or name.startswith("dagster_"):
            raise ImportError(f"{name}: the serving endpoint must not import Dagster")

sys.meta_path.insert(0, NoDagster())
"""

IMAGE_SIZE = 64
GROUP_SPECIES = {"birds": ["robin"], "flowers": ["rose", "tulip"], "insects": ["moth", "bee", "ant"]}
RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)


class MeanColor(torch.nn.Module):
    """logits = W · (mean colour of the normalised input) + b: outputs fixed by its weights."""

    def __init__(self, weight: Sequence[Sequence[float]], bias: Sequence[float]) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, len(bias))
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(weight, dtype=torch.float32))
            self.fc.bias.copy_(torch.tensor(bias, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def parent_model() -> MeanColor:
    return MeanColor(2.0 * np.eye(3), [0.0, 0.0, 0.0])  # group order = GROUP_SPECIES order = RGB


def flowers_model(favourite: int = 0) -> MeanColor:
    """Sure of one flower whatever the photo: P = e^2 / (e^2 + 1) = 0.88."""
    return MeanColor(np.zeros((2, 3)), [2.0 if i == favourite else 0.0 for i in range(2)])


def insects_model() -> MeanColor:
    """All-zero weights: uniform P(species | insects) = 1/3, so the endpoint backs off to the group."""
    return MeanColor(np.zeros((3, 3)), [0.0, 0.0, 0.0])


@dataclass
class TinyModels:
    """Registered models under a prefix unique to this test session, on the stack's MLflow."""

    registry: RegistryClient
    prefix: str

    @classmethod
    def create(cls) -> TinyModels:
        suffix = uuid.uuid4().hex[:8]
        return cls(RegistryClient(experiment=f"serving-tests-{suffix}"), f"test-{suffix}-earthsnap-")

    def config(self, **overrides: object) -> ServeConfig:
        values: dict = {"model_prefix": self.prefix, "poll_interval_s": 0.2, "max_bytes": 200_000}
        return ServeConfig(**{**values, **overrides})

    def register(
        self,
        name: str,
        model: torch.nn.Module,
        classes: list[str],
        mapping: dict[str, list[str]] | None = None,
        **tags: str,
    ) -> str:
        """Log `model` in pt2 format and register it as a new version of `<prefix><name>` (a parent: with `mapping`)."""
        example = np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
        with self.registry.run(name) as run_id:
            uri = self.registry.log_model(run_id, model, example, {"classes": classes})
            if mapping is not None:
                tags = {**tags, **self.registry.log_group_species(run_id, mapping)}
        all_tags = {
            "classes": ",".join(classes),
            "image_size": str(IMAGE_SIZE),
            "dataset_version": "test",
            **release.released_tags("production"),  # as the deploy job leaves them: servable at either alias
            **tags,
        }
        return self.registry.register(uri, self.prefix + name, run_id, all_tags)

    def register_parent(self) -> str:
        return self.register("parent", parent_model(), list(GROUP_SPECIES), mapping=GROUP_SPECIES)

    def register_flowers(self, favourite: int = 0) -> str:
        return self.register("child-flowers", flowers_model(favourite), GROUP_SPECIES["flowers"], group="flowers")

    def register_insects(self) -> str:
        return self.register("child-insects", insects_model(), GROUP_SPECIES["insects"], group="insects")

    def set_alias(self, alias: str, versions: dict[str, str]) -> None:
        """Point `alias` of each `<prefix><name>` at a version (a few at a time: wide hierarchies have hundreds)."""
        client = self.registry.client
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda nv: client.set_registered_model_alias(self.prefix + nv[0], alias, nv[1]), versions.items()
                )
            )

    def deploy_wide(self, alias: str, groups: int, first: int, second: int) -> dict[str, str]:
        """A parent over `groups` two-species groups, sure of group `first` (P = 0.974, then `second` at 0.018),
        and one child per group, all registered from one logged tiny network; `alias` points at all of them."""
        mapping = wide_mapping(groups)
        bias = np.zeros(groups)
        bias[first], bias[second] = 10.0, 6.0
        versions = {"parent": self.register("parent", MeanColor(np.zeros((groups, 3)), bias), list(mapping), mapping)}
        example = np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
        with self.registry.run("children") as run_id:
            uri = self.registry.log_model(run_id, flowers_model(), example, {"classes": ["a", "b"]})

        def child(group: str) -> tuple[str, str]:
            tags = {
                "classes": ",".join(mapping[group]),
                "image_size": str(IMAGE_SIZE),
                "dataset_version": "test",
                **release.released_tags("production"),
            }
            return f"child-{group}", self.registry.register(uri, f"{self.prefix}child-{group}", run_id, tags)

        with ThreadPoolExecutor(8) as pool:
            versions.update(pool.map(child, mapping))
        self.set_alias(alias, versions)
        return versions

    def full_names(self, versions: dict[str, str]) -> dict[str, str]:
        """{"parent": "1"} -> {"<prefix>parent": "1"}: what the endpoint reports as `model_versions`."""
        return {self.prefix + name: version for name, version in versions.items()}

    def deploy_first_versions(self, alias: str) -> dict[str, str]:
        """Register parent, flowers and insects v1 (robin's group has no child) and point `alias` at them."""
        versions = {
            "parent": self.register_parent(),
            "child-flowers": self.register_flowers(),
            "child-insects": self.register_insects(),
        }
        self.set_alias(alias, versions)
        return versions


def wide_mapping(groups: int) -> dict[str, list[str]]:
    """`groups` groups of two species: g000 -> [g000-a, g000-b], ..."""
    return {f"g{i:03d}": [f"g{i:03d}-a", f"g{i:03d}-b"] for i in range(groups)}


def photo(color: tuple[int, int, int], size: tuple[int, int] = (96, 80), fmt: str = "JPEG") -> bytes:
    """A solid-colour photo, encoded."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def noise_jpeg(size: int = 200) -> bytes:
    """A JPEG of random pixels: big enough that a truncated copy keeps its header but cannot decode."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels (a decompression bomb must never be decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def serving(app: object) -> contextlib.AbstractContextManager[str]:
    """Run `app` under a real uvicorn on a free port of 127.0.0.1; yields the base URL."""
    return serving_in_thread(app, start_timeout=15.0)


def is_ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/ready", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def wait_ready(url: str, timeout: float = 30.0) -> None:
    wait_until(lambda: is_ready(url), timeout)


def expected_probabilities(data: bytes) -> dict[str, float]:
    """P(species) of a photo computed in-process from the tiny networks, independently of the endpoint."""
    from earthsnap_assets.ml.transforms import preprocess_bytes

    x = preprocess_bytes(data, IMAGE_SIZE)
    with torch.no_grad():
        parent = torch.softmax(parent_model()(x), dim=1)[0].tolist()
        flowers = torch.softmax(flowers_model()(x), dim=1)[0].tolist()
    birds, flower, insects = parent
    return {
        "robin": birds,
        "rose": flower * flowers[0],
        "tulip": flower * flowers[1],
        **{species: insects / 3 for species in GROUP_SPECIES["insects"]},
    }


class Recorder:
    """Items seen by a fake model's forward passes."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail

    def predict(self, batch: torch.Tensor) -> list[float]:
        if self.fail:
            raise RuntimeError("broken model")
        self.batches.append(len(batch))
        return batch.flatten(1).mean(dim=1).tolist()
