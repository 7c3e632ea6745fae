"""Serving at hundreds of groups: a photo costs the parent plus its routed children, children load on demand."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from earthsnap_assets.ml.routing import RoutingConfig
from earthsnap_assets.serving.app import create_app
from earthsnap_assets.settings import Settings
from earthsnap_assets_tests.serving.helpers import (
    GREEN,
    TinyModels,
    flowers_model,
    photo,
    serving,
    wait_ready,
    wait_until,
    wide_mapping,
)

pytestmark = pytest.mark.stack

GROUPS, FIRST, SECOND = 200, 7, 42  # the wide parent sends every photo to g007 (P = 0.974), then g042 (0.018)


@pytest.fixture(scope="module")
def wide(stack: Settings) -> tuple[TinyModels, dict[str, str]]:
    """200 groups, a child for each, `staging` on all of them."""
    models = TinyModels.create()
    return models, models.deploy_wide("staging", GROUPS, FIRST, SECOND)


def stats(url: str) -> dict:
    return requests.get(f"{url}/stats", timeout=5).json()


def test_a_request_at_200_groups_touches_only_the_routed_children(wide: tuple[TinyModels, dict[str, str]]) -> None:
    models, versions = wide
    routing = RoutingConfig(min_groups=1, mass=0.99, max_groups=4)  # 0.974 + 0.018: two groups reach 0.99
    with serving(create_app("staging", config=models.config(routing=routing, preload_most_requested=0))) as url:
        wait_ready(url)
        assert len(requests.get(f"{url}/models", timeout=5).json()["versions"]) == GROUPS + 1
        assert stats(url)["children"]["resident"] == 0  # ready with the parent alone: no child loaded yet
        body = requests.post(f"{url}/predict", data=photo(GREEN), timeout=30).json()
        after = stats(url)
    routed = {f"child-g{FIRST:03d}", f"child-g{SECOND:03d}"}
    assert body["model_versions"] == models.full_names({n: v for n, v in versions.items() if n in {"parent", *routed}})
    assert [g["group"] for g in body["groups_evaluated"]] == [f"g{FIRST:03d}", f"g{SECOND:03d}"]
    assert body["unexpanded_mass"] == pytest.approx(198 / (22026.47 + 403.43 + 198), rel=1e-3)
    assert (body["species"], body["group"]) == (f"g{FIRST:03d}-a", f"g{FIRST:03d}")
    assert (after["children"]["loads"], after["children"]["resident"]) == (2, 2)
    assert (after["routing"]["child_forward_passes"], after["routing"]["photos"]) == (2, 1)


def test_concurrent_first_requests_load_a_cold_child_once(wide: tuple[TinyModels, dict[str, str]]) -> None:
    models, _ = wide
    config = models.config(max_batch=1, preload_most_requested=0)  # every request its own forward pass
    with serving(create_app("staging", config=config)) as url:
        wait_ready(url)
        start = threading.Barrier(8)

        def one(_: int) -> dict:
            start.wait()
            return requests.post(f"{url}/predict", data=photo(GREEN), timeout=30).json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(8)))
        after = stats(url)
    assert all(a["group"] == f"g{FIRST:03d}" for a in answers)
    assert after["children"]["loads"] == 1 and after["children"]["load_failures"] == 0
    assert after["forward_passes"] == 8 and after["routing"]["child_forward_passes"] == 8


def test_resident_children_are_bounded_by_the_cache_setting_not_the_groups(
    wide: tuple[TinyModels, dict[str, str]],
) -> None:
    models, _ = wide
    routing = RoutingConfig(min_groups=20, mass=1.0, max_groups=20)  # a photo that needs 20 children
    config = models.config(routing=routing, cache_max_children=3, preload_most_requested=0)
    with serving(create_app("staging", config=config)) as url:
        wait_ready(url)
        body = requests.post(f"{url}/predict", data=photo(GREEN), timeout=60).json()
        children = stats(url)["children"]
    assert len(body["model_versions"]) == 21 and len(body["groups_evaluated"]) == 20
    assert (children["loads"], children["resident"], children["evictions"]) == (20, 3, 17)


def test_the_hot_child_is_loaded_before_an_alias_move_is_served(wide: tuple[TinyModels, dict[str, str]]) -> None:
    models, versions = wide
    hot = f"child-g{FIRST:03d}"
    with serving(create_app("staging", config=models.config(preload_most_requested=1))) as url:
        wait_ready(url)
        for _ in range(3):
            requests.post(f"{url}/predict", data=photo(GREEN), timeout=30)
        before = stats(url)["children"]
        moved = models.register(hot, flowers_model(favourite=1), wide_mapping(GROUPS)[f"g{FIRST:03d}"])
        models.set_alias("staging", {hot: moved})
        try:
            name = models.prefix + hot
            wait_until(lambda: requests.get(f"{url}/models", timeout=5).json()["versions"][name] == moved, timeout=30)
            swapped = stats(url)["children"]  # no request since the move: the poller loaded the new child
            body = requests.post(f"{url}/predict", data=photo(GREEN), timeout=30).json()
            served = stats(url)["children"]
        finally:
            models.set_alias("staging", {hot: versions[hot]})
    assert (before["loads"], swapped["loads"], served["loads"]) == (1, 2, 2)
    assert served["hits"] == swapped["hits"] + 1
    assert body["model_versions"][name] == moved and body["species"] == f"g{FIRST:03d}-b"  # the new child's answer
