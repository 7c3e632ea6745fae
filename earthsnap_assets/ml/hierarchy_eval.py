"""Streamed evaluation of the routed hierarchy: batches in, counts out, never a photos x species matrix.

Every batch goes through `RoutedClassifier.predict`, the code path the endpoint answers with, and only
each photo's top-k is kept: a sparse species confusion, top-k hits, calibration bins, routing vs
within-group errors. Memory follows the batch size, the number of distinct confusions and a bounded
sample of photos, not the test split's size times the number of species.

What routing costs is measured on that sample (a seeded reservoir, so it is uniform over the split):
every child runs on every sampled photo once, which gives the full, unrouted top-1 and, from the same
numbers, the top-1 any routing setting would get (the best species of a set of groups is the best of each
group's best: max over g of P(g) x max_s P(s | g)).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from earthsnap_assets.ml.evaluate import StreamingClassification, confusion_matrix_png, top_confusions_png, top_of
from earthsnap_assets.ml.hierarchy import Hierarchy
from earthsnap_assets.ml.memory import release_freed_memory
from earthsnap_assets.ml.routed import RoutedBatch, RoutedClassifier, softmax_probs
from earthsnap_assets.ml.routing import RoutingConfig, route
from earthsnap_assets.ml.transforms import to_model_input

log = logging.getLogger(__name__)

Batch = tuple[np.ndarray, Sequence[str]]  # uint8 N x S x S x 3 pixels, the true species of each photo
SWEEP_MASSES = (0.5, 0.8, 0.9, 0.95, 0.99)


@dataclass
class HierarchyCounts:
    """Routing vs within-group errors and what routing cost, accumulated batch by batch."""

    n: int = 0
    routing_errors: int = 0  # the top species is in another group than the true one
    within_group_errors: int = 0  # right group, wrong species
    true_group_not_expanded: int = 0  # the true group's child never ran: routing alone lost the photo
    group_level_answers: int = 0  # answers that back off to the group (child unsure)
    groups_expanded: int = 0
    unexpanded_mass: float = 0.0

    def update(self, batch: RoutedBatch, labels: np.ndarray, hierarchy: Hierarchy, threshold: float) -> None:
        predicted = batch.top.species[:, 0]
        true_group, predicted_group = hierarchy.species_group[labels], hierarchy.species_group[predicted]
        routed = true_group == predicted_group
        expanded = np.arange(batch.routes.order.shape[1])[None, :] < batch.routes.counts[:, None]
        self.n += len(labels)
        self.routing_errors += int((~routed).sum())
        self.within_group_errors += int((routed & (predicted != labels)).sum())
        self.true_group_not_expanded += int(
            (~np.any((batch.routes.order == true_group[:, None]) & expanded, axis=1)).sum()
        )
        self.group_level_answers += int((batch.top.conditional[:, 0] < threshold).sum())
        self.groups_expanded += int(batch.routes.counts.sum())
        self.unexpanded_mass += float(batch.routes.unexpanded_mass.sum())

    def as_dict(self) -> dict[str, float]:
        n = max(1, self.n)
        return {
            "routing_errors": self.routing_errors,
            "within_group_errors": self.within_group_errors,
            "routing_error_rate": self.routing_errors / n,
            "within_group_error_rate": self.within_group_errors / n,
            "true_group_not_expanded": self.true_group_not_expanded,
            "group_level_answer_rate": self.group_level_answers / n,
            "mean_groups_expanded": self.groups_expanded / n,
            "mean_unexpanded_mass": self.unexpanded_mass / n,
        }


class Reservoir:
    """A uniform, seeded sample of at most `size` photos of a stream (Algorithm R), for the full comparison."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.pixels: np.ndarray | None = None
        self.labels = np.zeros(size, np.int64)
        self.seen = 0

    def offer(self, pixels: np.ndarray, labels: np.ndarray) -> None:
        if self.size <= 0:
            return
        if self.pixels is None:
            self.pixels = np.zeros((self.size, *pixels.shape[1:]), pixels.dtype)
        for row in range(len(labels)):
            slot = self.seen if self.seen < self.size else int(self.rng.integers(self.seen + 1))
            if slot < self.size:
                self.pixels[slot], self.labels[slot] = pixels[row], labels[row]
            self.seen += 1

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        count = min(self.seen, self.size)
        if self.pixels is None:
            return np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.int64)
        return self.pixels[:count], self.labels[:count]


def routing_cost(
    classifier: RoutedClassifier, pixels: np.ndarray, labels: np.ndarray, sweep: Sequence[RoutingConfig]
) -> dict[str, Any]:
    """Full (every child) vs routed top-1 on the same photos, for the classifier's routing and a sweep.

    Each child runs once, on all sampled photos, `classifier.chunk` at a time; what is kept is each
    group's best species and its P(species | group) per photo: photos x groups numbers.
    """
    hierarchy = classifier.hierarchy
    n, groups = len(labels), len(hierarchy.groups)
    if not n:
        return {"images": 0}
    chunks = [slice(i, i + classifier.chunk) for i in range(0, n, classifier.chunk)]  # float inputs per chunk only
    parent = np.concatenate([classifier.probabilities(classifier.parent, to_model_input(pixels[c])) for c in chunks])
    best_conditional = np.zeros((n, groups))
    best_species = np.zeros((n, groups), np.int64)
    for group in range(groups):  # group-major: each child is fetched once
        conditional = np.concatenate([classifier.conditional(group, to_model_input(pixels[c])) for c in chunks])
        best_species[:, group] = hierarchy.offsets[group] + conditional.argmax(axis=1)
        best_conditional[:, group] = conditional.max(axis=1)
        release_freed_memory()
    best_joint = parent * best_conditional

    def top1(config: RoutingConfig) -> tuple[float, float]:
        routes = route(parent, config)
        expanded = np.zeros((n, groups), bool)
        mask = np.arange(routes.order.shape[1])[None, :] < routes.counts[:, None]
        np.put_along_axis(expanded, routes.order, mask, axis=1)
        choice = np.where(expanded, best_joint, -1.0).argmax(axis=1)
        predicted = best_species[np.arange(n), choice]
        return float(np.mean(predicted == labels)), float(routes.counts.mean())

    full, _ = top1(RoutingConfig.everything(groups))
    routed, mean_groups = top1(classifier.routing)
    return {
        "images": n,
        "routing": classifier.routing.as_dict(),
        "full_top1_accuracy": full,
        "routed_top1_accuracy": routed,
        "routed_minus_full_points": round(100.0 * (routed - full), 3),
        "mean_groups_expanded": mean_groups,
        "sweep": [
            {**config.as_dict(), "top1_accuracy": accuracy, "mean_groups_expanded": groups_}
            for config in sweep
            for accuracy, groups_ in [top1(config)]
        ],
    }


def sweep_for(routing: RoutingConfig, groups: int) -> list[RoutingConfig]:
    """Mass settings around the configured routing, at its cap and uncapped."""
    caps = sorted({min(routing.max_groups, groups), groups})
    return [RoutingConfig(1, mass, cap) for cap in caps for mass in SWEEP_MASSES]


@dataclass
class StreamedEvaluation:
    """What one pass over the test batches gives (the flat baseline's report when a flat model was given)."""

    species: StreamingClassification
    counts: HierarchyCounts
    flat: StreamingClassification | None
    routing_cost: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def evaluate_streamed(
    batches: Iterable[Batch],
    classifier: RoutedClassifier,
    flat: tuple[torch.nn.Module, Sequence[str]] | None = None,
    threshold: float = 0.5,
    sample_size: int = 2000,
    seed: int = 0,
) -> StreamedEvaluation:
    """One pass over `batches`: the routed hierarchy (and the flat baseline) scored; then routing's cost."""
    hierarchy = classifier.hierarchy
    species = StreamingClassification(hierarchy.flat_species)
    counts = HierarchyCounts()
    flat_report = StreamingClassification(list(flat[1])) if flat else None
    flat_index = {s: i for i, s in enumerate(flat[1])} if flat else {}
    reservoir = Reservoir(sample_size, seed)
    seconds = {"hierarchical": 0.0, "flat": 0.0}
    for pixels, true_species in batches:
        labels = np.asarray([hierarchy.species_index[s] for s in true_species], np.int64)
        x = to_model_input(pixels)
        started = time.perf_counter()
        routed = classifier.predict(x)
        seconds["hierarchical"] += time.perf_counter() - started
        species.update(labels, routed.top.species, routed.top.joint)
        counts.update(routed, labels, hierarchy, threshold)
        if flat is not None and flat_report is not None:
            started = time.perf_counter()
            probs = softmax_probs(flat[0], x, classifier.device, classifier.chunk)
            seconds["flat"] += time.perf_counter() - started
            top_labels, top_probs = top_of(probs, 5)
            flat_report.update(np.asarray([flat_index[s] for s in true_species]), top_labels, top_probs)
        reservoir.offer(pixels, labels)
        release_freed_memory()
    started = time.perf_counter()
    cost = routing_cost(classifier, *reservoir.sample(), sweep_for(classifier.routing, len(hierarchy.groups)))
    seconds["routing_cost"] = time.perf_counter() - started
    return StreamedEvaluation(species, counts, flat_report, cost, seconds)


def hierarchy_plots(result: StreamedEvaluation, hierarchy: Hierarchy, max_groups: int = 12) -> dict[str, bytes]:
    """Plots that stay readable at any size: routing (group x group) confusion, the most frequent species
    confusions, and within-group confusions of the `max_groups` groups with the most errors."""
    confusion = result.species.confusion
    groups = hierarchy.groups
    plots = {
        "plots/routing_confusion.png": confusion_matrix_png(
            confusion.mapped(hierarchy.species_group, len(groups)), groups, "routing: true group vs predicted group"
        ),
        "plots/top_confusions.png": top_confusions_png(
            [(hierarchy.flat_species[t], hierarchy.flat_species[p], c) for t, p, c in confusion.top_errors(20)],
            "species",
        ),
    }
    true, predicted, count = confusion.pairs()
    within = (hierarchy.species_group[true] == hierarchy.species_group[predicted]) & (true != predicted)
    errors = np.bincount(hierarchy.species_group[true[within]], weights=count[within], minlength=len(groups))
    for g in [int(g) for g in np.argsort(-errors, kind="stable")[:max_groups] if errors[g] > 0]:
        members = np.arange(hierarchy.offsets[g], hierarchy.offsets[g + 1])
        plots[f"plots/groups/{groups[g]}.png"] = confusion_matrix_png(
            confusion.submatrix(members), hierarchy.species[groups[g]], f"within {groups[g]}"
        )
    return plots
