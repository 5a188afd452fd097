"""The FastAPI app: a thin factory, errors mapped to status codes, the model in the lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from .artifact import Artifact, load_artifact
from .backend import Backend, OnnxBackend
from .batcher import Batcher
from .edge import EdgeMiddleware
from .engine import Engine
from .errors import STATUS, known_error, validation_error
from .get_routes import api, open_routes
from .hot_path import HotPathMiddleware
from .metrics import Metrics
from .models import ServedModel, load_models, parse_spec
from .responses import ResponseBudget
from .route_docs import documented
from .settings import Settings
from .threads import ModelThreads, worker_pool
from .worker_place import WorkerPlace

log = logging.getLogger("bertserve")


def error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"type": kind, "message": message}}, status_code=status, headers=headers
    )


class ServiceApp(FastAPI):
    """FastAPI for the GET routes, /docs and the lifespan. Every HTTP request first passes the
    edge (API key, body size, draining, request metrics, and a 500 in the API's error shape
    for a bug) and the hot path, which answers the POST routes itself: they never enter
    FastAPI's own layers (its telemetry check, error and body-limit middleware)."""

    front: EdgeMiddleware | None = None  # edge -> hot path -> FastAPI, set by create_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.front is not None:
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def behind_front(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    backend: Backend | None = None,
    artifact: Artifact | None = None,
    *,
    models: Sequence[ServedModel] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> ServiceApp:
    """`models`: loaded and verified (bert-serve does it before it listens); by default they
    come from settings.model, in the lifespan. `backend` and `artifact` let tests inject one
    fake model. `on_ready` runs once every model is warm (a worker tells its supervisor)."""
    metrics = Metrics()

    def served() -> list[ServedModel]:
        if models:
            return list(models)
        if artifact is not None or backend is not None:
            loaded = artifact or load_artifact(parse_spec(settings.model[0]).root)
            model = backend or OnnxBackend.for_settings(loaded, settings)
            return [ServedModel(loaded.name, loaded, model)]
        return load_models([parse_spec(spec) for spec in settings.model], settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # asyncio.to_thread's threads (tokenizing, parsing, writing big answers) yield to the loop
        asyncio.get_running_loop().set_default_executor(worker_pool(None, "bertserve-work"))
        chosen = served()
        # one set of model threads for all models: calls from every queue share the cores
        threads = ModelThreads(max(m.backend.workers for m in chosen))
        responses = ResponseBudget(
            settings.max_response_bytes, settings.max_response_bytes_in_flight
        )
        engines: dict[str, Engine] = {}
        for m in chosen:
            series = metrics.of(m.name)
            batcher = Batcher(
                m.backend,
                series,
                pad_id=m.artifact.special_tokens.get("[PAD]", 0),
                max_batch_tokens=settings.max_batch_tokens,
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms,
                max_queued_tokens=settings.max_queued_tokens,
                request_timeout_s=settings.request_timeout_s,
                max_padding_ratio=settings.max_padding_ratio,
                threads=threads,
            )
            batcher.start()
            engines[m.name] = Engine(m.artifact, m.backend, batcher, series, responses, m.name)
            metrics.model_info.labels(m.name, m.backend.precision, m.backend.provider).set(1)
        app.state.engines = engines
        app.state.engine = next(iter(engines.values()))  # the default model
        app.state.batchers = [engine.batcher for engine in engines.values()]
        app.state.batcher = app.state.engine.batcher
        app.state.responses = responses
        if settings.warmup:  # straight to the model: request deadlines do not apply
            for engine in engines.values():
                started = time.perf_counter()
                runs = await threads.run(engine.backend.warm_up)
                log.info(
                    "warmed up %s: %d shapes in %.1f s",
                    engine.model_name,
                    runs,
                    time.perf_counter() - started,
                )
        app.state.ready = True
        metrics.ready.set(1)
        metrics.workers.set(1)
        if on_ready is not None:
            on_ready()
        for m in chosen:
            log.info("serving %s (%s on %s)", m.name, m.backend.precision, m.backend.provider)
        try:
            yield
        finally:
            app.state.ready = False
            app.state.draining = True
            metrics.ready.set(0)
            metrics.workers.set(0)
            await asyncio.gather(*(batcher.stop() for batcher in app.state.batchers))
            await threads.shutdown()

    app = ServiceApp(
        title="bertserve",
        version="0.1.0",
        lifespan=lifespan,
        description="BERT embeddings, fill-mask and next-sentence over ONNX Runtime.",
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    app.state.draining = False
    app.state.started = time.time()  # /v1/models' `created`
    app.state.worker = WorkerPlace(0, 1)  # a worker of `bert-serve --workers N` sets its own
    app.state.peers_ready = None  # with --workers: are the other workers warm too
    app.include_router(open_routes)
    app.include_router(api)

    def openapi() -> dict[str, Any]:
        """The schema of the mounted routes plus the POST routes' declarations (answered by
        the hot path, declared in route_docs.py)."""
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=[*app.routes, *documented.routes],
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # every path the app answers: its own (docs) and the routers' (included lazily by FastAPI)
    routes = frozenset(
        path
        for route in [*app.routes, *open_routes.routes, *api.routes, *documented.routes]
        if isinstance(path := getattr(route, "path", None), str)
    )
    app.front = EdgeMiddleware(
        HotPathMiddleware(app.behind_front, state=app.state),
        settings=settings,
        metrics=metrics,
        state=app.state,
        routes=routes,
    )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 408: "timeout"}
        kind = kinds.get(exc.status_code, "invalid_request")
        message = "request body is not valid JSON" if exc.status_code == 400 else str(exc.detail)
        return error(exc.status_code, kind, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(*validation_error(exc.errors()))

    async def _known(_: Request, exc: Exception) -> JSONResponse:
        known = known_error(exc, metrics)
        if known is None:  # not reached: registered for the known types only
            raise exc
        status, kind, headers = known
        return error(status, kind, str(exc), headers=headers or None)

    for exc_type in STATUS:
        app.add_exception_handler(exc_type, _known)
    return app
