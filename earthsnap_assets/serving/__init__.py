"""The serving endpoint: `earthsnap serve --env staging|production` (see `app.create_app`).

Modules: `config` (ServeConfig), `inputs` (upload checks), `models` (the loaded parent + children bundle),
`deployment` (alias poller, atomic swap), `batching` (micro-batcher), `app` (Starlette), `cli` (uvicorn).
Exports are imported lazily, so mounting the CLI command does not import torch or Starlette.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from earthsnap_assets.serving.app import create_app
    from earthsnap_assets.serving.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from earthsnap_assets.serving.app import create_app

        return create_app
    if name == "ServeConfig":
        from earthsnap_assets.serving.config import ServeConfig

        return ServeConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
