"""The taxonomy: which species exist and which group each belongs to (`taxonomy.csv`)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property

from earthsnap_assets.hashing import fingerprint

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


class TaxonomyError(ValueError):
    """A taxonomy file that cannot be used; the message names the line."""


@dataclass(frozen=True)
class Taxonomy:
    """species -> group, plus any extra columns (e.g. common_name) per species."""

    species_to_group: dict[str, str]
    extras: dict[str, dict[str, str]] = field(default_factory=dict)

    @cached_property
    def by_group(self) -> dict[str, list[str]]:
        """group -> its species, sorted; built once (tens of thousands of species, hundreds of groups)."""
        found: dict[str, list[str]] = defaultdict(list)
        for species, group in sorted(self.species_to_group.items()):
            found[group].append(species)
        return dict(sorted(found.items()))

    @property
    def groups(self) -> list[str]:
        return list(self.by_group)

    def species_in(self, group: str) -> list[str]:
        return list(self.by_group.get(group, []))

    def fingerprint(self) -> str:
        return fingerprint(self.species_to_group)

    def to_json(self) -> dict:
        return {"species_to_group": self.species_to_group, "extras": self.extras}

    @classmethod
    def from_json(cls, value: dict) -> Taxonomy:
        return cls(dict(value["species_to_group"]), dict(value.get("extras", {})))

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()


def _check_slug(value: str, column: str, line: int) -> str:
    if not SLUG.match(value):
        raise TaxonomyError(f"line {line}: {column} {value!r} is not a slug (lowercase a-z, 0-9, single hyphens)")
    return value


def parse_taxonomy(text: str) -> Taxonomy:
    """Parse `species,group[,extra...]` CSV text; every problem is an error naming its line."""
    text = text.lstrip("\ufeff")  # before the emptiness check: a BOM alone is still an empty file
    if not text.strip():
        raise TaxonomyError("taxonomy.csv is empty: expected a header line 'species,group'")
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "species" not in header or "group" not in header:
        raise TaxonomyError(f"line 1: header must contain 'species' and 'group', got {header}")
    species_to_group: dict[str, str] = {}
    first_line: dict[str, int] = {}
    extras: dict[str, dict[str, str]] = {}
    for row in reader:
        line = reader.line_num
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not any(row.values()):
            continue
        species = _check_slug(row.get("species", ""), "species", line)
        group = _check_slug(row.get("group", ""), "group", line)
        if species in species_to_group:
            previous = species_to_group[species]
            what = "duplicate species" if previous == group else f"species in two groups ({previous!r} and {group!r})"
            raise TaxonomyError(f"line {line}: {what} {species!r}, first seen on line {first_line[species]}")
        species_to_group[species] = group
        first_line[species] = line
        extras[species] = {k: v for k, v in row.items() if k not in ("species", "group") and v}
    if not species_to_group:
        raise TaxonomyError("taxonomy.csv has a header but no species lines")
    return Taxonomy(species_to_group=dict(sorted(species_to_group.items())), extras=extras)
