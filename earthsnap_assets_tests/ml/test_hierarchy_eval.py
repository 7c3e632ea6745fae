"""Streamed hierarchical evaluation: serving's routing, routing vs within-group errors, what routing costs, memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from earthsnap_assets.ml.hierarchy import Hierarchy
from earthsnap_assets.ml.hierarchy_eval import evaluate_streamed, hierarchy_plots
from earthsnap_assets.ml.model_cache import ModelCache
from earthsnap_assets.ml.routed import RoutedClassifier
from earthsnap_assets.ml.routing import RoutingConfig
from earthsnap_assets_tests.ml.routing_fixtures import HIERARCHY, Fixed

PIXELS = np.zeros((3, 4, 4, 3), np.uint8)


def test_errors_split_into_routing_and_within_group_and_routing_cost_is_measured():
    parent = Fixed([[0.05, 0.93, 0.01, 0.01], [0.0, 0.5, 0.45, 0.05], [0.96, 0.02, 0.01, 0.01]])
    children = {"flowers": Fixed([0.55, 0.45]), "insects": Fixed([0.1, 0.2, 0.7]), "fungi": Fixed([0.5, 0.5])}
    one_group = RoutingConfig(min_groups=1, mass=0.5, max_groups=1)
    classifier = RoutedClassifier(parent, HIERARCHY, children.__getitem__, frozenset(children), one_group)
    truth = ["tulip", "ant", "robin"]
    flat = (Fixed([[0.1] * 7 + [0.3]] * 3), HIERARCHY.flat_species)
    result = evaluate_streamed([(PIXELS, truth)], classifier, flat=flat, sample_size=10)
    counts = result.counts.as_dict()
    # tulip -> flowers -> rose: within-group; ant -> only flowers expanded -> rose: routing; robin: right
    assert (counts["within_group_errors"], counts["routing_errors"], counts["true_group_not_expanded"]) == (1, 1, 1)
    report = result.species.report()
    assert report.accuracy == pytest.approx(1 / 3) and report.n == 3
    assert {(p["true"], p["predicted"]) for p in report.confusion_pairs} == {("tulip", "rose"), ("ant", "rose")}
    assert result.flat is not None and result.flat.report().accuracy == 0.0  # the flat model always says "b"
    cost = result.routing_cost
    # expanding every group, ant wins for the second photo: 0.45 x 0.7 > 0.5 x 0.55
    assert (cost["images"], cost["routed_top1_accuracy"], cost["full_top1_accuracy"]) == (3, 1 / 3, 2 / 3)
    assert cost["routed_minus_full_points"] == pytest.approx(-100 / 3, abs=1e-3)
    uncapped = [row for row in cost["sweep"] if row["max_groups"] == 4 and row["mass"] == 0.95]
    assert uncapped[0]["top1_accuracy"] == pytest.approx(2 / 3) and uncapped[0]["mean_groups_expanded"] > 1
    plots = hierarchy_plots(result, HIERARCHY)
    assert {"plots/routing_confusion.png", "plots/top_confusions.png", "plots/groups/flowers.png"} <= set(plots)


class MeanColour(torch.nn.Module):
    """Random logits from the mean colour: a cheap network with any number of outputs."""

    def __init__(self, outputs: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(outputs, 3, generator=generator) * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) @ self.weight.T


def test_memory_follows_the_batch_not_photos_times_species():
    groups, per_group, photos, batch = 100, 50, 2000, 100
    hierarchy = Hierarchy(
        groups=[f"g{i}" for i in range(groups)],
        species={f"g{i}": [f"g{i}-s{j}" for j in range(per_group)] for i in range(groups)},
    )
    loads: list[str] = []

    def load(group: str) -> torch.nn.Module:
        loads.append(group)
        return MeanColour(per_group, int(group[1:]) + 1)

    cache: ModelCache[str] = ModelCache(load, max_models=8)
    classifier = RoutedClassifier(
        MeanColour(groups, 0), hierarchy, cache.get, frozenset(hierarchy.groups), RoutingConfig()
    )
    species = np.array(hierarchy.flat_species)

    def batches() -> Iterator[tuple[np.ndarray, list[str]]]:
        rng = np.random.default_rng(0)
        for _ in range(photos // batch):
            yield rng.integers(0, 256, (batch, 4, 4, 3), dtype=np.uint8), list(rng.choice(species, batch))

    tracemalloc.start()
    try:
        result = evaluate_streamed(batches(), classifier, sample_size=500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.species.n == photos and result.routing_cost["images"] == 500
    dense = photos * groups * per_group * 8  # the photos x species float64 matrix the old evaluation built
    assert peak < dense / 8, f"peak {peak / 1e6:.1f} MB of numpy/Python memory, N x S would be {dense / 1e6:.0f} MB"
    assert cache.stats.resident <= 8 and len(set(loads)) == groups  # the full comparison ran every child
