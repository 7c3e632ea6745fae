"""Species groups as dynamic partitions: a new group in the taxonomy adds a partition."""

import re

import dagster as dg

species_group = dg.DynamicPartitionsDefinition(name="species_group")

_KEY = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def add_new_groups(instance: dg.DagsterInstance, groups: list[str]) -> list[str]:
    """Register partitions for groups not seen before; keys are slugs (no commas or slashes)."""
    bad = [g for g in groups if not _KEY.match(g)]
    if bad:
        raise ValueError(f"species group names must be slugs to be partition keys: {bad}")
    existing = set(instance.get_dynamic_partitions(species_group.name))
    new = sorted(set(groups) - existing)
    if new:
        instance.add_dynamic_partitions(species_group.name, new)
    return new
