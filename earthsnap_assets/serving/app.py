"""The HTTP endpoint: `POST /predict`, `GET /health`, `/ready`, `/models`, `/stats` (Starlette, ASGI).

A request reads the current bundle once, decodes and preprocesses its photo on a worker thread
(`run_in_threadpool`, so the event loop keeps accepting), and awaits its share of a batched forward pass:
the parent on the whole batch, then each routed child once on the photos routed to it. The answer names
the versions that computed it (`model_versions`: the parent and the children it ran). No Dagster here:
the registry is read through `registry/client.py`.
Every refusal is a JSON `{"error": ...}` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from earthsnap_assets.registry.client import RegistryClient, RegistryVerbs
from earthsnap_assets.serving.batching import MicroBatcher
from earthsnap_assets.serving.config import ServeConfig
from earthsnap_assets.serving.deployment import Deployment
from earthsnap_assets.serving.inputs import InputError, image_bytes, prepare, read_body, top_k_param

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Endpoint:
    """The handlers, bound to one deployment and one batcher."""

    def __init__(self, deployment: Deployment, batcher: MicroBatcher, config: ServeConfig) -> None:
        self.deployment = deployment
        self.batcher = batcher
        self.config = config

    async def predict(self, request: Request) -> JSONResponse:
        bundle = self.deployment.current
        if bundle is None:
            return _error(503, f"not ready: {self.deployment.problem}")
        config = self.config
        try:
            top_k = top_k_param(request.query_params.get("top_k"), config.default_top_k, config.max_top_k)
            with self.batcher.expecting() as slot:
                body = await read_body(request, config.max_bytes)
                data = image_bytes(body, request.headers.get("content-type", ""))
                pixels = await run_in_threadpool(prepare, data, bundle.image_size, config.rules)
                future = slot.submit(bundle, pixels)
        except InputError as exc:
            return _error(exc.status, exc.message)
        except ClientDisconnect:
            return _error(400, "client disconnected before sending the whole body")
        prediction = await asyncio.wrap_future(future)
        answer = prediction.answer(top_k, config.confidence_threshold)
        answer["model_versions"] = prediction.versions()
        return JSONResponse(answer)

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def ready(self, request: Request) -> JSONResponse:
        bundle = self.deployment.current
        if bundle is None:
            return JSONResponse({"ready": False, "problem": self.deployment.problem}, status_code=503)
        return JSONResponse({"ready": True, "versions": dict(bundle.versions), "problem": self.deployment.problem})

    async def models(self, request: Request) -> JSONResponse:
        bundle = self.deployment.current
        if bundle is None:
            body = {"error": f"not ready: {self.deployment.problem}", "env": self.deployment.env}
            return JSONResponse({**body, "alias": self.deployment.alias}, status_code=503)
        return JSONResponse({**bundle.describe(), "problem": self.deployment.problem})

    async def stats(self, request: Request) -> JSONResponse:
        deployment = self.deployment
        body = {**self.batcher.stats.as_dict(), "reloads": deployment.reloads}
        body.update(children=deployment.children.stats.as_dict(), routing=deployment.routing.as_dict())
        return JSONResponse(body)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return _error(500, "internal error")


def create_app(env: str, registry: RegistryVerbs | None = None, config: ServeConfig | None = None) -> Starlette:
    """The endpoint serving `env`'s alias (staging | production); models load in the background at startup."""
    config = config or ServeConfig()
    deployment = Deployment(env, registry or RegistryClient(), config)
    batcher = MicroBatcher(config.max_batch, config.max_wait_ms / 1000.0)
    endpoint = Endpoint(deployment, batcher, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        deployment.start()
        try:
            yield
        finally:
            deployment.stop()
            batcher.stop()

    routes = [
        Route("/predict", endpoint.predict, methods=["POST"]),
        Route("/health", endpoint.health, methods=["GET"]),
        Route("/ready", endpoint.ready, methods=["GET"]),
        Route("/models", endpoint.models, methods=["GET"]),
        Route("/stats", endpoint.stats, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Exception: _server_error})
    app.state.deployment = deployment
    app.state.batcher = batcher
    app.state.config = config
    return app
