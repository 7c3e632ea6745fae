"""MLflow as a Dagster resource: the registry verbs of `registry/client.py` with Dagster config fields."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from earthsnap_assets.registry.client import RegistryVerbs


class MlflowRegistry(dg.ConfigurableResource, RegistryVerbs):
    """Runs, artifacts, pt2 models and registered versions. Unset fields come from the environment."""

    tracking_uri: str | None = Field(default=None, description="None = MLFLOW_TRACKING_URI / local stack")
    experiment: str = Field(default="earthsnap", description="experiment that holds the pipeline's runs")
