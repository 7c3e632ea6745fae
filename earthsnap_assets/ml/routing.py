"""Which children a photo needs, and what its answer may honestly claim: the routing serving and evaluation share.

The parent runs on every photo. A photo then expands its most probable groups: at least `min_groups`,
more until their cumulative P(group) reaches `mass`, never more than `max_groups` (a confused parent must
not cost a request every child). Only expanded groups' children run. Species probabilities are joint,
P(group) x P(species | group), over the expanded groups only; what the parent gave to the other groups is
reported as `unexpanded_mass`, never spread over species nobody looked at.

Pure numpy: `ml/routed.py` runs the networks, `serving/` and `pipeline/evaluation.py` both go through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Defaults chosen by measurement (`routing_cost` of `hierarchical_evaluation`, `make demo`: 144 test photos,
# 4 groups, a parent that routes 85% of photos right): routed top-1 equals full top-1 (0.444) from mass 0.8
# up and loses 1.4 points at 0.5; photos expand 1.74 / 2.23 / 2.74 / 3.65 groups at 0.8 / 0.9 / 0.95 / 0.99.
# 0.9 keeps a margin above the lowest lossless mass for a fifth fewer children than 0.95. The cap bounds
# what a confused parent costs at hundreds of groups to the parent plus 4 children (bench/serve.py `scale`).
DEFAULT_MIN_GROUPS = 1
DEFAULT_MASS = 0.9
DEFAULT_MAX_GROUPS = 4


@dataclass(frozen=True)
class RoutingConfig:
    """How many groups a photo expands: `min_groups` <= n <= `max_groups`, else until `mass` is reached."""

    min_groups: int = DEFAULT_MIN_GROUPS
    mass: float = DEFAULT_MASS
    max_groups: int = DEFAULT_MAX_GROUPS

    def __post_init__(self) -> None:
        if not 1 <= self.min_groups <= self.max_groups:
            raise ValueError(f"need 1 <= min_groups <= max_groups, got {self.min_groups} and {self.max_groups}")
        if not 0.0 < self.mass <= 1.0:
            raise ValueError(f"mass must be within (0, 1], got {self.mass}")

    @classmethod
    def everything(cls, groups: int) -> RoutingConfig:
        """Expand every group: the full, unrouted hierarchy (what routing is compared against)."""
        return cls(min_groups=groups, mass=1.0, max_groups=groups)

    def as_dict(self) -> dict[str, float]:
        return {"min_groups": self.min_groups, "mass": self.mass, "max_groups": self.max_groups}


@dataclass(frozen=True)
class Routes:
    """Each row's expanded groups: the first `counts[i]` entries of `order[i]` (descending P(group))."""

    order: np.ndarray  # N x m group indices, m = min(max_groups, G)
    counts: np.ndarray  # N, 1 <= counts[i] <= m
    unexpanded_mass: np.ndarray  # N, 1 - sum of the expanded groups' P(group), clipped at 0

    def groups_of(self, row: int) -> np.ndarray:
        return self.order[row, : self.counts[row]]

    def take(self, rows: np.ndarray) -> Routes:
        """The routes of some rows, in that order."""
        return Routes(self.order[rows], self.counts[rows], self.unexpanded_mass[rows])

    def rows_by_group(self) -> dict[int, np.ndarray]:
        """group index -> the rows that expand it, so each child runs once per batch (batching by route)."""
        mask = np.arange(self.order.shape[1])[None, :] < self.counts[:, None]
        rows = np.broadcast_to(np.arange(len(self.counts))[:, None], self.order.shape)[mask]
        groups = self.order[mask]
        by_group = np.argsort(groups, kind="stable")
        groups, rows = groups[by_group], rows[by_group]
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]) if len(groups) else np.zeros(0, np.int64)
        return {int(groups[s]): rows[s:e] for s, e in zip(starts, [*starts[1:], len(groups)], strict=True)}


def route(parent_probs: np.ndarray, config: RoutingConfig) -> Routes:
    """N x G parent probabilities -> the groups each row expands (ties broken by group order)."""
    groups = parent_probs.shape[1]
    width = min(config.max_groups, groups)
    order = np.argsort(-parent_probs, axis=1, kind="stable")[:, :width]
    ranked = np.take_along_axis(parent_probs, order, axis=1)
    cumulative = np.cumsum(ranked, axis=1)
    needed = (cumulative < config.mass).sum(axis=1) + 1  # groups until the cumulative mass is reached
    counts = np.clip(needed, min(config.min_groups, width), width)
    expanded = np.where(np.arange(width)[None, :] < counts[:, None], ranked, 0.0).sum(axis=1)
    return Routes(order, counts.astype(np.int64), np.clip(1.0 - expanded, 0.0, 1.0))


@dataclass
class TopK:
    """Each row's best candidates so far, merged group by group: flat species index, joint and conditional P.

    Joint probabilities of species nobody evaluated are never invented: unfilled slots have species -1
    and probability 0, and rank last.
    """

    species: np.ndarray  # N x k int64, -1 = empty
    joint: np.ndarray  # N x k float64
    conditional: np.ndarray  # N x k float64

    @classmethod
    def empty(cls, n: int, k: int) -> TopK:
        return cls(np.full((n, k), -1, np.int64), np.zeros((n, k)), np.zeros((n, k)))

    def merge(self, rows: np.ndarray, species: np.ndarray, joint: np.ndarray, conditional: np.ndarray) -> None:
        """Fold candidates of `rows` (len(rows) x c arrays) into their running top-k."""
        k = self.species.shape[1]
        all_species = np.concatenate([self.species[rows], species], axis=1)
        all_joint = np.concatenate([self.joint[rows], joint], axis=1)
        all_conditional = np.concatenate([self.conditional[rows], conditional], axis=1)
        keys = np.where(all_species < 0, -1.0, all_joint)  # empty slots rank below any real candidate
        best = np.argsort(-keys, axis=1, kind="stable")[:, :k]
        self.species[rows] = np.take_along_axis(all_species, best, axis=1)
        self.joint[rows] = np.take_along_axis(all_joint, best, axis=1)
        self.conditional[rows] = np.take_along_axis(all_conditional, best, axis=1)


@dataclass(frozen=True)
class Decision:
    """What the answer claims: a species, or only its group when the child is unsure or not deployed."""

    level: str  # "species" | "group"
    reason: str | None  # why the answer backed off to the group; None at species level


def back_off(conditional: float, group: str, threshold: float, deployed: bool) -> Decision:
    """Group-level back-off: no species model at this alias yet, or P(species | group) below `threshold`."""
    if not deployed:
        return Decision(
            "group", f"no species model for {group} is deployed at this alias yet: answering at group level"
        )
    if conditional < threshold:
        reason = f"unsure of the species within {group}: P(species | group) = {conditional:.3f} < {threshold}"
        return Decision("group", reason)
    return Decision("species", None)
