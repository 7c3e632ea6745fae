"""The end of the demo: fresh photos the models never saw, sent to the production endpoint, answers scored.

One photo proves little (the old demo showed one, and it was wrong). A handful per species, drawn with a
new seed, shows what a user of the app would get: each answer next to the true species, and the
endpoint's accuracy on all of them, at species level and at group level (the endpoint may answer with the
group alone when its child is unsure).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from earthsnap_assets.demo.synthetic import render_image

Post = Callable[[bytes], tuple[int, dict]]


@dataclass(frozen=True)
class Answer:
    species: str  # the truth
    group: str
    answered_species: str | None  # None: the endpoint answered at group level
    answered_group: str | None
    probability: float
    status: int
    request_id: str | None = None  # what the endpoint answered with: the key for `POST /feedback`

    @property
    def correct(self) -> bool:
        return self.answered_species == self.species

    @property
    def group_correct(self) -> bool:
        return self.answered_group == self.group


@dataclass(frozen=True)
class Showcase:
    answers: list[Answer]

    @property
    def accuracy(self) -> float:
        return sum(a.correct for a in self.answers) / max(len(self.answers), 1)

    @property
    def group_accuracy(self) -> float:
        return sum(a.group_correct for a in self.answers) / max(len(self.answers), 1)

    def lines(self, shown: int = 12) -> list[str]:
        """A table of the first answer of each species (up to `shown`), then the totals."""
        seen: set[str] = set()
        rows = []
        for a in self.answers:
            if a.species in seen or len(rows) >= shown:
                continue
            seen.add(a.species)
            said = a.answered_species or f"(group {a.answered_group})"
            mark = "ok " if a.correct else "-- "
            rows.append(f"{mark} true {a.species:24s} answered {said:28s} p={a.probability:.2f}")
        n = len(self.answers)
        rows.append(
            f"endpoint on {n} unseen photos: species top-1 {self.accuracy:.2f} ({sum(a.correct for a in self.answers)}"
            f"/{n}), group {self.group_accuracy:.2f}"
        )
        return rows


def photos(species_groups: dict[str, str], per_species: int, seed: int) -> list[tuple[str, bytes]]:
    """`per_species` new JPEGs of every species (demo-like sizes), from a seed training never used."""
    rng = np.random.default_rng(seed)
    out = []
    for species in sorted(species_groups):
        for _ in range(per_species):
            width = int(rng.integers(480, 900))
            buffer = io.BytesIO()
            render_image(species, rng, (width, int(width * 0.75))).save(buffer, "JPEG", quality=90)
            out.append((species, buffer.getvalue()))
    return out


def run(species_groups: dict[str, str], post: Post, per_species: int = 3, seed: int = 20_261_201) -> Showcase:
    answers = []
    for species, data in photos(species_groups, per_species, seed):
        status, body = post(data)
        answers.append(
            Answer(
                species=species,
                group=species_groups[species],
                answered_species=body.get("species") if status == 200 else None,
                answered_group=body.get("group") if status == 200 else None,
                probability=float(body.get("probability") or 0.0) if status == 200 else 0.0,
                status=status,
                request_id=body.get("request_id") if status == 200 else None,
            )
        )
    return Showcase(answers)
