"""The models one alias points to, as one immutable bundle: the parent loaded, children fetched when routed to.

A bundle is built (parent downloaded, checked, warmed up; every version's tags checked) before anyone
sees it, and never changes afterwards: swapping deployments is replacing one reference, and a request
keeps the bundle it started with. Children live in a cache shared by successive bundles and keyed by
(registered name, version), so a bundle can only ever run the child versions it reports, and a child whose
version did not move stays loaded across an alias move of another model.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from earthsnap_assets.ml.hierarchy import Hierarchy
from earthsnap_assets.ml.model_cache import ModelCache
from earthsnap_assets.ml.routed import RoutedBatch, RoutedClassifier
from earthsnap_assets.ml.routing import Routes, back_off
from earthsnap_assets.registry import names
from earthsnap_assets.registry.client import RegistryVerbs
from earthsnap_assets.serving.config import ServeConfig
from earthsnap_assets.serving.resolve import NotDeployable, Resolved

log = logging.getLogger(__name__)

ChildKey = tuple[str, str]  # (registered name, version)


@dataclass
class RoutingStats:
    """What routing cost so far: photos, children run, and which groups photos were routed to."""

    photos: int = 0
    groups_expanded: int = 0
    child_forward_passes: int = 0
    child_items: int = 0
    unexpanded_mass_sum: float = 0.0
    requests_by_group: Counter = field(default_factory=Counter)  # group -> photos that expanded it
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, batch: RoutedBatch, groups: list[str]) -> None:
        """Count one routed batch (the batcher's worker thread; the deployment thread reads the counter)."""
        with self.lock:
            self._record(batch, groups)

    def _record(self, batch: RoutedBatch, groups: list[str]) -> None:
        routes = batch.routes
        self.photos += len(batch)
        self.groups_expanded += int(routes.counts.sum())
        self.unexpanded_mass_sum += float(routes.unexpanded_mass.sum())
        self.child_forward_passes += len(batch.children_run)
        self.child_items += sum(batch.children_run.values())
        for group, rows in routes.rows_by_group().items():
            self.requests_by_group[groups[group]] += len(rows)

    def most_requested(self, n: int) -> list[str]:
        with self.lock:
            return [group for group, _ in self.requests_by_group.most_common(n)]

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return self._as_dict()

    def _as_dict(self) -> dict[str, Any]:
        photos = max(1, self.photos)
        return {
            "photos": self.photos,
            "groups_expanded": self.groups_expanded,
            "mean_groups_expanded": round(self.groups_expanded / photos, 4),
            "mean_unexpanded_mass": round(self.unexpanded_mass_sum / photos, 6),
            "child_forward_passes": self.child_forward_passes,
            "child_items": self.child_items,
            "most_requested_groups": dict(self.requests_by_group.most_common(10)),
        }


@dataclass(frozen=True)
class Prediction:
    """One photo's routed prediction, with the bundle that made it (labels, versions)."""

    bundle: LoadedModels
    batch: RoutedBatch
    row: int

    def answer(self, top_k: int, threshold: float) -> dict[str, Any]:
        """The JSON answer: best species, or its group alone when the child is unsure or not deployed.

        Probabilities are joint, P(group) x P(species | group), over the groups this photo expanded;
        `unexpanded_mass` is the parent's probability of every other group, which no species claims.
        """
        hierarchy, top, i = self.bundle.hierarchy, self.batch.top, self.row
        parent_probs, flat = self.batch.parent_probs[i], hierarchy.flat_species

        def group_of(species: int) -> int:
            return int(hierarchy.species_group[species])

        ranked = [
            {"species": flat[s], "group": hierarchy.groups[group_of(s)], "probability": float(p)}
            for s, p in zip(top.species[i], top.joint[i], strict=True)
            if s >= 0
        ][:top_k]
        best = int(top.species[i, 0])
        group = hierarchy.groups[group_of(best)]
        deployed = hierarchy.width(group_of(best)) == 1 or group in self.bundle.children
        decision = back_off(float(top.conditional[i, 0]), group, threshold, deployed)
        at_group_level = decision.level == "group"
        return {
            "species": None if at_group_level else flat[best],
            "group": group,
            "probability": float(parent_probs[group_of(best)]) if at_group_level else ranked[0]["probability"],
            "level": decision.level,
            "note": decision.reason,
            "top_k": ranked,
            "groups_evaluated": [
                {"group": hierarchy.groups[g], "probability": float(parent_probs[g])}
                for g in self.batch.routes.groups_of(i)
            ],
            "unexpanded_mass": float(self.batch.routes.unexpanded_mass[i]),
        }

    def versions(self) -> dict[str, str]:
        """The versions that computed this answer: the parent and the children of the groups it expanded."""
        bundle = self.bundle
        used = {bundle.parent_name: bundle.versions[bundle.parent_name]}
        for g in self.batch.routes.groups_of(self.row):
            child = bundle.children.get(bundle.hierarchy.groups[g])
            if child is not None:
                used[child] = bundle.versions[child]
        return used


@dataclass(frozen=True)
class LoadedModels:
    """An alias's parent (loaded) and children (loaded on demand), ready to predict; immutable once built."""

    env: str
    alias: str
    versions: Mapping[str, str]  # registered name -> version, parent first, then the deployed children
    hierarchy: Hierarchy
    image_size: int
    dataset_version: str
    loaded_at: str
    classifier: RoutedClassifier
    children: Mapping[str, str]  # group -> registered child name, for groups whose child is at the alias
    undeployed: frozenset[str]  # multi-species groups without a child at this alias
    stats: RoutingStats
    cache: ModelCache[ChildKey]
    loader: Executor  # where photos that wait for a cold child are finished

    @property
    def parent_name(self) -> str:
        return next(iter(self.versions))

    def child_key(self, group: str) -> ChildKey:
        name = self.children[group]
        return name, self.versions[name]

    def predict(self, batch: torch.Tensor) -> list[Prediction | Future]:
        """N x 3 x S x S inputs -> N predictions: one parent pass, then one pass per routed child.

        A photo routed to a child that is not loaded yet does not hold up the others: its answer is a
        Future, finished on the loader pool once the child is loaded (once, however many photos wait for it).
        """
        parent_probs, routes = self.classifier.route(batch)
        waiting = self._waiting(routes)
        answers: list[Prediction | Future] = [None] * len(batch)  # type: ignore[list-item]
        ready = np.flatnonzero(~waiting)
        if len(ready):
            for row, prediction in zip(ready, self._finish(batch, parent_probs, routes, ready), strict=True):
                answers[row] = prediction
        later = np.flatnonzero(waiting)
        if len(later):  # on the loader pool: each cold child loads when its group's turn comes, once
            futures = [Future() for _ in later]
            self.loader.submit(self._finish_later, batch, parent_probs, routes, later, futures)
            for row, future in zip(later, futures, strict=True):
                answers[row] = future
        return answers

    def describe(self) -> dict[str, Any]:
        """What `/models` shows."""
        return {
            "env": self.env,
            "alias": self.alias,
            "versions": dict(self.versions),
            "dataset_version": self.dataset_version,
            "classes": {"groups": list(self.hierarchy.groups), "species": dict(self.hierarchy.species)},
            "image_size": self.image_size,
            "loaded_at": self.loaded_at,
            "groups_without_species_model": sorted(self.undeployed),
            "routing": self.classifier.routing.as_dict(),
        }

    def _waiting(self, routes: Routes) -> np.ndarray:
        """Which photos are routed to a child that is not in memory."""
        groups = self.hierarchy.groups
        deployed = [g for g in routes.rows_by_group() if groups[g] in self.children]
        cold = [g for g in deployed if self.child_key(groups[g]) not in self.cache]
        expanded = np.arange(routes.order.shape[1])[None, :] < routes.counts[:, None]
        return (np.isin(routes.order, cold) & expanded).any(axis=1)

    def _finish(self, batch: torch.Tensor, parent_probs: np.ndarray, routes: Routes, rows: np.ndarray) -> list:
        rows_t = torch.from_numpy(rows)
        routed = self.classifier.finish(batch[rows_t], parent_probs[rows], routes.take(rows))
        self.stats.record(routed, self.hierarchy.groups)
        return [Prediction(self, routed, i) for i in range(len(rows))]

    def _finish_later(
        self, batch: torch.Tensor, parent_probs: np.ndarray, routes: Routes, rows: np.ndarray, futures: list[Future]
    ) -> None:
        try:
            predictions = self._finish(batch, parent_probs, routes, rows)
        except BaseException as exc:
            log.exception("%d photos waiting for a child failed", len(rows))
            for future in futures:
                future.set_exception(exc)
            return
        for future, prediction in zip(futures, predictions, strict=True):
            future.set_result(prediction)


def load_network(registry: RegistryVerbs, name: str, version: str, image_size: int) -> torch.nn.Module:
    """Download a version by number and warm it up (first calls allocate)."""
    model = registry.load_model(f"models:/{name}/{version}")
    with torch.inference_mode():
        model(torch.zeros(1, 3, image_size, image_size))
    return model


def load(
    registry: RegistryVerbs,
    resolved: Resolved,
    env: str,
    alias: str,
    cache: ModelCache[ChildKey],
    config: ServeConfig,
    stats: RoutingStats,
    loader: Executor,
    previous: LoadedModels | None = None,
) -> LoadedModels:
    """A bundle ready to serve: the parent downloaded (or kept, when its version did not move) and checked.

    Children are not downloaded here: the bundle looks them up in `cache` by (name, version) when a photo
    is routed to them.
    """
    parent_name = resolved.parent_name
    parent_version = resolved.versions[parent_name]
    parent_tags = resolved.tags[parent_name]
    image_size = int(parent_tags[names.IMAGE_SIZE])
    same_parent = previous is not None and previous.versions.get(parent_name) == parent_version
    if same_parent and previous.image_size == image_size:
        parent = previous.classifier.parent
    else:
        parent = load_network(registry, parent_name, parent_version, image_size)
    with torch.inference_mode():
        width = parent(torch.zeros(2, 3, image_size, image_size)).shape[-1]
    if width != len(resolved.hierarchy.groups):
        raise NotDeployable(
            f"{parent_name} v{parent_version} outputs {width} groups, its tags list {len(resolved.hierarchy.groups)}"
        )
    versions = resolved.versions

    def child(group: str) -> torch.nn.Module:
        name = resolved.children[group]
        return cache.get((name, versions[name]))

    classifier = RoutedClassifier(
        parent=parent,
        hierarchy=resolved.hierarchy,
        child=child,
        deployed=frozenset(resolved.children),
        routing=config.routing,
        keep=config.max_top_k,
    )
    return LoadedModels(
        env=env,
        alias=alias,
        versions=versions,
        hierarchy=resolved.hierarchy,
        image_size=image_size,
        dataset_version=parent_tags.get(names.DATASET_VERSION, ""),
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        classifier=classifier,
        children=resolved.children,
        undeployed=resolved.undeployed,
        stats=stats,
        cache=cache,
        loader=loader,
    )
