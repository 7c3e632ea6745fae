"""The parent + child models one alias points to, loaded as one immutable bundle.

A bundle is built completely (downloaded, checked, warmed up) before anyone sees it, and never changes
afterwards: swapping deployments is replacing one reference, and a request keeps the bundle it started
with. Versions are resolved once from the alias and then loaded by number, so a bundle is exactly the
versions it reports even if the alias moves while it loads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from earthsnap_assets.ml.hierarchy import Hierarchy, combine
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.serving.config import ServeConfig

log = logging.getLogger(__name__)


class NotDeployable(Exception):
    """The alias points to versions that cannot be served together (missing child, label mismatch...)."""


@dataclass(frozen=True)
class Prediction:
    """One photo's probabilities: P(group), P(species | group) and P(species), species in flat order."""

    group_probs: np.ndarray
    conditional: np.ndarray
    species_probs: np.ndarray
    hierarchy: Hierarchy
    species_groups: tuple[str, ...]  # group of each flat species
    undeployed: frozenset[str] = frozenset()  # groups whose child has no version at this alias yet

    def answer(self, top_k: int, threshold: float) -> dict[str, Any]:
        """The JSON answer: best species, or its group alone when the child is unsure (below threshold)."""
        order = np.argsort(-self.species_probs, kind="stable")
        species = self.hierarchy.flat_species
        best = int(order[0])
        group = self.species_groups[best]
        ranked = [
            {"species": species[i], "group": self.species_groups[i], "probability": float(self.species_probs[i])}
            for i in order[:top_k]
        ]
        body: dict[str, Any] = {"species": species[best], "group": group, "probability": ranked[0]["probability"]}
        body.update(level="species", note=None)
        confidence = float(self.conditional[best])
        if group in self.undeployed:
            body.update(
                species=None,
                level="group",
                probability=float(self.group_probs[self.hierarchy.groups.index(group)]),
                note=f"no species model for {group} is deployed at this alias yet: answering at group level",
            )
        elif confidence < threshold:
            body.update(
                species=None,
                level="group",
                probability=float(self.group_probs[self.hierarchy.groups.index(group)]),
                note=f"unsure of the species within {group}: P(species | group) = {confidence:.3f} < {threshold}",
            )
        body["top_k"] = ranked
        return body


@dataclass(frozen=True)
class LoadedModels:
    """An alias's parent and children, ready to predict; immutable once built."""

    env: str
    alias: str
    versions: Mapping[str, str]  # registered name -> version, parent first
    hierarchy: Hierarchy
    image_size: int
    dataset_version: str
    loaded_at: str
    parent: torch.nn.Module
    children: Mapping[str, torch.nn.Module]  # group -> child; one-species groups have none
    undeployed: frozenset[str] = frozenset()  # multi-species groups without a child at this alias

    def predict(self, batch: torch.Tensor) -> list[Prediction]:
        """N x 3 x S x S inputs -> N predictions, in one forward pass of the parent and of each child."""
        with torch.inference_mode():
            parent = torch.softmax(self.parent(batch), dim=1).numpy()
            child = {g: torch.softmax(m(batch), dim=1).numpy() for g, m in self.children.items()}
        for group in self.undeployed:  # no child yet: spread P(group) evenly over its species
            width = len(self.hierarchy.species[group])
            child[group] = np.full((len(batch), width), 1.0 / width)
        conditional = combine(np.ones_like(parent), child, self.hierarchy)
        joint = combine(parent, child, self.hierarchy)
        groups = self.species_groups
        return [
            Prediction(parent[i], conditional[i], joint[i], self.hierarchy, groups, self.undeployed)
            for i in range(len(batch))
        ]

    @cached_property
    def species_groups(self) -> tuple[str, ...]:
        """The group of each species, in flat (output) order."""
        group_of = self.hierarchy.group_of()
        return tuple(group_of[s] for s in self.hierarchy.flat_species)

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
        }


@dataclass(frozen=True)
class Resolved:
    """What an alias points to right now: versions and their tags, nothing downloaded yet."""

    versions: Mapping[str, str]
    tags: Mapping[str, Mapping[str, str]]  # registered name -> version tags
    groups: Mapping[str, str | None]  # group -> child registered name, None for a one-species group
    undeployed: frozenset[str] = frozenset()  # groups whose child has no version at the alias yet


def resolve(client: Any, config: ServeConfig, alias: str) -> Resolved | None:
    """The versions behind `alias` (a few cheap registry calls), or None when the parent has no such alias."""
    from mlflow.exceptions import MlflowException

    def by_alias(name: str) -> Any:
        try:
            return client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:  # a missing model or alias is an answer; a server problem is not
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    parent = by_alias(config.parent_name)
    if parent is None:
        return None
    try:
        group_species = json.loads(parent.tags["group_species"])
        parent_groups = parent.tags["classes"].split(",")
    except (KeyError, ValueError) as exc:
        raise NotDeployable(f"{config.parent_name} v{parent.version} lacks a valid tag: {exc!r}") from exc
    versions, tags = {parent.name: str(parent.version)}, {parent.name: dict(parent.tags)}
    groups: dict[str, str | None] = {}
    undeployed: set[str] = set()
    for group in parent_groups:
        if len(group_species.get(group, [])) == 1:
            groups[group] = None
            continue
        child = by_alias(config.child_name(group))
        if child is None:  # serve the group level until its child is deployed
            groups[group] = None
            undeployed.add(group)
            continue
        versions[child.name], tags[child.name] = str(child.version), dict(child.tags)
        groups[group] = child.name
    return Resolved(MappingProxyType(versions), MappingProxyType(tags), MappingProxyType(groups), frozenset(undeployed))


def _hierarchy(resolved: Resolved, parent_tags: Mapping[str, str]) -> Hierarchy:
    """Groups in parent output order, species in each child's output order; checks they agree."""
    group_species = json.loads(parent_tags["group_species"])
    species: dict[str, list[str]] = {}
    for group, child in resolved.groups.items():
        expected = list(group_species.get(group, []))
        species[group] = expected if child is None else resolved.tags[child]["classes"].split(",")
        if sorted(species[group]) != sorted(expected):
            raise NotDeployable(f"{child} classes {species[group]} != parent's species of {group!r}: {expected}")
    return Hierarchy(groups=list(resolved.groups), species=species)


def load(registry: MlflowRegistry, resolved: Resolved, env: str, alias: str) -> LoadedModels:
    """Download every version by number, check output sizes and image sizes, warm up: a bundle ready to serve."""
    parent_name = next(iter(resolved.versions))
    parent_tags = resolved.tags[parent_name]
    hierarchy = _hierarchy(resolved, parent_tags)
    image_size = int(parent_tags["image_size"])
    for name, tags in resolved.tags.items():
        if int(tags.get("image_size", image_size)) != image_size:
            raise NotDeployable(f"{name} v{resolved.versions[name]} expects {tags['image_size']} px, not {image_size}")
        if tags.get("dataset_version") != parent_tags.get("dataset_version"):
            log.warning("%s v%s was trained on another dataset version than the parent", name, resolved.versions[name])
    models = {name: registry.load_model(f"models:/{name}/{version}") for name, version in resolved.versions.items()}
    probe = torch.zeros(2, 3, image_size, image_size)
    sizes = {parent_name: len(hierarchy.groups)}
    sizes.update({child: len(hierarchy.species[g]) for g, child in resolved.groups.items() if child})
    with torch.inference_mode():
        for name, model in models.items():
            width, expected = model(probe).shape[-1], sizes[name]
            if width != expected:
                raise NotDeployable(f"{name} v{resolved.versions[name]} outputs {width} classes, expected {expected}")
    return LoadedModels(
        env=env,
        alias=alias,
        versions=resolved.versions,
        hierarchy=hierarchy,
        image_size=image_size,
        dataset_version=parent_tags.get("dataset_version", ""),
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        parent=models[parent_name],
        children=MappingProxyType({g: models[child] for g, child in resolved.groups.items() if child}),
        undeployed=resolved.undeployed,
    )
