"""The code location: every declaration under `defs/`, bound to its resources."""

import warnings

import dagster as dg

from earthsnap_assets import defs as stages
from earthsnap_assets.defs.resources import bindings


def build_definitions(executor: dg.ExecutorDefinition | None = None) -> dg.Definitions:
    """The same assets, jobs and sensors everywhere; only the executor differs between laptop and cluster."""
    with warnings.catch_warnings():  # the package loader is marked preview; its behaviour is what we test
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.load_definitions_from_package_module(stages, resources=bindings(), executor=executor)


defs = build_definitions()
