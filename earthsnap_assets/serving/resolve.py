"""What an alias points to, read with a constant number of registry calls per poll, whatever the number of groups.

A poll is one paged search of the registered models under the prefix (their aliases come with them).
Version tags and the parent's group -> species mapping are read only for versions not seen before: both
are fixed once a version is registered (approval tags change, the ones read here do not).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType

from earthsnap_assets.ml.hierarchy import Hierarchy
from earthsnap_assets.registry import names, release
from earthsnap_assets.registry.client import MappingMismatch, RegistryVerbs
from earthsnap_assets.serving.config import ServeConfig

log = logging.getLogger(__name__)


class NotDeployable(Exception):
    """The alias points to versions that cannot be served together (missing tag, label mismatch...)."""


class NotReleased(NotDeployable):
    """The alias points to a version the deploy job did not release there (see `registry/release.py`)."""


@dataclass(frozen=True)
class Resolved:
    """The versions behind an alias and what they predict; nothing downloaded but tags and the mapping."""

    versions: Mapping[str, str]  # registered name -> version: the parent first, then deployed children
    tags: Mapping[str, Mapping[str, str]]  # registered name -> its version's tags
    hierarchy: Hierarchy  # parent's groups; species in each deployed child's output order
    children: Mapping[str, str]  # group -> registered child name, for groups whose child is at the alias
    undeployed: frozenset[str]  # multi-species groups without a child at the alias: answered at group level

    @property
    def parent_name(self) -> str:
        return next(iter(self.versions))


class RegistryReader:
    """Resolves aliases for one endpoint; remembers tags and mappings of versions it has read."""

    def __init__(self, registry: RegistryVerbs, config: ServeConfig, fetch_threads: int = 8) -> None:
        self.registry = registry
        self.config = config
        self.fetch_threads = fetch_threads
        self._tags: dict[tuple[str, str], dict[str, str]] = {}
        self._mappings: dict[str, dict[str, list[str]]] = {}  # by sha256 (or version, for legacy tags)
        self._lock = threading.Lock()

    def tags(self, name: str, version: str) -> dict[str, str]:
        """A version's tags, read once."""
        key = (name, version)
        with self._lock:
            known = self._tags.get(key)
        if known is None:
            known = self.registry.version_tags(name, version)
            with self._lock:
                self._tags[key] = known
        return known

    def verify(self, alias: str, versions: Mapping[str, str], trusted: Mapping[str, str]) -> None:
        """Raise `NotReleased` unless every version behind `alias` carries the tags of a release there.

        Versions in `trusted` (the bundle serving now, checked when it was loaded) are not read again; the
        others are read afresh: a version refused a minute ago may have been released since.
        """
        new = [(name, version) for name, version in versions.items() if trusted.get(name) != version]
        if not new:
            return
        with ThreadPoolExecutor(min(self.fetch_threads, len(new))) as pool:
            fresh = dict(zip(new, pool.map(lambda key: self.registry.version_tags(*key), new), strict=True))
        with self._lock:
            self._tags.update(fresh)
        signing = self.config.release_key
        refused = {key: why for key, tags in fresh.items() if (why := release.refusal(alias, tags, *key, key=signing))}
        if refused:
            shown = "; ".join(f"{name} v{version}: {why}" for (name, version), why in list(refused.items())[:3])
            more = f" (and {len(refused) - 3} more)" if len(refused) > 3 else ""
            raise NotReleased(f"alias {alias!r} points at versions the deploy job did not release: {shown}{more}")

    def versions(self, alias: str) -> dict[str, str] | None:
        """{registered name: version} behind `alias`, the parent first; None when the parent has no such alias.

        One search call per poll: the parent's tags and mapping are read only when its version is new.
        """
        config = self.config
        aliases = self.registry.aliases(config.model_prefix)
        parent = aliases.get(config.parent_name, {}).get(alias)
        if parent is None:
            return None
        parent_tags = self.tags(config.parent_name, parent)
        mapping = self._mapping(config.parent_name, parent, parent_tags)
        versions = {config.parent_name: parent}
        for group in _classes(config.parent_name, parent, parent_tags):
            name = config.child_name(group)
            version = aliases.get(name, {}).get(alias)
            if version is not None and len(mapping.get(group, [])) != 1:  # one species: no network
                versions[name] = version
        return versions

    def resolve(self, versions: Mapping[str, str]) -> Resolved:
        """What `versions` (from `versions()`) predict, checked to fit together: a child's classes must be the
        parent's species of its group, and every model must expect the parent's image size."""
        config = self.config
        parent, parent_version = next(iter(versions.items()))
        parent_tags = self.tags(parent, parent_version)
        groups = _classes(parent, parent_version, parent_tags)
        mapping = self._mapping(parent, parent_version, parent_tags)
        self._fetch_tags([(name, version) for name, version in versions.items() if name != parent])
        tags = {name: self.tags(name, version) for name, version in versions.items()}
        children = {g: config.child_name(g) for g in groups if config.child_name(g) in versions}
        undeployed = {g for g in groups if g not in children and len(mapping.get(g, [])) != 1}
        hierarchy = _hierarchy(groups, mapping, children, versions, tags)
        _check_image_sizes(versions, tags)
        return Resolved(
            MappingProxyType(dict(versions)),
            MappingProxyType(tags),
            hierarchy,
            MappingProxyType(children),
            frozenset(undeployed),
        )

    def _fetch_tags(self, keys: list[tuple[str, str]]) -> None:
        """Read the tags of versions not seen yet, a few at a time (a fresh endpoint at G = 500 reads 500)."""
        with self._lock:
            missing = [key for key in keys if key not in self._tags]
        if not missing:
            return
        with ThreadPoolExecutor(min(self.fetch_threads, len(missing))) as pool:
            list(pool.map(lambda key: self.tags(*key), missing))

    def _mapping(self, name: str, version: str, tags: Mapping[str, str]) -> dict[str, list[str]]:
        key = tags.get(names.GROUP_SPECIES_SHA256) or f"{name}@{version}"
        with self._lock:
            known = self._mappings.get(key)
        if known is None:
            try:
                known = self.registry.group_species(tags)
            except MappingMismatch as exc:
                raise NotDeployable(f"{name} v{version}: {exc}") from exc
            with self._lock:
                self._mappings[key] = known
        return known


def _classes(name: str, version: str, tags: Mapping[str, str]) -> list[str]:
    try:
        return tags[names.CLASSES].split(",")
    except KeyError as exc:
        raise NotDeployable(f"{name} v{version} lacks the {names.CLASSES!r} tag") from exc


def _hierarchy(
    groups: list[str],
    mapping: Mapping[str, list[str]],
    children: Mapping[str, str],
    versions: Mapping[str, str],
    tags: Mapping[str, Mapping[str, str]],
) -> Hierarchy:
    """Groups in parent output order, species in each child's output order; checks they agree with the mapping."""
    missing = [g for g in groups if g not in mapping]
    if missing:
        raise NotDeployable(f"the parent's groups {missing} are not in its group -> species mapping")
    species: dict[str, list[str]] = {}
    for group in groups:
        expected = list(mapping[group])
        child = children.get(group)
        species[group] = expected if child is None else _classes(child, versions[child], tags[child])
        if sorted(species[group]) != sorted(expected):
            raise NotDeployable(f"{child} classes {species[group]} != parent's species of {group!r}: {expected}")
    return Hierarchy(groups=groups, species=species)


def _check_image_sizes(versions: Mapping[str, str], tags: Mapping[str, Mapping[str, str]]) -> None:
    parent = next(iter(versions))
    try:
        image_size = int(tags[parent][names.IMAGE_SIZE])
    except (KeyError, ValueError) as exc:
        raise NotDeployable(f"{parent} v{versions[parent]} lacks a valid {names.IMAGE_SIZE!r} tag") from exc
    for name, version in versions.items():
        if int(tags[name].get(names.IMAGE_SIZE, image_size)) != image_size:
            raise NotDeployable(f"{name} v{version} expects {tags[name][names.IMAGE_SIZE]} px, not {image_size}")
        if tags[name].get(names.DATASET_VERSION) != tags[parent].get(names.DATASET_VERSION):
            log.warning("%s v%s was trained on another dataset version than the parent", name, version)
