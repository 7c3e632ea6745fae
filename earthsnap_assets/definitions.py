"""The code location: every declaration under `defs/`, bound to its resources."""

import warnings

import dagster as dg

from earthsnap_assets import defs as stages
from earthsnap_assets.defs.automation import automation_sensor
from earthsnap_assets.defs.change_capture import build_raw_change_sensor
from earthsnap_assets.defs.resources import bindings
from earthsnap_assets.settings import Settings


def build_definitions(executor: dg.ExecutorDefinition | None = None) -> dg.Definitions:
    """The same assets, jobs and sensors everywhere; only the executor differs between laptop and cluster.

    EARTHSNAP_SENSOR_INTERVAL_S (read once, as the location loads) sets how often change capture and
    automation tick; unset, they keep their production cadence (15 s and 30 s).
    """
    with warnings.catch_warnings():  # the package loader is marked preview; its behaviour is what we test
        warnings.simplefilter("ignore", dg.PreviewWarning)
        loaded = dg.load_definitions_from_package_module(stages, resources=bindings(), executor=executor)
    interval = Settings.from_env().sensor_interval_s
    if not interval:
        return loaded
    faster = {s.name: s for s in (build_raw_change_sensor(interval), automation_sensor(interval))}
    return dg.Definitions(
        assets=loaded.assets,
        asset_checks=loaded.asset_checks,
        jobs=loaded.jobs,
        schedules=loaded.schedules,
        sensors=[faster.get(s.name, s) for s in loaded.sensors or []],
        resources=loaded.resources,
        executor=loaded.executor,
    )


defs = build_definitions()
