"""The Dagster code location: every declaration under `defs/`, bound to its resources."""

import warnings

import dagster as dg

from earthsnap_assets import defs as stages
from earthsnap_assets.defs.resources import bindings

with warnings.catch_warnings():  # the package loader is marked preview; its behaviour is what we test
    warnings.simplefilter("ignore", dg.PreviewWarning)
    defs = dg.load_definitions_from_package_module(stages, resources=bindings())
