"""The label spaces of the hierarchy: groups in parent output order, species per group in child output order.

P(species) = P(group) x P(species | group); a group with a single species has no child network and
P(species | group) = 1. Species are numbered in "flat" order (group by group), the index every routed
prediction and every evaluation count uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Hierarchy:
    """The label spaces: groups in parent order, species per group in child order."""

    groups: list[str]
    species: dict[str, list[str]]

    @classmethod
    def from_mapping(cls, groups: Sequence[str], mapping: Mapping[str, Sequence[str]]) -> Hierarchy:
        """Groups in `groups` order (the parent's outputs), species as the mapping lists them."""
        missing = [g for g in groups if g not in mapping]
        if missing:
            raise ValueError(f"groups {missing} are not in the group -> species mapping")
        return cls(groups=list(groups), species={g: list(mapping[g]) for g in groups})

    @property
    def flat_species(self) -> list[str]:
        """Every species, grouped by group: the order of flat species indices."""
        return [s for g in self.groups for s in self.species[g]]

    def group_of(self) -> dict[str, str]:
        return {s: g for g in self.groups for s in self.species[g]}

    @cached_property
    def offsets(self) -> np.ndarray:
        """Flat index of each group's first species; offsets[G] is the number of species."""
        return np.concatenate([[0], np.cumsum([len(self.species[g]) for g in self.groups])]).astype(np.int64)

    @cached_property
    def species_group(self) -> np.ndarray:
        """Group index of each flat species index."""
        return np.repeat(np.arange(len(self.groups)), np.diff(self.offsets))

    @cached_property
    def species_index(self) -> dict[str, int]:
        """Species name -> flat index."""
        return {s: i for i, s in enumerate(self.flat_species)}

    def width(self, group: int) -> int:
        """Number of species of group `group` (an index)."""
        return int(self.offsets[group + 1] - self.offsets[group])
