"""Parent x child: P(species) = P(group) * P(species | group), and how a hierarchy errs.

A group with a single species has no child network: P(species | group) = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earthsnap_assets.ml.evaluate import classification_report, top_k_accuracy


@dataclass(frozen=True)
class Hierarchy:
    """The label spaces: groups in parent order, species per group in child order."""

    groups: list[str]
    species: dict[str, list[str]]

    @property
    def flat_species(self) -> list[str]:
        """Every species, grouped by group: the output order of combined probabilities."""
        return [s for g in self.groups for s in self.species[g]]

    def group_of(self) -> dict[str, str]:
        return {s: g for g in self.groups for s in self.species[g]}


def combine(parent_probs: np.ndarray, child_probs: dict[str, np.ndarray | None], hierarchy: Hierarchy) -> np.ndarray:
    """N x total-species probabilities; a group whose child is None has one species with P = 1."""
    columns = []
    for index, group in enumerate(hierarchy.groups):
        conditional = child_probs.get(group)
        if conditional is None:
            if len(hierarchy.species[group]) != 1:
                raise ValueError(f"group {group!r} has {len(hierarchy.species[group])} species but no child model")
            conditional = np.ones((len(parent_probs), 1))
        columns.append(parent_probs[:, index : index + 1] * conditional)
    return np.concatenate(columns, axis=1)


def hierarchical_report(
    parent_probs: np.ndarray,
    child_probs: dict[str, np.ndarray | None],
    true_species: list[str],
    hierarchy: Hierarchy,
) -> dict:
    """End-to-end accuracy, split into routing errors (wrong group) and within-group errors."""
    species = hierarchy.flat_species
    index = {s: i for i, s in enumerate(species)}
    labels = np.array([index[s] for s in true_species], dtype=np.int64)
    probs = combine(parent_probs, child_probs, hierarchy)
    group_of = hierarchy.group_of()
    predicted = [species[i] for i in probs.argmax(axis=1)]
    routed = [group_of[p] == group_of[t] for p, t in zip(predicted, true_species, strict=True)]
    correct = [p == t for p, t in zip(predicted, true_species, strict=True)]
    n = max(1, len(true_species))
    report = classification_report(probs, labels, species)
    return {
        "n": len(true_species),
        "top1_accuracy": report.accuracy,
        "top5_accuracy": top_k_accuracy(probs, labels, 5),
        "macro_f1": report.macro_f1,
        "routing_errors": sum(1 for r in routed if not r),
        "within_group_errors": sum(1 for r, c in zip(routed, correct, strict=True) if r and not c),
        "routing_error_rate": sum(1 for r in routed if not r) / n,
        "within_group_error_rate": sum(1 for r, c in zip(routed, correct, strict=True) if r and not c) / n,
        "report": report,
    }
