"""The Kubernetes code location plus what users add to start runs by themselves: a sensor and automation.

Used by test_launch_paths: the assets (and so their op tags) are exactly those of
`earthsnap_assets.k8s_definitions`; only two more ways to launch them are added.
"""

import dagster as dg

from earthsnap_assets import k8s_definitions

AUTOMATED = dg.AssetKey("parent_hyperparams")
SENSED = dg.AssetKey("child_model")
SENSED_PARTITION = "beetles"


@dg.sensor(
    name="train_beetles_sensor",
    asset_selection=[SENSED],
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def train_beetles_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(run_key="beetles-once", partition_key=SENSED_PARTITION)


def _automate(spec: dg.AssetSpec) -> dg.AssetSpec:
    condition = dg.AutomationCondition.missing() & ~dg.AutomationCondition.in_progress()
    return spec.replace_attributes(automation_condition=condition)


# Declarative automation is evaluated by an automation condition sensor; this one is on from the start.
automation = dg.AutomationConditionSensorDefinition(
    "gpu_automation",
    target=[AUTOMATED],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
)


def _with_sensors(base: dg.Definitions, sensors: list, replaced: str) -> dg.Definitions:
    """`base` with `replaced` (the code's own automation sensor over every asset) swapped for `sensors`:
    Dagster allows one automation sensor per asset, and this one targets only the asset under test."""
    kept = [s for s in base.sensors or [] if s.name != replaced]
    return dg.Definitions(
        assets=base.assets,
        asset_checks=base.asset_checks,
        jobs=base.jobs,
        schedules=base.schedules,
        sensors=[*kept, *sensors],
        resources=base.resources,
        executor=base.executor,
    )


defs = _with_sensors(
    k8s_definitions.defs.map_resolved_asset_specs(func=_automate, selection=[AUTOMATED]),
    [train_beetles_sensor, automation],
    replaced="earthsnap_automation",
)
