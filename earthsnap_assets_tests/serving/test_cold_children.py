"""A photo routed to a child that is still loading waits alone: the photos of its batch are answered at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from earthsnap_assets.ml.model_cache import ModelCache
from earthsnap_assets.ml.routed import RoutedClassifier
from earthsnap_assets.ml.routing import RoutingConfig
from earthsnap_assets.serving.batching import MicroBatcher
from earthsnap_assets.serving.models import LoadedModels, Prediction, RoutingStats
from earthsnap_assets_tests.ml.routing_fixtures import HIERARCHY, Fixed

CHILDREN = {"flowers": Fixed([0.8, 0.2]), "insects": Fixed([0.1, 0.2, 0.7]), "fungi": Fixed([0.5, 0.5])}


class Pick(torch.nn.Module):
    """A parent that routes a photo to the group whose pixel is lit (photo(g) lights pixel g)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * x.flatten(1)[:, : len(HIERARCHY.groups)]


def photo(group: str) -> torch.Tensor:
    x = torch.zeros(1, 3, 4, 4)
    x.view(-1)[HIERARCHY.groups.index(group)] = 1.0
    return x


class SlowLoader:
    """Loads a child; the insects child takes until `release` is set (a slow download)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []

    def __call__(self, key: tuple[str, str]) -> torch.nn.Module:
        self.calls.append(key[0])
        if key[0] == "child-insects":
            assert self.release.wait(30)
        return CHILDREN[key[0].removeprefix("child-")]


@pytest.fixture
def bundle() -> Iterator[tuple[LoadedModels, SlowLoader]]:
    loader = SlowLoader()
    cache = ModelCache(loader, max_models=4)
    names = {group: f"child-{group}" for group in CHILDREN}
    classifier = RoutedClassifier(
        Pick(), HIERARCHY, lambda g: cache.get((names[g], "1")), frozenset(CHILDREN), RoutingConfig(), keep=5
    )
    with ThreadPoolExecutor(2) as pool:
        yield (
            LoadedModels(
                env="staging",
                alias="staging",
                versions={"parent": "1", **dict.fromkeys(names.values(), "1")},
                hierarchy=HIERARCHY,
                image_size=4,
                dataset_version="test",
                loaded_at="now",
                classifier=classifier,
                children=names,
                undeployed=frozenset(),
                stats=RoutingStats(),
                cache=cache,
                loader=pool,
            ),
            loader,
        )
        loader.release.set()


def test_photos_waiting_for_a_cold_child_do_not_hold_up_the_batch(bundle: tuple[LoadedModels, SlowLoader]) -> None:
    models, loader = bundle
    models.cache.get(("child-flowers", "1"))  # warm
    batcher = MicroBatcher(max_batch=8, max_wait_s=5.0)
    batcher.start()
    try:
        with batcher.expecting() as slot:  # one batch: two photos for the cold insects child, one for flowers
            cold = [batcher.submit(models, photo("insects")) for _ in range(2)]
            warm = slot.submit(models, photo("flowers"))
        answer = warm.result(10)
        assert isinstance(answer, Prediction) and answer.answer(1, 0.5)["species"] == "rose"
        assert not any(future.done() for future in cold)  # still loading: they wait, the flowers photo did not
        assert batcher.stats.forward_passes == 1
        loader.release.set()
        assert [future.result(10).answer(1, 0.5)["species"] for future in cold] == ["ant", "ant"]
    finally:
        batcher.stop()
    assert loader.calls.count("child-insects") == 1  # loaded once for both photos
    assert models.stats.child_forward_passes == 2  # flowers now, insects once for both waiting photos


def test_a_child_that_fails_to_load_fails_only_its_photos(bundle: tuple[LoadedModels, SlowLoader]) -> None:
    models, _ = bundle

    def unreachable(key: tuple[str, str]) -> torch.nn.Module:
        raise RuntimeError(f"no {key[0]}")

    models.cache.loader = unreachable
    answers = models.predict(torch.cat([photo("fungi"), photo("birds")]))
    assert isinstance(answers[1], Prediction) and answers[1].answer(1, 0.5)["species"] == "robin"
    with pytest.raises(RuntimeError, match="no child-fungi"):
        answers[0].result(10)
