"""The HTTP endpoint: `POST /predict`, `POST /feedback`, `GET /health`, `/ready`, `/models`, `/stats` (Starlette).

A request reads the current bundle once, decodes and preprocesses its photo on a worker thread
(`run_in_threadpool`, so the event loop keeps accepting), and awaits its share of a batched forward pass:
the parent on the whole batch, then each routed child once on the photos routed to it. The answer names
the versions that computed it (`model_versions`: the parent and the children it ran). No Dagster here:
the registry is read through `registry/client.py`.
Every answer carries a `request_id` and is logged to the lake (`serving/prediction_log.py`) without waiting
for it; `POST /feedback` records what a user says about an answer, by that id (`serving/feedback.py`).
Every refusal is a JSON `{"error": ...}` with a 4xx status (503 when not ready or too busy), routing ones
(404, 405) included. Hostile clients are bounded (`ServeConfig`): a body must arrive within a deadline
(408), an image too costly to decode is refused from its header (413), and at most
`max_concurrent_decodes` photos decode at once (a request waiting too long for a slot gets 503).
With `auth_tokens` configured, every route but `/health` and `/ready` needs a bearer token (401 otherwise;
`serving/auth.py`); `/ready` and `/models` say whether auth is on (`"auth": "bearer" | "off"`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from earthsnap_assets.monitoring.records import TRAFFIC, TRAFFIC_HEADER
from earthsnap_assets.registry.client import RegistryClient, RegistryVerbs
from earthsnap_assets.serving.auth import BearerAuth
from earthsnap_assets.serving.batching import MicroBatcher
from earthsnap_assets.serving.config import ServeConfig
from earthsnap_assets.serving.deployment import Deployment
from earthsnap_assets.serving.feedback import (
    FeedbackError,
    RecentAnswers,
    check_species,
    decide_verdict,
    parse_feedback,
)
from earthsnap_assets.serving.inputs import InputError, Prepared, image_bytes, prepare, read_body, top_k_param
from earthsnap_assets.serving.models import Prediction
from earthsnap_assets.serving.production import Lake, ProductionLog
from earthsnap_assets.settings import Settings

log = logging.getLogger(__name__)

FEEDBACK_MAX_BYTES = 16 * 1024


def traffic_param(value: str | None) -> str:
    """Who sent the request (`X-Earthsnap-Traffic`): absent = the app; an unknown value is refused (400)."""
    if value is None:
        return "app"
    if value not in TRAFFIC:
        raise InputError(400, f"{TRAFFIC_HEADER} must be one of {list(TRAFFIC)}, got {value[:40]!r}")
    return value


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Endpoint:
    """The handlers, bound to one deployment and one batcher."""

    def __init__(self, deployment: Deployment, batcher: MicroBatcher, config: ServeConfig) -> None:
        self.deployment = deployment
        self.batcher = batcher
        self.config = config
        self.recent = RecentAnswers(config.recent_answers)
        self.production: ProductionLog | None = None  # set at startup (lifespan)
        self.decode_slots = asyncio.Semaphore(config.max_concurrent_decodes)

    async def decode(self, data: bytes, image_size: int) -> Prepared:
        """`prepare` on a worker thread, holding one of `max_concurrent_decodes` slots (503 after a long wait)."""
        config = self.config
        try:
            async with asyncio.timeout(config.decode_queue_timeout_s):
                await self.decode_slots.acquire()
        except TimeoutError as exc:
            retry = str(max(1, round(config.decode_queue_timeout_s)))
            message = f"busy: no decode slot within {config.decode_queue_timeout_s:g} s, retry later"
            raise InputError(503, message, {"Retry-After": retry}) from exc
        try:
            return await run_in_threadpool(prepare, data, image_size, config.rules, config.max_decode_bytes)
        finally:
            self.decode_slots.release()

    async def predict(self, request: Request) -> JSONResponse:
        received = time.perf_counter()
        bundle = self.deployment.current
        if bundle is None:
            return _error(503, f"not ready: {self.deployment.problem}")
        config = self.config
        try:
            top_k = top_k_param(request.query_params.get("top_k"), config.default_top_k, config.max_top_k)
            traffic = traffic_param(request.headers.get(TRAFFIC_HEADER))
            with self.batcher.expecting() as slot:
                body = await read_body(request, config.max_bytes, config.body_timeout_s)
                data = image_bytes(body, request.headers.get("content-type", ""))
                upload = await self.decode(data, bundle.image_size)
                future = slot.submit(bundle, upload.pixels)
        except InputError as exc:
            return _error(exc.status, exc.message, exc.headers)
        except ClientDisconnect:
            return _error(400, "client disconnected before sending the whole body")
        prediction = await asyncio.wrap_future(future)
        answer = {"request_id": uuid.uuid4().hex, **prediction.answer(top_k, config.confidence_threshold)}
        answer["model_versions"] = prediction.versions()
        self._remember(answer, received, prediction, upload, data, traffic)
        return JSONResponse(answer)

    def _remember(
        self,
        answer: dict[str, Any],
        received: float,
        prediction: Prediction,
        upload: Prepared,
        data: bytes,
        traffic: str,
    ) -> None:
        """Keep the answer for feedback and hand its row to the prediction log; never fails the request."""
        try:
            latency_ms = (time.perf_counter() - received) * 1000.0
            self.recent.add(answer["request_id"], answer["species"])
            if self.production is not None:
                answered_at = datetime.now(UTC)
                self.production.record_prediction(
                    answer["request_id"], answered_at, latency_ms, prediction, answer, upload, data, traffic
                )
        except Exception:
            log.exception("could not log request %s", answer.get("request_id"))

    async def feedback(self, request: Request) -> JSONResponse:
        """`{"request_id", "species", "verdict"?}` -> 202 with the stored record; 4xx says what is wrong."""
        production = self.production
        try:
            feedback = parse_feedback(await read_body(request, FEEDBACK_MAX_BYTES, self.config.body_timeout_s))
            if production is None:
                return _error(503, "not started: no feedback log")
            known, _ = production.taxonomy.species_to_group()
            if known is None:
                return _error(503, "no taxonomy to check the species against (lake unreadable, no model loaded yet)")
            group = check_species(feedback.species, known)
            verdict = decide_verdict(feedback, self.recent.get(feedback.request_id))
        except FeedbackError as exc:
            return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status)
        except InputError as exc:
            return _error(exc.status, exc.message)
        except ClientDisconnect:
            return _error(400, "client disconnected before sending the whole body")
        record = {
            "request_id": feedback.request_id,
            "ts": datetime.now(UTC),
            "env": self.deployment.env,
            "replica": production.replica,
            "verdict": verdict,
            "species": feedback.species,
            "group": group,
        }
        production.record_feedback(record)
        return JSONResponse({**record, "ts": record["ts"].isoformat()}, status_code=202)

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def ready(self, request: Request) -> JSONResponse:
        bundle = self.deployment.current
        auth = self.config.auth_tokens.mode
        if bundle is None:
            return JSONResponse({"ready": False, "problem": self.deployment.problem, "auth": auth}, status_code=503)
        body = {"ready": True, "versions": dict(bundle.versions), "problem": self.deployment.problem, "auth": auth}
        return JSONResponse(body)

    async def models(self, request: Request) -> JSONResponse:
        bundle = self.deployment.current
        if bundle is None:
            body = {"error": f"not ready: {self.deployment.problem}", "env": self.deployment.env}
            return JSONResponse({**body, "alias": self.deployment.alias}, status_code=503)
        auth = self.config.auth_tokens.mode
        return JSONResponse({**bundle.describe(), "problem": self.deployment.problem, "auth": auth})

    async def stats(self, request: Request) -> JSONResponse:
        deployment = self.deployment
        body = {**self.batcher.stats.as_dict(), "reloads": deployment.reloads}
        body.update(children=deployment.children.stats.as_dict(), routing=deployment.routing.as_dict())
        body["recent_answers"] = len(self.recent)
        if self.production is not None:
            body.update(self.production.stats())
        return JSONResponse(body)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (404 no such route, 405 wrong method, ...) as JSON like every other answer."""
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.detail, exc.headers)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return _error(500, "internal error")


class HeaderLimit:
    """ASGI middleware: 431 JSON for a request whose line + headers exceed `max_bytes`.

    uvicorn's h11 limit (`ServeConfig.server_options`) bounds only a head still incomplete after a read, so
    a whole oversized head arriving in one read (up to the transport's 256 KiB) would pass without this.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size = target + sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_bytes:
                message = f"request headers of {size} bytes are larger than the limit of {self.max_bytes} bytes"
                await _error(431, message, {"Connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


EXCEPTION_HANDLERS = {HTTPException: _http_error, Exception: _server_error}


def create_app(
    env: str,
    registry: RegistryVerbs | None = None,
    config: ServeConfig | None = None,
    lake: Lake | Callable[[], Lake] | None = None,
) -> Starlette:
    """The endpoint serving `env`'s alias (staging | production); models load in the background at startup.

    `lake` is where the prediction and feedback logs go (a `Lake` or a function building one at startup);
    None: the lake bucket of `Settings.from_env()`, built at startup.
    """
    config = config or ServeConfig()
    deployment = Deployment(env, registry or RegistryClient(), config)
    batcher = MicroBatcher(config.max_batch, config.max_wait_ms / 1000.0)
    endpoint = Endpoint(deployment, batcher, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        target = lake if isinstance(lake, Lake) else (lake or _lake_from_env)()
        production = ProductionLog(env, config, target, deployment)
        production.start()
        endpoint.production = app.state.production = production
        batcher.start()
        deployment.start()
        try:
            yield
        finally:
            deployment.stop()
            batcher.stop()
            production.close()

    routes = [
        Route("/predict", endpoint.predict, methods=["POST"]),
        Route("/feedback", endpoint.feedback, methods=["POST"]),
        Route("/health", endpoint.health, methods=["GET"]),
        Route("/ready", endpoint.ready, methods=["GET"]),
        Route("/models", endpoint.models, methods=["GET"]),
        Route("/stats", endpoint.stats, methods=["GET"]),
    ]
    middleware = [Middleware(HeaderLimit, max_bytes=config.max_header_bytes)]
    if config.auth_tokens:  # inside the header limit, before any route reads a body
        middleware.append(Middleware(BearerAuth, tokens=config.auth_tokens))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS, middleware=middleware)
    app.state.deployment = deployment
    app.state.batcher = batcher
    app.state.config = config
    app.state.endpoint = endpoint
    return app


def _lake_from_env() -> Lake:
    return Lake.from_settings(Settings.from_env())
