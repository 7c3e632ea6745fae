"""Fixtures: tiny models registered once on the session's real MLflow, and a served staging endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from starlette.applications import Starlette

from earthsnap_assets.serving.app import create_app
from earthsnap_assets.settings import Settings
from earthsnap_assets_tests.serving.helpers import TinyModels, serving, wait_ready


@dataclass
class Deployed:
    models: TinyModels
    versions: dict[str, str]  # short name ("parent", "child-flowers") -> version behind `staging`

    @property
    def model_versions(self) -> dict[str, str]:
        return self.models.full_names(self.versions)


@pytest.fixture(scope="session")
def deployed(stack: Settings) -> Deployed:
    """Parent + flowers + insects v1 under a prefix unique to this session, `staging` pointing at them."""
    models = TinyModels.create()
    return Deployed(models, models.deploy_first_versions("staging"))


@dataclass
class Served:
    url: str
    app: Starlette


@pytest.fixture(scope="module")
def staging(deployed: Deployed) -> Iterator[Served]:
    """The staging endpoint over a real socket, models loaded."""
    app = create_app("staging", config=deployed.models.config())
    with serving(app) as url:
        wait_ready(url)
        yield Served(url, app)
