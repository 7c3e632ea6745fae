"""When assets materialize on their own: declarative automation on *data versions*, not on runs.

Data assets carry content versions (a group's object-table hash, its group version, its layout), so a
run that changed nothing leaves them equal and nothing downstream moves. Only the partitions whose
validated data changed retrain; one run per touched group carries its whole data chain; training runs
come after, on their own (GPU pool). The automation sensor evaluates these conditions every 30 s.
"""

from __future__ import annotations

import dagster as dg

A = dg.AutomationCondition

DATA_ASSETS = dg.AssetSelection.groups("data")


def _when(changed: A) -> A:
    return (
        (A.newly_missing() | changed).since_last_handled()
        & ~A.any_deps_missing()
        & ~A.any_deps_in_progress()
        & ~A.in_progress()
        & A.all_deps_blocking_checks_passed()
    )


def new_events() -> A:
    """Something outside the asset reported new work for this group: change-log entries (`raw_changes`) for
    intake, verdict deltas (`group_checks`) for the manifest. Observations have no data version; the other
    dependencies (the taxonomy, the object table) are not triggers: they are reported through those."""
    reported = A.any_deps_match(A.newly_updated() & ~A.executed_with_root_target()).allow(
        dg.AssetSelection.assets("raw_changes", "group_checks")
    )
    return _when(reported).with_label("new events")


def checks_due() -> A:
    """The global checks: any group's object table changed. They do not wait for other groups' intake still
    running (with uploads arriving all day, some always is): what arrives later makes another run."""
    changed = A.any_deps_match(A.data_version_changed() & ~A.executed_with_root_target()).allow(
        dg.AssetSelection.assets("raw_images")
    )
    return ((A.newly_missing() | changed).since_last_handled() & ~A.in_progress() & ~A.any_deps_missing()).with_label(
        "new object rows"
    )


def data_changed() -> A:
    """A dependency's data version changed, or it runs in this same tick (the chain of one group's data)."""
    changed = A.any_deps_match((A.data_version_changed() & ~A.executed_with_root_target()) | A.will_be_requested())
    return _when(changed).with_label("data changed")


def retrain_on_data_change(ignore: dg.AssetKey | None = None) -> A:
    """Training: a data version it learns from changed. Upstream *training* steps requested this tick join
    the same run; a data step requested this tick does not (training waits for the data to be built).

    `ignore` is a dependency that is not a trigger: a child starts from the parent's backbone, but a new
    parent must not retrain hundreds of children; it only has to exist first, and not be mid-training."""
    skipped = dg.AssetSelection.assets(ignore) if ignore is not None else dg.AssetSelection.assets()
    data = A.any_deps_match(A.data_version_changed() & ~A.executed_with_root_target()).ignore(skipped)
    training = A.any_deps_match(A.will_be_requested()).ignore(DATA_ASSETS | skipped)
    return _when(data | training).with_label("retrain on data change")


def automation_sensor(interval_s: int = 30) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "earthsnap_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_s,
        description="Materializes exactly the partitions whose data changed (see defs/automation.py).",
    )


earthsnap_automation = automation_sensor()
