"""Routing (which groups a photo expands) and routed inference (which children run, what the answer claims)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from earthsnap_assets.ml.routed import RoutedClassifier
from earthsnap_assets.ml.routing import RoutingConfig, TopK, back_off, route
from earthsnap_assets_tests.ml.routing_fixtures import HIERARCHY, Fixed

PROBS = np.array(
    [
        [0.96, 0.02, 0.01, 0.01],  # sure: one group
        [0.50, 0.30, 0.15, 0.05],  # unsure: 0.5 + 0.3 + 0.15 = 0.95 -> three groups
        [0.25, 0.25, 0.25, 0.25],  # confused: would need all four, the cap says two
    ]
)


def test_groups_expand_until_the_mass_is_reached_within_min_and_max():
    routes = route(PROBS, RoutingConfig(min_groups=1, mass=0.95, max_groups=3))
    assert routes.counts.tolist() == [1, 3, 3]
    assert routes.groups_of(0).tolist() == [0] and routes.groups_of(1).tolist() == [0, 1, 2]
    assert routes.unexpanded_mass == pytest.approx([0.04, 0.05, 0.25])
    capped = route(PROBS, RoutingConfig(min_groups=2, mass=0.95, max_groups=2))
    assert capped.counts.tolist() == [2, 2, 2]  # min_groups expands the sure row too; max_groups caps the rest
    assert route(PROBS, RoutingConfig.everything(4)).counts.tolist() == [4, 4, 4]
    assert route(PROBS, RoutingConfig.everything(4)).unexpanded_mass == pytest.approx([0, 0, 0])


def test_rows_by_group_batches_each_group_once():
    routes = route(PROBS, RoutingConfig(min_groups=1, mass=0.95, max_groups=3))
    by_group = routes.rows_by_group()
    assert {g: rows.tolist() for g, rows in by_group.items()} == {0: [0, 1, 2], 1: [1, 2], 2: [1, 2]}


def test_routing_config_refuses_nonsense():
    with pytest.raises(ValueError, match="min_groups"):
        RoutingConfig(min_groups=3, max_groups=2)
    with pytest.raises(ValueError, match="mass"):
        RoutingConfig(mass=0.0)


def test_top_k_merges_groups_and_never_invents_candidates():
    top = TopK.empty(2, 3)
    rows = np.array([0, 1])
    top.merge(rows, np.array([[0, 1], [0, 1]]), np.array([[0.5, 0.1], [0.2, 0.3]]), np.array([[0.8, 0.2], [0.4, 0.6]]))
    top.merge(np.array([1]), np.array([[5]]), np.array([[0.25]]), np.array([[1.0]]))
    assert top.species.tolist() == [[0, 1, -1], [1, 5, 0]]  # row 0 saw two candidates: the third slot stays empty
    assert top.joint[1].tolist() == [0.3, 0.25, 0.2] and top.conditional[1].tolist() == [0.6, 1.0, 0.4]


def test_back_off_to_the_group_when_unsure_or_undeployed():
    assert back_off(0.9, "insects", 0.5, deployed=True).level == "species"
    unsure = back_off(1 / 3, "insects", 0.5, deployed=True)
    assert unsure.level == "group" and "0.333 < 0.5" in unsure.reason
    assert "no species model" in back_off(0.9, "insects", 0.5, deployed=False).reason


def classifier(parent: torch.nn.Module, routing: RoutingConfig, calls: list) -> RoutedClassifier:
    children = {"flowers": Fixed([0.8, 0.2]), "insects": Fixed([0.1, 0.2, 0.7]), "fungi": Fixed([0.5, 0.5])}

    def child(group: str) -> torch.nn.Module:
        calls.append(group)
        return children[group]

    return RoutedClassifier(parent, HIERARCHY, child, frozenset(children), routing, keep=8)


def test_only_routed_children_run_each_once_per_batch_and_probabilities_stay_joint():
    parent = Fixed([[0.05, 0.93, 0.01, 0.01], [0.02, 0.60, 0.37, 0.01], [0.96, 0.02, 0.01, 0.01]])
    calls: list[str] = []
    batch = classifier(parent, RoutingConfig(min_groups=1, mass=0.95, max_groups=3), calls).predict(
        torch.zeros(3, 3, 4, 4)
    )
    assert sorted(calls) == ["flowers", "insects"]  # fungi is nobody's route; birds has no network
    assert batch.children_run == {"flowers": 2, "insects": 1}
    species = HIERARCHY.flat_species
    assert [species[s] for s in batch.top.species[1, :2]] == ["rose", "ant"]
    assert batch.top.joint[1, 0] == pytest.approx(0.60 * 0.8) and batch.top.joint[1, 1] == pytest.approx(0.37 * 0.7)
    claimed = batch.top.joint[1][batch.top.species[1] >= 0].sum()
    assert claimed + batch.routes.unexpanded_mass[1] == pytest.approx(1.0, abs=1e-6)  # nothing claimed twice
    assert batch.top.species[2, 0] == 0 and batch.top.conditional[2, 0] == 1.0  # robin: one species, P = 1


def test_routing_everything_is_the_full_hierarchy():
    parent = Fixed([[0.1, 0.4, 0.3, 0.2]])
    batch = classifier(parent, RoutingConfig.everything(4), []).predict(torch.zeros(1, 3, 4, 4))
    full = {"robin": 0.1, "rose": 0.32, "tulip": 0.08, "moth": 0.03, "bee": 0.06, "ant": 0.21, "a": 0.1, "b": 0.1}
    got = {HIERARCHY.flat_species[s]: p for s, p in zip(batch.top.species[0], batch.top.joint[0], strict=True)}
    assert got == pytest.approx(full)


def test_a_multi_species_group_without_child_is_uniform():
    parent = Fixed([[0.0, 0.0, 1.0, 0.0]])
    routed = RoutedClassifier(parent, HIERARCHY, lambda g: pytest.fail(g), frozenset(), RoutingConfig(), keep=3)
    batch = routed.predict(torch.zeros(1, 3, 4, 4))
    assert batch.top.conditional[0].tolist() == pytest.approx([1 / 3] * 3) and batch.children_run == {}
