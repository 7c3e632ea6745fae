"""Stratified, deterministic and stable train/val/test assignment.

Stability comes from a ledger (image sha256 -> split) kept in the lake: an image that was ever assigned
keeps its split when new images arrive. New images fill each species' per-split quota in a seeded hash
order, so an empty ledger and the same images always give the same splits. Near-duplicate clusters are
assigned as one unit and never straddle splits.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from earthsnap_assets.hashing import fingerprint

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction and test_fraction must be >= 0 and sum to less than 1")

    @property
    def fractions(self) -> dict[str, float]:
        return {
            "train": 1 - self.val_fraction - self.test_fraction,
            "val": self.val_fraction,
            "test": self.test_fraction,
        }

    def fingerprint(self) -> str:
        return fingerprint({"splits": asdict(self)})


@dataclass(frozen=True)
class SplitItem:
    sha256: str
    species: str
    cluster: str


@dataclass
class SplitAssignment:
    splits: dict[str, str]
    inherited: int = 0
    new: int = 0
    moved: list[str] = field(default_factory=list)


def _units(items: Sequence[SplitItem]) -> dict[str, list[SplitItem]]:
    units: dict[str, list[SplitItem]] = defaultdict(list)
    for item in items:
        units[item.cluster].append(item)
    return units


def _inherited_split(members: list[SplitItem], ledger: Mapping[str, str]) -> str | None:
    """The split a unit already has; a cluster merged from two splits goes where most of it was."""
    seen = Counter(ledger[m.sha256] for m in members if ledger.get(m.sha256) in SPLITS)
    if not seen:
        return None
    return min(seen, key=lambda s: (-seen[s], SPLITS.index(s)))


def assign_splits(items: Sequence[SplitItem], ledger: Mapping[str, str], config: SplitConfig) -> SplitAssignment:
    """Assign every item a split: keep the ledger's, fill per-species quotas with the new ones."""
    totals = Counter(item.species for item in items)
    current: dict[str, Counter] = defaultdict(Counter)
    result = SplitAssignment(splits={})
    fresh: list[tuple[str, list[SplitItem]]] = []
    for name, members in _units(items).items():
        split = _inherited_split(members, ledger)
        if split is None:
            fresh.append((name, members))
            continue
        for member in members:
            result.splits[member.sha256] = split
            current[member.species][split] += 1
            if member.sha256 in ledger and ledger[member.sha256] != split:
                result.moved.append(member.sha256)
        result.inherited += len(members)
    for sha, split in fill_quotas(fresh, current, totals, config).items():
        result.splits[sha] = split
    result.new += sum(len(members) for _, members in fresh)
    return result


def fill_quotas(
    fresh: list[tuple[str, list[SplitItem]]], current: dict[str, Counter], totals: Counter, config: SplitConfig
) -> dict[str, str]:
    """Splits of units seen for the first time: each goes where its species lacks most of its quota.

    `current` counts per species and split what is assigned already (updated in place); `totals` per species
    everything, old and new. Units are taken in a seeded hash order of their names, so the outcome does not
    depend on the order they arrived in. Costs O(new units): existing images enter only through counts.
    """
    fractions = config.fractions
    assigned: dict[str, str] = {}
    for _name, members in sorted(fresh, key=lambda unit: fingerprint([config.seed, unit[0]], length=32)):
        species = Counter(m.species for m in members)

        def deficit(split: str, species: Counter = species) -> float:
            return sum((fractions[split] * totals[s] - current[s][split]) * n for s, n in species.items())

        split = max(SPLITS, key=lambda s: (deficit(s), -SPLITS.index(s)))
        for member in members:
            assigned[member.sha256] = split
            current[member.species][split] += 1
    return assigned


def counts_by_split(splits: Mapping[str, str], species_of: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """split -> species -> images, for metadata and reports."""
    table: dict[str, Counter] = {s: Counter() for s in SPLITS}
    for sha, split in splits.items():
        table[split][species_of[sha]] += 1
    return {split: dict(sorted(c.items())) for split, c in table.items()}
