"""Species groups as dynamic partitions, kept in step with the taxonomy: a new group adds a partition.

Production days (UTC) partition what reads the prediction log: monitoring and the review queue.
"""

import dagster as dg

from earthsnap_assets.lake.taxonomy import SLUG

species_group = dg.DynamicPartitionsDefinition(name="species_group")

# One partition per UTC day of the prediction log (`lake/paths.predictions_prefix`); a day is read alone.
production_day = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", end_offset=1)


def add_new_groups(instance: dg.DagsterInstance, groups: list[str]) -> list[str]:
    """Register partitions for groups not seen before; keys are slugs (no commas or slashes)."""
    bad = [g for g in groups if not SLUG.match(g)]
    if bad:
        raise ValueError(f"species group names must be slugs to be partition keys: {bad}")
    existing = set(instance.get_dynamic_partitions(species_group.name))
    new = sorted(set(groups) - existing)
    if new:
        instance.add_dynamic_partitions(species_group.name, new)
    return new


def sync_groups(instance: dg.DagsterInstance, groups: list[str]) -> tuple[list[str], list[str]]:
    """Partitions = the taxonomy's groups: (added, removed). A removed group's history stays in the instance."""
    added = add_new_groups(instance, groups)
    removed = sorted(set(instance.get_dynamic_partitions(species_group.name)) - set(groups))
    for group in removed:
        instance.delete_dynamic_partition(species_group.name, group)
    return added, removed
